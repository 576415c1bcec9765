"""`pipelines.evaluate --mode retrieval`: Recall@K of ECG→report and report→ECG search on one split.

    figures = retrieval_figures(ecg_x, reports, model.encode_reports)   # ecg_x [n, D], n report texts

Protocol (image-text retrieval, with templated reports taken into account): reports repeat, so relevance
is "the same report text". ECG→report: every ECG queries the gallery of the split's distinct report texts
and hits at K when its own text is among the K best. Report→ECG: every distinct text queries the split's
ECGs and hits at K when any ECG with that text is among the K best. Recall@K is the share of queries that
hit; ties count against the query. Rows without a report are left out (and counted). `chance` is the
expected recall of a random ranking under the same protocol, the floor a model must clear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

KS = (1, 5, 10)
CHUNK = 1024
PROTOCOL = (
    "relevance is the same report text: ECG→report ranks the split's distinct report texts for each ECG (a hit "
    "at K when its own text is in the top K); report→ECG ranks the split's ECGs for each distinct text (a hit at "
    "K when any ECG with that text is in the top K); cosine similarity, ties counted against the query"
)


def retrieval_figures(
    ecg_x: np.ndarray, reports: Sequence[str], encode_texts: Callable[[list[str]], np.ndarray]
) -> dict:
    """ecg_x [n, D] L2-normalised ECG embeddings and their n reports ("" for none); `encode_texts` maps
    strings to L2-normalised [m, D]. The figures that metrics.json's "retrieval" holds."""
    kept = [i for i, report in enumerate(reports) if report.strip()]
    if not kept:
        raise ValueError("retrieval needs reports, and no row of the split has one")
    texts, text_of_row = np.unique([reports[i] for i in kept], return_inverse=True)
    return {
        "rows": len(kept),
        "without_report": len(reports) - len(kept),
        "distinct_reports": len(texts),
        **recall_at_k(ecg_x[kept], encode_texts(texts.tolist()), text_of_row),
        "chance": chance_recall(text_of_row, len(texts)),
    }


def recall_at_k(ecg_x: np.ndarray, text_x: np.ndarray, text_of_row: np.ndarray, ks: Sequence[int] = KS) -> dict:
    """ecg_x [n, D], text_x [m, D] (distinct texts), text_of_row [n] int (row i's text) →
    {"ecg_to_report": {"R@K": …}, "report_to_ecg": {"R@K": …}}."""
    n, m = len(ecg_x), len(text_x)
    ecg_ranks = np.empty(n, dtype=np.int64)  # rank of each ECG's own text among the m texts
    for start in range(0, n, CHUNK):
        scores = ecg_x[start : start + CHUNK] @ text_x.T  # [c, m]
        rows = np.arange(len(scores))
        own = scores[rows, text_of_row[start : start + CHUNK]]  # [c]
        ecg_ranks[start : start + CHUNK] = (scores >= own[:, None]).sum(axis=1) - 1
    text_ranks = np.empty(m, dtype=np.int64)  # rank of each text's best relevant ECG among the n ECGs
    for start in range(0, m, CHUNK):
        scores = text_x[start : start + CHUNK] @ ecg_x.T  # [c, n]
        relevant = text_of_row[None, :] == np.arange(start, start + len(scores))[:, None]  # [c, n]
        best = np.where(relevant, scores, -np.inf).max(axis=1)  # [c]
        text_ranks[start : start + CHUNK] = ((scores >= best[:, None]) & ~relevant).sum(axis=1)
    return {
        "ecg_to_report": {f"R@{k}": float((ecg_ranks < k).mean()) for k in ks},
        "report_to_ecg": {f"R@{k}": float((text_ranks < k).mean()) for k in ks},
    }


def chance_recall(text_of_row: np.ndarray, m: int, ks: Sequence[int] = KS) -> dict:
    """Expected Recall@K of a uniformly random ranking: K/m for ECG→report; for report→ECG the chance that
    K ECGs drawn without replacement from n include one of the text's c ECGs, 1 - C(n-c, K) / C(n, K)."""
    n = len(text_of_row)
    counts = np.bincount(text_of_row, minlength=m)  # [m]
    report_to_ecg = {}
    for k in ks:
        miss = np.ones(m)
        for j in range(min(k, n)):  # C(n-c, K) / C(n, K) = prod_j (n-c-j) / (n-j)
            miss *= np.clip(n - counts - j, 0, None) / (n - j)
        report_to_ecg[f"R@{k}"] = float((1 - miss).mean())
    return {
        "ecg_to_report": {f"R@{k}": min(1.0, k / m) for k in ks},
        "report_to_ecg": report_to_ecg,
    }


def retrieval_lines(retrieval: dict) -> list[str]:
    """report.md's section for the "retrieval" figures (with their "baselines" beside)."""
    methods = {"model": retrieval, **retrieval.get("baselines", {}), "chance": retrieval["chance"]}
    header = [f"{direction} R@{k}" for direction in ("ECG→report", "report→ECG") for k in KS]
    lines = [
        "",
        "## Retrieval",
        "",
        f"{retrieval['rows']:,} ECGs and {retrieval['distinct_reports']:,} distinct report texts "
        f"(left out: {retrieval['without_report']:,} rows without a report). Protocol: {PROTOCOL}.",
        "",
        "| method | " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * len(header),
    ]
    for name, figures in methods.items():
        values = [figures[direction][f"R@{k}"] for direction in ("ecg_to_report", "report_to_ecg") for k in KS]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return lines
