"""Typed configuration of a pretraining run: how the optimiser, DeepSpeed and Ray Train are set up.

The model (towers + objective) is `models.config.ModelConfig`; this is everything else. Both are
written into `RUN_DIR/config.json` as resolved, and both take `section.field=value` overrides on the
command line (`train.lr=3e-4`, `objective.rhythm_weight=0.5`). Every value is checked here, on the
driver, so that a bad run fails before any worker starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """One pretraining run. `batch_size` is global: workers × micro_batch × grad_accum."""

    workers: int = 2
    """Ray Train workers (one DeepSpeed rank each)."""
    use_gpu: bool = False
    """One GPU per worker; the same loop runs on CPU workers with gloo."""
    cpus_per_worker: float = 0.0
    """CPUs reserved per worker; 0 = one each, or fewer where that would leave Ray Data no CPU."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage, 0-3."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU (DeepSpeed has no fp16 on CPU)."""
    batch_size: int = 32
    """Samples per optimizer step across all workers."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step on each worker."""
    grad_clip: float = 1.0
    """Gradient-norm clipping; 0 turns it off."""
    lr: float = 1e-3
    weight_decay: float = 0.05
    """AdamW weight decay on weight matrices; biases, norms, embeddings and the logit scale get none."""
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    """Linear warm-up from 0 to `lr`, then cosine decay to `min_lr_ratio · lr` at the last step."""
    min_lr_ratio: float = 0.1
    epochs: int = 1
    max_steps: int = 0
    """Optimizer steps in all; 0 = as many as `epochs` passes over the train split give."""
    validate_every: int = 500
    """Validate and checkpoint every this many optimizer steps, besides at the end of each epoch (0: at
    epoch ends only). A restarted worker or a resubmitted run resumes from the latest checkpoint (Ray Train
    keeps it beside the best ones), so a failure loses about this many steps at most."""
    checkpoints_to_keep: int = 2
    """Best checkpoints kept, by validation macro AUROC (validation loss where no AUROC)."""
    max_failures: int = 1
    """Worker failures Ray Train recovers from (restarting from the latest checkpoint)."""
    shuffle_buffer: int = 256
    """Rows in each worker's local shuffle buffer."""
    seed: int = 0
    progress_every_s: float = 10.0
    """Seconds between progress lines on rank 0."""

    def __post_init__(self) -> None:
        problems = []
        if self.workers < 1:
            problems.append(f"workers must be at least 1, got {self.workers}")
        if self.zero_stage not in (0, 1, 2, 3):
            problems.append(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp16" and not self.use_gpu:
            problems.append("precision fp16 needs GPU workers (DeepSpeed has no fp16 on CPU); use bf16 or fp32")
        if self.grad_accum < 1:
            problems.append(f"grad_accum must be at least 1, got {self.grad_accum}")
        elif self.workers >= 1 and self.batch_size % (self.workers * self.grad_accum):
            problems.append(
                f"batch_size {self.batch_size} is not divisible by workers × grad_accum = "
                f"{self.workers} × {self.grad_accum}"
            )
        for name in ("lr", "epochs"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "max_steps",
            "warmup_steps",
            "cpus_per_worker",
            "validate_every",
            "grad_clip",
            "weight_decay",
            "shuffle_buffer",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.checkpoints_to_keep < 1:
            problems.append(f"checkpoints_to_keep must be at least 1, got {self.checkpoints_to_keep}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def micro_batch(self) -> int:
        """Samples per forward on one worker: the DeepSpeed micro-batch and the data iterator's batch size."""
        return self.batch_size // (self.workers * self.grad_accum)

    def steps_per_epoch(self, train_rows: int) -> int:
        """Optimizer steps in one pass over `train_rows` rows split equally over the workers (last
        partial batch dropped)."""
        return train_rows // self.workers // self.micro_batch // self.grad_accum

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown train config fields: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **overrides}) if overrides else self
