"""The report's PNGs: ROC curves per class, and per-class AUROC bars of the model beside its baselines.

Drawn on `matplotlib.figure.Figure` objects directly: no pyplot state, no backend to select.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

DPI = 100


def roc_plot(scores: np.ndarray, targets: np.ndarray, codes: Sequence[str], names: dict[str, str], path: Path) -> None:
    """ROC curve of every class: scores [n, C], targets [n, C] bool (each column with both outcomes)."""
    figure = Figure(figsize=(7, 6), dpi=DPI)
    axes = figure.add_subplot()
    for c, code in enumerate(codes):
        false_positive, true_positive, _ = roc_curve(targets[:, c], scores[:, c])
        auroc = roc_auc_score(targets[:, c], scores[:, c])
        axes.plot(false_positive, true_positive, linewidth=1.2, label=f"{_short(names[code])} ({auroc:.2f})")
    axes.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(fontsize=7, loc="lower right", ncol=1 if len(codes) <= 12 else 2)
    figure.tight_layout()
    figure.savefig(path)


def per_class_bars(
    series: dict[str, dict[str, float]], codes: Sequence[str], names: dict[str, str], path: Path
) -> None:
    """Horizontal bars of per-class AUROC, one colour per series ({label: {code: AUROC}})."""
    figure = Figure(figsize=(7, 1.2 + 0.32 * len(codes) * max(1, len(series)) ** 0.5), dpi=DPI)
    axes = figure.add_subplot()
    height = 0.8 / max(1, len(series))
    positions = np.arange(len(codes))
    for i, (label, per_class) in enumerate(series.items()):
        values = [per_class.get(code, np.nan) for code in codes]
        axes.barh(positions + i * height, values, height=height, label=label)
    axes.axvline(0.5, linestyle="--", color="grey", linewidth=0.8)
    axes.set_yticks(positions + height * (len(series) - 1) / 2, [_short(names[code]) for code in codes], fontsize=7)
    axes.invert_yaxis()
    axes.set(xlabel="AUROC", xlim=(0, 1))
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    figure.tight_layout()
    figure.savefig(path)


def _short(name: str, width: int = 38) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
