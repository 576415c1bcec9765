"""Text tokens over ECG tokens: the cross-modal stack of MELP's caption decoder on a bidirectional text tower
(`text.causal=false`). C-MELT's fusion is `models.co_attention`."""

from __future__ import annotations

import torch
from torch import nn

HEAD_WIDTH = 64  # channels per attention head, as BERT-family text towers use


class TextOverECG(nn.Module):
    """ECG tokens projected to the text width, then pre-norm transformer decoder layers in which the
    text tokens self-attend (causally if asked) and cross-attend to the ECG tokens; a final LayerNorm."""

    def __init__(self, text_width: int, ecg_width: int, layers: int) -> None:
        super().__init__()
        self.memory_projection = nn.Linear(ecg_width, text_width)
        layer = nn.TransformerDecoderLayer(
            text_width,
            max(1, text_width // HEAD_WIDTH),
            4 * text_width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(text_width)

    def forward(
        self, text: torch.Tensor, padding_mask: torch.Tensor, ecg_tokens: torch.Tensor, causal: bool = False
    ) -> torch.Tensor:
        """text [B, L, H], padding_mask [B, L] bool (True = pad), ecg_tokens [B, N, W] → [B, L, H]."""
        length = text.shape[1]
        mask = (
            torch.triu(torch.ones(length, length, dtype=torch.bool, device=text.device), diagonal=1) if causal else None
        )
        hidden = self.layers(
            text, memory=self.memory_projection(ecg_tokens), tgt_mask=mask, tgt_key_padding_mask=padding_mask
        )
        return self.norm(hidden)  # [B, L, H]
