"""Masked ECG modelling (MAE over ECG patches): C-MELT's reconstruction term.

    loss = masked_ecg_loss(tower, decoder, signal, lead_mask, mask_ratio=0.75)

Encode a random (1 - mask_ratio) of the patches with the ECG tower, reconstruct every patch with a
light `MaskedECGDecoder`, and score the removed ones against per-patch normalised targets.
"""

from __future__ import annotations

import torch
from torch import nn

from models.ecg_tower import ECGTower, sincos_position_embedding

PATCH_NORM_EPS = 1e-6
DECODER_HEAD_WIDTH = 32
"""Channels per attention head of the ECG decoder (MAE's decoder: 512 wide, 16 heads)."""


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """Per-patch normalised reconstruction targets (MAE's norm_pix_loss).

    patches [B, N, 12 * P] → [B, N, 12 * P]: each patch minus its mean over its 12 * P values, divided
    by sqrt(var + 1e-6), var being the unbiased variance over the same values (as MAE).
    """
    mean = patches.mean(dim=-1, keepdim=True)  # [B, N, 1]
    variance = patches.var(dim=-1, keepdim=True)  # [B, N, 1]
    return (patches - mean) / (variance + PATCH_NORM_EPS).sqrt()


def masked_patch_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE on the removed patches only: prediction, target [B, N, 12 * P]; mask [B, N], 1 = removed.

    Returns the scalar mean over removed patches of each patch's mean squared error; kept patches'
    predictions and targets are never read into the result.
    """
    removed = mask.bool()  # [B, N]
    return (prediction[removed] - target[removed]).pow(2).mean()


class MaskedECGDecoder(nn.Module):
    """MAE's light decoder: encoded kept patches, a shared mask token at every removed position, fixed
    sin-cos positions, a few pre-norm transformer blocks, and a linear map to each patch's 12 * P values."""

    def __init__(self, ecg_width: int, width: int, depth: int, n_patches: int, patch_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(ecg_width, width)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.register_buffer("position_embedding", sincos_position_embedding(n_patches, width), persistent=False)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                max(1, width // DECODER_HEAD_WIDTH),
                4 * width,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.prediction = nn.Linear(width, patch_dim)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [B, N_keep, W] (the encoded kept patches), ids_restore [B, N] from `random_masking`
        → predicted patches [B, N, 12 * P] in the original order."""
        tokens = self.embed(latent)  # [B, N_keep, Wd]
        batch, n_keep, width = tokens.shape
        fillers = self.mask_token.expand(batch, ids_restore.shape[1] - n_keep, width)  # [B, N - N_keep, Wd]
        tokens = torch.cat([tokens, fillers], dim=1)  # [B, N, Wd], kept first
        position = self.position_embedding.to(tokens.dtype)  # DeepSpeed's bf16/fp16 casts parameters, not buffers
        tokens = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, width)) + position
        for block in self.blocks:
            tokens = block(tokens)  # [B, N, Wd]
        return self.prediction(self.norm(tokens))  # [B, N, 12 * P]


def masked_ecg_loss(
    tower: ECGTower, decoder: MaskedECGDecoder, signal: torch.Tensor, lead_mask: torch.Tensor, mask_ratio: float
) -> torch.Tensor:
    """MEM: encode a random (1 - mask_ratio) of the patches, reconstruct all, score the removed ones.

    signal [B, 12, T], lead_mask [B, 12] bool. Leads are dropped at random in training (`drop_leads`)
    on the input only. Targets are the present leads centred over time, as `embed` sees them, cut
    into patches and normalised per patch. Returns the scalar `masked_patch_loss`.
    """
    tokens = tower.embed(signal, tower.drop_leads(lead_mask))  # [B, N, W]
    kept, mask, ids_restore = tower.random_masking(tokens, mask_ratio)  # [B, N_keep, W], [B, N], [B, N]
    prediction = decoder(tower.encode(kept), ids_restore)  # [B, N, 12 * P]
    present = signal.to(prediction.dtype).masked_fill(~lead_mask.unsqueeze(-1), 0.0)  # [B, 12, T]
    target = normalize_patches(tower.patchify(present - present.mean(dim=-1, keepdim=True)))  # [B, N, 12 * P]
    return masked_patch_loss(prediction, target, mask)
