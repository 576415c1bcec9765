"""Learned-query attention pooling (open_clip's `AttentionalPooler`).

A fixed number of learned queries cross-attend to a token sequence of any length: one query gives a
global embedding, K queries give K summaries (MELP's beat-level tokens).
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionalPooler(nn.Module):
    """`n_queries` learned queries of size `width` cross-attending to tokens of size `context_width` (default:
    `width`).

    Queries and tokens are layer-normalised separately (open_clip: `ln_q`, `ln_k`); the normalised
    tokens serve as both keys and values.
    """

    def __init__(self, width: int, n_queries: int, heads: int, context_width: int | None = None) -> None:
        super().__init__()
        context_width = context_width or width
        self.query = nn.Parameter(torch.randn(n_queries, width))
        self.ln_q = nn.LayerNorm(width)
        self.ln_k = nn.LayerNorm(context_width)
        self.attn = nn.MultiheadAttention(width, heads, kdim=context_width, vdim=context_width, batch_first=True)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool a token sequence into `n_queries` vectors.

        tokens: [B, N, C]. key_padding_mask: [B, N] bool, True where a token is padding and must be
        ignored (PyTorch's convention); every row needs at least one False. Returns [B, n_queries, W].
        """
        pooled, _ = self._attend(tokens, key_padding_mask, need_weights=False)
        return pooled  # [B, Q, W]

    def attention(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Where each query looks: tokens [B, N, C] → weights [B, n_queries, N], averaged over heads, each
        row summing to 1 (0 on padding)."""
        _, weights = self._attend(tokens, key_padding_mask, need_weights=True)
        return weights  # [B, Q, N]

    def _attend(
        self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        keys = self.ln_k(tokens)  # [B, N, C]
        queries = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)  # [B, Q, W]
        return self.attn(queries, keys, keys, key_padding_mask=key_padding_mask, need_weights=need_weights)
