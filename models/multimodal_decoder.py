"""MELP's caption decoder as its authors built it: CoCa's multimodal transformer over the text tower's causal
states, attending to attention-pooled ECG caption queries, with an untied vocabulary projection.

The authors (HKU-MedAI/MELP `MELPModel.text_decoder`, a copy of open_clip's `MultimodalTransformer`;
`attn_pool_caption` + `ln_caption` of their ECG encoder) use width 768 (their text tower's), 8 heads,
6 layers and 128 caption queries. Each layer is a causal self-attention block, then a cross-attention block
whose keys and values are the layer-normalised ECG queries; no positions of its own (the text tower's states
carry them). Parameter names are open_clip's (`resblocks.i.ln_1`, `cross_attn.i.ln_1_kv`, `ln_final`,
`text_projection`), so its weights map key for key. Initialised as open_clip's `init_parameters` intends (the
authors' copy never calls it and leaves `text_projection` as `torch.empty`).

    captioner = MultimodalCaptioner(text_width=384, ecg_width=192, heads=8, layers=6, n_queries=128, vocab_size=V)
    queries = captioner.ecg_queries(ecg_tokens)              # [B, 128, 384]
    logits = captioner.logits(text_states, queries)          # [B, L, V]
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.caption_decoder import IGNORE_INDEX
from models.poolers import AttentionalPooler

if TYPE_CHECKING:
    from models.text_tower import TextTower


class ResidualAttentionBlock(nn.Module):
    """open_clip's pre-norm block: x + attn(ln_1(x), kv), then x + mlp(ln_2(x)); a cross-attention block
    layer-normalises its keys and values with its own `ln_1_kv`."""

    def __init__(self, width: int, heads: int, cross_attention: bool = False, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        if cross_attention:
            self.ln_1_kv = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, L, W]; context [B, Q, W] (cross-attention) or None (self-attention); attn_mask [L, L] bool,
        True where a query may not look. Returns [B, L, W]."""
        query = self.ln_1(x)
        kv = self.ln_1_kv(context) if context is not None else query
        x = x + self.attn(query, kv, kv, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class MultimodalCaptioner(nn.Module):
    """ECG caption queries (attentional pooler + LayerNorm) and the multimodal transformer reading them."""

    def __init__(
        self, text_width: int, ecg_width: int, heads: int, layers: int, n_queries: int, vocab_size: int
    ) -> None:
        super().__init__()
        self.caption_pool = AttentionalPooler(text_width, n_queries, heads, context_width=ecg_width)
        self.caption_norm = nn.LayerNorm(text_width)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(text_width, heads) for _ in range(layers))
        self.cross_attn = nn.ModuleList(
            ResidualAttentionBlock(text_width, heads, cross_attention=True) for _ in range(layers)
        )
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.empty(text_width, vocab_size))
        self._init_parameters(text_width, layers)

    def _init_parameters(self, width: int, layers: int) -> None:
        """open_clip `MultimodalTransformer.init_parameters`."""
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in [*self.resblocks, *self.cross_attn]:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def ecg_queries(self, ecg_tokens: torch.Tensor) -> torch.Tensor:
        """The ECG tower's tokens [B, N, C] → the caption queries [B, Q, W] the decoder attends to."""
        return self.caption_norm(self.caption_pool(ecg_tokens))

    def logits(self, text_states: torch.Tensor, ecg_queries: torch.Tensor, keep_last: int = 0) -> torch.Tensor:
        """text_states [B, L, W] (the text tower's causal states of the report so far), ecg_queries [B, Q, W] →
        next-token logits [B, L, V]: row i is the distribution of token i + 1; only the last `keep_last` rows
        when it is > 0."""
        length = text_states.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=text_states.device).triu(diagonal=1)
        x = text_states
        for self_block, cross_block in zip(self.resblocks, self.cross_attn, strict=True):
            x = self_block(x, attn_mask=causal)
            x = cross_block(x, context=ecg_queries)
        return self.ln_final(x[:, -keep_last:]) @ self.text_projection  # [B, L or keep_last, V]

    def ecg_context(self, ecg_tokens: torch.Tensor) -> torch.Tensor:
        """What a draft's every step reads of the ECG: its caption queries [B, Q, W], pooled once."""
        return self.ecg_queries(ecg_tokens)

    def prefix_logits(
        self, text: TextTower, input_ids: torch.Tensor, attention_mask: torch.Tensor, ecg_context: torch.Tensor,
        keep_last: int = 0,
    ) -> torch.Tensor:
        """A draft's next-token logits: the causal text tower over the prefix [b, l] ([BOS] first), then `logits`."""
        return self.logits(text.states(input_ids, attention_mask), ecg_context, keep_last)

    def forward(
        self, text_states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, ecg_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy of each next report token, over non-pad targets (CoCa's caption loss).

        text_states [B, L, W] and input_ids, attention_mask [B, L]: the report without its trailing [CLS]
        ([BOS] first); ecg_tokens [B, N, C]. Returns the scalar mean loss."""
        logits = self.logits(text_states[:, :-1], self.ecg_queries(ecg_tokens))  # [B, L-1, V]
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)  # [B, L-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
