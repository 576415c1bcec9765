"""The two-tower model: named loss terms, a training signal per objective, frozen METS, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from models.factory import create_model
from models.model import ECGTextModel
from pipelines.data.leads import STANDARD_LEADS

TERMS = {"melp": {"rhythm_loss", "token_loss", "beat_loss"}, "mets": {"contrastive_loss"}}
STEPS = {"melp": 100, "mets": 40}
"""MELP's report embedding is a causal tower's trailing [CLS], which in a random tower starts nearly blind to the
report (every report's [CLS] state alike): its rhythm loss stays near log 8 for ~60 steps (measured), then falls."""


@pytest.mark.parametrize("objective", ["melp", "mets"])
def test_objective_returns_named_terms_and_the_weighted_total(objective, shard_batch):
    model, _ = create_model("tiny", objective=objective)
    losses = model(model.collate(*shard_batch))
    assert set(losses) == TERMS[objective] | {"loss"}
    assert all(value.ndim == 0 and torch.isfinite(value) for value in losses.values())
    if objective == "melp":
        expected = losses["rhythm_loss"] + 2 * losses["token_loss"] + 0.2 * losses["beat_loss"]
        torch.testing.assert_close(losses["loss"], expected)


@pytest.mark.parametrize("objective", ["melp", "mets"])
def test_objective_drives_every_term_down_on_a_fixed_batch(objective, shard_batch):
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective=objective, overrides={"ecg.lead_drop_prob": 0.0})
    batch = model.collate(*shard_batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    first = {name: value.item() for name, value in model(batch).items()}
    for _ in range(STEPS[objective]):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last = {name: value.item() for name, value in model(batch).items()}
    for name in TERMS[objective] | {"loss"}:
        assert last[name] < 0.7 * first[name], (name, first[name], last[name])


def test_mets_text_tower_is_frozen(shard_batch):
    model, _ = create_model("tiny", objective="mets")
    model.train()
    model(model.collate(*shard_batch))["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.text.parameters())
    assert all(p.grad is not None for p in model.ecg_projection.parameters())
    assert not model.text.transformer.training  # no dropout noise in the frozen language model


def test_save_and_load_give_identical_outputs(shard_batch, tmp_path):
    model, _ = create_model("tiny", objective="melp")
    model.eval()
    model.save_pretrained(tmp_path / "export")
    loaded = ECGTextModel.from_pretrained(tmp_path / "export")
    loaded.eval()
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    signal, lead_mask, reports = shard_batch
    signal, lead_mask = torch.as_tensor(signal), torch.as_tensor(lead_mask)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_ecg(signal, lead_mask), model.encode_ecg(signal, lead_mask), rtol=0, atol=0
        )
        torch.testing.assert_close(loaded.encode_reports(reports), model.encode_reports(reports), rtol=0, atol=0)
        batch = model.collate(*shard_batch)
        torch.testing.assert_close(loaded(batch)["loss"], model(batch)["loss"], rtol=0, atol=0)


def test_damaged_or_mismatched_checkpoints_fail_with_a_message(tmp_path):
    model, _ = create_model("tiny", objective="mets")
    export = tmp_path / "export"
    model.save_pretrained(export)
    config = json.loads((export / "config.json").read_text())
    config["model"]["ecg"]["width"] = 64
    config["model"]["ecg"]["heads"] = 4
    (export / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"does not match its config: .*ecg\..* has shape"):
        ECGTextModel.from_pretrained(export)
    model.save_pretrained(export)
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors is damaged or not a safetensors file"):
        ECGTextModel.from_pretrained(export)
    (export / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not a valid model config"):
        ECGTextModel.from_pretrained(export)
    with pytest.raises(ValueError, match="is not a saved model: config.json is missing"):
        ECGTextModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("leads", [("II",), ("I", "II"), ("I", "II", "III", "aVR", "aVL", "aVF"), STANDARD_LEADS])
def test_lead_subsets_are_scored(leads, shard_batch):
    model, _ = create_model("tiny", objective="mets")
    model.eval()
    lead_mask = torch.tensor([name in leads for name in STANDARD_LEADS]).expand(8, 12)
    signal = torch.as_tensor(shard_batch[0]) * lead_mask[..., None]
    with torch.no_grad():
        embedding = model.encode_ecg(signal, lead_mask)
    assert embedding.shape == (8, 32) and torch.isfinite(embedding).all()
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(8))


@pytest.mark.parametrize("objective", ["melp", "cmelt", "mets"])
def test_every_parameter_has_a_dimension_for_deepspeed(objective):
    """DeepSpeed's initial parameter broadcast fails on 0-dim tensors: scalars are stored as shape [1]."""
    model, _ = create_model("tiny", objective=objective)
    assert [name for name, parameter in model.named_parameters() if parameter.dim() == 0] == []
