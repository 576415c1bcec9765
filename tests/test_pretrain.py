"""Distributed pretraining end to end: real Ray Train workers running real DeepSpeed ZeRO on shards.

Each fit costs ~30 s here, so each objective and each ZeRO stage is trained once, and each fit asserts every
promise it can: MELP under ZeRO-2 on the real PTB-XL-500 shards (the session's run, which test_evaluate
evaluates), C-MELT under ZeRO-2 through the command line (its console read as a person reads it), METS under
ZeRO-3 with a worker killed mid-run (the session's run on 100 Hz shards, whose export test_trained_with serves).
MELP stage 1, its resubmission and its hand-over to stage 2 run in a bucket (tests/test_object_storage.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models.factory import resolve_config
from models.model import ECGTextModel
from pipelines.pretrain import main as pretrain_main
from pipelines.storage import Location
from pipelines.training.checkpoints import TAG, written_by
from pipelines.training.n3s_index import INDEX_DIR, attach_run_index, build_run_index
from pipelines.training.run_directory import RunDirectory

ROOT = Path(__file__).resolve().parents[1]


def check_run(run_dir: Path, metrics: dict, steps: int, objective: str) -> ECGTextModel:
    """What every pretraining run promises: its steps, metrics.json, config.json, TensorBoard files, finite
    losses, and an export of `objective` that reproduces the live model's embeddings."""
    assert metrics["total_steps"] == steps and metrics["final"]["step"] == steps
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    saved = json.loads((run_dir / "config.json").read_text())
    assert set(saved) == {"model", "train", "task"}
    # The export reproduces the live model's embeddings of the probe rows (checked inside the run too).
    assert metrics["export_max_abs_diff"] < 1e-5
    assert list((run_dir / "tensorboard").iterdir()), "rank 0 writes TensorBoard event files"
    final = metrics["final"]
    assert np.isfinite(final["train_loss"]) and np.isfinite(final["val_loss"])
    assert 0.0 <= final["val_macro_auroc"] <= 1.0
    assert final["samples_per_s"] > 0 and 0.0 <= final["data_wait_fraction"] <= 1.0
    model = ECGTextModel.from_pretrained(run_dir / "export")
    assert model.config.objective.name == objective
    return model


@pytest.mark.slow
def test_two_workers_train_melp_under_zero_2_on_ptbxl(ptbxl_melp_run):
    run_dir, metrics = ptbxl_melp_run
    check_run(run_dir, metrics, 20, "melp")


