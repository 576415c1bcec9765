"""MELP's beat level on reports without a sentence: "", "..." and "- -" are kept by `--min-report-words 0`
(which the README recommends for label-built reports). Such rows leave the beat term; a batch of only such rows
skips it; the loss and every gradient stay finite."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.beat_alignment import beat_alignment_loss
from models.factory import create_model
from models.objectives.melp import split_sentences

EMPTY_REPORTS = ["", "...", "- -"]


def test_reports_of_punctuation_alone_have_no_sentence():
    assert [split_sentences(report) for report in EMPTY_REPORTS] == [[], [], []]
    assert split_sentences("sinus rhythm. left axis deviation.") == ["sinus rhythm", "left axis deviation"]


def test_a_row_without_a_sentence_leaves_the_beat_term():
    torch.manual_seed(0)
    sentences, beats = F.normalize(torch.randn(4, 3, 8), dim=-1), F.normalize(torch.randn(4, 5, 8), dim=-1)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False], [True, True, True]])
    loss = beat_alignment_loss(sentences, mask, beats, 0.1)
    kept = torch.tensor([0, 2, 3])
    torch.testing.assert_close(loss, beat_alignment_loss(sentences[kept], mask[kept], beats[kept], 0.1))

    beats.requires_grad_(True)
    none = beat_alignment_loss(sentences, torch.zeros_like(mask), beats, 0.1)
    none.backward()
    assert none.item() == 0.0 and torch.equal(beats.grad, torch.zeros_like(beats))


def test_melp_trains_on_a_batch_with_reports_without_a_sentence(shard_batch):
    signals, lead_masks, reports = shard_batch
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective="melp")
    for mixed in ([*EMPTY_REPORTS, *reports[3:]], EMPTY_REPORTS * 2 + EMPTY_REPORTS[:2]):
        model.zero_grad()
        losses = model(model.collate(signals, lead_masks, mixed))
        assert all(torch.isfinite(value) for value in losses.values()), losses
        losses["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
