"""MELP's beat level against GLoRIA's published formulas and the authors' sentence embeddings.

The reference below is a transliteration of GLoRIA's local loss as the MELP authors run it
(`BeatAlignmentModule`: a loop over reports, bmm attention, two softmaxes, exp-sum-log), written apart
from the module, which batches pairs and pads sentences. Reports without a sentence ("", "...", "- -", kept
by `--min-report-words 0`) leave the beat term; a batch of only such rows skips it; nothing goes NaN."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from models.beat_alignment import beat_alignment_loss
from models.factory import create_model
from models.model import ECGTextModel
from models.report_sentences import sentence_means, sentence_spans, token_sentence_index

EMPTY_REPORTS = ["", "...", "- -"]


def gloria_reference(beats: torch.Tensor, sentences: list[torch.Tensor]) -> torch.Tensor:
    """beats [B, K, D]; sentences: B tensors [S_j, D] (S_j >= 1). GLoRIA with temp1 4, temp2 5, temp3 10."""
    batch_size = beats.shape[0]
    columns = []
    for report in sentences:
        query = report.T.unsqueeze(0).repeat(batch_size, 1, 1)  # [B, D, S]
        context = beats.transpose(1, 2)  # [B, D, K]
        attention = torch.bmm(context.transpose(1, 2), query)  # [B, K, S]
        attention = torch.softmax(attention, dim=-1)  # each beat over the report's sentences
        attention = torch.softmax(attention.transpose(1, 2) * 4.0, dim=-1)  # [B, S, K]: each sentence over beats
        weighted = torch.bmm(context, attention.transpose(1, 2))  # [B, D, S]
        dot = (query * weighted).sum(dim=1)
        cosine = dot / (query.norm(dim=1) * weighted.norm(dim=1)).clamp(min=1e-8)  # [B, S]
        columns.append(torch.log(torch.exp(cosine * 5.0).sum(dim=1, keepdim=True)))
    similarities = torch.cat(columns, dim=1) * 10.0  # [B_ecg, B_text]
    labels = torch.arange(batch_size)
    return (F.cross_entropy(similarities, labels) + F.cross_entropy(similarities.T, labels)) / 2


def padded(sentences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """B tensors [S_j, D] → [B, S, D] with random values in the padding, and the mask [B, S]."""
    width = max(len(s) for s in sentences)
    out = torch.randn(len(sentences), width, sentences[0].shape[1]) * 100
    mask = torch.zeros(len(sentences), width, dtype=torch.bool)
    for row, s in enumerate(sentences):
        out[row, : len(s)], mask[row, : len(s)] = s, True
    return out, mask


def test_the_loss_and_its_gradients_are_glorias_to_1e_5():
    torch.manual_seed(0)
    beats = torch.randn(6, 7, 16, requires_grad=True)
    sentences = [torch.randn(n, 16, requires_grad=True) for n in (1, 4, 2, 3, 4, 1)]
    expected = gloria_reference(beats, sentences)
    expected_grads = torch.autograd.grad(expected, [beats, *sentences])

    stacked, mask = padded([s.detach() for s in sentences])
    stacked.requires_grad_(True)
    beats_again = beats.detach().clone().requires_grad_(True)
    found = beat_alignment_loss(stacked, mask, beats_again)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)
    found.backward()
    torch.testing.assert_close(beats_again.grad, expected_grads[0], rtol=1e-5, atol=1e-5)
    for row, grad in enumerate(expected_grads[1:]):
        torch.testing.assert_close(stacked.grad[row, : len(grad)], grad, rtol=1e-5, atol=1e-5)
    assert torch.equal(stacked.grad[~mask], torch.zeros_like(stacked.grad[~mask]))


def test_sentences_end_at_a_full_stop_keep_trailing_text_and_need_a_word():
    assert [sentence_spans(report) for report in EMPTY_REPORTS] == [[], [], []]
    report = "sinus rhythm. QTc 0.45 s... - -. left axis deviation"
    assert [report[a:b].strip() for a, b in sentence_spans(report)] == ["sinus rhythm.", "QTc 0.45 s.", "left axis deviation"]


def test_a_sentence_is_the_mean_of_its_token_states_in_the_whole_report_pass():
    """The authors' `aggregate_sentence_emb`: split the ids after each '.' token, drop special tokens, mean."""
    model, _ = create_model("tiny", objective="melp")
    text = model.text
    reports = ["sinus rhythm. left axis deviation.", "atrial fibrillation. st depression. low voltage.", "normal ecg."]
    inputs = text.tokenize_with_offsets(reports)
    index = token_sentence_index(reports, inputs["offset_mapping"], inputs["special_tokens_mask"])
    states = torch.randn(*inputs["input_ids"].shape, 5, dtype=torch.float64)
    means, mask = sentence_means(states, index, int(index.max()) + 1)
    assert mask.sum(dim=1).tolist() == [2, 3, 1]

    full_stop, special = text.tokenizer.convert_tokens_to_ids("."), torch.tensor(text.tokenizer.all_special_ids)
    for row, ids in enumerate(inputs["input_ids"]):
        ends = (ids == full_stop).nonzero()[:, 0] + 1
        starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])
        for sentence, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            keep = ~torch.isin(ids[start:end], special)
            torch.testing.assert_close(means[row, sentence], states[row, start:end][keep].mean(dim=0))


def test_a_row_without_a_sentence_leaves_the_beat_term():
    torch.manual_seed(0)
    sentences, beats = torch.randn(4, 3, 8), torch.randn(4, 5, 8)
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False], [True, True, True]])
    loss = beat_alignment_loss(sentences, mask, beats)
    kept = torch.tensor([0, 2, 3])
    torch.testing.assert_close(loss, beat_alignment_loss(sentences[kept], mask[kept], beats[kept]))

    beats.requires_grad_(True)
    none = beat_alignment_loss(sentences, torch.zeros_like(mask), beats)
    none.backward()
    assert none.item() == 0.0 and torch.equal(beats.grad, torch.zeros_like(beats))


def test_melp_trains_on_a_batch_with_reports_without_a_sentence(shard_batch):
    signals, lead_masks, reports = shard_batch
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective="melp")
    for mixed, has_sentences in (([*EMPTY_REPORTS, *reports[3:]], True), (EMPTY_REPORTS * 2 + EMPTY_REPORTS[:2], False)):
        model.zero_grad()
        losses = model(model.collate(signals, lead_masks, mixed))
        assert all(torch.isfinite(value) for value in losses.values()), losses
        losses["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert bool(model.objective.sentence_projection.weight.grad.any()) == has_sentences


@pytest.mark.parametrize("objective, version", [("melp", 2), ("cmelt", 3)])
def test_an_export_from_before_its_objective_became_the_authors_is_refused_with_the_reason(
    tmp_path, objective, version
):
    """MELP before format 3 (GLoRIA's beat level), C-MELT before format 4 (the single masked pass)."""
    model, _ = create_model("tiny", objective=objective)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["format_version"] = version
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=rf"a {objective} export of format_version {version}.*train it again"):
        ECGTextModel.from_pretrained(tmp_path)
