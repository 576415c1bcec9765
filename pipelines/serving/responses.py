"""The bodies the Serve app answers with, one function per route (and /v1/explain's PNG)."""

from __future__ import annotations

import io

import numpy as np

from models.evidence import Evidence
from models.report_generation import DraftedReport
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.preprocess import PreparedSignal
from pipelines.evaluation.ecg_paper import plot_evidence
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


ATTENDED_PATCHES = 5
"""Time patches of the global query's attention in an evidence body (the most attended, best first)."""


def evidence_body(label: str, evidence: Evidence) -> dict:
    """One label's evidence: its score, the leads by attribution (names, best first; missing leads last), the
    top segments (lead name, start and end in seconds from the start of the model's window, weight), the global
    query's ATTENDED_PATCHES most attended time patches, and each beat query's most attended patch (null where
    the objective does not train the beat queries)."""
    attention, beats, patch_s = evidence.pooler_attention, evidence.beat_attention, evidence.patch_s
    return {
        "label": label,
        "score": evidence.score,
        "leads": [STANDARD_LEADS[lead] for lead in evidence.lead_ranking],
        "segments": [
            {"lead": STANDARD_LEADS[s.lead], "start_s": s.start_s, "end_s": s.end_s, "weight": s.weight}
            for s in evidence.top_segments
        ],
        "attention": [] if attention is None else _attended(attention, patch_s, ATTENDED_PATCHES),
        "beat_attention": None if beats is None else [_attended(row, patch_s, 1)[0] for row in beats],
    }


def _attended(weights: np.ndarray, patch_s: float, limit: int) -> list[dict]:
    """weights [N] over time patches → the `limit` largest as {start_s, end_s, weight}, largest first."""
    order = np.argsort(-weights, kind="stable")[:limit]
    return [
        {"start_s": round(i * patch_s, 6), "end_s": round((i + 1) * patch_s, 6), "weight": float(weights[i])}
        for i in order.tolist()
    ]


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
