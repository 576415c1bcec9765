"""Evidence for a zero-shot score: captum's integrated gradients of cosine(encode_ecg(signal), class vector)
against a flat-line baseline (each lead held at its median, the isoelectric level), summed into a lead ranking and the top time segments per lead, beside
the attention of the ECG tower's poolers over its time patches.

    evidence = explain_score(model.eval(), signal, lead_mask, classifier.T)   # one Evidence per ECG × class

The tower centres each lead before reading it, so every flat line is the same input to the model; the median
one matters for where the attribution lands, (signal − baseline) × gradient: against all zeros, a min-max
normalised record's level (its minimum is 0) leaks into every sample's attribution, and deleting the top
samples failed to lower the score more than deleting random ones on a trained export (62 % of synthetic
ECGs against 94 % with the median; `pipelines/evaluation/faithfulness.py`).

Masked leads are zeroed inside the ECG tower before anything reads them, so their gradient, and with it their
attribution, is exactly zero; they rank last. The attention is the model's own routing, not an attribution:
where the global embedding (whose summary the score is computed from: its own query, or for MELP the beat
queries' mean) and, for MELP, the beat queries (trained
against report sentences) read; it is the same for every class of an ECG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients

from models.model import ECGTextModel

DEFAULT_SECONDS_PER_SAMPLE = 1 / 500
"""The shards' sampling interval (500 Hz)."""


@dataclass(frozen=True)
class Segment:
    """A window of one lead, ranked by its summed positive attribution `weight`."""

    lead: int
    start_s: float
    end_s: float
    weight: float


@dataclass(frozen=True, eq=False)
class Evidence:
    """Why ECG `ecg` scored `score` on class `label` (eq=False: the attribution is an array)."""

    ecg: int
    """Index in the batch."""
    label: int
    """Row of `class_vectors`."""
    score: float
    """cosine(encode_ecg(signal), class vector)."""
    attribution: np.ndarray
    """[12, T] float32; sums to score − score(baseline) + delta."""
    lead_ranking: tuple[int, ...]
    """All 12 lead indices, by summed |attribution| (largest first); masked leads last."""
    top_segments: tuple[Segment, ...]
    """At most `top_segments` windows with positive weight, largest first."""
    delta: float
    """IG's convergence delta: sum(attribution) − (score − score(baseline))."""
    pooler_attention: np.ndarray | None = None
    """[N] the global pooler's attention over the N time patches (mean over heads, sums to 1)."""
    beat_attention: np.ndarray | None = None
    """[K, N] each beat query's attention; None where no loss trains the beat pooler (all but MELP)."""
    patch_s: float = 0.0
    """Seconds per time patch: patch n covers [n · patch_s, (n + 1) · patch_s)."""


@dataclass(frozen=True, eq=False)
class PoolerAttention:
    """Where the ECG tower's learned queries read, per ECG of a batch."""

    pooled: np.ndarray
    """[B, N] the global embedding's weights over the N time patches (`ECGTower.rhythm_attention`)."""
    beats: np.ndarray | None
    """[B, K, N] the beat queries' weights, or None where the objective does not train them."""
    patch_s: float
    """Seconds per patch."""


