"""Batch drafting (`pipelines.score --reports`): each part gets its ECGs' drafts, equal to `Scorer.draft`'s
(the path /v1/report takes); the drafting options are recorded, so a rerun skips the finished parts and a
rerun with other options is refused; an export without a caption decoder, or options it cannot honour, are
refused before Ray starts or anything is written."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.report_generation import DraftOptions
from pipelines.data.wfdb_io import read_record
from pipelines.score import main as score_main
from pipelines.score import score
from pipelines.serving.scorer import DraftRefused, Scorer
from tests.archives import write_ptbxl_archive

MAX_TOKENS = 6
"""Short drafts keep the test quick (a random decoder never ends a draft early)."""


@pytest.fixture(scope="module")
def exports(tiny_export) -> dict:
    return {objective: tiny_export(objective) for objective in ("melp", "cmelt")}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """12 readable records in PTB-XL's layout."""
    return write_ptbxl_archive(tmp_path_factory.mktemp("drafts-archive"), [{"ecg_id": i} for i in range(1, 13)])


def arguments(export, archive, output, *extra: str) -> list[str]:
    paths = ["--model", str(export), "--input", str(archive), "--output", str(output)]
    return [*paths, "--source", "ptbxl", "--part-size", "6", *extra]


def direct_drafts(scorer: Scorer, archive, ecg_ids: list[str], options: DraftOptions) -> list:
    """The ECGs of one part read, prepared and drafted together by `Scorer.draft`, without Ray."""
    prepared = []
    for ecg_id in ecg_ids:
        number = int(ecg_id.rsplit("/", 1)[1])
        prepared.append(scorer.prepare(read_record(str(archive / f"records500/00000/{number:05d}_hr"))))
    return scorer.draft(np.stack([p.signal for p in prepared]), np.stack([p.lead_mask for p in prepared]), options)


@pytest.mark.slow
def test_drafts_in_every_part_resumable_and_refused_with_other_options(
    ray_cluster, exports, archive, tmp_path, capsys, restore_logging
):
    output = tmp_path / "drafts"
    assert score_main(arguments(exports["melp"], archive, output, "--reports", "--max-tokens", str(MAX_TOKENS))) == 0
    assert "scored 12 ECGs" in capsys.readouterr().out
    parts = sorted((output / "scores").glob("*.parquet"))
    assert len(parts) == 2
    options, scorer = DraftOptions(max_tokens=MAX_TOKENS), Scorer(exports["melp"])
    for table in map(pq.read_table, parts):
        assert table.column_names[-3:] == ["report", "report_logprob", "report_tokens"] and table.num_rows == 6
        drafts = direct_drafts(scorer, archive, table["ecg_id"].to_pylist(), options)
        assert table["report"].to_pylist() == [d.text for d in drafts]
        assert table["report_tokens"].to_pylist() == [d.tokens for d in drafts]
        np.testing.assert_allclose(table["report_logprob"].to_numpy(), [d.logprob for d in drafts], atol=1e-3)
        assert all(1 <= n <= MAX_TOKENS for n in table["report_tokens"].to_pylist())
    made_with = json.loads((output / "made_by.json").read_text())["made_with"]
    assert made_with["reports"]["max_tokens"] == MAX_TOKENS and made_with["reports"]["num_beams"] == 1

    stamps = [part.stat().st_mtime_ns for part in parts]
    again = score(str(exports["melp"]), str(archive), str(output), source="ptbxl", part_size=6, reports=options)
    assert again["scored"] == 12 and [part.stat().st_mtime_ns for part in parts] == stamps

    refused = {
        ("--reports", "--max-tokens", str(MAX_TOKENS), "--num-beams", "2"): "reports.num_beams: 1 there, 2 now",
        ("--reports",): f"reports.max_tokens: {MAX_TOKENS} there, 0 now",
        (): f"reports.max_tokens: {MAX_TOKENS} there, (absent) now",
    }
    for extra, named in refused.items():
        with pytest.raises(SystemExit) as exit_info:
            score_main(arguments(exports["melp"], archive, output, *extra))
        assert exit_info.value.code == 2 and named in capsys.readouterr().err
    assert [part.stat().st_mtime_ns for part in parts] == stamps, "a refused rerun changes nothing"


@pytest.mark.parametrize(
    ("objective", "extra", "named"),
    [
        ("cmelt", ["--reports"], "'cmelt' trains no caption decoder"),
        ("melp", ["--reports", "--max-tokens", "32"], "--max-tokens: 32 is over this model's limit of 30"),
        ("melp", ["--reports", "--num-beams", "0"], "--num-beams must be at least 1"),
        ("melp", ["--num-beams", "2"], "--num-beams only go with --reports"),
    ],
)
def test_drafting_that_cannot_be_done_is_a_usage_error_before_anything_runs(
    exports, archive, tmp_path, capsys, objective, extra, named
):
    """No Ray here: each refusal comes before Ray starts, and nothing is created."""
    with pytest.raises(SystemExit) as exit_info:
        score_main(arguments(exports[objective], archive, tmp_path / "out", *extra))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert named in error and ("MELP" in error or objective == "melp")
    assert not (tmp_path / "out").exists()


def test_the_api_refuses_an_export_without_a_decoder_first(exports, archive, tmp_path):
    with pytest.raises(DraftRefused, match="cmelt"):
        score(str(exports["cmelt"]), str(archive), str(tmp_path / "out"), source="ptbxl", reports=DraftOptions())
    assert not (tmp_path / "out").exists()
