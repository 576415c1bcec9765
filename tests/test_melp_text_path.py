"""MELP's text path as its authors built it (HKU-MedAI/MELP melp_model.py): the causal text tower's rows and
states equal the authors' `_tokenize` + `_encode_text` whatever the batch; the trailing [CLS] reads the whole
report and no other state reads ahead; the caption decoder equals open_clip's `MultimodalTransformer` written
out from its formulas; the token level trains the text tower; freezing spares the embeddings; any causal LM by
folder works, and an encoder that ignores `is_decoder` is refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DistilBertConfig, DistilBertModel, GPT2Config, GPT2Model, PreTrainedTokenizerFast

from models.config import TextTowerConfig
from models.factory import create_model
from models.multimodal_decoder import MultimodalCaptioner
from models.text_tower import TextTower

REPORTS = ["sinus rhythm. left axis deviation.", "normal ecg", "", "atrial fibrillation with rapid ventricular response"]
MAX_LENGTH = 16


@pytest.fixture(scope="module")
def tower() -> TextTower:
    torch.manual_seed(0)
    return TextTower(TextTowerConfig(name_or_path="random:tiny", causal=True, max_length=MAX_LENGTH)).eval()


def authors_rows(tower: TextTower, reports: list[str]) -> dict[str, torch.Tensor]:
    """The authors' `_tokenize` then `_encode_text`'s [CLS]: "[BOS] " + report with BERT's specials, padded to
    max_length, the leading [CLS] dropped, one [CLS] appended after the padding."""
    rows = tower.tokenizer(
        [f"[BOS] {report}" for report in reports], truncation=True, max_length=MAX_LENGTH, padding="max_length",
        return_tensors="pt",
    )
    ids, mask = rows["input_ids"][:, 1:], rows["attention_mask"][:, 1:]
    cls = torch.full((len(reports), 1), tower.tokenizer.cls_token_id)
    return {"input_ids": torch.cat([ids, cls], dim=1), "attention_mask": torch.cat([mask, torch.ones_like(cls)], dim=1)}


def test_rows_and_states_equal_the_authors_whatever_the_batch(tower):
    ours, theirs = tower.tokenize(REPORTS), authors_rows(tower, REPORTS)
    assert theirs["input_ids"].shape[1] == MAX_LENGTH and ours["input_ids"].shape[1] < MAX_LENGTH  # padded less
    with torch.no_grad():
        our_out = tower(**ours)
        their_states = tower.transformer(**theirs).last_hidden_state  # [B, max_length, H], default positions
    torch.testing.assert_close(our_out.pooled, their_states[:, -1], rtol=0, atol=1e-5)  # the trailing [CLS]
    for row in range(len(REPORTS)):
        n = int(ours["attention_mask"][row, :-1].sum())  # [BOS] words [SEP]
        assert ours["input_ids"][row, :n].tolist() == theirs["input_ids"][row, :n].tolist()
        assert theirs["input_ids"][row, n:-1].eq(tower.pad_token_id).all()
        torch.testing.assert_close(our_out.tokens[row, :n], their_states[row, :n], rtol=0, atol=1e-5)
    assert ours["input_ids"][:, 0].eq(tower.tokenizer.convert_tokens_to_ids("[BOS]")).all()
    with torch.no_grad():
        alone = torch.cat([tower(**tower.tokenize([report])).pooled for report in REPORTS])
    torch.testing.assert_close(our_out.pooled, alone, rtol=0, atol=1e-5)


def test_only_the_trailing_cls_reads_the_whole_report(tower):
    rows = tower.tokenize(["sinus rhythm. left axis deviation.", "sinus rhythm. right axis deviation."])
    differ = (rows["input_ids"][0] != rows["input_ids"][1]).nonzero().flatten().tolist()
    assert len(differ) == 1
    with torch.no_grad():
        out = tower(**rows)
    torch.testing.assert_close(out.tokens[0, : differ[0]], out.tokens[1, : differ[0]], rtol=0, atol=1e-6)
    assert not torch.allclose(out.pooled[0], out.pooled[1], atol=1e-4)


def open_clip_multimodal_logits(captioner: MultimodalCaptioner, text: torch.Tensor, ecg_queries: torch.Tensor,
                                heads: int) -> torch.Tensor:
    """open_clip's MultimodalTransformer.forward, written out with functional ops from its parameters."""

    def attend(block, query, kv, causal):
        weight, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
        width = query.shape[-1]
        q, k, v = (F.linear(x, weight[i * width : (i + 1) * width], bias[i * width : (i + 1) * width])
                   for i, x in enumerate((query, kv, kv)))
        split = lambda x: x.unflatten(-1, (heads, width // heads)).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        out = (scores.softmax(-1) @ split(v)).transpose(1, 2).flatten(2)
        return block.attn.out_proj(out)

    def norm(ln, x):
        return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

    def mlp(block, x):
        return block.mlp.c_proj(F.gelu(block.mlp.c_fc(x)))

    x = text
    for self_block, cross_block in zip(captioner.resblocks, captioner.cross_attn, strict=True):
        q = norm(self_block.ln_1, x)
        x = x + attend(self_block, q, q, causal=True)
        x = x + mlp(self_block, norm(self_block.ln_2, x))
        x = x + attend(cross_block, norm(cross_block.ln_1, x), norm(cross_block.ln_1_kv, ecg_queries), causal=False)
        x = x + mlp(cross_block, norm(cross_block.ln_2, x))
    return norm(captioner.ln_final, x) @ captioner.text_projection


def test_the_caption_decoder_is_open_clips_multimodal_transformer():
    torch.manual_seed(0)
    captioner = MultimodalCaptioner(text_width=32, ecg_width=24, heads=4, layers=2, n_queries=6, vocab_size=50).eval()
    text, ecg_tokens = torch.randn(3, 9, 32), torch.randn(3, 20, 24)
    with torch.no_grad():
        queries = captioner.ecg_queries(ecg_tokens)
        ours = captioner.logits(text, queries)
        expected = open_clip_multimodal_logits(captioner, text, queries, heads=4)
        last = captioner.logits(text, queries, keep_last=1)
    assert queries.shape == (3, 6, 32) and ours.shape == (3, 9, 50)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(last, ours[:, -1:], rtol=0, atol=1e-6)
    names = {name.split(".")[0] for name, _ in captioner.named_parameters()}
    assert {"resblocks", "cross_attn", "ln_final", "text_projection"} <= names  # open_clip's keys
    assert "ln_1_kv" in dict(captioner.cross_attn[0].named_children())


@pytest.mark.parametrize("causal", [True, False])
def test_the_token_level_trains_the_text_tower_only_on_the_authors_path(shard_batch, causal):
    model, _ = create_model("tiny", objective="melp", overrides={"text.causal": causal})
    signal, lead_mask, reports = (part[:4] for part in shard_batch)
    model(model.collate(signal, lead_mask, reports))["token_loss"].backward()
    last_layer = model.text.encoder_layers[-1]
    reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in last_layer.parameters())
    assert reached == causal, "the decoder reads the causal tower's states; the other one re-embeds the tokens"
    assert isinstance(model.objective.caption, MultimodalCaptioner) == causal
    assert isinstance(model.text_projection, torch.nn.Sequential) == causal  # the authors' proj_t MLP


def test_causal_freezing_spares_the_embeddings_that_hold_the_new_bos():
    tower = TextTower(TextTowerConfig(name_or_path="random:tiny", causal=True, freeze_layers=1))
    frozen = {name for name, p in tower.named_parameters() if not p.requires_grad}
    assert frozen and all(".layer.0." in name for name in frozen)
    assert tower.word_embeddings.weight.requires_grad and tower.vocab_size == len(tower.tokenizer)


def word_level_tokenizer(words: list[str], **specials: str) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", **specials)


def test_a_causal_lm_by_folder_gets_the_specials_it_lacks(tmp_path):
    words = ["sinus", "rhythm", ".", "normal", "ecg", "<|endoftext|>", "<unk>"]
    eos = words.index("<|endoftext|>")
    GPT2Model(GPT2Config(vocab_size=len(words), n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=eos,
                         eos_token_id=eos)).save_pretrained(tmp_path)
    word_level_tokenizer(words, bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(tmp_path)
    tower = TextTower(TextTowerConfig(name_or_path=str(tmp_path), causal=True, max_length=MAX_LENGTH)).eval()
    layout = tower.layout
    assert (layout.bos, layout.end) == (eos, eos) and {layout.summary, layout.pad} == {len(words), len(words) + 1}
    assert tower.vocab_size == len(words) + 2  # [CLS] and [PAD] added, the embeddings resized
    rows = tower.tokenize(["sinus rhythm .", "normal ecg"])
    assert rows["input_ids"].tolist() == [[eos, 0, 1, 2, eos, layout.summary], [eos, 3, 4, eos, layout.pad,
                                                                                 layout.summary]]
    with torch.no_grad():
        assert tower(**rows).pooled.shape == (2, 16)


def test_an_encoder_that_ignores_is_decoder_is_refused_by_name(tmp_path, minilm):
    DistilBertModel(DistilBertConfig(vocab_size=minilm.vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
                    ).save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"DistilBertModel\) does not attend causally .* text.causal=false"):
        TextTower(TextTowerConfig(name_or_path=str(tmp_path), causal=True))
