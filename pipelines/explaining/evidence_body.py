"""One label's evidence as JSON-ready data: what /v1/score's and /v1/explain's bodies, the `evidence` column of
`pipelines.score --explain` and report.md's Evidence section all show."""

from __future__ import annotations

import numpy as np

from models.evidence import Evidence
from pipelines.data.leads import STANDARD_LEADS

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
