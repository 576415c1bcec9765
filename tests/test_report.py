"""The evaluation report renders from a results dict, and its plots are valid PNG images."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from pipelines.evaluation.linear_probe import linear_probe
from pipelines.evaluation.report import BARS_FILE, REPORT_FILE, ROC_FILE, write_report
from pipelines.labels.metrics import auroc_per_class, macro_auroc

CODES = ["NORM", "MI", "CD"]
NAMES = {"NORM": "normal ecg", "MI": "myocardial infarction", "CD": "conduction disturbance"}


def _results(published: dict) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    targets = rng.random((120, 3)) < 0.4
    scores = targets + rng.normal(scale=0.8, size=targets.shape)
    random_scores = rng.normal(size=targets.shape)
    x = np.concatenate([scores, rng.normal(size=(120, 5))], axis=1)

    def figures(s):
        per_class = auroc_per_class(s, targets, CODES)
        return {"macro_auroc": macro_auroc(per_class), "per_class_auroc": per_class}

    results = {
        "task": "ptbxl-super",
        "split": "test",
        "rows": 120,
        "codes": CODES,
        "class_names": NAMES,
        "absent_classes": {"HYP": "no positive in the split"},
        "published": published,
        "zero_shot": figures(scores),
        "linear_probe": linear_probe(x, targets, x, targets, CODES),
        "baselines": {"random-weights": {"zero_shot": figures(random_scores)}},
    }
    return results, {"targets": targets, "zero-shot": scores}


def test_report_has_tables_class_names_and_plots_that_decode(tmp_path):
    results, curves = _results({"MERL": 74.2, "C-MELT": 76.2})
    report = write_report(results, curves, tmp_path).read_text()
    assert report == (tmp_path / REPORT_FILE).read_text()
    for expected in ("| method | macro AUROC |", "| code | class |", "myocardial infarction", "## Linear probe"):
        assert expected in report
    assert f"| zero-shot | {results['zero_shot']['macro_auroc']:.3f} |" in report
    assert "| HYP | no positive in the split |" in report
    assert "| MERL (published) | 74.2 |" in report and "different data and scale" in report
    for name in (ROC_FILE, BARS_FILE):
        assert f"]({name})" in report
        image = imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_classes_scored_as_constants_in_the_probe_are_named(tmp_path):
    results, curves = _results({})
    results["linear_probe"]["1%"]["constant_classes"] = ["CD"]
    results["linear_probe"]["10%"]["constant_classes"] = []
    report = write_report(results, curves, tmp_path).read_text()
    assert "no positive or no negative: 1%: CD." in report


def test_published_section_only_when_a_paper_reports_the_task(tmp_path):
    results, curves = _results({})
    report = write_report(results, curves, tmp_path).read_text()
    assert "published" not in report.lower()
