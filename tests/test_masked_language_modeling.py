"""Masked language modelling: BERT's corruption, the tied prediction head, and MELP's stage-1 objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.config import OBJECTIVES
from models.factory import create_model
from models.masked_language_modeling import MaskedLMHead, mask_tokens

IGNORED = -100


@pytest.fixture(scope="module")
def text_model():
    """A tiny model whose text tower is all these tests use."""
    model, _ = create_model("tiny", objective="melp-lm")
    return model


@pytest.fixture(scope="module")
def tokens(text_model, shard_batch):
    """The fixture's 8 reports plus an empty one (no eligible token), tokenized: input_ids, attention_mask [9, L]."""
    return text_model.text.tokenize(shard_batch[2] + [""])


def corrupt(text_model, tokens, ratio: float, copies: int, seed: int = 0):
    """`copies` independent draws at once (the batch repeated): input_ids, masked_ids, labels, eligible [copies * 9, L]."""
    text = text_model.text
    input_ids = tokens["input_ids"].repeat(copies, 1)
    attention_mask = tokens["attention_mask"].repeat(copies, 1)
    special = text.tokenizer.all_special_ids
    generator = torch.Generator().manual_seed(seed)
    masked_ids, labels = mask_tokens(
        input_ids, attention_mask, special, text.mask_token_id, text.vocab_size, ratio, generator
    )
    eligible = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special))
    return input_ids, masked_ids, labels, eligible


@pytest.mark.parametrize("ratio", [0.15, 0.25, 0.5])
def test_the_requested_fraction_of_eligible_tokens_is_chosen(text_model, tokens, ratio):
    input_ids, _, labels, eligible = corrupt(text_model, tokens, ratio, copies=2000)
    chosen = labels != IGNORED
    assert (chosen & ~eligible).sum() == 0  # never special ([CLS], [SEP], …) or pad tokens
    assert abs(chosen.sum().item() / eligible.sum().item() - ratio) < 0.005
    rows_with_tokens = eligible.any(dim=1)
    assert chosen[rows_with_tokens].any(dim=1).all() and not chosen[~rows_with_tokens].any()
    torch.testing.assert_close(labels[chosen], input_ids[chosen])


def test_at_least_one_token_per_row_that_has_any(text_model, tokens):
    _, _, labels, eligible = corrupt(text_model, tokens, 0.001, copies=50)
    per_row = (labels != IGNORED).sum(dim=1)
    assert (per_row[eligible.any(dim=1)] == 1).all() and (per_row[~eligible.any(dim=1)] == 0).all()


def test_chosen_tokens_follow_80_10_10_and_nothing_else_changes(text_model, tokens):
    input_ids, masked_ids, labels, _ = corrupt(text_model, tokens, 0.25, copies=2000)
    chosen = labels != IGNORED
    assert torch.equal(masked_ids[~chosen], input_ids[~chosen])
    mask_id = text_model.text.mask_token_id
    became_mask = (masked_ids[chosen] == mask_id).float().mean().item()
    unchanged = (masked_ids[chosen] == input_ids[chosen]).float().mean().item()
    assert abs(became_mask - 0.8) < 0.01
    assert abs(unchanged - 0.1) < 0.01  # plus the ~1/30522 random draws that hit the original token
    assert abs(1 - became_mask - unchanged - 0.1) < 0.01
    assert masked_ids.max() < text_model.text.vocab_size


def test_head_scores_masked_positions_against_the_tied_embeddings(text_model):
    torch.manual_seed(0)
    embeddings = text_model.text.word_embeddings
    head = MaskedLMHead(embeddings.embedding_dim)
    hidden = torch.randn(3, 7, embeddings.embedding_dim)
    labels = torch.full((3, 7), IGNORED)
    labels[0, 2], labels[2, 5], labels[2, 6] = 11, 2000, 30000
    loss = head(hidden, labels, embeddings)
    logits = F.layer_norm(F.gelu(head.dense(hidden)), (embeddings.embedding_dim,), head.norm.weight, head.norm.bias)
    expected = F.cross_entropy((logits @ embeddings.weight.T).flatten(0, 1), labels.flatten(), ignore_index=IGNORED)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert embeddings.weight.grad is not None and embeddings.weight.grad[[11, 2000, 30000]].abs().sum() > 0
    embeddings.weight.grad = None


def test_melp_lm_is_registered_and_trains_only_the_text_tower(shard_batch):
    assert "melp-lm" in OBJECTIVES
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective="melp-lm")
    batch = model.collate(*shard_batch)
    assert set(model(batch)) == {"mlm_loss", "loss"}
    text_only = {key: batch[key] for key in ("input_ids", "attention_mask")}  # the ECG side is never read

    def evaluate() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return model.eval()(text_only)["mlm_loss"].item()

    first = evaluate()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(40):
        losses = model(text_only)
        torch.testing.assert_close(losses["loss"], losses["mlm_loss"])
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    assert evaluate() < 0.5 * first
    assert all(p.grad is None for p in model.ecg.parameters())
    assert all(p.grad is None for p in model.ecg_projection.parameters())
    assert all(p.grad is not None for p in model.objective.parameters())
