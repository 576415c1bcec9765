"""The bodies the Serve app answers with, one function per route (and /v1/explain's PNG)."""

from __future__ import annotations

import io

import numpy as np

from models.evidence import Evidence
from models.report_generation import DraftedReport
from pipelines.data.preprocess import PreparedSignal
from pipelines.explaining.ecg_paper import plot_evidence
from pipelines.explaining.evidence_body import evidence_body
from pipelines.serving.requests import ScoreOptions
from pipelines.serving.scorer import Scorer


def score_labels(scorer: Scorer, options: ScoreOptions) -> list[str]:
    """The request's labels (repeats dropped), or every class of the served task."""
    return list(dict.fromkeys(options.labels)) if options.labels else list(scorer.default_labels)


def scores_body(
    scorer: Scorer,
    options: ScoreOptions,
    ids: list[str],
    embeddings: np.ndarray,
    flags: list[list[str]],
    evidence: list[list[tuple[str, Evidence]]] | None = None,
) -> dict:
    """/v1/score: each ECG's score per label (embeddings [n, D] against the request's labels or the task's),
    its `top_k` labels best first, its flags, and with `evidence` (per ECG, (label, Evidence) per explained
    label) an "evidence" list."""
    labels = score_labels(scorer, options)
    scores = scorer.scores(embeddings, labels)  # [n, C]
    names = scorer.label_names(labels)
    results = []
    for ecg_id, row, row_flags in zip(ids, scores, flags):
        top = np.argsort(-row)[: options.top_k]
        results.append(
            {
                "id": ecg_id,
                "scores": dict(zip(labels, row.tolist())),
                "top": [{"label": labels[i], "name": names[i], "score": float(row[i])} for i in top],
                "flags": row_flags,
            }
        )
    for result, explained in zip(results, evidence or []):
        result["evidence"] = [evidence_body(label, item) for label, item in explained]
    return {"labels": labels, "names": names, "results": results}


def explain_body(ecg_id: str, label: str, name: str, evidence: Evidence, flags: list[str]) -> dict:
    """/v1/explain with format=json: the ECG's id, the label's readable name, its evidence (`evidence_body`), flags."""
    return {"id": ecg_id, "name": name, **evidence_body(label, evidence), "flags": flags}


def explain_png(ecg_id: str, label: str, name: str, evidence: Evidence, prepared: PreparedSignal, fs: float) -> bytes:
    """/v1/explain: the prepared ECG (the model's input units) on paper with `evidence`, titled with the label,
    its name and its score, as PNG bytes."""
    title = f"{label}: {name} ({ecg_id})" if name != label else f"{label} ({ecg_id})"
    figure = plot_evidence(prepared.signal, fs, evidence, title, lead_mask=prepared.lead_mask)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def reports_body(ids: list[str], drafts: list[DraftedReport], flags: list[list[str]]) -> dict:
    """/v1/report: each ECG's draft, the sum of its tokens' log-probabilities, its token count and flags."""
    return {
        "results": [
            {"id": ecg_id, "report": draft.text, "logprob": draft.logprob, "tokens": draft.tokens, "flags": row_flags}
            for ecg_id, draft, row_flags in zip(ids, drafts, flags)
        ]
    }


def search_body(ids: list[str], hits: list[list[tuple[str, float]]]) -> dict:
    """/v1/search: per query, its nearest ECGs of the index (ecg_id, cosine score), best first."""
    return {
        "results": [
            {"id": query_id, "hits": [{"ecg_id": ecg_id, "score": float(score)} for ecg_id, score in row]}
            for query_id, row in zip(ids, hits)
        ]
    }
