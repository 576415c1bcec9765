"""MELP's token level on a bidirectional text tower (`text.causal=false`): a small decoder that writes the
report from the ECG (teacher-forced), re-embedding the report's tokens with the tower's word embeddings.
The authors' decoder, over a causal tower's states, is `models.multimodal_decoder`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.cross_attention import TextOverECG

if TYPE_CHECKING:
    from models.text_tower import TextTower

IGNORE_INDEX = -100


class CaptionDecoder(nn.Module):
    """Causal self-attention over the report so far + cross-attention to the ECG tokens.

    Input and output word vectors are the text tower's embedding matrix, passed in at call time
    (tied, and registered only once, in the text tower).
    """

    def __init__(self, text_width: int, ecg_width: int, layers: int, max_length: int) -> None:
        super().__init__()
        self.positions = nn.Parameter(torch.zeros(max_length, text_width))
        nn.init.normal_(self.positions, std=0.02)
        self.decoder = TextOverECG(text_width, ecg_width, layers)

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        ecg_tokens: torch.Tensor,
        word_embeddings: nn.Embedding,
        keep_last: int = 0,
    ) -> torch.Tensor:
        """Next-token logits: what training scores and drafting searches over.

        input_ids, attention_mask: [B, L] (the report so far, [CLS] first; L <= max_length);
        ecg_tokens: [B, N, W]. Returns [B, L, V]: row i is the distribution of token i + 1; only the last
        `keep_last` rows when it is > 0 (a search needs the last, and the [.., V] product dominates).
        """
        x = word_embeddings(input_ids) + self.positions[: input_ids.shape[1]]  # [B, L, H]
        hidden = self.decoder(x, attention_mask == 0, ecg_tokens, causal=True)  # [B, L, H]
        return hidden[:, -keep_last:] @ word_embeddings.weight.T  # [B, L or keep_last, V]

    def ecg_context(self, ecg_tokens: torch.Tensor) -> torch.Tensor:
        """What a draft's every step reads of the ECG: its tokens [B, N, W] as they are."""
        return ecg_tokens

    def prefix_logits(
        self, text: TextTower, input_ids: torch.Tensor, attention_mask: torch.Tensor, ecg_context: torch.Tensor,
        keep_last: int = 0,
    ) -> torch.Tensor:
        """A draft's next-token logits: `logits` with the tower's word embeddings."""
        return self.logits(input_ids, attention_mask, ecg_context, text.word_embeddings, keep_last)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        ecg_tokens: torch.Tensor,
        word_embeddings: nn.Embedding,
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy of each next report token, over non-pad targets.

        input_ids, attention_mask: [B, L] (the tokenized report); ecg_tokens: [B, N, W].
        Returns the scalar mean loss.
        """
        logits = self.logits(input_ids[:, :-1], attention_mask[:, :-1], ecg_tokens, word_embeddings)  # [B, L-1, V]
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)  # [B, L-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
