"""Batch evidence (`pipelines.score --explain`): each part's `evidence` column holds, per ECG, /v1/score's
evidence body for its top-k labels (or every label given), equal to `Scorer.explain`'s; the explaining
options are recorded, so a rerun skips the finished parts and a rerun with others is refused; explaining more
labels than MAX_EXPLAIN_LABELS is refused before Ray starts or anything is written."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.data.wfdb_io import read_record
from pipelines.explaining.evidence_body import evidence_body
from pipelines.score import main as score_main
from pipelines.score import score
from pipelines.serving.batch_scoring import ExplainedLabels
from pipelines.serving.requests import MAX_EXPLAIN_LABELS
from pipelines.serving.scorer import Scorer
from tests.archives import write_ptbxl_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """8 readable records in PTB-XL's layout."""
    return write_ptbxl_archive(tmp_path_factory.mktemp("explain-archive"), [{"ecg_id": i} for i in range(1, 9)])


def arguments(export, archive, output, *extra: str) -> list[str]:
    paths = ["--model", str(export), "--input", str(archive), "--output", str(output)]
    return [*paths, "--source", "ptbxl", "--part-size", "4", *extra]


def direct_evidence(scorer: Scorer, archive, ecg_id: str, labels: list[str]) -> list[dict]:
    """One ECG read, prepared and explained alone by `Scorer.explain` (the path /v1/score takes), as bodies."""
    number = int(ecg_id.rsplit("/", 1)[1])
    prepared = scorer.prepare(read_record(str(archive / f"records500/00000/{number:05d}_hr")))
    explained = scorer.explain(prepared.signal[None], prepared.lead_mask[None], labels)[0]
    return [evidence_body(label, evidence) for label, evidence in zip(labels, explained)]


def assert_same_evidence(written: list[dict], expected: list[dict]) -> None:
    assert [e["label"] for e in written] == [e["label"] for e in expected]
    for got, want in zip(written, expected):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5) and got["leads"] == want["leads"]
        assert [s["lead"] for s in got["segments"]] == [s["lead"] for s in want["segments"]]
        for key in ("start_s", "end_s", "weight"):
            np.testing.assert_allclose(
                [s[key] for s in got["segments"]], [s[key] for s in want["segments"]], rtol=1e-3, atol=1e-6
            )


@pytest.mark.slow
def test_evidence_of_the_top_labels_in_every_part_resumable_and_refused_with_other_options(
    ray_cluster, tiny_export, archive, tmp_path, capsys, restore_logging
):
    export, output = tiny_export("melp"), tmp_path / "evidence"
    assert score_main(arguments(export, archive, output, "--explain", "--top-k", "2", "--batch-size", "3")) == 0
    assert "scored 8 ECGs" in capsys.readouterr().out
    parts = sorted((output / "scores").glob("*.parquet"))
    table = pq.read_table(output / "scores")
    assert len(parts) == 2 and table.num_rows == 8 and table.column_names[-1] == "evidence"
    scorer = Scorer(export)
    labels = list(scorer.default_labels)
    scores = np.stack([table[f"score_{label}"].to_numpy() for label in labels], axis=1)  # [8, C]
    for row, evidence in zip(scores, table["evidence"].to_pylist()):
        assert [e["label"] for e in evidence] == [labels[i] for i in np.argsort(-row)[:2]]
        assert all(e["segments"] and len(e["leads"]) == 12 for e in evidence)
    ecg_id, evidence = table["ecg_id"][5].as_py(), table["evidence"][5].as_py()
    assert_same_evidence(evidence, direct_evidence(scorer, archive, ecg_id, [e["label"] for e in evidence]))
    made_with = json.loads((output / "made_by.json").read_text())["made_with"]
    assert made_with["explain"] == {"labels": "best", "top_k": 2}

    stamps = [part.stat().st_mtime_ns for part in parts]
    again = score(str(export), str(archive), str(output), source="ptbxl", part_size=4, explain=ExplainedLabels(2))
    assert again["scored"] == 8 and [part.stat().st_mtime_ns for part in parts] == stamps
    refused = {
        ("--explain",): "explain.top_k: 2 there, 3 now",
        (): "explain.labels: 'best' there, (absent) now",
    }
    for extra, named in refused.items():
        with pytest.raises(SystemExit) as exit_info:
            score_main(arguments(export, archive, output, *extra))
        assert exit_info.value.code == 2 and named in capsys.readouterr().err
    assert [part.stat().st_mtime_ns for part in parts] == stamps, "a refused rerun changes nothing"


@pytest.mark.slow
def test_every_given_label_is_explained_in_order(ray_cluster, tiny_export, archive, tmp_path):
    export, output, labels = tiny_export("melp"), tmp_path / "evidence", ["AFIB", "a normal ecg"]
    score(str(export), str(archive), str(output), source="ptbxl", part_size=8, labels=labels, explain=ExplainedLabels())
    table = pq.read_table(output / "scores")
    assert all([e["label"] for e in row] == labels for row in table["evidence"].to_pylist())
    expected = direct_evidence(Scorer(export), archive, table["ecg_id"][0].as_py(), labels)
    assert_same_evidence(table["evidence"][0].as_py(), expected)
    assert json.loads((output / "made_by.json").read_text())["made_with"]["explain"] == {"labels": "all"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (
            ["--explain", "--labels", "SIX"],
            f"--explain with --labels: 6 labels to explain per ECG; the limit is {MAX_EXPLAIN_LABELS}",
        ),
        (
            ["--explain", "--top-k", "6"],
            f"--explain with --top-k: 6 best labels to explain per ECG; the limit is {MAX_EXPLAIN_LABELS}",
        ),
        (["--explain", "--top-k", "0"], "top_k must be at least 1, got 0"),
        (["--top-k", "2"], "--top-k only goes with --explain"),
        (["--explain", "--labels", "SIX", "--top-k", "2"], "--top-k goes with --explain without --labels"),
    ],
)
def test_explaining_too_many_labels_is_a_usage_error_before_anything_runs(
    tiny_export, archive, tmp_path, capsys, extra, named
):
    """No Ray here: each refusal comes before Ray starts, and nothing is created."""
    six = tmp_path / "six.json"
    six.write_text(json.dumps(["NORM", "AFIB", "SR", "PVC", "LVOLT", "a normal ecg"]))
    extra = [str(six) if value == "SIX" else value for value in extra]
    with pytest.raises(SystemExit) as exit_info:
        score_main(arguments(tiny_export("melp"), archive, tmp_path / "out", *extra))
    assert exit_info.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_api_refuses_explaining_every_label_of_a_large_task_first(tiny_export, archive, tmp_path):
    """The export's synthetic task has 15 classes: explaining them all is over the bound."""
    with pytest.raises(ValueError, match=f"explain: 15 labels to explain per ECG; the limit is {MAX_EXPLAIN_LABELS}"):
        score(str(tiny_export("melp")), str(archive), str(tmp_path / "out"), source="ptbxl", explain=ExplainedLabels())
    assert not (tmp_path / "out").exists()
