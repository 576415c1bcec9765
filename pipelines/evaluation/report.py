"""`report.md` and its plots from the results of `pipelines.evaluation.suite.evaluate_export`.

    write_report(results, curves, "runs/tiny/eval")   # report.md, roc.png, per_class_auroc.png

`results` (what metrics.json holds): task, split, rows, codes, class_names, absent_classes, mapped_from
({class: the split's raw label codes that map to it}),
published, baselines {name: {zero_shot | linear_probe: …}}, and per mode run `zero_shot`
{macro_auroc, per_class_auroc}, `linear_probe` {"1%" | "10%" | "100%": {train_rows, macro_auroc_mean,
macro_auroc_std, per_class_auroc, …}}, `finetune` {macro_auroc, per_class_auroc, epochs, …}, `report`
(drafting, see `report_drafts.py`), `retrieval` (see `retrieval.py`), `faithfulness` (see `faithfulness.py`) and `explain` (the evidence figures,
see `evidence_figures.py`), each with its own section.
`curves`: `targets` [n, C] and the test scores [n, C] of the zero-shot and fine-tuned models.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.evaluation.evidence_figures import evidence_lines
from pipelines.evaluation.faithfulness import faithfulness_lines
from pipelines.evaluation.plots import per_class_bars, roc_plot
from pipelines.evaluation.report_drafts import report_lines
from pipelines.evaluation.retrieval import retrieval_lines

ROC_FILE, BARS_FILE, REPORT_FILE = "roc.png", "per_class_auroc.png", "report.md"


def write_report(results: dict, curves: dict, output: str | Path) -> Path:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    lines = [f"# {results['task']}: evaluation on the {results['split']} split ({results['rows']:,} ECGs)"]
    if {"zero_shot", "linear_probe", "finetune"} & set(results):
        lines += _auroc_sections(results, curves, output)
    if "explain" in results:
        lines += evidence_lines(results["explain"])
    if "report" in results:
        lines += report_lines(results["report"])
    if "retrieval" in results:
        lines += retrieval_lines(results["retrieval"])
    if "faithfulness" in results:
        lines += faithfulness_lines(results["faithfulness"])
    path = output / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def _auroc_sections(results: dict, curves: dict, output: Path) -> list[str]:
    """AUROC tables and plots of the zero-shot, linear-probe and fine-tuning modes (the plots into `output`)."""
    codes, names = results["codes"], results["class_names"]
    series = _per_class_series(results)
    per_class_bars(series, codes, names, output / BARS_FILE)
    roc_method = next((m for m in ("zero-shot", "finetune") if m in curves), None)
    if roc_method is not None:
        roc_plot(curves[roc_method], curves["targets"], codes, names, output / ROC_FILE)

    lines = [
        "",
        "## Macro AUROC",
        "",
        "| method | macro AUROC |",
        "| --- | ---: |",
        *[f"| {label} | {value} |" for label, value in _headline_rows(results)],
        "",
        "## Per class",
        "",
        "| code | class | " + " | ".join(series) + " |",
        "| --- | --- |" + " ---: |" * len(series),
        *[
            f"| {code} | {names[code]} | " + " | ".join(_fmt(s.get(code)) for s in series.values()) + " |"
            for code in codes
        ],
        "",
        f"![per-class AUROC]({BARS_FILE})",
    ]
    if roc_method is not None:
        lines += ["", f"ROC curves of the {roc_method} model:", "", f"![ROC curves]({ROC_FILE})"]
    lines += _linear_probe_section(results)
    lines += _mapped_section(results)
    return lines + _published_section(results)


def _mapped_section(results: dict) -> list[str]:
    """The split's raw label codes behind each class with an AUROC, and the classes without one (and why)."""
    mapped = results.get("mapped_from", {})

    def codes_of(code: str) -> str:
        return ", ".join(mapped.get(code, [])) or "none"

    lines = ["", "## Mapped classes", "", "| code | the split's labels mapped to it |", "| --- | --- |"]
    lines += [f"| {code} | {codes_of(code)} |" for code in results["codes"]]
    if results["absent_classes"]:
        lines += [
            "",
            "## Classes without an AUROC on this split",
            "",
            "| code | reason | mapped from |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {code} | {reason} | {codes_of(code)} |" for code, reason in results["absent_classes"].items()]
    return lines


