"""Pretraining and the sweep with nothing on a shared disk: shards, run directories, checkpoints, logs,
TensorBoard files, exports and the sweep's records in a real S3 server (moto's, tests/object_store.py).

One pretraining run and its resumption (MELP stage 1, so the text encoder's export is covered too), and one
sweep of two trials and its restoration: each leaves nothing in the working directory, nor scratch folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.model import ECGTextModel
from pipelines.pretrain_lm import main as pretrain_lm_main
from pipelines.storage import Location
from pipelines.training.run_directory import RunDirectory, scratch_folder
from tests.object_store import object_store  # noqa: F401 (the fixture)
from tune.sweep import BEST_DIR, sweep

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--workers", "2", "train.batch_size=8", "train.warmup_steps=1", "train.progress_every_s=0"]


@pytest.fixture(scope="module")
def bucket_shards(object_store, synthetic_shards) -> str:  # noqa: F811
    """The synthetic shards, uploaded: the runs read them from the bucket only."""
    uri = object_store.uri("shards")
    Location.of(uri).upload_from(synthetic_shards)
    return uri


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch) -> Path:
    """An empty working directory: whatever a run writes relative to it (an `s3:` folder …) shows up."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_run_directory_syncs_its_scratch_folder_and_leaves_a_local_one_alone(object_store, tmp_path):  # noqa: F811
    local = RunDirectory.open(tmp_path / "run", "driver")
    assert local.local == tmp_path / "run" and not local.is_scratch
    local.close("logs")  # nothing to do: the folder is the run directory
    assert not (tmp_path / "run").exists()

    uri = object_store.uri("unit/run")
    (Location.of(uri) / "logs" / "worker-0.log").write_text("before\n")
    run = RunDirectory.open(uri, "worker-0")
    run.resume("logs/worker-0.log", "logs/absent.log")
    with open(run.local / "logs" / "worker-0.log", "a") as log:
        log.write("after\n")
    (run.local / "tensorboard").mkdir()
    (run.local / "tensorboard" / "events.1").write_bytes(b"\x00\x01")
    run.close("logs/worker-0.log", "tensorboard", "absent")
    assert (Location.of(uri) / "logs" / "worker-0.log").read_text() == "before\nafter\n"
    assert object_store.keys("unit/run/") == ["unit/run/logs/worker-0.log", "unit/run/tensorboard/events.1"]
    assert not run.local.exists() and not run.local.parent.exists()


@pytest.mark.usefixtures("restore_logging")
def test_pretraining_lives_in_the_bucket_and_resumes_from_it(object_store, bucket_shards, empty_cwd, tmp_path):  # noqa: F811
    run_uri = object_store.uri("runs/lm")
    arguments = ["--data", bucket_shards, "--output", run_uri, *TRAIN]

    assert pretrain_lm_main([*arguments, "--max-steps", "2"]) == 0

    keys = object_store.keys("runs/lm/")
    names = {key.removeprefix("runs/lm/") for key in keys}
    assert {"made_by.json", "config.json", "metrics.json", "logs/pretrain.log", "logs/worker-0.log"} <= names
    assert "logs/worker-1.log" in names
    assert {"export/config.json", "export/model.safetensors", "export/text-encoder/config.json"} <= names
    assert any(name.startswith("tensorboard/events.") for name in names), "rank 0's TensorBoard files"
    assert any(name.startswith("train/checkpoint-step00000002/") for name in names), "Ray Train's checkpoint"
    run = Location.of(run_uri)
    metrics = (run / "metrics.json").read_json()
    assert metrics["final"]["step"] == 2 and metrics["export_max_abs_diff"] < 1e-5
    export = tmp_path / "export"
    (run / "export").download_to(export)
    assert ECGTextModel.from_pretrained(export).config.objective.name == "melp-lm"

    assert pretrain_lm_main([*arguments, "--max-steps", "4"]) == 0  # resubmitted into the same URI

    metrics = (run / "metrics.json").read_json()
    assert metrics["final"]["step"] == 4
    assert metrics["final"]["restored_step"] == 2, "the rerun found step 2's checkpoint in the bucket"
    assert (run / "logs" / "pretrain.log").read_text().count("steps in all") == 2, "the driver's log goes on"
    assert not list(empty_cwd.iterdir()) and not (REPO / "s3:").exists(), "nothing written to the local disk"
    assert not scratch_folder(run, "driver").parent.exists(), "the scratch folders are removed"


@pytest.mark.usefixtures("restore_logging")
def test_sweep_lives_in_the_bucket_and_restores_from_it(object_store, bucket_shards, empty_cwd, tmp_path):  # noqa: F811
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps({"train.lr": {"grid": [1e-3, 2e-3]}}))
    output = object_store.uri("sweeps/s")
    train = {"batch_size": 8, "warmup_steps": 1, "max_steps": 2, "epochs": 1, "progress_every_s": 0.0}
    arguments = dict(
        space_file=str(space_file), num_samples=1, train_overrides=train, val_rows=48, log_file="sweep.log"
    )

    summary = sweep([bucket_shards], output, **arguments)

    assert summary["trials"]["finished"] == 2
    names = {key.removeprefix("sweeps/s/") for key in object_store.keys("sweeps/s/")}
    assert {"made_by.json", "results.csv", "results.md", "metric_vs_parameters.png", "logs/sweep.log"} <= names
    assert {f"{BEST_DIR}/config.json", f"{BEST_DIR}/model.safetensors", f"{BEST_DIR}/sweep_trial.json"} <= names
    assert any(name.startswith("sweep/") for name in names), "Tune's own experiment state"
    trials = Location.of(output) / "trials"
    metrics_files = [info for info in trials.files() if info.path.endswith("/metrics.json")]
    assert len(metrics_files) == 2
    best = Location.of(output) / BEST_DIR
    assert (best / "sweep_trial.json").read_json()["trial"] == summary["best"]["trial"]
    best.download_to(tmp_path / "best")
    assert ECGTextModel.from_pretrained(tmp_path / "best").config.objective.name == "melp"

    resumed = sweep([bucket_shards], output, **arguments)  # Tuner.restore from the URI: nothing reruns

    assert resumed["trials"] == summary["trials"] and resumed["best"]["trial"] == summary["best"]["trial"]
    again = [info for info in trials.files() if info.path.endswith("/metrics.json")]
    assert [(i.path, i.mtime_ns) for i in again] == [(i.path, i.mtime_ns) for i in metrics_files]
    assert not list(empty_cwd.iterdir()) and not (REPO / "s3:").exists(), "nothing written to the local disk"
    assert not scratch_folder(Location.of(output), "sweep").parent.exists(), "the scratch folder is removed"
