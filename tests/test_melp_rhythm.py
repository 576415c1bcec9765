"""MELP's rhythm embedding as its authors build it: one attentional pooler of 13 beat queries, LayerNorm,
the ECG projection; its outputs are the beats, their mean the ECG embedding, so the rhythm loss shapes the
beats. C-MELT and METS keep a global query of their own; `ecg.rhythm_pooling` switches either way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.config import ECGTowerConfig
from models.factory import create_model, resolve_config


@pytest.mark.parametrize(("objective", "pooling"), [("melp", "beat-mean"), ("cmelt", "query"), ("mets", "query")])
def test_each_objective_gets_its_authors_rhythm_pooling_unless_overridden(objective, pooling):
    assert resolve_config("merl-vit-tiny", objective).ecg.rhythm_pooling == pooling
    other = "query" if pooling == "beat-mean" else "beat-mean"
    assert resolve_config("tiny", objective, {"ecg.rhythm_pooling": other}).ecg.rhythm_pooling == other
    assert resolve_config("melp-base", "melp").ecg.n_beat_queries == ECGTowerConfig().n_beat_queries == 13


def test_the_ecg_embedding_is_the_mean_of_the_projected_beats(shard_batch):
    signals, lead_masks, _ = shard_batch
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective="melp")
    model.eval()
    assert not hasattr(model.ecg, "global_pooler")
    signal, lead_mask = torch.as_tensor(signals).float(), torch.as_tensor(lead_masks)
    with torch.no_grad():
        out = model.ecg(signal, lead_mask)
        beats = model.ecg_projection(out.beats)  # [B, K, D]
        torch.testing.assert_close(model.encode_ecg(signal, lead_mask), F.normalize(beats.mean(dim=1), dim=-1))
    torch.testing.assert_close(out.beats.mean(dim=-1), torch.zeros(out.beats.shape[:2]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("pooling", "beats_learn"), [("beat-mean", True), ("query", False)])
def test_the_rhythm_loss_alone_shapes_the_beats_only_when_they_make_the_ecg_embedding(
    shard_batch, pooling, beats_learn
):
    signals, lead_masks, reports = shard_batch
    torch.manual_seed(0)
    overrides = {"ecg.rhythm_pooling": pooling, "objective.token_weight": 0.0, "objective.beat_weight": 0.0}
    model, _ = create_model("tiny", objective="melp", overrides=overrides)
    model(model.collate(signals, lead_masks, reports))["loss"].backward()
    assert bool(model.ecg.beat_pooler.query.grad.any()) == beats_learn
