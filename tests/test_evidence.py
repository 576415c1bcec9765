"""Integrated-gradients evidence for zero-shot scores on the real tiny model: shapes and bounds, completeness
against the model's own scores, masked leads, ranking and segments consistent with the attribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.evidence import explain_score, flat_baseline, pooler_attention, rank_leads, top_windows
from models.factory import create_model

T = 5000
SECONDS_PER_SAMPLE = 1 / 500


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny")[0].eval()


@pytest.fixture(scope="module")
def batch(model):
    """Two ECGs (the second with leads 3 and 7 masked) and three unit class vectors [3, D]: ECG 0's own
    embedding (so its score is 1) and two random directions."""
    generator = torch.Generator().manual_seed(1)
    signal = torch.randn(2, 12, T, generator=generator)
    lead_mask = torch.ones(2, 12, dtype=torch.bool)
    lead_mask[1, [3, 7]] = False
    with torch.no_grad():
        own = model.encode_ecg(signal[:1], lead_mask[:1])  # [1, D]
    others = F.normalize(torch.randn(2, own.shape[1], generator=generator), dim=-1)
    return signal, lead_mask, torch.cat([own, others])


@pytest.fixture(scope="module")
def evidence(model, batch):
    return explain_score(model, *batch, steps=32, top_segments=5)


def test_one_evidence_per_ecg_and_class_with_bounded_shapes(evidence, batch):
    signal, _, class_vectors = batch
    assert [(e.ecg, e.label) for e in evidence] == [(b, c) for b in range(2) for c in range(3)]
    for e in evidence:
        assert e.attribution.shape == (12, T) and e.attribution.dtype == np.float32
        assert sorted(e.lead_ranking) == list(range(12))
        assert 1 <= len(e.top_segments) <= 5
        for segment in e.top_segments:
            assert 0 <= segment.lead < 12 and segment.weight > 0
            assert 0.0 <= segment.start_s < segment.end_s <= T * SECONDS_PER_SAMPLE
            assert segment.end_s - segment.start_s == pytest.approx(0.5)
    assert evidence[0].score == pytest.approx(1.0, abs=1e-5)  # class 0 is ECG 0's own embedding


def test_pooler_attention_rides_along_per_ecg_and_beats_only_where_trained(model, evidence, batch):
    signal, lead_mask, _ = batch
    n_patches = T // model.config.ecg.patch_size
    for e in evidence:
        assert e.pooler_attention.shape == (n_patches,) and e.pooler_attention.sum() == pytest.approx(1.0, abs=1e-5)
        assert e.beat_attention.shape == (model.config.ecg.n_beat_queries, n_patches)  # the tiny export is MELP
        assert e.patch_s == pytest.approx(model.config.ecg.patch_size * SECONDS_PER_SAMPLE)
    assert np.array_equal(evidence[0].pooler_attention, evidence[2].pooler_attention)  # one ECG, every class
    assert not np.allclose(evidence[0].pooler_attention, evidence[3].pooler_attention)
    torch.manual_seed(0)
    mets = create_model("tiny", objective="mets")[0].eval()
    attention = pooler_attention(mets, signal, lead_mask, SECONDS_PER_SAMPLE)
    assert attention.beats is None and attention.pooled.shape == (2, n_patches)


def test_attribution_is_complete_up_to_the_convergence_delta(model, evidence, batch):
    signal, lead_mask, class_vectors = batch
    with torch.no_grad():
        at_baseline = (model.encode_ecg(flat_baseline(signal), lead_mask) @ class_vectors.T).numpy()  # [2, 3]
    for e in evidence:
        gap = e.score - float(at_baseline[e.ecg, e.label])
        assert float(e.attribution.sum(dtype=np.float64)) == pytest.approx(gap + e.delta, abs=1e-4)
        assert abs(e.delta) <= 0.05 * abs(gap) + 1e-3, "32 Gauss-Legendre steps should converge on the tiny model"


def test_masked_leads_have_zero_attribution_and_rank_last(evidence):
    for e in evidence:
        if e.ecg == 1:
            assert not e.attribution[[3, 7]].any()
            assert set(e.lead_ranking[-2:]) == {3, 7}
            assert all(segment.lead not in (3, 7) for segment in e.top_segments)
        assert np.abs(e.attribution).sum() > 0


def test_ranking_and_segments_follow_the_attribution(evidence):
    for e in evidence:
        present = [lead for lead in e.lead_ranking if e.attribution[lead].any()]
        totals = np.abs(e.attribution[present]).sum(axis=1)
        assert np.all(np.diff(totals) <= 0)
        windows = np.clip(e.attribution, 0, None).reshape(12, -1, 250).sum(axis=2)  # 0.5 s at 500 Hz
        best = np.sort(windows, axis=None)[::-1][: len(e.top_segments)]
        np.testing.assert_allclose([s.weight for s in e.top_segments], best, rtol=1e-5)
        for segment in e.top_segments:
            start = round(segment.start_s / SECONDS_PER_SAMPLE)
            assert windows[segment.lead, start // 250] == pytest.approx(segment.weight, rel=1e-5)


def test_deterministic(model, batch, evidence):
    again = explain_score(model, *batch, steps=32, top_segments=5, internal_batch_size=16)
    for first, second in zip(evidence, again, strict=True):
        np.testing.assert_allclose(first.attribution, second.attribution, rtol=1e-4, atol=1e-7)
        assert first.lead_ranking == second.lead_ranking


def test_segments_and_ranking_helpers_on_a_known_attribution():
    attribution = np.zeros((12, 1000), dtype=np.float32)
    attribution[5, 300:350] = 2.0  # window 1 of lead 5 (250-sample windows)
    attribution[2, 0:10] = 1.0
    attribution[9, :] = -3.0  # negative: ranks first by |attribution|, never a segment
    segments = top_windows(attribution, 250, SECONDS_PER_SAMPLE, limit=5)
    assert [(s.lead, s.start_s, s.end_s) for s in segments] == [(5, 0.5, 1.0), (2, 0.0, 0.5)]
    assert segments[0].weight == pytest.approx(100.0)
    present = np.ones(12, dtype=bool)
    present[0] = False
    assert rank_leads(attribution, present)[:3] == (9, 5, 2)
    assert rank_leads(attribution, present)[-1] == 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"segment_s": 0}, "segment_s"),
        ({"top_segments": 0}, "top_segments"),
        ({"seconds_per_sample": -1}, "seconds_per_sample"),
        ({"internal_batch_size": 0}, "internal_batch_size"),
    ],
)
def test_bad_options_name_the_field(model, batch, options, field):
    with pytest.raises(ValueError, match=field):
        explain_score(model, *batch, **options)


def test_bad_inputs_are_named(model, batch):
    signal, lead_mask, class_vectors = batch
    with pytest.raises(ValueError, match="class_vectors"):
        explain_score(model, signal, lead_mask, class_vectors[:, :5])
    with pytest.raises(ValueError, match="lead_mask"):
        explain_score(model, signal, lead_mask[:, :6], class_vectors)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            explain_score(model, signal, lead_mask, class_vectors)
    finally:
        model.eval()
