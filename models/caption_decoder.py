"""MELP's token level: a small decoder that writes the report from the ECG (teacher-forced)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.cross_attention import TextOverECG

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
        inputs, targets = input_ids[:, :-1], input_ids[:, 1:]  # [B, L-1] each
        x = word_embeddings(inputs) + self.positions[: inputs.shape[1]]  # [B, L-1, H]
        hidden = self.decoder(x, attention_mask[:, :-1] == 0, ecg_tokens, causal=True)  # [B, L-1, H]
        logits = hidden @ word_embeddings.weight.T  # [B, L-1, V]
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
