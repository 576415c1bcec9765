"""Recall@K of `--mode retrieval` on constructed embeddings: a perfect pairing finds everything, random
embeddings find about K/N, and repeated report texts count as one relevant text."""

from __future__ import annotations

import numpy as np

from pipelines.evaluation.retrieval import chance_recall, recall_at_k, retrieval_figures


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_a_perfect_pairing_recalls_everything():
    rng = np.random.default_rng(0)
    ecg_x = _unit(rng.normal(size=(500, 32)))
    figures = recall_at_k(ecg_x, _unit(ecg_x + 0.01 * rng.normal(size=ecg_x.shape)), np.arange(500))
    assert figures == {d: {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0} for d in ("ecg_to_report", "report_to_ecg")}


def test_random_embeddings_recall_about_k_over_n():
    rng = np.random.default_rng(1)
    n = 2000
    figures = recall_at_k(_unit(rng.normal(size=(n, 64))), _unit(rng.normal(size=(n, 64))), np.arange(n))
    chance = chance_recall(np.arange(n), n)
    for direction in ("ecg_to_report", "report_to_ecg"):
        for k in (1, 5, 10):
            assert np.isclose(chance[direction][f"R@{k}"], k / n)
            assert abs(figures[direction][f"R@{k}"] - k / n) < 4 * np.sqrt(k / n / n) + 1 / n


def test_repeated_reports_are_one_relevant_text_and_rows_without_one_are_left_out():
    """Three ECGs share a text: each finds it at rank 1 when its embedding points at it, and that text finds
    one of them at rank 1. Rows without a report are counted, not queried."""
    rng = np.random.default_rng(2)
    texts = ["sinus rhythm. normal ecg.", "atrial fibrillation. abnormal ecg.", "sinus bradycardia. abnormal ecg."]
    text_x = _unit(rng.normal(size=(3, 16)))
    by_text = dict(zip(sorted(texts), text_x))  # np.unique sorts the distinct texts
    reports = [texts[0], texts[0], "", texts[1], texts[0], texts[2], " "]
    ecg_x = _unit(np.stack([by_text[r] if r.strip() else rng.normal(size=16) for r in reports]))

    figures = retrieval_figures(ecg_x, reports, lambda batch: np.stack([by_text[t] for t in batch]))
    assert (figures["rows"], figures["without_report"], figures["distinct_reports"]) == (5, 2, 3)
    assert figures["ecg_to_report"]["R@1"] == figures["report_to_ecg"]["R@1"] == 1.0
    assert figures["chance"]["ecg_to_report"]["R@1"] == 1 / 3
    # A text held by 3 of 5 ECGs is found in the top 1 of a random ranking 3/5 of the time.
    assert np.isclose(figures["chance"]["report_to_ecg"]["R@1"], (3 / 5 + 1 / 5 + 1 / 5) / 3)


def test_ties_count_against_the_query():
    """Identical embeddings everywhere: nothing is ranked above anything, so only K >= gallery size hits."""
    ecg_x = np.ones((20, 4), np.float32) / 2
    figures = recall_at_k(ecg_x, np.ones((20, 4), np.float32) / 2, np.arange(20))
    assert figures["ecg_to_report"] == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0}
