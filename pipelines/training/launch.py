"""The driver side of a pretraining run: resolve and check everything, run the `TorchTrainer`, export.

    result = pretrain("data/synthetic", "runs/tiny", resolve_config("tiny"), TrainConfig(workers=2))

Run directory layout (a local path or a mount every node shares):
    config.json       resolved model + training config (a rerun must match it)
    train/            Ray Train's storage: checkpoint-step*/ (DeepSpeed shards of every rank), state
    tensorboard/      scalars from rank 0
    export/           the best checkpoint, consolidated: config.json, model.safetensors, tokenizer/
                      (+ text-encoder/, a Hugging Face folder, after a MELP stage-1 run)
    metrics.json      final and best figures
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

from models.config import ModelConfig
from pipelines.evaluation.classes import present_classes
from pipelines.training.checkpoints import export_checkpoint
from pipelines.training.config import TrainConfig
from pipelines.training.data import TEXT_ONLY_OBJECTIVES, label_lists, split_dataset, train_columns, val_columns
from pipelines.training.worker import FaultInjection, LoopSpec, train_loop_per_worker

CONFIG_FILE, EXPORT_DIR, METRICS_FILE, STORAGE_NAME = "config.json", "export", "metrics.json", "train"
TEXT_ENCODER_DIR = "text-encoder"
"""Under export/ of a text-only (MELP stage 1) run: the trained encoder as a Hugging Face folder, which
stage 2 takes as `text.name_or_path`."""
FAULT_ENV = "ECG_FM_FAULT_AT_STEP"
"""Fault-injection switch for tests: `STEP` or `STEP:RANK` makes that rank exit at that step, once."""


def pretrain(
    data: str | Sequence[str],
    run_dir: str | os.PathLike,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    val_rows: int = 2000,
    overwrite: bool = False,
    callbacks: Sequence = (),
) -> dict:
    """Train on the `train` split of the shards in `data` (a folder, or several read as one), validate
    on (at most `val_rows` of) `val`, export the best checkpoint; returns the metrics written to
    `metrics.json`. `callbacks` go to the trainer's RunConfig (a Tune trial passes `TuneReportCallback`)."""
    started = time.time()
    data = [str(data)] if isinstance(data, str | os.PathLike) else [str(folder) for folder in data]
    run_dir = Path(run_dir).resolve()
    _claim_run_dir(run_dir, model_config, train_config, overwrite)
    if not ray.is_initialized():
        ray.init()
    train_config = with_cpus_per_worker(train_config)

    objective = model_config.objective.name
    train = split_dataset(data, "train", train_columns(objective)).randomize_block_order(seed=train_config.seed)
    val = split_dataset(data, "val", val_columns(objective)).limit(val_rows)
    val_labels = list(_labels_of(split_dataset(data, "val", ["labels"]).limit(val_rows)))
    n_train = train.count()
    rows_per_step = train_config.batch_size
    steps_per_epoch = train_config.steps_per_epoch(n_train)
    if steps_per_epoch < 1:
        raise ValueError(
            f"{', '.join(data)}: the train split has {n_train} rows; one optimizer step needs {rows_per_step} "
            f"(train.batch_size), split over {train_config.workers} workers"
        )
    if len(val_labels) < train_config.workers:
        raise ValueError(f"{', '.join(data)}: the val split has {len(val_labels)} rows; validation needs one per worker at least")
    total_steps = train_config.max_steps or train_config.epochs * steps_per_epoch
    val_codes = [] if objective in TEXT_ONLY_OBJECTIVES else present_classes(val_labels)
    score = ("val_macro_auroc", "max") if val_codes else ("val_loss", "min")
    print(
        f"pretrain: {n_train:,} train rows, {len(val_labels):,} val rows, {steps_per_epoch:,} steps per epoch, "
        f"{total_steps:,} steps in all on {train_config.workers} workers (ZeRO-{train_config.zero_stage}, "
        f"micro-batch {train_config.micro_batch}); validation classes: {', '.join(val_codes) or 'none'}",
        file=sys.stderr,
    )

    spec = LoopSpec(
        model=model_config.to_dict(),
        train=train_config.to_dict(),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        val_codes=val_codes,
        run_dir=str(run_dir),
        fault=_fault_from_env(),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.to_dict(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=train_config.workers,
            use_gpu=train_config.use_gpu,
            resources_per_worker={"CPU": train_config.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=STORAGE_NAME,
            storage_path=str(run_dir),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=train_config.checkpoints_to_keep,
                checkpoint_score_attribute=score[0],
                checkpoint_score_order=score[1],
            ),
            failure_config=ray.train.FailureConfig(max_failures=train_config.max_failures),
            callbacks=list(callbacks),
        ),
        datasets={"train": train, "val": val},
        dataset_config=ray.train.DataConfig(datasets_to_split="all"),
    )
    result = trainer.fit()
    best, best_metrics = best_checkpoint(result.best_checkpoints, *score)
    exported, export_max_diff = export_checkpoint(best, model_config, run_dir / EXPORT_DIR)
    if objective in TEXT_ONLY_OBJECTIVES:
        exported.text.save_encoder(run_dir / EXPORT_DIR / TEXT_ENCODER_DIR)
    metrics = {
        "final": {k: v for k, v in result.metrics.items() if _is_number(v)},
        "best": {k: v for k, v in best_metrics.items() if _is_number(v)},
        "best_checkpoint": Path(best.path).name,
        "selected_by": score[0],
        "export_max_abs_diff": export_max_diff,
        "total_steps": total_steps,
        "train_rows": n_train,
        "elapsed_seconds": time.time() - started,
    }
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    print(
        f"pretrain: exported {metrics['best_checkpoint']} ({score[0]} {best_metrics.get(score[0], float('nan')):.4f}) "
        f"to {run_dir / EXPORT_DIR} in {metrics['elapsed_seconds']:.0f} s",
        file=sys.stderr,
    )
    return metrics