def _headline_rows(results: dict) -> list[tuple[str, str]]:
    rows = []
    if "zero_shot" in results:
        rows.append(("zero-shot", _fmt(results["zero_shot"]["macro_auroc"])))
    if "linear_probe" in results:
        rows += [(f"linear probe, {f} of train", _mean_std(p)) for f, p in results["linear_probe"].items()]
    if "finetune" in results:
        rows.append((f"fine-tuned ({results['finetune']['epochs']} epochs)", _fmt(results["finetune"]["macro_auroc"])))
    for name, baseline in results["baselines"].items():
        if "zero_shot" in baseline:
            rows.append((f"baseline: {name}, zero-shot", _fmt(baseline["zero_shot"]["macro_auroc"])))
        for fraction, probe in baseline.get("linear_probe", {}).items():
            rows.append((f"baseline: {name}, linear probe {fraction}", _mean_std(probe)))
    return rows


def _per_class_series(results: dict) -> dict[str, dict[str, float]]:
    series = {}
    if "zero_shot" in results:
        series["zero-shot"] = results["zero_shot"]["per_class_auroc"]
    if "linear_probe" in results:
        series["linear probe 100%"] = results["linear_probe"]["100%"]["per_class_auroc"]
    if "finetune" in results:
        series["fine-tuned"] = results["finetune"]["per_class_auroc"]
    for name, baseline in results["baselines"].items():
        if "zero_shot" in baseline:
            series[f"{name} zero-shot"] = baseline["zero_shot"]["per_class_auroc"]
    return series


def _linear_probe_section(results: dict) -> list[str]:
    if "linear_probe" not in results:
        return []
    random = results["baselines"].get("random-weights", {}).get("linear_probe", {})
    lines = [
        "",
        "## Linear probe",
        "",
        "Logistic regression (one-vs-rest, standardised features) on frozen ECG embeddings; mean ± std over seeds.",
        "",
        "| train fraction | train rows | seeds | model | random weights |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for fraction, probe in results["linear_probe"].items():
        baseline = _mean_std(random[fraction]) if fraction in random else "—"
        lines.append(
            f"| {fraction} | {probe['train_rows']:,} | {len(probe['seeds'])} | {_mean_std(probe)} | {baseline} |"
        )
    constant = [
        f"{fraction}: {', '.join(probe['constant_classes'])}"
        for fraction, probe in results["linear_probe"].items()
        if probe["constant_classes"]
    ]
    if constant:
        lines += [
            "",
            "Scored as a constant where a training subset had no positive or no negative: " + "; ".join(constant) + ".",
        ]
    return lines


def _published_section(results: dict) -> list[str]:
    published = results.get("published") or {}
    ours = [(mode, results[key]["macro_auroc"]) for mode, key in (("zero-shot", "zero_shot"),) if key in results]
    if not published or not ours:
        return []
    lines = [
        "",
        "## Published figures (different data and scale)",
        "",
        "Zero-shot macro AUROC as published, after pretraining on MIMIC-IV-ECG (~771k ECG-report pairs) and "
        "testing on the full benchmark; ours comes from this run's data and model size, so the comparison "
        "says where we stand, not which method is better.",
        "",
        "| method | zero-shot macro AUROC (%) |",
        "| --- | ---: |",
    ]
    lines += [f"| {method} (published) | {value:.1f} |" for method, value in published.items()]
    lines += [f"| this model, {mode} | {100 * value:.1f} |" for mode, value in ours]
    return lines


def _mean_std(probe: dict) -> str:
    return f"{probe['macro_auroc_mean']:.3f} ± {probe['macro_auroc_std']:.3f}"


def _fmt(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.3f}"
