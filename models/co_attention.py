"""C-MELT's fusion as its authors build it (manhph2211/D-BETA models/dbeta.py, models/cross_layer.py, after
M3AE and METER): two co-attention streams. Both towers' tokens are projected to the fusion width and told their
modality (a type embedding, 0 text, 1 ECG); in each layer the text stream self-attends and cross-attends to the
ECG stream while the ECG stream does the same to the text, both reading the other's input to that layer
(`BertCrossLayer`: post-norm self-attention, cross-attention, feed-forward, dropout 0.1). The first token of
each output stream, through a dense + tanh pooler, feeds the matching head.

    fusion = CoAttentionFusion(width=384, ecg_width=192, layers=6, heads=12, tap_layer=3)
    text, ecg, ecg_at_tap = fusion(text_tokens, text_mask, ecg_tokens)   # [B, L, F], [B, M, F], [B, M, F]
"""

from __future__ import annotations

import torch
from torch import nn

DROPOUT = 0.1
"""The authors' `drop_rate` (BERT's hidden and attention dropout)."""


class CoAttentionLayer(nn.Module):
    """One stream of a co-attention layer: x = LN(x + SelfAttn(x)); x = LN(x + CrossAttn(x, other));
    x = LN(x + FFN(x)), each sublayer's output dropped out as BERT's."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.self_attention = nn.MultiheadAttention(width, heads, dropout=DROPOUT, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(width, heads, dropout=DROPOUT, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.norms = nn.ModuleList(nn.LayerNorm(width, eps=1e-12) for _ in range(3))
        self.dropout = nn.Dropout(DROPOUT)

    def forward(
        self, x: torch.Tensor, x_padding: torch.Tensor, other: torch.Tensor, other_padding: torch.Tensor
    ) -> torch.Tensor:
        """x [B, L, F] and x_padding [B, L] bool (True = pad); other [B, M, F], other_padding [B, M] → [B, L, F]."""
        attended = self.self_attention(x, x, x, key_padding_mask=x_padding, need_weights=False)[0]
        x = self.norms[0](x + self.dropout(attended))
        attended = self.cross_attention(x, other, other, key_padding_mask=other_padding, need_weights=False)[0]
        x = self.norms[1](x + self.dropout(attended))
        return self.norms[2](x + self.dropout(self.feed_forward(x)))


class FirstTokenPooler(nn.Module):
    """BERT's pooler: the first token's state through dense + tanh. [B, L, F] → [B, F]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(tokens[:, 0]))


class CoAttentionFusion(nn.Module):
    """Projections to the fusion width, modality-type embeddings, and `layers` co-attention layers per stream."""

    def __init__(self, width: int, ecg_width: int, text_width: int, layers: int, heads: int, tap_layer: int) -> None:
        super().__init__()
        if not 0 <= tap_layer <= layers:
            raise ValueError(f"the masked-ECG decoder's fusion layer {tap_layer} is outside 0-{layers}")
        self.tap_layer = tap_layer
        self.text_projection = nn.Linear(text_width, width)
        self.ecg_projection = nn.Linear(ecg_width, width)
        self.modality = nn.Embedding(2, width)
        self.text_layers = nn.ModuleList(CoAttentionLayer(width, heads) for _ in range(layers))
        self.ecg_layers = nn.ModuleList(CoAttentionLayer(width, heads) for _ in range(layers))

    def forward(
        self, text_tokens: torch.Tensor, text_mask: torch.Tensor, ecg_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """text_tokens [B, L, H] with text_mask [B, L] (1 = token); ecg_tokens [B, M, W] (all real) → the fused
        text [B, L, F] and ECG [B, M, F] streams, and the ECG stream after `tap_layer` layers [B, M, F] (what the
        authors' masked-ECG decoder reads)."""
        text_padding = text_mask == 0  # [B, L]
        ecg_padding = torch.zeros(ecg_tokens.shape[:2], dtype=torch.bool, device=ecg_tokens.device)  # [B, M]
        # Through the embedding's forward, as the authors: ZeRO-3 gathers a module's weights when it runs.
        x = self.text_projection(text_tokens) + self.modality(torch.zeros_like(text_mask, dtype=torch.long))
        y = self.ecg_projection(ecg_tokens) + self.modality(torch.ones_like(ecg_padding, dtype=torch.long))
        tapped = y
        for depth, (text_layer, ecg_layer) in enumerate(zip(self.text_layers, self.ecg_layers, strict=True), start=1):
            x, y = text_layer(x, text_padding, y, ecg_padding), ecg_layer(y, ecg_padding, x, text_padding)
            if depth == self.tap_layer:
                tapped = y
        return x, y, tapped
