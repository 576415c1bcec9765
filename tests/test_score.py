"""Batch scoring with Ray Data: 1,000 synthetic WFDB records (two of them damaged) scored from the archive,
every record accounted for, a sample equal to the direct path, a rerun that skips finished parts, and a
rerun that differs (part size, labels, model) refused."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models.factory import create_model
from pipelines.data.wfdb_io import read_record
from pipelines.outputs import OutputRefused
from pipelines.score import main as score_main
from pipelines.score import score
from pipelines.serving.scorer import Scorer
from pipelines.synthetic import SyntheticConfig, generate_ptbxl_layout
from tests.archives import write_ptbxl_archive


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("score-export")
    create_model("tiny", objective="melp")[0].save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """1,000 synthetic records in PTB-XL's layout; record 7's samples truncated, record 11's header garbage."""
    root = tmp_path_factory.mktemp("score-archive")
    generate_ptbxl_layout(root, SyntheticConfig(n=1000, seed=5))
    dat = sorted(root.rglob("*_hr.dat"))[7]
    dat.write_bytes(dat.read_bytes()[:1000])
    hea = sorted(root.rglob("*_hr.hea"))[11]
    hea.write_text("not a header\n")
    return root


@pytest.mark.slow
def test_archive_scoring_accounts_for_every_record_and_matches_the_direct_path(ray_cluster, export, archive, tmp_path):
    output = tmp_path / "scores"
    summary = score(str(export), str(archive), str(output), source="ptbxl", part_size=300, batch_size=32)
    assert summary["records_in"] == 1000 and summary["units"] == 4
    assert summary["scored"] + summary["rejected"] == 1000 and summary["rejected"] == 2
    rejected = pq.read_table(output / "rejected").to_pylist()
    assert all(row["reject_reason"] for row in rejected) and len(rejected) == 2

    scores = pq.read_table(output / "scores").to_pandas().set_index("ecg_id")
    assert len(scores) == 998 and scores.index.is_unique
    scorer = Scorer(export, "synthetic")
    labels = scorer.default_labels
    for ecg_id in scores.sample(5, random_state=0).index:
        number = int(ecg_id.rsplit("/", 1)[1])
        recording = read_record(str(archive / f"records500/{number // 1000 * 1000:05d}/{number:05d}_hr"))
        prepared = scorer.prepare(recording)
        expected = scorer.scores(scorer.embed(prepared.signal[None], prepared.lead_mask[None]), labels)[0]
        np.testing.assert_allclose(
            scores.loc[ecg_id, [f"score_{c}" for c in labels]].to_numpy(float), expected, atol=1e-5
        )

    parts = sorted((output / "scores").glob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    again = score(str(export), str(archive), str(output), source="ptbxl", part_size=300)
    assert {k: again[k] for k in ("records_in", "scored", "rejected")} == {
        k: summary[k] for k in ("records_in", "scored", "rejected")
    }
    assert [p.stat().st_mtime_ns for p in sorted((output / "scores").glob("*.parquet"))] == stamps
    assert json.loads((output / "summary.json").read_text())["scored"] == 998


@pytest.mark.slow
def test_shard_scoring_with_custom_labels_and_embeddings(ray_cluster, export, synthetic_shards, tmp_path):
    output = tmp_path / "scores"
    summary = score(str(export), str(synthetic_shards), str(output), labels=["AFIB", "a normal ecg"], embeddings=True)
    table = pq.read_table(output / "scores")
    assert summary["scored"] == summary["records_in"] == table.num_rows == 240 and summary["rejected"] == 0
    assert table.column_names == ["ecg_id", "score_AFIB", "score_a normal ecg", "embedding"]
    norms = np.linalg.norm(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


@pytest.mark.slow
def test_records_rejected_while_listing_are_accounted_for(ray_cluster, export, tmp_path):
    """A duplicate id and an index row without its record are rejected by the lister; scoring lists them in
    rejected_listing.parquet with their reasons and counts them, instead of crashing on the table."""
    entries = [{"ecg_id": 1}, {"ecg_id": 2}, {"ecg_id": 2}, {"ecg_id": 3, "signal": None}, {"ecg_id": 4}]
    archive = write_ptbxl_archive(tmp_path / "archive", entries)
    summary = score(str(export), str(archive), str(tmp_path / "scores"), source="ptbxl", part_size=2)
    rejected = pq.read_table(tmp_path / "scores" / "rejected_listing.parquet").to_pylist()
    reasons = " | ".join(row["reason"] for row in rejected)
    assert "duplicate" in reasons and summary["records_in"] == 5
    assert summary["scored"] + summary["rejected"] == summary["records_in"]
    scored = pq.read_table(tmp_path / "scores" / "scores")["ecg_id"].to_pylist()
    assert len(scored) == len(set(scored)) == summary["scored"]


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    """12 readable records in PTB-XL's layout."""
    return write_ptbxl_archive(tmp_path_factory.mktemp("score-small"), [{"ecg_id": i} for i in range(1, 13)])


def parts_on_disk(output) -> dict:
    return {p.relative_to(output).as_posix(): p.read_bytes() for p in sorted(output.rglob("*.parquet"))}


@pytest.mark.slow
def test_a_rerun_that_differs_is_refused_naming_the_difference(ray_cluster, export, small_archive, tmp_path):
    """Issue 13: a rerun with another part size wrote 900 rows for 600 ECGs; another label set mixed columns."""
    output = tmp_path / "scores"
    first = score(str(export), str(small_archive), str(output), source="ptbxl", part_size=4)
    ids = pq.read_table(output / "scores")["ecg_id"].to_pylist()
    assert len(ids) == len(set(ids)) == first["scored"] == 12 and first["scored"] + first["rejected"] == first["records_in"]
    before = parts_on_disk(output)
    other = tmp_path / "other-export"
    torch.manual_seed(1)
    create_model("tiny", objective="melp")[0].save_pretrained(other)
    for changed, field in (
        ({"part_size": 6}, "part_size: 4 there, 6 now"),
        ({"labels": ["AFIB"]}, "labels: "),
        ({"embeddings": True}, "embeddings: False there, True now"),
    ):
        with pytest.raises(OutputRefused, match=field):
            score(str(export), str(small_archive), str(output), source="ptbxl", **{"part_size": 4, **changed})
    with pytest.raises(OutputRefused, match="model: "):
        score(str(other), str(small_archive), str(output), source="ptbxl", part_size=4)
    assert parts_on_disk(output) == before, "a refused rerun changes nothing"

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    with pytest.raises(OutputRefused, match="was not made by score"):
        score(str(export), str(small_archive), str(notes), source="ptbxl", overwrite=True)
    assert [p.name for p in notes.iterdir()] == ["notes.txt"]

    replaced = score(str(export), str(small_archive), str(output), source="ptbxl", part_size=6, overwrite=True)
    assert replaced["units"] == 2 and pq.read_table(output / "scores").num_rows == replaced["scored"] == 12

    # A part that holds another part's ids (parts of two runs): the counts cannot reconcile, no summary.
    (output / "summary.json").unlink()
    scores = output / "scores"
    (scores / "part-00001.parquet").write_bytes((scores / "part-00000.parquet").read_bytes())
    with pytest.raises(RuntimeError, match="more than once"):
        score(str(export), str(small_archive), str(output), source="ptbxl", part_size=6)
    assert not (output / "summary.json").exists()


@pytest.mark.parametrize("missing", ["--input", "--model"])
def test_a_missing_input_or_model_is_a_usage_error_and_creates_nothing(missing, export, small_archive, tmp_path, capsys):
    arguments = {"--model": str(export), "--input": str(small_archive), "--output": str(tmp_path / "out")}
    arguments[missing] = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as exit_info:
        score_main([*(x for pair in arguments.items() for x in pair), "--source", "ptbxl"])
    assert exit_info.value.code == 2
    assert f"{missing} {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
