"""Masked language modelling (BERT): corrupt a fraction of the report tokens, predict the originals.

C-MELT trains its text tower with this loss among its other terms; MELP's stage 1 is this loss alone
(models.objectives.melp_lm, objective "melp-lm"): continued pre-training of the text tower on report text.

    masked_ids, labels = mask_tokens(input_ids, attention_mask, special_ids, mask_id, vocab_size, 0.25)
    loss = head(text(masked_ids, attention_mask).tokens, labels, text.word_embeddings)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.caption_decoder import IGNORE_INDEX

if TYPE_CHECKING:
    from models.text_tower import TextTower

MASK_TOKEN_SHARE = 0.8
"""Of the chosen tokens, this share becomes [MASK] and RANDOM_TOKEN_SHARE a random token; the rest stay."""
RANDOM_TOKEN_SHARE = 0.1


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: Sequence[int],
    mask_token_id: int,
    vocab_size: int,
    ratio: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of a tokenized batch.

    input_ids, attention_mask: [B, L]. A token is eligible when it is real (mask 1) and not in
    special_ids. Each eligible token is chosen with probability `ratio`, independently, as Hugging Face's
    DataCollatorForLanguageModeling does (a short report may have none chosen; a fixed count per row
    would over-mask short reports). Chosen tokens become mask_token_id (80 %), a uniformly random id
    below vocab_size (10 %), or stay as they are (10 %).

    Returns masked_ids [B, L] and labels [B, L]: the original id where chosen, IGNORE_INDEX (-100) elsewhere.
    """
    device = input_ids.device
    special = torch.as_tensor(list(special_ids), device=device)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)  # [B, L]
    chosen = eligible & (torch.rand(input_ids.shape, generator=generator, device=device) < ratio)  # [B, L]
    action = torch.rand(input_ids.shape, generator=generator, device=device)  # [B, L]
    to_mask = chosen & (action < MASK_TOKEN_SHARE)
    to_random = chosen & (action >= MASK_TOKEN_SHARE) & (action < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    masked_ids = input_ids.masked_fill(to_mask, mask_token_id).where(~to_random, random_ids)
    return masked_ids, input_ids.masked_fill(~chosen, IGNORE_INDEX)


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then scores against the word embeddings plus
    a per-token output bias [V] (zero at the start, as BERT's).

    The output matrix is the text tower's input embedding, passed in at call time (tied, and
    registered only once, in the text tower).
    """

    def __init__(self, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, word_embeddings: nn.Embedding) -> torch.Tensor:
        """tokens [B, L, H] encoded from the masked ids; labels [B, L] from `mask_tokens`.

        Returns the scalar mean cross-entropy over the predicted positions (labels != IGNORE_INDEX);
        with none (no maskable token in the batch), a zero still connected to the graph, so that
        backward runs and every parameter gets a (zero) gradient, as data-parallel training needs.
        """
        predicted = labels != IGNORE_INDEX  # [B, L]
        hidden = self.norm(F.gelu(self.dense(tokens[predicted])))  # [M, H]
        logits = hidden @ word_embeddings.weight.T + self.bias  # [M, V]
        total = F.cross_entropy(logits, labels[predicted], reduction="sum")  # 0 where M = 0
        return total / predicted.sum().clamp(min=1)


def masked_lm_loss(
    text: TextTower, head: MaskedLMHead, input_ids: torch.Tensor, attention_mask: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Mask `ratio` of the reports' tokens [B, L] (the tokenizer's special tokens never), encode them
    with the text tower, and return the head's scalar cross-entropy on the masked positions."""
    masked_ids, labels = mask_tokens(
        input_ids, attention_mask, text.tokenizer.all_special_ids, text.mask_token_id, text.vocab_size, ratio
    )
    return head(text(masked_ids, attention_mask).tokens, labels, text.word_embeddings)
