"""AUROC per class and their macro mean, for multi-label zero-shot scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def targets_matrix(label_lists: Sequence[Sequence[str]], codes: Sequence[str]) -> np.ndarray:
    """bool [n, C]: row i, column c is True when codes[c] is among row i's labels."""
    return np.array([[code in set(labels) for code in codes] for labels in label_lists], dtype=bool).reshape(
        len(label_lists), len(codes)
    )


def auroc_per_class(scores: np.ndarray, targets: np.ndarray, codes: Sequence[str]) -> dict[str, float]:
    """scores [n, C] float, targets [n, C] bool → {code: AUROC}; a class without both a positive and a
    negative has no AUROC and is left out (callers report it as absent)."""
    return {
        code: float(roc_auc_score(targets[:, c], scores[:, c]))
        for c, code in enumerate(codes)
        if 0 < targets[:, c].sum() < len(targets)
    }


def macro_auroc(per_class: dict[str, float]) -> float:
    """Unweighted mean over classes (NaN when there are none)."""
    return float(np.mean(list(per_class.values()))) if per_class else float("nan")
