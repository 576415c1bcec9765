"""The optimiser and learning-rate schedule of every pretraining run: AdamW with decoupled weight decay
(on weight matrices only, or on every parameter), linear warm-up, then one cosine decay (open_clip's
`cosine_lr`) or cosine cycles with warm restarts (MELP's `CosineAnnealingWarmRestarts`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipelines.training.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float, decay_every_parameter: bool = False) -> list[dict]:
    """Two AdamW groups: matrices (decayed) and everything 1-D or scalar (biases, norms, logit scale), or
    with `decay_every_parameter` one group, all decayed. No group is empty (DeepSpeed's ZeRO cannot
    partition an empty group)."""
    decayed, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if decay_every_parameter or parameter.ndim >= 2 else plain).append(parameter)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """A plain torch AdamW (DeepSpeed takes it as the client optimiser; no C++ op to compile)."""
    groups = parameter_groups(model, config.weight_decay, config.decay_every_parameter)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear to 1 over the warm-up, cosine to min_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_restarts(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear to 1 over the warm-up, then two cosine cycles
    from 1 to min_ratio, each half of the rest of the run (`CosineAnnealingWarmRestarts(T_0, T_mult=1,
    eta_min=min_ratio · lr)` with T_0 = (total_steps - warmup_steps) // 2, at least 1)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    cycle = max(1, (total_steps - warmup_steps) // 2)
    progress = ((step - warmup_steps) % cycle) / cycle
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULE_FUNCTIONS = {"warmup-cosine": warmup_cosine, "cosine-restarts": cosine_restarts}


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """A LambdaLR of `config.schedule` (a plain function of the step, so a checkpoint resumes it exactly)."""
    warmup = min(config.warmup_steps, max(0, total_steps - 1))
    multiplier = SCHEDULE_FUNCTIONS[config.schedule]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: multiplier(step, warmup, total_steps, config.min_lr_ratio)
    )
