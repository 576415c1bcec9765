"""`pipelines.evaluate --explain N`: for each class, the N test ECGs that have it and score highest on it zero-shot,
explained (`models.evidence.explain_score` against the class's column of the zero-shot classifier) and drawn on
ECG paper (`ecg_paper.plot_evidence`) into OUTPUT/explain/<CODE>-<k>.png.

    results["explain"] = explain_top_rows(model, task, codes, data, "test", scores, targets, fs, output, 2)
    lines += evidence_lines(results["explain"])        # report.md's "Evidence" section
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.evidence import explain_score
from models.model import ECGTextModel
from pipelines.evaluation.predict import model_inputs, split_tables
from pipelines.explaining.ecg_paper import plot_evidence
from pipelines.explaining.evidence_body import evidence_body
from pipelines.labels.tasks import Task
from pipelines.labels.zero_shot import task_classifier

MAX_EXPLAINED_PER_CLASS = 20
"""ECGs explained per class (each an integrated-gradients pass of 32 forwards and backwards, and a figure)."""
EXPLAIN_DIR = "explain"


def check_explain(n: int, modes: Sequence[str]) -> None:
    """ValueError naming --explain unless 0 ≤ n ≤ MAX_EXPLAINED_PER_CLASS, and zero-shot runs where n > 0."""
    if not 0 <= n <= MAX_EXPLAINED_PER_CLASS:
        raise ValueError(f"--explain {n}: explain 0 to {MAX_EXPLAINED_PER_CLASS} ECGs per class")
    if n and "zero-shot" not in modes:
        raise ValueError(f"--explain {n} explains zero-shot scores: add --mode zero-shot")


def explain_top_rows(
    model: ECGTextModel,
    task: Task,
    codes: Sequence[str],
    data: str,
    split: str,
    scores: np.ndarray,
    targets: np.ndarray,
    fs: float,
    output: Path,
    n: int,
) -> dict:
    """scores, targets [rows, C] over `codes` (the zero-shot run's, rows in `predict_split` order) → metrics.json's
    "explain": {"per_class": n, "classes": {code: [{ecg_id, row, label, score, leads, segments, png}, …]}}, best
    first (fewer where a class has fewer positives), the PNGs written under `output`."""
    chosen = {code: _top_positives(scores[:, c], targets[:, c], n) for c, code in enumerate(codes)}
    rows = _rows(data, split, sorted({row for picked in chosen.values() for row in picked}))
    class_vectors = task_classifier(model, task, codes).T.float()  # [C, D]
    folder = Path(output) / EXPLAIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    explained: dict[str, list[dict]] = {}
    for c, code in enumerate(codes):
        if not chosen[code]:
            continue
        signal = torch.stack([rows[row][1] for row in chosen[code]])  # [k, 12, T]
        lead_mask = torch.stack([rows[row][2] for row in chosen[code]])  # [k, 12]
        evidence = explain_score(model, signal, lead_mask, class_vectors[c : c + 1], seconds_per_sample=1 / fs)
        explained[code] = []
        for k, (row, item) in enumerate(zip(chosen[code], evidence), start=1):
            ecg_id = rows[row][0]
            png = f"{EXPLAIN_DIR}/{_file_safe(code)}-{k}.png"
            title = f"{code}: {task.classes[code].name} ({ecg_id})"
            figure = plot_evidence(signal[k - 1].numpy(), fs, item, title, lead_mask=lead_mask[k - 1].numpy())
            figure.savefig(Path(output) / png)
            explained[code].append({"ecg_id": ecg_id, "row": row, **evidence_body(code, item), "png": png})
    return {"per_class": n, "classes": explained}


def evidence_lines(explain: dict) -> list[str]:
    """report.md's "Evidence" section: per class, each explained ECG's score, lead ranking, top segments, figure."""
    lines = [
        "",
        "## Evidence",
        "",
        f"For each class, the {explain['per_class']} test ECG(s) with the class that score highest on it zero-shot: "
        "integrated gradients of the score against a flat line, leads by summed |attribution| (most first), the top "
        "0.5 s segments by positive attribution (lead, seconds, weight), drawn on ECG paper in the model's input "
        "units.",
    ]
    for code, items in explain["classes"].items():
        lines += ["", f"### {code}", "", "| ECG | score | leads | top segments |", "| --- | ---: | --- | --- |"]
        for item in items:
            segments = "; ".join(
                f"{s['lead']} {s['start_s']:.2f}–{s['end_s']:.2f} s ({s['weight']:.3g})" for s in item["segments"]
            )
            leads = ", ".join(item["leads"])
            lines.append(f"| {item['ecg_id']} | {item['score']:.3f} | {leads} | {segments or '—'} |")
        lines += [""] + [f"![{code} {item['ecg_id']}]({item['png']})" for item in items]
    return lines


def _top_positives(scores: np.ndarray, targets: np.ndarray, n: int) -> list[int]:
    """Indices of the (at most) n rows with the class, highest score first."""
    positives = np.flatnonzero(targets)
    return [int(row) for row in positives[np.argsort(-scores[positives], kind="stable")[:n]]]


def _rows(data: str, split: str, wanted: list[int]) -> dict[int, tuple[str, torch.Tensor, torch.Tensor]]:
    """Row index (in `predict_split` order) → (ecg_id, signal [12, T] float32, lead_mask [12] bool), for `wanted`."""
    found, offset, wanted_set = {}, 0, set(wanted)
    for table in split_tables(data, split, ["ecg_id", "signal", "lead_mask"]):
        picked = [row for row in range(offset, offset + table.num_rows) if row in wanted_set]
        if picked:
            signal, lead_mask = model_inputs(table)
            ids = table["ecg_id"].to_pylist()
            found.update({row: (ids[row - offset], signal[row - offset], lead_mask[row - offset]) for row in picked})
        offset += table.num_rows
    return found


def _file_safe(code: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", code)