@pytest.mark.slow
def test_the_cli_trains_cmelt_under_zero_2_and_its_console_is_readable(synthetic_shards, tmp_path):
    """The pretraining command's console, as a person reads it: a plan, progress and epoch lines from rank 0
    only, the export path and the final table; no line twice, no Ray report dumps, no escape codes (the
    output is not a terminal), no FutureWarning from our own calls. The rest is in RUN_DIR/logs/."""
    run_dir = tmp_path / "run"
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    completed = subprocess.run(
        [sys.executable, "-m", "pipelines.pretrain", "--data", str(synthetic_shards), "--output", str(run_dir),
         "--objective", "cmelt", "--zero-stage", "2", "--workers", "2", "--epochs", "2", "--val-rows", "32",
         "train.batch_size=32", "train.progress_every_s=0", "train.warmup_steps=1", "train.checkpoints_to_keep=1"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    check_run(run_dir, metrics, metrics["total_steps"], "cmelt")
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert "(raylet)" not in output and "Setting accelerator" not in output, "Ray's and DeepSpeed's notices go to the log"
    table = completed.stdout.splitlines()
    repeated = [line for line, count in Counter(lines + table).items() if count > 1]
    assert not repeated, repeated
    assert "TrainingReport(" not in output and "\x1b[" not in output and "FutureWarning" not in output
    bar = output.find("\r")  # a progress bar (DeepSpeed's consolidation draws one with tqdm)
    assert bar == -1, repr(output[max(0, bar - 300) : bar + 100])
    assert lines[0].startswith("pretrain: cmelt on ") and "validation: zero-shot AUROC of task synthetic" in lines[0]
    assert "pretrain: started on 2 workers" in lines, "the world size at start"
    progress = [line for line in lines if line.startswith("pretrain: step ")]
    epochs = [line for line in lines if line.startswith("pretrain: epoch ")]
    assert progress and [line.split(" · ")[0] for line in epochs] == ["pretrain: epoch 1", "pretrain: epoch 2"]
    assert all("val macro AUROC" in line and "data wait" in line for line in epochs)
    assert any(line.startswith("pretrain: exported ") and str(run_dir / "export") in line for line in lines)
    assert table[-1].startswith("wall time") and any(line.startswith("val_macro_auroc") for line in table)
    logs = {path.name for path in (run_dir / "logs").iterdir()}
    assert {"pretrain.log", "worker-0.log", "worker-1.log"} <= logs
    assert "Started a local Ray instance" in (run_dir / "logs" / "pretrain.log").read_text()
    # C-MELT's N3S index: every unique train report once, built before the workers started.
    train_reports = set(pq.read_table(sorted(synthetic_shards.glob("part-train-*.parquet")), columns=["report"])
                        .column("report").to_pylist())
    assert json.loads((run_dir / "n3s" / "reports.json").read_text()) == sorted(train_reports)
    assert f"pretrain: N3S index of {len(train_reports):,} unique train reports built" in output


@pytest.mark.slow
def test_mets_under_zero_3_resumes_from_a_checkpoint_when_a_worker_is_killed(zero3_run_at_100hz):
    run = zero3_run_at_100hz
    assert (run.run_dir / "fault-injected").read_text().startswith("rank 1 exited at step 5")
    check_run(run.run_dir, run.metrics, 6, "mets")
    # Ray Train registers a checkpoint when its controller next polls the workers; one reported just
    # before the crash (step 4) may not be registered yet, and the run then resumes from step 2.
    assert run.metrics["final"]["restored_step"] in (2, 4), "the restarted workers continued from a checkpoint"
    # Each start of the loop names its checkpoints: a restart from step 2 reports step 4 again, into a folder of its own.
    folders = [report["checkpoint"] for report in run.metrics["history"]]
    attempts = [re.fullmatch(r"checkpoint-step\d{8}-([0-9a-f]{8})", folder)[1] for folder in folders]
    assert len(set(folders)) == len(folders) and len(set(attempts)) == 2, folders
    for folder in (run.run_dir / "train").glob("checkpoint-step*"):
        assert written_by(folder) == (2, 3) and len(list((folder / TAG).glob("*optim_states.pt"))) == 2


@pytest.mark.slow
def test_the_world_size_of_a_checkpoint_is_its_own_record_not_its_files(zero3_run_at_100hz, tmp_path):
    """A folder that also holds a shard another attempt left (three workers' rank 2) was still written by two."""
    final = sorted((zero3_run_at_100hz.run_dir / "train").glob("checkpoint-step*"))[-1]
    folder = shutil.copytree(final, tmp_path / final.name)
    shutil.copy(folder / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt", folder / TAG / "zero_pp_rank_2_mp_rank_00_optim_states.pt")
    assert written_by(folder) == (2, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "clip"], "invalid choice: 'clip'"),
        (["--zero-stage", "5"], "zero_stage must be 0, 1, 2 or 3, got 5"),
        (["--workers", "3", "train.batch_size=32"], "batch_size 32 is not divisible by workers × grad_accum = 3 × 1"),
        (["--objective", "cmelt", "objective.ecg_mask_ratio=1.5"], "ecg_mask_ratio must be in [0, 1)"),
        (["objective.ecg_mask_ratio=0.5"], "unknown config field 'objective.ecg_mask_ratio' for objective melp"),
        ([], "has no readable manifest.json"),
        (["train.precision=fp16"], "fp16 needs GPU workers"),
        (["train.learning_rate=1"], "unknown train config fields: learning_rate"),
    ],
)
def test_bad_config_fails_before_any_worker_starts(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(["--data", str(tmp_path), "--output", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing was started or written"


@pytest.mark.slow
def test_a_run_builds_its_n3s_index_once_and_every_worker_attaches_it(ray_cluster, object_store, caplog):
    """Built from the unique train reports by the run's initial text tower, kept in the run directory (here a
    bucket) and kept when the run resumes; a worker's model gets it from its scratch copy."""
    import logging

    import ray

    reports = ["sinus rhythm.", "atrial fibrillation.", "sinus rhythm.", "normal ecg.", "left axis deviation."]
    train = ray.data.from_items([{"report": report} for report in reports])
    config = resolve_config("tiny", "cmelt")
    run_dir = object_store.uri("runs/n3s")
    with caplog.at_level(logging.INFO):
        build_run_index(RunDirectory.open(run_dir, "driver"), train, config, seed=3)
    index_dir = Location.of(object_store.uri(f"runs/n3s/{INDEX_DIR}"))
    stamps = sorted((info.path, info.mtime_ns) for info in index_dir.files())
    assert len(stamps) == 2 and "N3S index of 4 unique train reports built" in caplog.text
    with caplog.at_level(logging.INFO):
        build_run_index(RunDirectory.open(run_dir, "driver"), train, config, seed=3)  # the run resumed
    assert "N3S index kept" in caplog.text
    assert sorted((info.path, info.mtime_ns) for info in index_dir.files()) == stamps

    torch.manual_seed(3)  # a worker's model, initialised as the run's
    model = ECGTextModel(config)
    worker_run = RunDirectory.open(run_dir, "worker-0")
    attach_run_index(model, worker_run)
    index = model.objective.n3s_index
    assert index.reports == sorted(set(reports))
    with torch.no_grad():
        expected = model.eval().text(**model.text.tokenize(index.reports)).pooled
    torch.testing.assert_close(index.embeddings, torch.nn.functional.normalize(expected, dim=-1), rtol=0, atol=1e-6)
    worker_run.close()