def _claim_run_dir(run_dir: Path, model_config: ModelConfig, train_config: TrainConfig, overwrite: bool) -> None:
    """Write the resolved config; a run directory that holds a different run is refused, not mixed."""
    resolved = {"model": model_config.to_dict(), "train": train_config.to_dict()}
    config_path = run_dir / CONFIG_FILE
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    if config_path.is_file():
        previous = json.loads(config_path.read_text())
        if _resumable(previous) != _resumable(resolved):
            raise ValueError(
                f"{run_dir} holds a run with a different config; resuming it would mix two runs. "
                "Use a new run directory, or --overwrite to start over."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(resolved, indent=2))


def _resumable(resolved: dict) -> dict:
    """What must match for a rerun to continue a run: all but how long it trains and how it is spread."""
    train = {
        k: v
        for k, v in resolved["train"].items()
        if k not in ("max_steps", "epochs", "progress_every_s", "cpus_per_worker")
    }
    return {"model": resolved["model"], "train": json.loads(json.dumps(train))}


def with_cpus_per_worker(config: TrainConfig) -> TrainConfig:
    """cpus_per_worker 0 (auto): one CPU each where the cluster has room, less on a small machine, so
    that one CPU stays free for Ray Data's read tasks (with none free, the workers wait for data forever)."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if not config.cpus_per_worker:
        config = config.with_overrides({"cpus_per_worker": min(1.0, max(0.1, (cpus - 1) / config.workers))})
    if cpus - config.workers * config.cpus_per_worker < 1:
        print(
            f"warning: {config.workers} Ray Train workers × {config.cpus_per_worker:g} CPUs leave less than one of "
            f"the cluster's {cpus:g} CPUs for Ray Data; unless the cluster grows, reading will stall",
            file=sys.stderr,
        )
    return config


def _labels_of(val: ray.data.Dataset) -> Iterable[list[str]]:
    for batch in val.select_columns(["labels"]).iter_batches(batch_size=1024):
        yield from label_lists(batch["labels"])


def best_checkpoint(best_checkpoints: list, attribute: str, order: str) -> tuple[ray.train.Checkpoint, dict]:
    """(checkpoint, metrics) of `Result.best_checkpoints` with the best `attribute` (NaN ranks last;
    ties go to the later step)."""
    if not best_checkpoints:
        raise RuntimeError("the run reported no checkpoint")
    scored = [(c, m) for c, m in best_checkpoints if _is_number(m.get(attribute)) and not math.isnan(m[attribute])]
    candidates = scored or best_checkpoints
    pick = max if order == "max" else min
    return pick(candidates, key=lambda cm: (cm[1].get(attribute, 0), cm[1].get("step", 0)))


def _fault_from_env() -> dict | None:
    value = os.environ.get(FAULT_ENV)
    if not value:
        return None
    step, _, rank = value.partition(":")
    return FaultInjection(step=int(step), rank=int(rank or 1)).__dict__


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
