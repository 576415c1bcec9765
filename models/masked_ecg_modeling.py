"""Masked ECG modelling (MAE over ECG patches): C-MELT's reconstruction term.

    prediction = decoder(latent, ids_restore)                        # [B, N, 12 * P]
    loss = masked_patch_loss(prediction, ecg_targets(tower, signal, lead_mask, "lead"), mask)

The ECG tower encodes a random (1 - mask_ratio) of the patches (`ECGTower.random_masking`), a light
`MaskedECGDecoder` reconstructs every patch from what it is given of them (C-MELT: the fused ECG stream), and
the removed ones are scored. Targets are each lead z-scored over the whole record, as C-MELT's authors
normalise them (manhph2211/D-BETA models/dbeta.py `get_targets`, norm_pix_loss), or each patch normalised on
its own (MAE's norm_pix_loss): `ecg_targets`.
"""

from __future__ import annotations

import torch
from torch import nn

from models.ecg_tower import ECGTower, sincos_position_embedding

PATCH_NORM_EPS = 1e-6
TARGET_NORMALISATIONS = ("lead", "patch")


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """Per-patch normalised reconstruction targets (MAE's norm_pix_loss).

    patches [B, N, 12 * P] → [B, N, 12 * P]: each patch minus its mean over its 12 * P values, divided
    by sqrt(var + 1e-6), var being the unbiased variance over the same values (as MAE).
    """
    mean = patches.mean(dim=-1, keepdim=True)  # [B, N, 1]
    variance = patches.var(dim=-1, keepdim=True)  # [B, N, 1]
    return (patches - mean) / (variance + PATCH_NORM_EPS).sqrt()


def normalize_leads(signal: torch.Tensor) -> torch.Tensor:
    """Per-lead z-scored reconstruction targets (C-MELT's authors): signal [B, 12, T] → [B, 12, T], each lead
    minus its mean over time, divided by sqrt(var + 1e-6), var the unbiased variance over time. An absent
    (all-zero) lead stays zero."""
    mean = signal.mean(dim=-1, keepdim=True)  # [B, 12, 1]
    variance = signal.var(dim=-1, keepdim=True)  # [B, 12, 1]
    return (signal - mean) / (variance + PATCH_NORM_EPS).sqrt()


def ecg_targets(tower: ECGTower, signal: torch.Tensor, lead_mask: torch.Tensor, normalisation: str) -> torch.Tensor:
    """What the decoder reconstructs: the present leads (absent ones zero), cut into patches [B, N, 12 * P] and
    normalised per lead over the record ("lead") or per patch after centring each lead ("patch")."""
    if normalisation not in TARGET_NORMALISATIONS:
        raise ValueError(f"ECG target normalisation must be one of {', '.join(TARGET_NORMALISATIONS)}, got {normalisation!r}")
    present = signal.masked_fill(~lead_mask.unsqueeze(-1), 0.0)  # [B, 12, T]
    if normalisation == "lead":
        return tower.patchify(normalize_leads(present))
    return normalize_patches(tower.patchify(present - present.mean(dim=-1, keepdim=True)))


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

    def __init__(self, ecg_width: int, width: int, depth: int, heads: int, n_patches: int, patch_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(ecg_width, width)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.register_buffer("position_embedding", sincos_position_embedding(n_patches, width), persistent=False)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
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
