"""The one `TorchTrainer` builder, for pretraining and fine-tuning alike, and what the driver does around it.

    trainer = build_trainer(loop, spec, train_config, storage=run_dir, name="train",
                            datasets={"train": train, "val": val}, score=("val_macro_auroc", "max"))
    checkpoint, metrics = best_checkpoint(trainer.fit().best_checkpoints, "val_macro_auroc", "max")

Every dataset is split across the workers (`streaming_split(equal=True)`), checkpoints are kept by
`score`, and worker failures are recovered from the latest checkpoint (`train.max_failures`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from pipelines.training.config import TrainConfig

log = logging.getLogger(__name__)


def build_trainer(
    loop: Callable[[dict], None],
    loop_config: dict,
    config: TrainConfig,
    *,
    storage: str | Path,
    name: str,
    datasets: dict[str, ray.data.Dataset],
    score: tuple[str, str],
    callbacks: Sequence = (),
) -> TorchTrainer:
    """A TorchTrainer running `loop(loop_config)` on `config.workers` workers; `score` is (metric, "max" |
    "min") by which the best `config.checkpoints_to_keep` checkpoints are kept under `storage/name`."""
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers,
            elastic_resize_monitor_interval_s=config.resize_check_s,
            placement_strategy=config.placement_strategy,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **config.worker_resources},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.checkpoints_to_keep,
                checkpoint_score_attribute=score[0],
                checkpoint_score_order=score[1],
            ),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            callbacks=list(callbacks),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split="all"),
    )


def with_cpus_per_worker(config: TrainConfig) -> TrainConfig:
    """cpus_per_worker 0 (auto): one CPU each where the cluster has room, less on a small machine, so
    that one CPU stays free for Ray Data's read tasks (with none free, the workers wait for data forever)."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if not config.cpus_per_worker:
        config = config.with_overrides({"cpus_per_worker": min(1.0, max(0.1, (cpus - 1) / config.workers))})
    if cpus - config.workers * config.cpus_per_worker < 1:
        log.warning(
            "%d Ray Train workers × %g CPUs leave less than one of the cluster's %g CPUs for Ray Data; unless the "
            "cluster grows, reading will stall",
            config.workers,
            config.cpus_per_worker,
            cpus,
        )
    return config


def best_checkpoint(best_checkpoints: list, attribute: str, order: str) -> tuple[ray.train.Checkpoint, dict]:
    """(checkpoint, metrics) of `Result.best_checkpoints` with the best `attribute` (NaN ranks last;
    ties go to the later step)."""
    if not best_checkpoints:
        raise RuntimeError("the run reported no checkpoint")
    scored = [(c, m) for c, m in best_checkpoints if is_number(m.get(attribute)) and not math.isnan(m[attribute])]
    candidates = scored or best_checkpoints
    pick = max if order == "max" else min
    return pick(candidates, key=lambda cm: (cm[1].get(attribute, 0), cm[1].get("step", 0)))


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
