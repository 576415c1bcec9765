"""The optimiser and learning-rate schedule every pretraining run uses: AdamW with decoupled weight
decay on weight matrices only, linear warm-up, then cosine decay (open_clip's `cosine_lr`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipelines.training.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices (decayed) and everything 1-D or scalar (biases, norms, logit scale)."""
    decayed, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 else plain).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """A plain torch AdamW (DeepSpeed takes it as the client optimiser; no C++ op to compile)."""
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear to 1 over the warm-up, cosine to min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    warmup = min(config.warmup_steps, max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total_steps, config.min_lr_ratio)
    )
