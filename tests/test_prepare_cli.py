"""`python -m pipelines.prepare` as a user runs it: wrong arguments fail fast, the default job runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_prepare(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.prepare", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


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
        (["--source", "ptbxl", "--input", "{tmp}", "--output", "{tmp}/o"], "is not a PTB-XL folder: ptbxl_database.csv is missing"),
    ],
)
def test_wrong_arguments_exit_nonzero_with_a_message(tmp_path, args, message):
    result = run_prepare(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_existing_output_is_not_overwritten_silently(tmp_path):
    (tmp_path / "manifest.json").write_text('{"records_in": 0, "shards": []}')  # a prepared dataset
    result = run_prepare("--source", "ptbxl", "--input", ".", "--output", str(tmp_path))
    assert result.returncode == 2 and "pass --overwrite" in result.stderr


def test_help_explains_every_flag():
    result = run_prepare("--help")
    for flag in ("--source", "--input", "--output", "--fs", "--seconds", "--normalize", "--report", "--limit",
                 "--min-report-words", "--long-records", "--bandpass", "--rows-per-shard", "--overwrite"):
        assert flag in result.stdout


def test_synthetic_default_job_runs_end_to_end(tmp_path):
    output = tmp_path / "synthetic"
    result = run_prepare("--source", "synthetic", "--input", "300", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["records_in"] == 300 == manifest["records_kept"] + manifest["records_rejected"]
    assert manifest["rows_by_source"] == {"synthetic": manifest["rows"]}
    assert set(manifest["rows_by_split"]) == {"train", "val", "test"}
    assert "prepared 300 records" in result.stdout and "prepare: generated 300 synthetic ECGs" in result.stderr
    table = pq.ParquetDataset(sorted(output.glob("part-*.parquet"))).read(columns=["ecg_id", "report", "labels"])
    assert table["ecg_id"][0].as_py().startswith("synthetic/")
    assert all(report.endswith("ecg.") for report in table["report"].to_pylist())
    assert (tmp_path / "synthetic-wfdb" / "ptbxl_database.csv").is_file()
