"""Batch scoring with Ray Data: 1,000 synthetic WFDB records (two of them damaged) scored from the archive,
every record accounted for, a sample equal to the direct path, and a rerun that skips finished parts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models.factory import create_model
from pipelines.data.wfdb_io import read_record
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


def test_shard_scoring_with_custom_labels_and_embeddings(ray_cluster, export, synthetic_shards, tmp_path):
    output = tmp_path / "scores"
    summary = score(str(export), str(synthetic_shards), str(output), labels=["AFIB", "a normal ecg"], embeddings=True)
    table = pq.read_table(output / "scores")
    assert summary["scored"] == summary["records_in"] == table.num_rows == 240 and summary["rejected"] == 0
    assert table.column_names == ["ecg_id", "score_AFIB", "score_a normal ecg", "embedding"]
    norms = np.linalg.norm(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


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
