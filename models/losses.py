"""Contrastive losses between ECG and text embeddings, each owning its cross-rank gather.

Both follow open_clip's local-loss form: each rank scores its own B rows against the texts (and
ECGs) of the global batch gathered with gradients, so memory grows with B x global batch rather
than its square, and the mean of the ranks' losses equals the global-batch loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.distributed import gather_with_grad, world


class ClipLoss(nn.Module):
    """Symmetric InfoNCE (CLIP): cross-entropy of ECG→text and text→ECG over the global batch."""

    def forward(self, ecg: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """ecg, text: [B, D] L2-normalised pairs (row i of each is a pair); logit_scale: scalar, exp'd.

        Returns the scalar loss: mean of the two directions' cross-entropies.
        """
        rank, _ = world()
        all_ecg, all_text = gather_with_grad(ecg), gather_with_grad(text)  # [G, D]
        logits_per_ecg = logit_scale * ecg @ all_text.T  # [B, G]
        logits_per_text = logit_scale * text @ all_ecg.T  # [B, G]
        labels = torch.arange(ecg.shape[0], device=ecg.device) + rank * ecg.shape[0]
        return (F.cross_entropy(logits_per_ecg, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class SigLipLoss(nn.Module):
    """Sigmoid contrastive loss (SigLIP): every ECG-text pair is an independent binary decision."""

    def forward(
        self,
        ecg: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
        aligned: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ecg, text: [B, D] L2-normalised, row i of each from one record; logit_scale (exp'd) and logit_bias:
        scalars; aligned [B] bool or None (all): whether text i is ECG i's own report (C-MELT's N3S replaces
        some).

        Returns -sum log sigmoid(label * logit) over this rank's rows against the global batch's
        texts, divided by B (SigLIP's normalisation); label +1 for an aligned pair, -1 otherwise.
        """
        rank, _ = world()
        all_text = gather_with_grad(text)  # [G, D]
        logits = logit_scale * ecg @ all_text.T + logit_bias  # [B, G]
        labels = -torch.ones_like(logits)
        rows = torch.arange(ecg.shape[0], device=ecg.device)
        if aligned is not None:
            rows = rows[aligned.bool()]
        labels[rows, rows + rank * ecg.shape[0]] = 1.0
        return -F.logsigmoid(labels * logits).sum() / ecg.shape[0]


class LogitScale(nn.Module):
    """A learnable temperature as open_clip keeps it: the log scale starts at log(1/init_temperature), the
    forward reads exp(log_scale) unclamped (so its gradient never vanishes), and `clamp_` puts it back into
    [0, log(max_scale)] after each optimizer step (the training loop's `optimizer_step` does, DeepSpeed's
    master copy included). Clamping inside the forward instead zeroes the gradient above the cap, and
    Adam's momentum then keeps it there. Frozen at its initial value when `learnable` is False."""

    def __init__(self, init_temperature: float, max_scale: float, learnable: bool = True) -> None:
        super().__init__()
        # Shape [1], not a 0-dim scalar: DeepSpeed's initial broadcast cannot handle 0-dim parameters.
        self.log_scale = nn.Parameter(torch.full((1,), math.log(1 / init_temperature)), requires_grad=learnable)
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        """The exp'd scale (a scalar tensor)."""
        return self.log_scale.exp().squeeze(0)

    @torch.no_grad()
    def clamp_(self) -> None:
        """open_clip's `logit_scale.clamp_(0, math.log(100))`, in place, after an optimizer step."""
        self.log_scale.clamp_(0.0, self.max_log_scale)
