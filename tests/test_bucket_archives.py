"""Archives read straight from a bucket (issue 36), on moto's S3 server on 127.0.0.1: each record read from the
bucket equals its read from disk, and each fault (a header without its data file, a truncated data file, a
header naming a missing segment, a multi-file record missing a file) is rejected for the same reason, naming the
URI; a WFDB tree in a bucket lists as on disk; indexed layouts (MIMIC-IV-ECG, PTB-XL) plan from their index;
`prepare` of a MIMIC-layout bucket archive writes the shards the same archive on disk gives, every record
accounted; a score of it killed half-way and rerun scores each record once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.data.rejection import RecordRejected
from pipelines.data.schema import signals_of
from pipelines.data.shard_files import dataset_shards
from pipelines.data.sources import SourceOptions, list_source
from pipelines.data.wfdb_io import read_record
from pipelines.storage import Location
from tests.archives import (
    ecg_like,
    write_mimic_archive,
    write_multifile_wfdb,
    write_ptbxl_archive,
    write_wfdb,
)


def read_or_reason(record: str) -> np.ndarray | str:
    """A record's signal [n_leads, T], or the reason it is rejected."""
    try:
        return read_record(record).signal
    except RecordRejected as rejected:
        return str(rejected)


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    """One record per reading path and per fault, in one folder."""
    root = tmp_path_factory.mktemp("faults")
    write_wfdb(root / "format16", ecg_like(10, 500, seed=1), 500)
    write_wfdb(root / "format212", ecg_like(10, 500, seed=2), 500, fmt="212")
    segments = ecg_like(10, 500, seed=3)
    write_wfdb(root / "seg_1", segments[:2500], 500)
    write_wfdb(root / "seg_2", segments[2500:], 500)
    (root / "segmented.hea").write_text("segmented/2 12 500 5000\nseg_1 2500\nseg_2 2500\n")
    (root / "segment_missing.hea").write_text("segment_missing/2 12 500 5000\nseg_1 2500\nseg_lost 2500\n")
    write_wfdb(root / "no_data", ecg_like(10, 500, seed=4), 500)
    (root / "no_data.dat").unlink()
    write_wfdb(root / "truncated", ecg_like(10, 500, seed=5), 500)
    data = (root / "truncated.dat").read_bytes()
    (root / "truncated.dat").write_bytes(data[: len(data) // 2])
    write_multifile_wfdb(
        root / "two_files", ecg_like(10, 500, 4, seed=6), 500, ["I", "II", "vx", "vy"], ["two_files.dat"] * 2 + ["two_files.xyz"] * 2
    )
    (root / "two_files.xyz").unlink()
    (root / "orphan.dat").write_bytes(b"\x00\x01")
    return root


@pytest.fixture(scope="module")
def bucket_faults(object_store, faults) -> str:
    uri = object_store.uri("faults")
    Location.of(uri).upload_from(faults)
    return uri


def test_records_read_from_a_bucket_equal_their_reads_from_disk_and_faults_name_the_uri(faults, bucket_faults):
    names = ["format16", "format212", "segmented", "segment_missing", "no_data", "truncated", "two_files", "absent"]
    for name in names:
        local, remote = read_or_reason(str(faults / name)), read_or_reason(f"{bucket_faults}/{name}")
        if isinstance(local, str):
            assert remote == local.replace(str(faults), bucket_faults), name
        else:
            assert np.array_equal(local, remote, equal_nan=True), name
    reasons = {name: read_or_reason(f"{bucket_faults}/{name}") for name in names}
    assert reasons["no_data"] == f"missing record: no data file {bucket_faults}/no_data.dat"
    assert reasons["truncated"].startswith("truncated signal: truncated.dat holds 2500 of 5000")
    assert reasons["segment_missing"].startswith(f"missing segment: no header file {bucket_faults}/seg_lost.hea")
    assert reasons["absent"] == f"missing record: no header file {bucket_faults}/absent.hea"
    two_files = read_record(f"{bucket_faults}/two_files")
    assert two_files.signal.shape == (2, 5000) and two_files.flags == ["missing signal file: two_files.xyz (leads vx, vy)"]


def test_a_wfdb_tree_in_a_bucket_lists_as_it_does_on_disk(faults, bucket_faults):
    on_disk = list_source("wfdb", SourceOptions(input=faults))
    in_bucket = list_source("wfdb", SourceOptions(input=bucket_faults))
    assert in_bucket.records["ecg_id"].tolist() == on_disk.records["ecg_id"].tolist()
    assert in_bucket.records["record_path"].tolist() == [f"{bucket_faults}/{i.removeprefix('wfdb/')}" for i in on_disk.records["ecg_id"]]
    assert [r["reason"] for r in in_bucket.rejected] == [r["reason"] for r in on_disk.rejected]
    assert in_bucket.rejected[0]["record_path"] == f"{bucket_faults}/orphan.dat"


@pytest.mark.parametrize("layout", ["mimic", "ptbxl"])
def test_indexed_layouts_in_a_bucket_plan_from_their_index(object_store, tmp_path, layout):
    root = tmp_path / layout
    if layout == "mimic":
        write_mimic_archive(root)
    else:
        write_ptbxl_archive(root, [{"ecg_id": i} for i in range(1, 5)])
    uri = object_store.uri(f"indexed/{layout}")
    Location.of(uri).upload_from(root)
    on_disk, in_bucket = list_source(layout, SourceOptions(input=root)), list_source(layout, SourceOptions(input=uri))
    assert in_bucket.records["record_path"].tolist() == [
        path.replace(str(root), uri) for path in on_disk.records["record_path"]
    ]
    columns = ["ecg_id", "patient_id", "report", "split"]
    assert in_bucket.records[columns].equals(on_disk.records[columns])
    assert in_bucket.rejected == [{**r, "record_path": r["record_path"].replace(str(root), uri)} for r in on_disk.rejected]
    first = in_bucket.records["record_path"].iloc[0]
    assert np.array_equal(read_record(first).signal, read_record(on_disk.records["record_path"].iloc[0]).signal)


def test_unsigned_requests_read_a_bucket_with_the_endpoint_of_the_environment(bucket_faults):
    unsigned = Location.of(f"{bucket_faults}/format16.hea", unsigned=True)
    assert unsigned.filesystem.type_name == "s3" and unsigned.read_bytes() == Location.of(unsigned.uri).read_bytes()
    assert np.array_equal(read_record(f"{bucket_faults}/format16", unsigned=True).signal, read_or_reason(f"{bucket_faults}/format16"))
    with pytest.raises(ValueError, match="unsigned requests are for s3:// URIs"):
        Location.of("/data/archive", unsigned=True)


@pytest.fixture(scope="module")
def mimic_with_faults(tmp_path_factory) -> Path:
    """A MIMIC-layout archive of 12 studies: one without machine measurements (a listing rejection), one
    whose data file is gone, one whose data file is cut short."""
    root = write_mimic_archive(tmp_path_factory.mktemp("mimic"), n_studies=12)
    files = sorted(root.glob("files/*/*/*/*.dat"))
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:1000])
    return root


