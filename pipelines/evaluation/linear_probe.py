"""Linear probe: one-vs-rest logistic regression on frozen ECG embeddings, on 1 %, 10 % and 100 % of the
training rows, several seeds, macro AUROC mean ± std on the test rows.

    figures = linear_probe(train_x, train_y, test_x, test_y, codes)   # {"1%": {...}, "10%": ..., "100%": ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pipelines.labels.metrics import auroc_per_class, macro_auroc

FRACTIONS = (0.01, 0.1, 1.0)
SEEDS = (0, 1, 2)
MIN_ROWS = 8
"""Smallest training subset drawn, whatever the fraction."""


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    codes: Sequence[str],
    fractions: Sequence[float] = FRACTIONS,
    seeds: Sequence[int] = SEEDS,
    regularisation: float = 1.0,
) -> dict[str, dict]:
    """train_x [n, D], train_y [n, C] bool, test_x [m, D], test_y [m, C] bool → per fraction ("1%", …):
    train_rows, seeds, macro_auroc_mean / _std over seeds, per_class_auroc (mean over seeds), and
    constant_classes: classes with no positive (or no negative) in some subset, scored as constants there.
    All rows (fraction 1.0) are one subset, so it runs once."""
    results = {}
    for fraction in fractions:
        n_rows = len(train_x) if fraction >= 1.0 else min(len(train_x), max(MIN_ROWS, round(fraction * len(train_x))))
        runs, constant = [], set()
        for seed in seeds[:1] if fraction >= 1.0 else seeds:
            rows = np.random.default_rng(seed).permutation(len(train_x))[:n_rows]
            scores, flat = _fit_and_score(train_x[rows], train_y[rows], test_x, regularisation)
            constant.update(codes[c] for c in flat)
            runs.append(auroc_per_class(scores, test_y, codes))
        macros = [macro_auroc(run) for run in runs]
        results[f"{fraction:.0%}"] = {
            "train_rows": n_rows,
            "seeds": list(seeds[: len(runs)]),
            "macro_auroc_mean": float(np.mean(macros)),
            "macro_auroc_std": float(np.std(macros)),
            "per_class_auroc": {code: float(np.mean([run[code] for run in runs])) for code in runs[0]},
            "constant_classes": sorted(constant),
        }
    return results


def _fit_and_score(
    x: np.ndarray, y: np.ndarray, test_x: np.ndarray, regularisation: float
) -> tuple[np.ndarray, list[int]]:
    """Standardise, fit one binary logistic regression per class, score test_x → (scores [m, C], the
    classes that were constant in y and got their constant prior as score)."""
    scaler = StandardScaler().fit(x)
    x, test_x = scaler.transform(x), scaler.transform(test_x)
    scores = np.empty((len(test_x), y.shape[1]))
    flat = []
    for c in range(y.shape[1]):
        if y[:, c].all() or not y[:, c].any():
            scores[:, c] = float(y[:, c].mean())
            flat.append(c)
            continue
        # liblinear: same AUROC as lbfgs on standardised embeddings, ~4x quicker on few thousand rows
        model = LogisticRegression(C=regularisation, solver="liblinear", max_iter=1000)
        scores[:, c] = model.fit(x, y[:, c]).decision_function(test_x)
    return scores, flat
