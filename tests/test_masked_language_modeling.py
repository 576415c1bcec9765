"""Masked language modelling: BERT's corruption, the tied prediction head, and MELP's stage-1 objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.factory import create_model
from models.masked_language_modeling import MaskedLMHead, mask_tokens
from models.objectives import objective_names

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
    torch.testing.assert_close(labels[chosen], input_ids[chosen])


def test_each_token_is_chosen_on_its_own_so_short_reports_are_not_over_masked(text_model, tokens):
    """Hugging Face's collator: a Bernoulli(0.25) per eligible token. A row of n eligible tokens has none
    chosen with probability 0.75^n, and its share of chosen tokens is 0.25 whatever n (a fixed count of at
    least one per row masks a 2-token report at 50 %)."""
    _, _, labels, eligible = corrupt(text_model, tokens, 0.25, copies=4000)
    chosen = (labels != IGNORED).view(4000, -1, labels.shape[1]).sum(dim=2).float()  # [copies, 9] per row
    n_eligible = eligible.view(4000, -1, labels.shape[1])[0].sum(dim=1).float()  # [9]
    has_tokens = n_eligible > 0
    assert not chosen[:, ~has_tokens].any()
    none_chosen = (chosen[:, has_tokens] == 0).float().mean(dim=0)
    torch.testing.assert_close(none_chosen, 0.75 ** n_eligible[has_tokens], atol=0.03, rtol=0)
    share = chosen[:, has_tokens].mean(dim=0) / n_eligible[has_tokens]
    torch.testing.assert_close(share, torch.full_like(share, 0.25), atol=0.02, rtol=0)


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


def test_head_scores_masked_positions_against_the_tied_embeddings_plus_a_bias(text_model):
    torch.manual_seed(0)
    embeddings = text_model.text.word_embeddings
    head = MaskedLMHead(embeddings.embedding_dim, embeddings.num_embeddings)
    assert head.bias.shape == (embeddings.num_embeddings,) and not head.bias.any()  # BERT's: zero at the start
    with torch.no_grad():
        head.bias.normal_()
    hidden = torch.randn(3, 7, embeddings.embedding_dim)
    labels = torch.full((3, 7), IGNORED)
    labels[0, 2], labels[2, 5], labels[2, 6] = 11, 2000, 30000
    loss = head(hidden, labels, embeddings)
    normed = F.layer_norm(F.gelu(head.dense(hidden)), (embeddings.embedding_dim,), head.norm.weight, head.norm.bias)
    logits = normed @ embeddings.weight.T + head.bias  # [3, 7, V]
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORED)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert embeddings.weight.grad is not None and embeddings.weight.grad[[11, 2000, 30000]].abs().sum() > 0
    assert head.bias.grad[[11, 2000, 30000]].abs().min() > 0
    embeddings.weight.grad = None


def test_objectives_size_the_head_to_the_text_towers_vocabulary(shard_batch):
    for objective in ("melp-lm", "cmelt"):
        model, _ = create_model("tiny", objective=objective)
        head = model.objective.head if objective == "melp-lm" else model.objective.mlm_head
        assert head.bias.shape == (model.text.vocab_size,)


def test_a_batch_with_nothing_to_mask_gives_a_zero_loss_with_a_gradient_path(text_model):
    """Reports that are empty after the special tokens: a zero, not NaN, and backward reaches every
    parameter (with zeros), as data-parallel training needs."""
    text_model.train().zero_grad()
    empty = text_model.text.tokenize(["", ""])  # [CLS] [SEP] only
    losses = text_model(empty)
    assert losses["mlm_loss"].item() == 0.0 and losses["loss"].requires_grad
    losses["loss"].backward()
    for parameter in text_model.objective.parameters():
        assert parameter.grad is not None and not parameter.grad.any()
    assert all(p.grad is not None for p in text_model.text.parameters() if p.requires_grad)
    text_model.zero_grad()


def test_cmelt_trains_on_a_batch_of_empty_reports(shard_batch):
    """No maskable token and no N3S negative (one text): every term finite, backward runs."""
    model, _ = create_model("tiny", objective="cmelt")
    signal, lead_mask, _ = shard_batch
    losses = model.train()(model.collate(signal, lead_mask, [""] * len(signal)))
    assert losses["mlm_loss"].item() == 0.0 and all(torch.isfinite(value) for value in losses.values())
    losses["loss"].backward()


def test_melp_lm_is_registered_and_trains_only_the_text_tower(shard_batch):
    assert "melp-lm" in objective_names()
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