def explain_score(
    model: ECGTextModel,
    signal: torch.Tensor,
    lead_mask: torch.Tensor | None,
    class_vectors: torch.Tensor,
    *,
    steps: int = 32,
    seconds_per_sample: float = DEFAULT_SECONDS_PER_SAMPLE,
    segment_s: float = 0.5,
    top_segments: int = 5,
    internal_batch_size: int = 32,
) -> list[Evidence]:
    """Integrated gradients of each class's zero-shot score, for every ECG of the batch.

    signal [B, 12, T] float; lead_mask [B, 12] bool (None: all leads); class_vectors [C, D], L2-normalised
    (the zero-shot classifier's [D, C] transposed). `steps` interpolation points (Gauss-Legendre);
    `internal_batch_size` bounds how many of the B × steps inputs go through the model at once (never fewer
    than B: captum's floor); 32 keeps merl-vit-tiny's memory small and is as fast per ECG as larger chunks.
    Returns B × C Evidence, ECG-major then class order. The model must be in eval mode (no lead dropping).
    """
    _check_options(steps, seconds_per_sample, segment_s, top_segments, internal_batch_size)
    if model.training:
        raise ValueError("explain_score needs the model in eval mode (call model.eval()): training drops leads")
    parameter = next(model.parameters())
    signal = torch.as_tensor(signal, dtype=torch.float32, device=parameter.device)
    if lead_mask is None:
        lead_mask = torch.ones(signal.shape[:2], dtype=torch.bool, device=signal.device)
    lead_mask = torch.as_tensor(lead_mask, device=signal.device)
    model.ecg.check_inputs(signal, lead_mask)
    class_vectors = torch.as_tensor(class_vectors, dtype=torch.float32, device=signal.device)
    embed_dim = model.config.objective.embed_dim
    if class_vectors.ndim != 2 or class_vectors.shape[1] != embed_dim:
        raise ValueError(f"class_vectors must be [C, {embed_dim}], got {tuple(class_vectors.shape)}")

    with torch.no_grad():
        scores = (model.encode_ecg(signal, lead_mask) @ class_vectors.T).cpu().numpy()  # [B, C]
    attention = pooler_attention(model, signal, lead_mask, seconds_per_sample)
    per_class = []
    for class_vector in class_vectors:
        integrated = IntegratedGradients(lambda x, mask, v=class_vector: model.encode_ecg(x, mask) @ v)
        attributions, deltas = integrated.attribute(
            signal,
            baselines=flat_baseline(signal),
            additional_forward_args=(lead_mask,),
            n_steps=steps,
            internal_batch_size=max(internal_batch_size, signal.shape[0]),
            return_convergence_delta=True,
        )
        per_class.append((attributions.detach().cpu().numpy().astype(np.float32), deltas.detach().cpu().numpy()))

    window = max(1, round(segment_s / seconds_per_sample))
    present = lead_mask.cpu().numpy()
    return [
        Evidence(
            ecg=b,
            label=c,
            score=float(scores[b, c]),
            attribution=per_class[c][0][b],
            lead_ranking=rank_leads(per_class[c][0][b], present[b]),
            top_segments=top_windows(per_class[c][0][b], window, seconds_per_sample, top_segments),
            delta=float(per_class[c][1][b]),
            pooler_attention=attention.pooled[b],
            beat_attention=None if attention.beats is None else attention.beats[b],
            patch_s=attention.patch_s,
        )
        for b in range(signal.shape[0])
        for c in range(class_vectors.shape[0])
    ]


def flat_baseline(signal: torch.Tensor) -> torch.Tensor:
    """signal [B, 12, T] → each lead held at its median over time, [B, 12, T]."""
    return signal.median(dim=-1, keepdim=True).values.expand_as(signal).contiguous()


@torch.no_grad()
def pooler_attention(
    model: ECGTextModel, signal: torch.Tensor, lead_mask: torch.Tensor, seconds_per_sample: float
) -> PoolerAttention:
    """The poolers' attention for signal [B, 12, T] and lead_mask [B, 12] bool (checked by the caller); the
    beat queries' only where the objective trains them (`Objective.trains_beat_pooler`)."""
    tower = model.ecg
    tokens = tower.encode(tower.embed(signal, lead_mask))  # [B, N, W]
    pooled = tower.rhythm_attention(tokens)  # [B, N]
    beats = tower.beat_pooler.attention(tokens) if model.objective.trains_beat_pooler else None  # [B, K, N]
    return PoolerAttention(
        pooled=pooled.float().cpu().numpy(),
        beats=None if beats is None else beats.float().cpu().numpy(),
        patch_s=tower.config.patch_size * seconds_per_sample,
    )


def rank_leads(attribution: np.ndarray, present: np.ndarray) -> tuple[int, ...]:
    """attribution [12, T], present [12] bool → lead indices by summed |attribution|, masked leads last."""
    totals = np.abs(attribution).sum(axis=1)
    return tuple(sorted(range(len(totals)), key=lambda lead: (not present[lead], -totals[lead], lead)))


def top_windows(attribution: np.ndarray, window: int, seconds_per_sample: float, limit: int) -> tuple[Segment, ...]:
    """attribution [12, T] → the `limit` non-overlapping windows of `window` samples per lead (the last one
    shorter when T is not a multiple) with the largest summed positive attribution; windows summing to 0
    are left out."""
    length = attribution.shape[1]
    starts = np.arange(0, length, window)
    weights = np.add.reduceat(np.clip(attribution, 0.0, None), starts, axis=1)  # [12, n_windows]
    order = np.argsort(-weights, axis=None, kind="stable")[:limit]
    segments = []
    for flat in order:
        lead, index = divmod(int(flat), len(starts))
        if weights[lead, index] <= 0.0:
            break
        start = int(starts[index])
        end = min(start + window, length)
        segments.append(
            Segment(lead, start * seconds_per_sample, end * seconds_per_sample, float(weights[lead, index]))
        )
    return tuple(segments)


def _check_options(
    steps: int, seconds_per_sample: float, segment_s: float, top_segments: int, internal_batch_size: int
) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if seconds_per_sample <= 0:
        raise ValueError(f"seconds_per_sample must be positive, got {seconds_per_sample}")
    if segment_s <= 0:
        raise ValueError(f"segment_s must be positive, got {segment_s}")
    if top_segments < 1:
        raise ValueError(f"top_segments must be at least 1, got {top_segments}")
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be at least 1, got {internal_batch_size}")
