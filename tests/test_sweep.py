"""A real Ray Tune sweep: four trials, each a Ray Train + DeepSpeed pretraining run, under ASHA; one
trial crashes on purpose; the best export loads and scores; a restarted sweep reruns nothing, and one
with another space is refused."""

from __future__ import annotations

import json

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
from tune.sweep import BEST_DIR, sweep

SPACE = {
    "train.lr": {"grid": [1e-3, 2e-3, 3e-3, -1.0]},  # -1: TrainConfig refuses it inside the trial
    "objective.init_temperature": {"loguniform": [0.03, 0.2]},
    "objective.beat_weight": {"fixed": 0.2},
}
TRAIN = {"batch_size": 8, "warmup_steps": 2, "epochs": 2, "checkpoints_to_keep": 1, "progress_every_s": 0.0}


def test_asha_sweep_records_the_crash_picks_a_best_export_and_resumes_without_rerunning(
    synthetic_shards, tmp_path, monkeypatch
):
    monkeypatch.chdir(synthetic_shards.parent)  # data given relative, as on a command line: trials run elsewhere
    data = [synthetic_shards.name]
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(SPACE))
    output = tmp_path / "sweep"
    arguments = dict(space_file=str(space_file), num_samples=1, train_overrides=TRAIN, val_rows=48)

    summary = sweep(data, output, **arguments)

    assert summary["concurrent_trials"] == 1  # 2 CPUs: one trial at a time, one CPU left to Ray Data
    assert summary["trials"]["failed"] == 1
    assert summary["trials"]["finished"] + summary["trials"]["stopped early"] == 3
    results = pd.read_csv(output / "results.csv")
    assert len(results) == 4 and "lr must be positive" in results["error"].fillna("").str.cat()
    finished = results[results["status"] == "finished"]
    assert (finished["epochs"] == TRAIN["epochs"]).all(), "a finished trial reports its last epoch to ASHA"
    assert imread(output / "metric_vs_parameters.png").ndim == 3

    best = summary["best"]
    model = ECGTextModel.from_pretrained(output / BEST_DIR).eval()
    embeddings, labels = predict_split(model.encode_ecg, str(synthetic_shards), "test")
    task = load_task("synthetic")
    with torch.no_grad():
        scores = task_scores(model, task, task.codes, embeddings)
    assert scores.shape == (len(labels), len(task.codes)) and np.isfinite(scores).all()
    assert json.loads((output / BEST_DIR / "sweep_trial.json").read_text())["trial"] == best["trial"]

    metrics_files = sorted(output.glob("trials/*/metrics.json"))
    assert len(metrics_files) == len(finished)
    stamps = [path.stat().st_mtime_ns for path in metrics_files]
    resumed = sweep(data, output, **arguments)
    assert resumed["trials"] == summary["trials"]
    assert [path.stat().st_mtime_ns for path in sorted(output.glob("trials/*/metrics.json"))] == stamps
    assert resumed["best"]["trial"] == best["trial"]
    space_file.write_text(json.dumps({**SPACE, "objective.beat_weight": {"fixed": 0.3}}))
    with pytest.raises(OutputRefused, match=r"space.objective.beat_weight.fixed: 0.2 there, 0.3 now"):
        sweep(data, output, **arguments)  # another space into the same output: refused, not mixed
