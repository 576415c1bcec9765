"""Evaluation end to end: the session's short pretraining run on PTB-XL-500 (folds 1-8 train, 9 val), then
zero-shot and linear probe on fold 10's superclasses, through the CLI. Ray Train fine-tuning through the same CLI
is the cluster's evaluation job (tests/test_cluster.py): two workers on two nodes, checkpoints in the bucket."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from models.model import ECGTextModel
from pipelines.evaluate import main as evaluate_main
from pipelines.evaluation.predict import predict_split
from pipelines.labels.tasks import load_task
from pipelines.labels.zero_shot import task_scores


@pytest.fixture(scope="module")
def ptbxl_export(ptbxl_melp_run):
    return ptbxl_melp_run[0] / "export"


@pytest.mark.slow
def test_evaluate_cli_scores_zero_shot_and_linear_probes_on_ptbxl_fold_10(ptbxl_export, ptbxl_shards, tmp_path, capsys):
    output = tmp_path / "eval"
    argv = [
        "--model", str(ptbxl_export), "--data", str(ptbxl_shards), "--task", "ptbxl-super",
        "--mode", "zero-shot", "linear-probe", "--output", str(output),
    ]  # fmt: skip
    assert evaluate_main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((output / "metrics.json").read_text())

    assert results["task"] == "ptbxl-super" and results["rows"] == 66  # fold 10 of these 500 records
    assert set(results["codes"]) | set(results["absent_classes"]) == {"NORM", "MI", "STTC", "CD", "HYP"}
    assert results["headline"] == "zero_shot" and 0.0 <= results["macro_auroc"] <= 1.0
    assert results["per_class_auroc"] == results["zero_shot"]["per_class_auroc"]
    assert set(results["linear_probe"]) == {"1%", "10%", "100%"}
    assert set(results["baselines"]) == {"random-weights", "report-text"}
    assert f"macro AUROC {results['macro_auroc']:.3f}" in printed

    # The zero-shot figure is the model's own: recomputed here from the export with the shared code path.
    model = ECGTextModel.from_pretrained(ptbxl_export).eval()
    embeddings, labels = predict_split(model.encode_ecg, str(ptbxl_shards), "test")
    task = load_task("ptbxl-super")
    codes = results["codes"]
    with torch.no_grad():
        scores = task_scores(model, task, codes, embeddings)
    targets = task.targets(labels)[:, [task.codes.index(c) for c in codes]]
    from sklearn.metrics import roc_auc_score

    for c, code in enumerate(codes):
        assert np.isclose(roc_auc_score(targets[:, c], scores[:, c]), results["zero_shot"]["per_class_auroc"][code])

    report = (output / "report.md").read_text()
    assert "| MERL (published) | 74.2 |" in report
    for png in ("roc.png", "per_class_auroc.png"):
        assert imread(output / png).ndim == 3


def test_evaluate_cli_rejects_an_unknown_task_before_loading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--model", str(tmp_path), "--data", str(tmp_path), "--task", "ptbxl-all", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "unknown task 'ptbxl-all'" in capsys.readouterr().err
