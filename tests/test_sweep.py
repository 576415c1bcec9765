"""A real Ray Tune sweep with everything in a bucket (moto's S3 server): three trials, each a Ray Train +
DeepSpeed pretraining run, under ASHA (which stops the second at its first epoch where it trails the first); one
trial crashes on purpose (before its trainer starts, so it costs no fit); the best export loads and scores; a
restarted sweep restores from the bucket and reruns nothing, and one with another space is refused. The data is
given relative to the working directory, as on a command line (trials run elsewhere), and nothing but it is
left there."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from models.model import ECGTextModel
from pipelines.evaluation.predict import predict_split
from pipelines.labels.tasks import load_task
from pipelines.labels.zero_shot import task_scores
from pipelines.outputs import OutputRefused
from pipelines.storage import Location
from pipelines.training.run_directory import scratch_folder
from tune.sweep import BEST_DIR, sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPACE = {
    "train.lr": {"grid": [1e-3, 3e-3, -1.0]},  # -1: TrainConfig refuses it inside the trial
    "objective.init_temperature": {"loguniform": [0.03, 0.2]},
    "objective.beat_weight": {"fixed": 0.2},
}
TRAIN = {"batch_size": 16, "warmup_steps": 2, "epochs": 2, "checkpoints_to_keep": 1, "progress_every_s": 0.0}


def placement_groups_left(timeout_s: float = 30) -> list[dict]:
    """The session cluster's placement groups not removed after up to `timeout_s` (a trial that ASHA stops is
    killed with its Train controller; Ray Train's cleaner then removes its workers' group)."""
    from ray.util.placement_group import placement_group_table

    deadline = time.monotonic() + timeout_s
    while True:
        left = [table for table in placement_group_table().values() if table["state"] != "REMOVED"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def metrics_stamps(trials: Location) -> list[tuple[str, int]]:
    """(path, modification time) of every trial's metrics.json in the bucket."""
    return sorted((info.path, info.mtime_ns) for info in trials.files() if info.path.endswith("/metrics.json"))


@pytest.mark.usefixtures("restore_logging")
def test_asha_sweep_in_a_bucket_records_the_crash_picks_a_best_export_and_resumes_without_rerunning(
    ray_cluster, object_store, synthetic_shards, tmp_path, monkeypatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "shards").symlink_to(synthetic_shards)
    monkeypatch.chdir(cwd)
    data = ["shards"]
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(SPACE))
    output = Location.of(object_store.uri("sweeps/asha"))
    arguments = dict(
        space_file=str(space_file), num_samples=1, train_overrides=TRAIN, val_rows=48, log_file="sweep.log"
    )

    summary = sweep(data, output, **arguments)

    assert summary["concurrent_trials"] == 1  # 2 CPUs: one trial at a time, one CPU left to Ray Data
    assert summary["trials"]["failed"] == 1
    assert summary["trials"]["finished"] + summary["trials"]["stopped early"] == 2
    assert not placement_groups_left(), "every trial, stopped early or not, gave its workers' CPUs back"
    names = {key.removeprefix("sweeps/asha/") for key in object_store.keys("sweeps/asha/")}
    assert {"made_by.json", "results.csv", "results.md", "metric_vs_parameters.png", "logs/sweep.log"} <= names
    assert {f"{BEST_DIR}/config.json", f"{BEST_DIR}/model.safetensors", f"{BEST_DIR}/sweep_trial.json"} <= names
    assert any(name.startswith("sweep/") for name in names), "Tune's own experiment state"
    results = pd.read_csv(io.BytesIO(output.child("results.csv").read_bytes()))
    assert len(results) == 3 and "lr must be positive" in results["error"].fillna("").str.cat()
    finished = results[results["status"] == "finished"]
    assert (finished["epochs"] == TRAIN["epochs"]).all(), "a finished trial reports its last epoch to ASHA"
    assert imread(io.BytesIO(output.child("metric_vs_parameters.png").read_bytes()), format="png").ndim == 3

    best = summary["best"]
    assert output.child(BEST_DIR, "sweep_trial.json").read_json()["trial"] == best["trial"]
    output.child(BEST_DIR).download_to(tmp_path / "best")
    model = ECGTextModel.from_pretrained(tmp_path / "best").eval()
    assert model.config.objective.name == "melp"
    embeddings, labels = predict_split(model.encode_ecg, str(synthetic_shards), "test")
    task = load_task("synthetic")
    with torch.no_grad():
        scores = task_scores(model, task, task.codes, embeddings)
    assert scores.shape == (len(labels), len(task.codes)) and np.isfinite(scores).all()

    stamps = metrics_stamps(output.child("trials"))
    assert len(stamps) == len(finished)
    resumed = sweep(data, output, **arguments)  # Tuner.restore from the URI: nothing reruns
    assert resumed["trials"] == summary["trials"] and resumed["best"]["trial"] == best["trial"]
    assert metrics_stamps(output.child("trials")) == stamps

    space_file.write_text(json.dumps({**SPACE, "objective.beat_weight": {"fixed": 0.3}}))
    with pytest.raises(OutputRefused, match=r"space.objective.beat_weight.fixed: 0.2 there, 0.3 now"):
        sweep(data, output, **arguments)  # another space into the same output: refused, not mixed
    assert [path.name for path in cwd.iterdir()] == ["shards"], "nothing written to the working directory"
    assert not (REPO / "s3:").exists(), "nothing written to a local folder named after the URI"
    assert not scratch_folder(output, "sweep").parent.exists(), "the scratch folder is removed"

