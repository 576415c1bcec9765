"""`pipelines.evaluate --explain 1` on a tiny export and the synthetic shards (a two-class table, one code with a
slash): a PNG per class of the ECG with the class that scores highest on it (its zero-shot score, its evidence),
metrics.json's "explain" and report.md's Evidence section; a count over the bound, or without zero-shot, is a
usage error naming the flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from models.model import ECGTextModel
from pipelines.data.leads import STANDARD_LEADS
from pipelines.evaluate import main as evaluate_main
from pipelines.evaluation.evidence_figures import MAX_EXPLAINED_PER_CLASS
from pipelines.evaluation.predict import predict_split
from pipelines.labels.tasks import load_task
from pipelines.labels.zero_shot import task_scores


def test_explain_draws_each_classs_best_scored_positive(tiny_export, synthetic_shards, tmp_path, restore_logging):
    export, output, table = tiny_export("melp"), tmp_path / "eval", tmp_path / "rhythms.csv"
    table.write_text("code,name,description,source_codes\nSR,sinus rhythm,,SR\nAF/AFL,atrial fibrillation,,AFIB\n")
    argv = ["--model", str(export), "--data", str(synthetic_shards), "--output", str(output), "--task", str(table)]
    assert evaluate_main([*argv, "--no-baselines", "--explain", "1"]) == 0
    results = json.loads((output / "metrics.json").read_text())
    explain = results["explain"]
    assert explain["per_class"] == 1 and list(explain["classes"]) == results["codes"] == ["SR", "AF/AFL"]

    model = ECGTextModel.from_pretrained(export).eval()
    embeddings, labels = predict_split(model.encode_ecg, str(synthetic_shards), "test")
    task = load_task(table)
    scores = task_scores(model, task, results["codes"], embeddings)
    targets = task.targets(labels)[:, [task.codes.index(code) for code in results["codes"]]]
    report = (output / "report.md").read_text()
    assert "## Evidence" in report
    for c, (code, (item,)) in enumerate(explain["classes"].items()):
        positives = np.flatnonzero(targets[:, c])
        assert item["row"] == positives[np.argmax(scores[positives, c])]
        assert item["score"] == pytest.approx(scores[item["row"], c], abs=1e-5)
        assert sorted(item["leads"]) == sorted(STANDARD_LEADS) and 1 <= len(item["segments"]) <= 5
        assert all(0 <= s["start_s"] < s["end_s"] <= 10 and s["weight"] > 0 for s in item["segments"])
        assert imread(output / item["png"]).shape[:2] == (630, 1063)
        assert item["png"] == f"explain/{code.replace('/', '_')}-1.png"
        assert f"| {item['ecg_id']} | {item['score']:.3f} | {', '.join(item['leads'])} |" in report
        assert f"![{code} {item['ecg_id']}]({item['png']})" in report


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--explain", str(MAX_EXPLAINED_PER_CLASS + 1)], f"explain 0 to {MAX_EXPLAINED_PER_CLASS} ECGs per class"),
        (["--explain", "-1"], "--explain -1"),
        (["--explain", "2", "--mode", "linear-probe"], "--explain 2 explains zero-shot scores"),
    ],
)
def test_bad_explain_flags_are_usage_errors(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--model", str(tmp_path), "--data", str(tmp_path), "--output", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
