"""Typed configuration of a pretraining run: how the optimiser, DeepSpeed and Ray Train are set up.

The model (towers + objective) is `models.config.ModelConfig`; this is everything else. Both are
written into `RUN_DIR/config.json` as resolved, and both take `section.field=value` overrides on the
command line (`train.lr=3e-4`, `objective.rhythm_weight=0.5`). Every value is checked here, on the
driver, so that a bad run fails before any worker starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
SCHEDULES = ("warmup-cosine", "cosine-restarts")
RECIPES = Path(__file__).parent / "recipes"
"""`<objective>.json`: the optimiser fields an objective's authors use, with their `source`."""


@dataclass(frozen=True)
class TrainConfig:
    """One pretraining run. `batch_size` is global: world size × micro_batch × grad_accum, at every world size
    an elastic run passes through (the micro-batch stays, accumulation adapts: `grad_accum_at`)."""

    workers: int = 2
    """Ray Train workers (one DeepSpeed rank each); with `min_workers`, the most an elastic run grows to.
    `train.workers=MIN-MAX` (and `--workers MIN-MAX`) sets both."""
    min_workers: int = 0
    """Elastic runs: the fewest workers the run goes on with. Ray Train restarts it from the latest checkpoint
    at whatever size from this to `workers` the cluster has room for. 0: a fixed `workers`."""
    resize_check_s: float = 60.0
    """Elastic runs: seconds between Ray Train's checks whether the cluster has room for more workers."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places the workers on nodes (STRICT_SPREAD: one per node). An elastic run counts the workers a
    node has room for by its resources alone: there, place them with `worker_resources` (or whole CPUs)."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker takes besides its CPUs: `{"trainer": 1}` puts the workers on the nodes
    that offer `trainer`, as many per node as it has."""
    use_gpu: bool = False
    """One GPU per worker; the same loop runs on CPU workers with gloo."""
    cpus_per_worker: float = 0.0
    """CPUs reserved per worker; 0 = one each, or fewer where that would leave Ray Data no CPU."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage, 0-3."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU (DeepSpeed has no fp16 on CPU)."""
    batch_size: int = 32
    """Samples per optimizer step across all workers, the same at every world size."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step on each worker at `workers` workers (more at fewer)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping; 0 turns it off."""
    recipe: Literal["authors", "project"] = "authors"
    """Whose optimiser fields a run starts from (`for_objective`): "authors", its objective's authors' where
    they publish a recipe (MELP: `recipes/melp.json`); "project", the defaults below for every objective (lr
    1e-3, betas (0.9, 0.98), wd 0.05 on matrices, 50-step warm-up, cosine). A field set by itself wins."""
    lr: float = 1e-3
    """Peak learning rate. This and the optimiser fields below are the project's own defaults."""
    weight_decay: float = 0.05
    """AdamW weight decay: on parameters of two or more dimensions only (biases, norms and the logit scale get
    none), or on every parameter with `decay_every_parameter`."""
    decay_every_parameter: bool = False
    """One AdamW group, every parameter decayed (MELP's authors)."""
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: Literal["warmup-cosine", "cosine-restarts"] = "warmup-cosine"
    """After `warmup_steps` of linear warm-up from 0 to `lr`: warmup-cosine, one cosine decay to
    `min_lr_ratio · lr` at the last step (open_clip); cosine-restarts, two cosine cycles of half the rest of
    the run each, from `lr` to `min_lr_ratio · lr` (CosineAnnealingWarmRestarts, T_0 half the run, T_mult 1:
    MELP's)."""
    warmup_steps: int = 50
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
    data_cache_fraction: float = 0.25
    """A train or val split whose columns take at most this fraction of the cluster's object store memory
    (estimated from the shards' parquet footers, before reading) is read once, before training, and held
    there for every epoch; a larger one streams from the shards each epoch. A sweep divides it among the
    trials that run at once, so that together they hold no more."""
    seed: int = 0
    progress_every_s: float = 10.0
    """Seconds between progress lines on rank 0."""

    def __post_init__(self) -> None:
        problems = []
        if self.workers < 1:
            problems.append(f"workers must be at least 1, got {self.workers}")
        if not 0 <= self.min_workers <= self.workers:
            problems.append(f"min_workers must be 0 (fixed) or 1 to workers ({self.workers}), got {self.min_workers}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            problems.append(
                f"placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}, got {self.placement_strategy!r}"
            )
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
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
        elif self.batch_size > 0 and 0 <= self.min_workers <= self.workers and self.workers >= 1:
            uneven = [w for w in self.world_sizes if self.batch_size % (w * self.micro_batch)]
            if uneven:
                problems.append(
                    f"batch_size {self.batch_size} is not a multiple of world size × micro_batch {self.micro_batch} "
                    f"(batch_size / (workers {self.workers} × grad_accum {self.grad_accum})) at world size "
                    f"{', '.join(map(str, uneven))} of {self.workers_range} (grad_accum a multiple of "
                    f"{math.lcm(*self.world_sizes) // self.workers} splits it at every size)"
                )
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in (
            "max_steps",
            "warmup_steps",
            "cpus_per_worker",
            "resize_check_s",
            "validate_every",
            "grad_clip",
            "weight_decay",
            "shuffle_buffer",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.recipe not in ("authors", "project"):
            problems.append(f"recipe must be authors or project, got {self.recipe!r}")
        if not 0 <= self.data_cache_fraction <= 1:
            problems.append(f"data_cache_fraction must be in [0, 1], got {self.data_cache_fraction}")
        if self.checkpoints_to_keep < 1:
            problems.append(f"checkpoints_to_keep must be at least 1, got {self.checkpoints_to_keep}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def micro_batch(self) -> int:
        """Samples per forward on one worker: the DeepSpeed micro-batch and the data iterator's batch size,
        the same at every world size."""
        return self.batch_size // (self.workers * self.grad_accum)

    @property
    def world_sizes(self) -> range:
        """The world sizes the run may train at: `workers` alone, or `min_workers` to `workers`."""
        return range(self.min_workers or self.workers, self.workers + 1)

    @property
    def workers_range(self) -> str:
        """`workers` as written on the command line: "2", or "1-2" for an elastic run."""
        return f"{self.world_sizes.start}-{self.workers}" if len(self.world_sizes) > 1 else str(self.workers)

    @property
    def num_workers(self) -> int | tuple[int, int]:
        """Ray Train's `ScalingConfig(num_workers=…)`: an int, or (min, max) for an elastic run."""
        return (self.min_workers, self.workers) if 0 < self.min_workers < self.workers else self.workers

    def grad_accum_at(self, world_size: int) -> int:
        """Micro-batches each worker accumulates per optimizer step at `world_size` workers, so that the
        global batch stays `batch_size`."""
        if world_size not in self.world_sizes:
            raise ValueError(f"world size {world_size} is outside this run's workers {self.workers_range}")
        return self.batch_size // (world_size * self.micro_batch)

    def steps_per_epoch(self, train_rows: int) -> int:
        """Optimizer steps one pass over `train_rows` rows gives at any world size of the run: rows split
        equally over the workers, each worker's last partial batch dropped, the fewest over `world_sizes`."""
        return min(train_rows // w // self.micro_batch // self.grad_accum_at(w) for w in self.world_sizes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown train config fields: {', '.join(sorted(unknown))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        if isinstance(values.get("workers"), str):
            values.update(parse_workers(values["workers"]))
        return cls(**values)

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **overrides}) if overrides else self

    @classmethod
    def for_objective(cls, objective: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The defaults, the objective's recipe on top where its authors publish one (`recipe_of`) unless
        `overrides` say `recipe: project`, then `overrides`, which always win."""
        overrides = dict(overrides or {})
        authors = overrides.get("recipe", cls.recipe) == "authors"
        return cls().with_overrides({**(recipe_of(objective) if authors else {}), **overrides})


def recipe_of(objective: str) -> dict[str, Any]:
    """The TrainConfig fields of `RECIPES/<objective>.json` (without its `source`); {} where there is none."""
    path = RECIPES / f"{objective}.json"
    if not path.exists():
        return {}
    recipe = json.loads(path.read_text())
    recipe.pop("source")
    return recipe


def parse_workers(text: str) -> dict[str, int]:
    """`"N"` → {"workers": N, "min_workers": 0} (fixed); `"MIN-MAX"` → {"workers": MAX, "min_workers": MIN}."""
    low, dash, high = text.strip().partition("-")
    try:
        bounds = (int(low), int(high)) if dash else (0, int(low))
    except ValueError:
        raise ValueError(f"workers must be N or MIN-MAX (e.g. 2 or 1-2), got {text!r}") from None
    return {"min_workers": bounds[0], "workers": bounds[1]}
