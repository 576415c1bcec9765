"""MELP's text layout for a causal text tower: `[BOS] report [SEP] pad… [CLS]`, the [CLS] last.

The authors (HKU-MedAI/MELP src/melp/models/melp_model.py, `_tokenize` and `_encode_text`) tokenize
"[BOS] " + report with BERT's specials, drop the leading [CLS], pad to max_length - 1, and append one [CLS]
after the padding; the tower runs causally, so that [CLS] reads the whole report and its state is the report
embedding, while every other state reads only what precedes it (what the caption decoder builds on). Here the
rows are padded to the batch's longest report, and the [CLS] is given the position id the authors' padding
gives it (max_length - 1), so each state equals theirs whatever the batch. Any tokenizer works: a token the
tokenizer lacks ([BOS] for BERT, [CLS] and [PAD] for GPT-2) is added as a special token, and the end token
is its [SEP] (the authors' `eos_token_id`) or, without one, its EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

SPECIALS_A_REPORT_SPENDS = 3
"""[BOS], the end token and the trailing [CLS]: a report keeps max_length - 3 word pieces (the authors' too)."""


@dataclass(frozen=True)
class CausalLayout:
    """The special token ids of the layout; `add_to(tokenizer)` makes them."""

    bos: int
    end: int
    summary: int
    """The trailing [CLS], whose state is the report embedding."""
    pad: int

    @classmethod
    def add_to(cls, tokenizer: PreTrainedTokenizerBase) -> CausalLayout:
        """Adds the specials the tokenizer lacks (in place; resize the encoder's embeddings to
        `len(tokenizer)` after) and returns the layout."""
        missing = {}
        if tokenizer.bos_token is None:
            missing["bos_token"] = "[BOS]"
        if tokenizer.cls_token is None:
            missing["cls_token"] = "[CLS]"
        if tokenizer.pad_token is None:
            missing["pad_token"] = "[PAD]"
        if tokenizer.sep_token is None and tokenizer.eos_token is None:
            missing["eos_token"] = "[SEP]"
        if missing:
            tokenizer.add_special_tokens(missing)
        end = tokenizer.sep_token_id if tokenizer.sep_token is not None else tokenizer.eos_token_id
        return cls(bos=tokenizer.bos_token_id, end=end, summary=tokenizer.cls_token_id, pad=tokenizer.pad_token_id)

    def rows(
        self, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, with_offsets: bool = False
    ) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask [B, L] in the layout, L = the longest report + 3 (<= max_length); with
        offsets, also offset_mapping [B, L, 2] (each word piece's character span; (0, 0) for specials and pads)
        and special_tokens_mask [B, L] (1 for specials and pads)."""
        words = tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=True,
            max_length=max_length - SPECIALS_A_REPORT_SPENDS,
            return_offsets_mapping=with_offsets,
        )
        lengths = [len(ids) for ids in words["input_ids"]]
        width = max(lengths, default=0) + SPECIALS_A_REPORT_SPENDS
        input_ids = torch.full((len(lengths), width), self.pad, dtype=torch.long)
        attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
        offsets = torch.zeros(len(lengths), width, 2, dtype=torch.long)
        special = torch.ones_like(attention_mask)
        for row, (ids, n) in enumerate(zip(words["input_ids"], lengths, strict=True)):
            input_ids[row, : n + 2] = torch.tensor([self.bos, *ids, self.end])
            attention_mask[row, : n + 2] = 1
            special[row, 1 : n + 1] = 0
            if with_offsets and n:
                offsets[row, 1 : n + 1] = torch.tensor(words["offset_mapping"][row])
        input_ids[:, -1] = self.summary
        attention_mask[:, -1] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_offsets:
            batch |= {"offset_mapping": offsets, "special_tokens_mask": special}
        return batch

    @staticmethod
    def position_ids(input_ids: torch.Tensor, max_length: int) -> torch.Tensor:
        """[B, L] positions 0…L-2, and max_length - 1 for the trailing [CLS] (where the authors' padding puts it)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids).clone()
        positions[:, -1] = max_length - 1
        return positions
