"""Transfer learning head: the pretrained tower is carried over exactly, the head learns a fixed batch."""

from __future__ import annotations

import torch

from models.classifier import ECGClassifier
from models.factory import create_model

CODES = ["NORM", "AFIB", "PVC"]


def test_classifier_carries_the_pretrained_tower_and_scores_probabilities(tmp_path, shard_batch):
    pretrained, _ = create_model("tiny", objective="melp")
    pretrained.save_pretrained(tmp_path)
    classifier = ECGClassifier.from_pretrained_tower(tmp_path, CODES).eval()
    for name, tensor in pretrained.ecg.state_dict().items():
        torch.testing.assert_close(classifier.ecg.state_dict()[name], tensor, msg=name)
    signal, lead_mask, _ = shard_batch
    probabilities = classifier.predict(torch.from_numpy(signal).float(), torch.from_numpy(lead_mask))
    assert probabilities.shape == (len(signal), len(CODES))
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_classifier_fits_a_fixed_batch_and_trains_its_tower(shard_batch):
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective="melp", overrides={"ecg.lead_drop_prob": 0.0})
    classifier = ECGClassifier(model.config.ecg, CODES, dropout=0.0)
    signal, lead_mask, _ = shard_batch
    targets = torch.tensor([[i % 2, (i // 2) % 2, i == 3] for i in range(len(signal))], dtype=torch.float32)
    batch = {"signal": torch.from_numpy(signal).float(), "lead_mask": torch.from_numpy(lead_mask), "targets": targets}
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    first = classifier(batch)
    assert set(first) == {"bce_loss", "loss"}
    for _ in range(40):
        loss = classifier(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert classifier(batch)["loss"].item() < 0.5 * first["loss"].item()
    poolers = [classifier.ecg.beat_pooler, classifier.ecg.beat_norm]  # MELP's tower: the global embedding is the beats' mean
    trained = [classifier.ecg.patch_projection, classifier.ecg.blocks, *poolers, classifier.head]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for module in trained for p in module.parameters())


def test_classifier_refuses_an_empty_class_list():
    model, _ = create_model("tiny", objective="mets")
    try:
        ECGClassifier(model.config.ecg, [])
    except ValueError as error:
        assert "at least one class" in str(error)
    else:
        raise AssertionError("an empty class list was accepted")
