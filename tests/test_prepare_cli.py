"""`pipelines.prepare` as a user runs it: wrong arguments fail fast with a usage error (its `main`, in this
process), the default job runs (`python -m pipelines.prepare`, a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.prepare import main as prepare_main

REPO = Path(__file__).resolve().parents[1]


def refused(capsys, *args: str) -> str:
    """What `prepare` printed to stderr as it exited 2."""
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(list(args))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "edf", "--input", ".", "--output", "x"], "invalid choice: 'edf'"),
        (["--source", "ptbxl", "--output", "x"], "the following arguments are required: --input"),
        (["--source", "ptbxl", "--input", "/nowhere", "--output", "{tmp}/o"], "--input /nowhere is not a directory"),
        (["--source", "ptbxl", "--input", ".", "--output", "{tmp}/o", "--fs", "0"], "fs and seconds must be positive"),
        (["--source", "ptbxl", "--input", ".", "--output", "{tmp}/o", "--bandpass", "0.5", "300"], "fs/2 = 250"),
        (["--source", "ptbxl", "--input", ".", "--output", "{tmp}/o", "--limit", "0"], "--limit must be at least 1"),
        (["--source", "synthetic", "--input", "lots", "--output", "{tmp}/o"], "positive number of ECGs or a config file"),
    ],
)
def test_wrong_arguments_exit_nonzero_with_a_message(tmp_path, capsys, args, message):
    assert message in refused(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert not (tmp_path / "o").exists()


def test_a_folder_that_is_not_an_archive_of_its_source_is_a_usage_error(ray_cluster, tmp_path, capsys, restore_logging):
    message = refused(capsys, "--source", "ptbxl", "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert "is not a PTB-XL folder: ptbxl_database.csv is missing" in message


def test_existing_output_is_not_overwritten_silently(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text('{"records_in": 0, "shards": []}')  # a prepared dataset
    assert "pass --overwrite" in refused(capsys, "--source", "ptbxl", "--input", ".", "--output", str(tmp_path))


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for flag in ("--source", "--input", "--output", "--fs", "--seconds", "--normalize", "--report", "--limit",
                 "--min-report-words", "--long-records", "--bandpass", "--rows-per-shard", "--overwrite"):
        assert flag in printed


@pytest.mark.slow
def test_synthetic_default_job_runs_end_to_end(tmp_path):
    output = tmp_path / "synthetic"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", "--source", "synthetic", "--input", "300", "--output", str(output)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["records_in"] == 300 == manifest["records_kept"] + manifest["records_rejected"]
    assert manifest["rows_by_source"] == {"synthetic": manifest["rows"]}
    assert set(manifest["rows_by_split"]) == {"train", "val", "test"}
    assert "prepared 300 records" in result.stdout and "300 synthetic ECGs, generated in the read tasks" in result.stderr
    table = pq.ParquetDataset(sorted(output.glob("part-*.parquet"))).read(columns=["ecg_id", "report", "labels"])
    assert table["ecg_id"][0].as_py().startswith("synthetic/")
    assert all(report.endswith("ecg.") for report in table["report"].to_pylist())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"], "no archive is kept beside the shards"


@pytest.mark.slow
def test_synthetic_ecgs_generated_in_the_read_tasks_are_those_a_kept_archive_holds(ray_cluster, tmp_path, restore_logging):
    """`--raw-dir` keeps the generated archive and prepares from it; without it, each read task generates its
    chunks on its own node. The shards are the same."""
    common = ["--source", "synthetic", "--input", "300", "--limit", "270"]
    kept = prepare_main([*common, "--output", str(tmp_path / "from-archive"), "--raw-dir", str(tmp_path / "raw")])
    generated = prepare_main([*common, "--output", str(tmp_path / "generated")])
    assert (tmp_path / "raw" / "ptbxl_database.csv").is_file()
    assert kept["records_in"] == generated["records_in"] == 270 == generated["records_kept"]
    assert kept["rows_by_split"] == generated["rows_by_split"]
    columns = ["ecg_id", "patient_id", "signal", "report", "labels", "split"]
    read = lambda name: pq.ParquetDataset(sorted((tmp_path / name).glob("part-*.parquet"))).read(columns=columns).sort_by("ecg_id")  # noqa: E731
    assert read("from-archive").equals(read("generated"))
