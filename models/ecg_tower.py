"""The ECG tower: a 1-D ViT over time patches of the 12-lead signal (MERL's ViT-1D), MAE-ready.

A record [B, 12, T] is cut into N = T / P patches of P consecutive samples of all 12 leads; each
patch is projected to a token of width W and layer-normalised, told which leads are absent, and
given a fixed sin-cos position. Pre-norm transformer blocks encode the tokens, and learned-query poolers summarise them
into K beat-level embeddings and one global embedding: a query of its own, or (MELP) the beats' mean.

The tower knows no objective. `forward` is embed → encode → pool; masked ECG modelling (C-MELT)
calls the pieces itself:

    lead_mask = tower.drop_leads(lead_mask)                          # [B, 12]
    tokens = tower.embed(signal, lead_mask)                          # [B, N, W]
    kept, mask, ids_restore = tower.random_masking(tokens, 0.75)     # [B, N_keep, W], [B, N], [B, N]
    latent = tower.encode(kept)                                      # [B, N_keep, W]
    target = tower.patchify(signal)                                  # [B, N, 12 * P]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.config import ECGTowerConfig
from models.poolers import AttentionalPooler


@dataclass
class ECGOutput:
    """What the ECG tower returns."""

    tokens: torch.Tensor
    """[B, N, W] encoded patch tokens (after the final LayerNorm)."""
    pooled: torch.Tensor
    """[B, W] global (rhythm-level) embedding: the 1-query pooler's, or the beats' mean (`rhythm_pooling`)."""
    beats: torch.Tensor
    """[B, K, W] beat-level embeddings from the K-query pooler (K = config.n_beat_queries)."""


def sincos_position_embedding(n_positions: int, width: int) -> torch.Tensor:
    """Fixed 1-D sin-cos position embedding (MAE's `get_1d_sincos_pos_embed_from_grid`).

    Returns [n_positions, width]: the first width/2 channels are sin(pos * omega_i), the last
    width/2 are cos(pos * omega_i), with omega_i = 10000 ** (-i / (width / 2)).
    """
    if width % 2:
        raise ValueError(f"sin-cos position embedding needs an even width, got {width}")
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))  # [W/2]
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * omega[None, :]  # [N, W/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # [N, W]


class ECGTower(nn.Module):
    """1-D ViT over time patches of a 12-lead ECG, with global and beat-level attentional poolers.

    The patch projection is followed by a LayerNorm (timm's PatchEmbed `norm_layer`, Swin's
    patch_norm), so content tokens have norm ≈ sqrt(W) whatever the signal's scale, on a par with
    the sin-cos positions (norm sqrt(W / 2)). Without it, centred min-max [0, 1] signals (std ≈ 0.07)
    gave tokens ~16× smaller than the positions they are added to (0.24 against 4.0 at W = 32), and
    the blocks saw mostly position: records stayed hard to tell apart for 100+ steps.

    Absent leads are zeroed before the patch projection, so their values cannot reach the model,
    and a learned per-lead "absent" embedding (a [12, W] table) is added to every token for each
    absent lead. Zeroing alone would make a missing lead look like a flat one; the additive
    embedding acts as a linear layer over 12 extra mask channels would, but keeps the projection's
    input exactly the patchify output [12 * P] that MAE reconstruction targets use.
    """

    def __init__(self, config: ECGTowerConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.patch_projection = nn.Linear(self.patch_dim, width)
        self.patch_norm = nn.LayerNorm(width)
        self.absent_lead_embedding = nn.Parameter(0.02 * torch.randn(config.n_leads, width))
        self.register_buffer("position_embedding", sincos_position_embedding(config.n_patches, width), persistent=False)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=width,
                nhead=config.heads,
                dim_feedforward=int(width * config.mlp_ratio),
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(width)
        self.beat_pooler = AttentionalPooler(width, config.n_beat_queries, config.pool_heads)
        if config.rhythm_pooling == "query":
            self.global_pooler = AttentionalPooler(width, 1, config.pool_heads)
        else:
            self.beat_norm = nn.LayerNorm(width)  # MELP's `ln_contrast`

    @property
    def patch_dim(self) -> int:
        """Values per patch: 12 leads × P samples."""
        return self.config.n_leads * self.config.patch_size

    def patchify(self, signal: torch.Tensor) -> torch.Tensor:
        """Cut a signal into patches of P consecutive samples of all leads.

        signal: [B, 12, T] → patches [B, N, 12 * P], N = T / P, lead-major inside a patch:
        patches[b, n, c * P + p] == signal[b, c, n * P + p].
        """
        batch, leads, length = signal.shape
        size = self.config.patch_size
        patches = signal.reshape(batch, leads, length // size, size)  # [B, 12, N, P]
        return patches.transpose(1, 2).reshape(batch, length // size, leads * size)  # [B, N, 12 * P]

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `patchify`: patches [B, N, 12 * P] → signal [B, 12, N * P]."""
        batch, n_patches, _ = patches.shape
        leads, size = self.config.n_leads, self.config.patch_size
        signal = patches.reshape(batch, n_patches, leads, size).transpose(1, 2)  # [B, 12, N, P]
        return signal.reshape(batch, leads, n_patches * size)  # [B, 12, T]

    def check_inputs(self, signal: torch.Tensor, lead_mask: torch.Tensor) -> None:
        """Raise ValueError unless signal is [B, 12, T] and lead_mask is bool [B, 12] with a lead per record."""
        leads, length = self.config.n_leads, self.config.n_samples
        if signal.ndim != 3 or signal.shape[1] != leads:
            raise ValueError(f"signal must be [B, {leads}, T], got shape {tuple(signal.shape)}")
        if signal.shape[2] != length:
            raise ValueError(f"signal has T={signal.shape[2]} samples; this tower expects n_samples={length}")
        if lead_mask.dtype != torch.bool or lead_mask.shape != (signal.shape[0], leads):
            raise ValueError(
                f"lead_mask must be bool [{signal.shape[0]}, {leads}], got {lead_mask.dtype} {tuple(lead_mask.shape)}"
            )
        empty = (~lead_mask.any(dim=1)).nonzero().flatten()
        if len(empty):
            raise ValueError(f"records {empty.tolist()} of the batch have no lead present")

    def embed(self, signal: torch.Tensor, lead_mask: torch.Tensor) -> torch.Tensor:
        """Patch tokens (projected, layer-normalised) with absent-lead and position embeddings added.

        signal: [B, 12, T] (any float dtype; cast to the parameters' dtype). lead_mask: [B, 12] bool,
        True where the lead is present. Returns tokens [B, N, W]; values of absent leads have no effect.
        Each lead is centred on its mean over time: shards hold min-max [0, 1] signals whose common
        offset otherwise dominates every token (seen: MELP's beat level stuck at chance without it).
        """
        self.check_inputs(signal, lead_mask)
        return self._embed(signal, lead_mask)

    def _embed(self, signal: torch.Tensor, lead_mask: torch.Tensor) -> torch.Tensor:
        """`embed` on inputs already checked."""
        signal = signal.to(self.patch_projection.weight.dtype)
        signal = signal.masked_fill(~lead_mask.unsqueeze(-1), 0.0)  # [B, 12, T]
        signal = signal - signal.mean(dim=-1, keepdim=True)  # absent leads stay zero
        tokens = self.patch_norm(self.patch_projection(self.patchify(signal)))  # [B, N, W]
        absent = (~lead_mask).to(tokens.dtype) @ self.absent_lead_embedding  # [B, W]
        # the buffer in the tokens' dtype: DeepSpeed's bf16/fp16 casts parameters, not buffers
        return tokens + absent.unsqueeze(1) + self.position_embedding.to(tokens.dtype)  # [B, N, W]

    @staticmethod
    def random_masking(tokens: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by argsort of uniform noise (MAE's `random_masking`).

        tokens: [B, N, W]. Returns kept [B, N_keep, W] with N_keep = int(N * (1 - mask_ratio)),
        mask [B, N] in the tokens' dtype with 1 = removed, 0 = kept (MAE's convention), and
        ids_restore [B, N] such that gathering [kept, fillers] with it restores the original order.
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        batch, n_tokens, width = tokens.shape
        n_keep = int(n_tokens * (1 - mask_ratio))
        noise = torch.rand(batch, n_tokens, device=tokens.device)  # [B, N]
        ids_shuffle = noise.argsort(dim=1)  # [B, N] ascending noise: the first n_keep are kept
        ids_restore = ids_shuffle.argsort(dim=1)  # [B, N]
        ids_keep = ids_shuffle[:, :n_keep]  # [B, N_keep]
        kept = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, width))  # [B, N_keep, W]
        mask = torch.ones(batch, n_tokens, dtype=tokens.dtype, device=tokens.device)  # [B, N]
        mask[:, :n_keep] = 0
        return kept, mask.gather(1, ids_restore), ids_restore

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pre-norm transformer blocks and a final LayerNorm: [B, M, W] → [B, M, W] (M: any length)."""
        for block in self.blocks:
            tokens = block(tokens)  # [B, M, W]
        return self.norm(tokens)

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, M, W] → (pooled [B, W], beats [B, K, W]): with rhythm_pooling "query", the global query's
        summary and the beat queries'; with "beat-mean", the beat queries' summaries layer-normalised, and
        their mean."""
        beats = self.beat_pooler(tokens)  # [B, K, W]
        if self.config.rhythm_pooling == "query":
            return self.global_pooler(tokens).squeeze(1), beats
        beats = self.beat_norm(beats)
        return beats.mean(dim=1), beats

    def rhythm_attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Where the global embedding reads: tokens [B, N, W] → weights [B, N] summing to 1 per row; the
        global query's, or with "beat-mean" the beat queries' mean (the mean embedding's routing)."""
        if self.config.rhythm_pooling == "query":
            return self.global_pooler.attention(tokens)[:, 0]
        return self.beat_pooler.attention(tokens).mean(dim=1)

    def drop_leads(self, lead_mask: torch.Tensor) -> torch.Tensor:
        """Random lead masking (training only): each present lead drops with config.lead_drop_prob.

        lead_mask: [B, 12] bool → [B, 12] bool, a subset of the input. A record that would lose every
        lead keeps one of its present leads, chosen at random. Identity in eval mode.
        """
        if not self.training or self.config.lead_drop_prob == 0:
            return lead_mask
        kept = lead_mask & (torch.rand(lead_mask.shape, device=lead_mask.device) >= self.config.lead_drop_prob)
        emptied = lead_mask.any(dim=1) & ~kept.any(dim=1)  # [B] records that lost every lead
        random_present = torch.rand(lead_mask.shape, device=lead_mask.device).masked_fill(~lead_mask, -1.0)
        rescued = nn.functional.one_hot(random_present.argmax(dim=1), self.config.n_leads).bool()  # [B, 12]
        return kept | (rescued & emptied.unsqueeze(1))

    def forward(self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None) -> ECGOutput:
        """signal [B, 12, T], lead_mask [B, 12] bool or None (all present) → ECGOutput.

        In training mode leads are first dropped at random (`drop_leads`).
        """
        if lead_mask is None:
            lead_mask = torch.ones(signal.shape[0], self.config.n_leads, dtype=torch.bool, device=signal.device)
        self.check_inputs(signal, lead_mask)  # once, before drop_leads, which assumes a valid mask
        tokens = self.encode(self._embed(signal, self.drop_leads(lead_mask)))  # [B, N, W]
        pooled, beats = self.pool(tokens)  # [B, W], [B, K, W]
        return ECGOutput(tokens=tokens, pooled=pooled, beats=beats)
