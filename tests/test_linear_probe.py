"""Linear probe on frozen embeddings: separable features are found, noise is not, subsets are as stated."""

from __future__ import annotations

import numpy as np

from pipelines.evaluation.linear_probe import MIN_ROWS, linear_probe

CODES = ["a", "b", "c"]


def _features(n: int, separable: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x [n, 16], y [n, 3] bool: with `separable`, each label shifts its own feature by 4 standard deviations."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, 3)) < 0.3
    x = rng.normal(size=(n, 16))
    if separable:
        x[:, :3] += 4.0 * y
    return x, y


def test_separable_features_give_auroc_near_one_and_noise_near_half():
    train_x, train_y = _features(600, True, 0)
    test_x, test_y = _features(300, True, 1)
    figures = linear_probe(train_x, train_y, test_x, test_y, CODES)
    assert figures["100%"]["macro_auroc_mean"] > 0.98 and figures["10%"]["macro_auroc_mean"] > 0.95
    noise_x, _ = _features(600, False, 2)
    noise = linear_probe(noise_x, train_y, _features(300, False, 3)[0], test_y, CODES)
    assert abs(noise["100%"]["macro_auroc_mean"] - 0.5) < 0.08


def test_fractions_give_the_stated_rows_and_seeds_a_spread():
    train_x, train_y = _features(500, True, 0)
    test_x, test_y = _features(200, True, 1)
    figures = linear_probe(train_x, train_y, test_x, test_y, CODES, seeds=(0, 1, 2, 3))
    assert [figures[f]["train_rows"] for f in ("1%", "10%", "100%")] == [MIN_ROWS, 50, 500]
    assert len(figures["10%"]["seeds"]) == 4 and figures["10%"]["macro_auroc_std"] > 0
    assert figures["100%"]["seeds"] == [0] and figures["100%"]["macro_auroc_std"] == 0


def test_a_class_missing_from_a_small_subset_is_scored_as_a_constant_not_a_crash():
    train_x, train_y = _features(400, True, 0)
    train_y[:, 2] = False
    train_y[:3, 2] = True  # 3 positives in 400 rows: most 8-row subsets have none
    test_x, test_y = _features(200, True, 1)
    figures = linear_probe(train_x, train_y, test_x, test_y, CODES)
    assert "c" in figures["1%"]["constant_classes"]
    assert set(figures["1%"]["per_class_auroc"]) == set(CODES)
