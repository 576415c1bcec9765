"""Pretraining and the sweep with nothing on a shared disk: shards, run directories, checkpoints, logs,
TensorBoard files, exports and the sweep's records in a real S3 server (moto's, tests/object_store.py).

One pretraining run, its resumption and a resubmission with another config (MELP stage 1, so the text
encoder's export and its hand-over to stage 2 are covered too): it leaves nothing in the working directory,
nor scratch folders. The sweep in a bucket is tests/test_sweep.py's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.factory import resolve_config
from models.model import ECGTextModel
from pipelines.pretrain_lm import main as pretrain_lm_main
from pipelines.storage import Location
from pipelines.training.launch import TEXT_ENCODER_DIR
from pipelines.training.run_directory import RunDirectory, scratch_folder
from pipelines.training.run_model import build_model

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--workers", "2", "train.batch_size=8", "train.warmup_steps=1", "train.progress_every_s=0"]


@pytest.fixture(scope="module")
def bucket_shards(object_store, synthetic_shards) -> str:
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


def test_run_directory_syncs_its_scratch_folder_and_leaves_a_local_one_alone(object_store, tmp_path):
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


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")
def test_stage_one_lives_in_the_bucket_resumes_from_it_and_hands_its_encoder_to_stage_two(
    object_store, bucket_shards, empty_cwd, tmp_path, capsys
):
    run_uri = object_store.uri("runs/lm")
    arguments = ["--data", bucket_shards, "--output", run_uri, *TRAIN]

    assert pretrain_lm_main([*arguments, "--max-steps", "2"]) == 0

    keys = object_store.keys("runs/lm/")
    names = {key.removeprefix("runs/lm/") for key in keys}
    assert {"made_by.json", "config.json", "metrics.json", "logs/pretrain.log", "logs/worker-0.log"} <= names
    assert "logs/worker-1.log" in names
    assert {"export/config.json", "export/model.safetensors", "export/text-encoder/config.json"} <= names
    assert any(name.startswith("tensorboard/events.") for name in names), "rank 0's TensorBoard files"
    assert any(name.startswith("train/checkpoint-step00000002-") for name in names), "Ray Train's checkpoint"
    run = Location.of(run_uri)
    metrics = (run / "metrics.json").read_json()
    assert metrics["final"]["step"] == 2 and metrics["export_max_abs_diff"] < 1e-5
    assert metrics["selected_by"] == "val_loss" and np.isfinite(metrics["best"]["val_mlm_loss"])
    export = tmp_path / "export"
    (run / "export").download_to(export)
    stage_one = ECGTextModel.from_pretrained(export)
    assert stage_one.config.objective.name == "melp-lm"
    # Stage 2 takes the stage-1 encoder folder in the bucket as its text tower, as each of its workers builds
    # it (from the node's cached copy): the same weights, and the model's config still names the bucket.
    encoder_uri = f"{run_uri}/export/{TEXT_ENCODER_DIR}"
    stage_two = build_model(resolve_config("tiny", "melp", {"text.name_or_path": encoder_uri}))
    assert stage_two.config.text.name_or_path == encoder_uri
    stage_two_state = stage_two.text.transformer.state_dict()
    for name, tensor in stage_one.text.transformer.state_dict().items():  # MELP's causal tower adds a [BOS] row
        torch.testing.assert_close(stage_two_state[name][: len(tensor)], tensor)

    assert pretrain_lm_main([*arguments, "--max-steps", "4"]) == 0  # resubmitted into the same URI

    metrics = (run / "metrics.json").read_json()
    assert metrics["final"]["step"] == 4
    assert metrics["final"]["restored_step"] == 2, "the rerun found step 2's checkpoint in the bucket"
    assert (run / "logs" / "pretrain.log").read_text().count("steps in all") == 2, "the driver's log goes on"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # resubmitted with another config: refused, not mixed
        pretrain_lm_main([*arguments, "train.lr=0.5", "--max-steps", "4"])
    assert exit_info.value.code == 2 and "different config" in capsys.readouterr().err
    assert (run / "metrics.json").read_json()["final"]["step"] == 4
    assert not list(empty_cwd.iterdir()) and not (REPO / "s3:").exists(), "nothing written to the local disk"
    assert not scratch_folder(run, "driver").parent.exists(), "the scratch folders are removed"
