"""The prepare stage on a real Ray cluster: damaged archives lose nothing, real PTB-XL goes end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines.data.preprocess import PreprocessConfig, preprocess
from pipelines.data.records import RecordOptions
from pipelines.data.schema import lead_masks_of, shard_schema, signals_of
from pipelines.data.sources import SourceOptions
from pipelines.data.wfdb_io import read_record
from pipelines.prepare import prepare
from tests.archives import ecg_like, rewrite_header, write_ptbxl_archive


def read_output(output: Path):
    shards = sorted(output.glob("part-*.parquet"))
    kept = pq.ParquetDataset(shards).read() if shards else None
    rejected = pq.read_table(output / "rejected.parquet").to_pylist()
    manifest = json.loads((output / "manifest.json").read_text())
    return kept, {r["ecg_id"]: r["reason"] for r in rejected}, manifest


def _damaged_archive(root: Path) -> Path:
    def signal(start: int, stop: int, lead: int, value: float) -> np.ndarray:
        s = ecg_like(10, 500)
        s[start:stop, lead] = value
        return s

    write_ptbxl_archive(
        root,
        [
            {"ecg_id": 1},
            {"ecg_id": 2},  # truncated below
            {"ecg_id": 3},  # header claims 8 leads below
            {"ecg_id": 4},  # header claims 100 Hz below
            {"ecg_id": 5, "signal": signal(1000, 1400, 4, np.nan)},
            {"ecg_id": 6, "signal": signal(2000, 2010, 7, np.nan)},
            {"ecg_id": 7, "signal": signal(0, 5000, 9, 0.3)},
            {"ecg_id": 8, "signal": np.zeros((5000, 12))},
            {"ecg_id": 9, "signal": ecg_like(10, 500, n_leads=6), "leads": ["I", "II", "III", "aVR", "aVL", "aVF"]},
            {"ecg_id": 10, "scp_codes": {}},
            {"ecg_id": 11, "scp_codes": {"SR": 0.0}},
            {"ecg_id": 1, "signal": None},
            {"ecg_id": 13, "signal": None},
            {"ecg_id": 14, "scp_codes": "NORM=100"},
            {"ecg_id": 15},  # header replaced by garbage below
        ],
    )
    records = root / "records500" / "00000"
    data = records / "00002_hr.dat"
    data.write_bytes(data.read_bytes()[: 12 * 2 * 2500])
    rewrite_header(records / "00003_hr", lambda lines: [lines[0].replace(" 12 ", " 8 ")] + lines[1:9])
    rewrite_header(records / "00004_hr", lambda lines: [lines[0].replace(" 500 ", " 100 ")] + lines[1:])
    (records / "00015_hr.hea").write_text("00015_hr twelve leads\n")
    return root


EXPECTED_REJECTIONS = {
    "ptbxl/00002": "truncated signal: 00002_hr.dat holds 2500 of 5000 samples per lead for 12 leads",
    "ptbxl/00003": "header disagrees with data: 00003_hr.dat holds 60000 samples, header declares 8 leads x 5000 = 40000",
    "ptbxl/00004": "rate disagrees with layout: header says 100 Hz where this layout holds 500 Hz records",
    "ptbxl/00005": "invalid-sample gap too long: run of 400 samples (0.80 s) in lead aVL at 2.00 s; at most 0.05 s is interpolated",
    "ptbxl/00008": "flat signal: every lead is constant (I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6)",
    "ptbxl/00010": "empty report",
    "ptbxl/00011": "report too short: 2 words ('sinus rhythm.'), minimum 4",
    "ptbxl/00001": "duplicate ecg_id: ptbxl/00001 (first listed at index row 1)",
    "ptbxl/00014": "unparsable scp_codes: 'NORM=100': ",
}


def test_damaged_archive_every_record_accounted_for(ray_cluster, tmp_path):
    archive = _damaged_archive(tmp_path / "archive")
    output = tmp_path / "shards"
    output.mkdir()
    manifest = prepare("ptbxl", SourceOptions(input=archive), str(output), rows_per_shard=2, batch_size=4)
    kept, rejected, on_disk = read_output(output)

    for ecg_id, reason in EXPECTED_REJECTIONS.items():
        assert rejected[ecg_id].startswith(reason), (ecg_id, rejected[ecg_id])
    assert rejected["ptbxl/00013"].startswith("missing record: no header file")
    assert rejected["ptbxl/00015"].startswith("unreadable header: ")
    assert sorted(kept["ecg_id"].to_pylist()) == ["ptbxl/00001", "ptbxl/00006", "ptbxl/00007", "ptbxl/00009"]
    assert manifest == on_disk
    assert manifest["records_in"] == 15 == kept.num_rows + len(rejected)
    assert (manifest["records_kept"], manifest["records_rejected"]) == (4, 11)
    assert sum(s["rows"] for s in manifest["shards"]) == 4 and all(s["rows"] <= 2 for s in manifest["shards"])
    assert manifest["rejections_by_reason"] == {
        "truncated signal": 1, "header disagrees with data": 1, "rate disagrees with layout": 1,
        "invalid-sample gap too long": 1, "flat signal": 1, "empty report": 1, "report too short": 1,
        "missing record": 1, "unreadable header": 1, "duplicate ecg_id": 1, "unparsable scp_codes": 1,
    }

    rows = {row["ecg_id"]: row for row in kept.to_pylist()}
    assert rows["ptbxl/00006"]["flags"] == ["invalid samples interpolated: 10 in lead V2"]
    assert rows["ptbxl/00007"]["flags"] == ["flat leads masked: V4"]
    masks = dict(zip(kept["ecg_id"].to_pylist(), lead_masks_of(kept)))
    assert masks["ptbxl/00007"].sum() == 11 and not masks["ptbxl/00007"][9]
    assert masks["ptbxl/00009"].tolist() == [True] * 6 + [False] * 6


def test_shards_follow_the_contract_and_equal_direct_preprocessing(ray_cluster, tmp_path):
    archive = write_ptbxl_archive(tmp_path / "archive", [{"ecg_id": i} for i in range(1, 9)])
    output = tmp_path / "shards"
    output.mkdir()
    prepare("ptbxl", SourceOptions(input=archive), str(output), rows_per_shard=3)
    kept, rejected, manifest = read_output(output)
    assert not rejected and kept.num_rows == 8
    schema = shard_schema(5000, 500)
    assert kept.schema.remove_metadata().equals(schema.remove_metadata())
    assert pq.read_schema(next(output.glob("part-*.parquet"))).metadata[b"leads"] == b"I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6"
    signals = dict(zip(kept["ecg_id"].to_pylist(), signals_of(kept)))
    for ecg_id in ("ptbxl/00001", "ptbxl/00008"):
        direct = preprocess(read_record(archive / f"records500/00000/{ecg_id[-5:]}_hr"), PreprocessConfig())
        np.testing.assert_array_equal(signals[ecg_id], direct.signal)
    assert manifest["preprocessing"]["normalize"] == "minmax"
    assert sorted({shard["split"] for shard in manifest["shards"]}) == ["train", "val"]  # folds 2-8 and 9
    for shard in manifest["shards"]:  # each file holds one split's rows and says which in its name
        splits = pq.read_table(output / shard["file"], columns=["split"])["split"].to_pylist()
        assert shard["file"].startswith(f"part-{shard['split']}-") and set(splits) == {shard["split"]}
        assert len(splits) == shard["rows"] <= 3


def test_real_ptbxl_500_end_to_end(ray_cluster, ptbxl_dir, tmp_path):
    default = tmp_path / "default"
    default.mkdir()
    manifest = prepare("ptbxl", SourceOptions(input=ptbxl_dir), str(default))
    kept, rejected, _ = read_output(default)
    assert manifest["records_in"] == 500 == kept.num_rows + len(rejected)
    assert all(reason.startswith("report too short") for reason in rejected.values())

    evaluation = tmp_path / "evaluation"  # reports not required, as for an evaluation set
    evaluation.mkdir()
    manifest = prepare("ptbxl", SourceOptions(input=ptbxl_dir), str(evaluation), records=RecordOptions(min_report_words=0))
    kept, rejected, _ = read_output(evaluation)
    assert not rejected and kept.num_rows == 500
    assert manifest["rows_by_split"] == {"test": 66, "train": 353, "val": 81}
    assert kept.schema.remove_metadata().equals(shard_schema(5000, 500).remove_metadata())
    signals = signals_of(kept)
    assert signals.shape == (500, 12, 5000) and np.isfinite(signals).all()
    assert signals.min() == 0.0 and signals.max() == 1.0
    assert lead_masks_of(kept).all()
    table = kept.select(["ecg_id", "patient_id", "split"]).to_pandas()
    assert table["ecg_id"].is_unique
    assert table.groupby("patient_id")["split"].nunique().max() == 1  # patient-disjoint


def test_real_ptbxl_at_100_hz_reads_records100(ray_cluster, ptbxl_dir, tmp_path):
    output = tmp_path / "low-rate"
    output.mkdir()
    options = SourceOptions(input=ptbxl_dir, fs=100, limit=20)
    manifest = prepare("ptbxl", options, str(output), preprocess=PreprocessConfig(fs=100), records=RecordOptions(min_report_words=0))
    kept, rejected, _ = read_output(output)
    assert not rejected and kept.num_rows == 20 and manifest["preprocessing"]["fs"] == 100
    assert signals_of(kept).shape == (20, 12, 1000) and set(kept["fs"].to_pylist()) == {100}
    direct = preprocess(read_record(ptbxl_dir / "records100/00000/00001_lr"), PreprocessConfig(fs=100))
    np.testing.assert_array_equal(dict(zip(kept["ecg_id"].to_pylist(), signals_of(kept)))["ptbxl/00001"], direct.signal)


def test_archive_rejected_entirely_while_listing_still_accounts(ray_cluster, tmp_path):
    archive = write_ptbxl_archive(tmp_path / "archive", [{"ecg_id": 1, "scp_codes": "x"}, {"ecg_id": 2, "strat_fold": 0}])
    output = tmp_path / "shards"
    output.mkdir()
    manifest = prepare("ptbxl", SourceOptions(input=archive), str(output))
    kept, rejected, _ = read_output(output)
    assert kept is None and sorted(rejected) == ["ptbxl/00001", "ptbxl/00002"]
    assert (manifest["records_in"], manifest["records_kept"], manifest["rows"]) == (2, 0, 0)


def test_long_records_become_windows(ray_cluster, tmp_path):
    archive = write_ptbxl_archive(tmp_path / "archive", [{"ecg_id": 1, "signal": ecg_like(25, 500)}, {"ecg_id": 2}])
    output = tmp_path / "shards"
    output.mkdir()
    manifest = prepare("ptbxl", SourceOptions(input=archive), str(output), preprocess=PreprocessConfig(long_records="windows"))
    kept, _, _ = read_output(output)
    assert sorted(kept["ecg_id"].to_pylist()) == ["ptbxl/00001#w0", "ptbxl/00001#w1", "ptbxl/00002"]
    assert (manifest["records_kept"], manifest["rows"]) == (2, 3)