@pytest.mark.slow
def test_prepare_reads_a_bucket_archive_as_it_reads_the_same_archive_on_disk(
    ray_cluster, object_store, mimic_with_faults, tmp_path, restore_logging
):
    from pipelines.prepare import main as prepare_main

    archive = object_store.uri("mimic-iv-ecg")
    Location.of(archive).upload_from(mimic_with_faults)
    common = ["--source", "mimic", "--min-report-words", "0", "--batch-size", "4"]
    on_disk = prepare_main([*common, "--input", str(mimic_with_faults), "--output", str(tmp_path / "from-disk")])
    from_bucket = prepare_main([*common, "--input", archive, "--output", object_store.uri("shards/mimic")])
    assert from_bucket["records_in"] == on_disk["records_in"] == 12
    assert from_bucket["records_kept"] == on_disk["records_kept"] == 9
    assert from_bucket["rejections_by_reason"] == on_disk["rejections_by_reason"] == {
        "missing record": 1, "no machine measurements": 1, "truncated signal": 1
    }
    rejected = Location.of(object_store.uri("shards/mimic/rejected.parquet"))
    reasons = pq.read_table(rejected.path, filesystem=rejected.filesystem).column("reason").to_pylist()
    assert any(reason.startswith(f"missing record: no data file {archive}/files/") for reason in reasons)

    def rows(uri: str) -> dict[str, np.ndarray]:
        tables = [pq.read_table(s.location.path, filesystem=s.location.filesystem) for s in dataset_shards(uri)]
        return {i: s for t in tables for i, s in zip(t.column("ecg_id").to_pylist(), signals_of(t))}

    local, remote = rows(str(tmp_path / "from-disk")), rows(object_store.uri("shards/mimic"))
    assert local.keys() == remote.keys() and all(np.array_equal(local[i], remote[i]) for i in local)


@pytest.mark.slow
def test_a_bucket_archive_scored_half_way_and_rerun_scores_each_record_once(
    ray_cluster, object_store, mimic_with_faults, tiny_export, restore_logging
):
    from pipelines.score import main as score_main

    archive, output = object_store.uri("mimic-to-score"), object_store.uri("scores/mimic")
    Location.of(archive).upload_from(mimic_with_faults)
    argv = ["--model", str(tiny_export("melp")), "--input", archive, "--source", "mimic", "--output", output,
            "--part-size", "4"]
    assert score_main(argv) == 0
    parts = object_store.keys("scores/mimic/scores/")
    assert len(parts) == 3  # 11 listed records in parts of 4
    object_store.client().delete_object(Bucket=object_store.bucket, Key=parts[-1])  # a part a killed run never wrote
    assert score_main(argv) == 0
    scored = pq.read_table(Location.of(output).child("scores").uri, columns=["ecg_id"]).column("ecg_id").to_pylist()
    assert len(scored) == len(set(scored)) == 9
    summary = Location.of(output).child("summary.json").read_json()
    assert summary["records_in"] == 12 and summary["scored"] == 9 and summary["rejected"] == 3
