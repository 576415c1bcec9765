"""The driver side of a pretraining run: resolve and check everything, run the `TorchTrainer`, export.

    result = pretrain("data/synthetic", "runs/tiny", resolve_config("tiny"), TrainConfig(workers=2))

Run directory layout (a local path, a mount every node shares, or a URI such as s3://bucket/runs/x):
    made_by.json      what made it (`pipelines.outputs`)
    config.json       resolved model + training config and label task (a rerun must match it)
    train/            Ray Train's storage: checkpoint-step{N}-{attempt}/ (DeepSpeed shards of every rank), state
    tensorboard/      scalars from rank 0
    export/           the best checkpoint, consolidated: config.json, model.safetensors, tokenizer/
                      (+ text-encoder/, a Hugging Face folder, after a MELP stage-1 run)
    metrics.json      final and best figures, and every report's (`history`: each epoch's data wait, …);
                      planned and trained samples, every change of world size (`resizes`: step, old, new, why)
    logs/             the driver's log (pretrain.log) and each worker's (worker-<rank>.log)

In a URI run directory, what needs a local disk is written to each process's scratch folder
(`RunDirectory`) and uploaded: the workers' logs and TensorBoard files at every checkpoint and at the end,
the driver's log when training ends (or fails), the export once it is built and checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import ray
import ray.train

from models.config import ModelConfig
from models.objectives import objective_class
from pipelines.data.shard_files import MANIFEST_FILE
from pipelines.data.trained_with import TrainedWith
from pipelines.labels.tasks import Task, load_task
from pipelines.logs import setup_logging
from pipelines.outputs import check_output, claim_output
from pipelines.storage import Location
from pipelines.training.checkpoints import export_checkpoint
from pipelines.training.config import TrainConfig
from pipelines.training.console import RelayedConsole
from pipelines.training.data import split_dataset, train_columns, val_columns
from pipelines.training.history import HISTORY_FILE, ReportHistory, read_history
from pipelines.training.n3s_index import build_run_index
from pipelines.training.run_directory import RunDirectory
from pipelines.training.trainer import best_checkpoint, build_trainer, is_number, with_cpus_per_worker
from pipelines.training.validation_rows import validation_rows
from pipelines.training.worker import FaultInjection, LoopSpec, train_loop_per_worker

log = logging.getLogger(__name__)

RUN_CONFIG_FILE, EXPORT_DIR, METRICS_FILE, STORAGE_NAME, LOGS_DIR = "config.json", "export", "metrics.json", "train", "logs"
TEXT_ENCODER_DIR = "text-encoder"
"""Under export/ of a text-only (MELP stage 1) run: the trained encoder as a Hugging Face folder, which
stage 2 takes as `text.name_or_path`."""
FAULT_ENV = "ECG_FM_FAULT_AT_STEP"
"""Fault-injection switch for tests: `STEP` or `STEP:RANK` makes that rank exit at that step, once."""


def check_run(data: Sequence[str], model_config: ModelConfig, task: str) -> tuple[TrainedWith, Task]:
    """Everything about a run that can be checked before Ray starts: the shard folders agree on their
    preprocessing, the ECG tower takes their length, the label task loads. ValueError naming the field."""
    trained_with = TrainedWith.of_shards(list(data), task)
    n_samples = trained_with.preprocessing.n_samples
    if objective_class(model_config.objective.name).reads_signals and n_samples != model_config.ecg.n_samples:
        raise ValueError(
            f"{data[0]} holds {n_samples}-sample signals ({trained_with.preprocessing.fs} Hz × "
            f"{trained_with.preprocessing.seconds:g} s) but the ECG tower takes ecg.n_samples={model_config.ecg.n_samples}; "
            f"set ecg.n_samples={n_samples} (a multiple of ecg.patch_size) or prepare the data at that length"
        )
    return trained_with, load_task(task)


def pretrain(
    data: str | Sequence[str],
    run_dir: str | os.PathLike | Location,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    task: str = "synthetic",
    val_rows: int = 2000,
    overwrite: bool = False,
    callbacks: Sequence = (),
    address: str | None = None,
    log_file: str | None = None,
) -> dict:
    """Train on the `train` split of the shards in `data` (a folder, or several read as one), validate
    on (at most `val_rows` of) `val` with zero-shot AUROC over the classes of `task`, export the best
    checkpoint; returns the metrics written to `metrics.json`. `callbacks` go to the trainer's RunConfig
    (a Tune trial passes `TuneReportCallback`). Ray is started (or joined at `address`) after the checks.
    The run directory is claimed (`pipelines.outputs`: resumed, refused, or with `overwrite` replaced if
    a pretraining run made it) only once the data has been counted; `log_file` then also logs to
    `RUN_DIR/logs/<log_file>`."""
    started = time.time()
    data = [str(data)] if isinstance(data, str | os.PathLike) else [str(folder) for folder in data]
    trained_with, val_task = check_run(data, model_config, task)
    run_dir = Location.of(run_dir)
    made_with = run_record(data, model_config, train_config, task)
    check_output(run_dir, "pretrain", made_with, overwrite=overwrite, legacy=_legacy_run)  # refused before Ray starts
    if not ray.is_initialized():
        ray.init(address=address)
    train_config = with_cpus_per_worker(train_config)

    objective = model_config.objective.name
    reads_signals = objective_class(objective).reads_signals
    cache_fraction = train_config.data_cache_fraction
    train = split_dataset(data, "train", train_columns(objective), shuffle_seed=train_config.seed, cache_fraction=cache_fraction)
    chosen = validation_rows(data, val_rows)  # the same rows on every read, epoch and rerun
    val = split_dataset(data, "val", val_columns(objective), ecg_ids=chosen.ecg_ids, cache_fraction=cache_fraction)
    val_labels = chosen.labels
    n_train = train.count()
    rows_per_step = train_config.batch_size
    steps_per_epoch = train_config.steps_per_epoch(n_train)
    if steps_per_epoch < 1:
        raise ValueError(
            f"{', '.join(data)}: the train split has {n_train} rows; one optimizer step needs {rows_per_step} "
            f"(train.batch_size), split over {train_config.workers_range} workers"
        )
    if len(val_labels) < train_config.workers:
        raise ValueError(f"{', '.join(data)}: the val split has {len(val_labels)} rows; validation needs one per worker at least")
    _claim_run_dir(run_dir, made_with, _resolved(model_config, train_config, task), overwrite)  # data checked: may delete
    run = RunDirectory.open(run_dir, "driver")
    logs = [f"{LOGS_DIR}/{log_file}"] if log_file else []
    run.resume(*logs)  # a resubmitted run appends to its log
    if log_file:
        setup_logging(run.local / LOGS_DIR / log_file)
    total_steps = train_config.max_steps or train_config.epochs * steps_per_epoch
    val_codes = val_task.present_codes(val_labels) if reads_signals else []
    score = ("val_macro_auroc", "max") if val_codes else ("val_loss", "min")
    log.info(
        "pretrain: %s on %s — %s train rows, %s val rows; %s steps per epoch, %s steps in all on %s workers "
        "(ZeRO-%d, micro-batch %d); validation: zero-shot AUROC of task %s over %s",
        objective,
        ", ".join(data),
        f"{n_train:,}",
        f"{len(val_labels):,}",
        f"{steps_per_epoch:,}",
        f"{total_steps:,}",
        train_config.workers_range,
        train_config.zero_stage,
        train_config.micro_batch,
        val_task.name,
        ", ".join(val_codes) or "no class (validation loss decides)",
    )
    if objective_class(objective).uses_corpus_index:
        build_run_index(run, train, model_config, train_config.seed)

    with RelayedConsole(log) as console:
        spec = LoopSpec(
            model=model_config.to_dict(),
            train=train_config.to_dict(),
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            val_task=val_task,
            val_codes=val_codes,
            run_dir=run_dir.uri,
            trained_with=trained_with.to_dict(),
            console=console.relay,
            fault=_fault_from_env(),
        )
        trainer = build_trainer(
            train_loop_per_worker,
            spec.to_dict(),
            train_config,
            storage=run_dir.uri,
            name=STORAGE_NAME,
            datasets={"train": train, "val": val},
            score=score,
            callbacks=[*callbacks, ReportHistory(run_dir / STORAGE_NAME / HISTORY_FILE)],
        )
        try:
            result = trainer.fit()
        finally:
            run.sync(*logs)  # the driver's log so far, in the run directory even when training failed
    best, best_metrics = best_checkpoint(result.best_checkpoints, *score)
    exported, export_max_diff = export_checkpoint(best, model_config, trained_with, run.local / EXPORT_DIR)
    if not reads_signals:
        exported.text.save_encoder(run.local / EXPORT_DIR / TEXT_ENCODER_DIR)
    run.sync(EXPORT_DIR)
    metrics = {
        "final": {k: v for k, v in result.metrics.items() if is_number(v)},
        "best": {k: v for k, v in best_metrics.items() if is_number(v)},
        "best_checkpoint": Path(best.path).name,
        "history": read_history(run_dir / STORAGE_NAME / HISTORY_FILE),
        "selected_by": score[0],
        "export_max_abs_diff": export_max_diff,
        "total_steps": total_steps,
        "planned_samples": total_steps * train_config.batch_size,
        "samples": result.metrics["step"] * train_config.batch_size,
        "resizes": result.metrics.get("resizes", []),
        "train_rows": n_train,
        "elapsed_seconds": time.time() - started,
    }
    run_dir.child(METRICS_FILE).write_json(metrics)
    log.info(
        "pretrain: exported %s (%s %.4f) to %s in %.0f s",
        metrics["best_checkpoint"],
        score[0],
        best_metrics.get(score[0], float("nan")),
        run_dir / EXPORT_DIR,
        metrics["elapsed_seconds"],
    )
    run.close(*logs)
    return metrics


def _claim_run_dir(run_dir: Location, made_with: dict, resolved: dict, overwrite: bool) -> None:
    """Claim the run directory and write the resolved config; one that holds a different run is refused
    (naming the field), not mixed, and one that no pretraining run made is never deleted."""
    claim_output(run_dir, "pretrain", made_with, overwrite=overwrite, legacy=_legacy_run)
    run_dir.child(RUN_CONFIG_FILE).write_json(resolved)


def run_record(data: Sequence[str], model_config: ModelConfig, train_config: TrainConfig, task: str) -> dict:
    """What a run directory's marker records and a rerun must match to continue it: the config (`_resumable`)
    and the data, as {shard folder: digest of its manifest}: other folders, or the same one prepared anew, are
    other data, and their rows would continue a checkpoint of the first (refused, naming `data.<folder>`)."""
    digests = {
        Location.of(folder).uri: hashlib.sha256(Location.of(folder).child(MANIFEST_FILE).read_bytes()).hexdigest()[:16]
        for folder in data
    }
    return {**_resumable(_resolved(model_config, train_config, task)), "data": digests}


def _resolved(model_config: ModelConfig, train_config: TrainConfig, task: str) -> dict:
    """What `config.json` holds."""
    return {"model": model_config.to_dict(), "train": train_config.to_dict(), "task": task}


def _legacy_run(run_dir: Location) -> dict | None:
    """A run directory from before run directories carried a marker: its config.json, as `_resumable`."""
    try:
        resolved = run_dir.child(RUN_CONFIG_FILE).read_json()
    except (OSError, ValueError):
        return None
    return _resumable(resolved) if isinstance(resolved, dict) and {"model", "train"} <= resolved.keys() else None


def _resumable(resolved: dict) -> dict:
    """What must match for a rerun to continue a run: all but how long it trains, how it is spread (a checkpoint
    written at another world size is resharded on restore) and how often it checkpoints."""
    spread = (
        "workers", "min_workers", "resize_check_s", "placement_strategy", "worker_resources", "cpus_per_worker",
        "data_cache_fraction",
    )  # fmt: skip
    train = {
        k: v
        for k, v in resolved["train"].items()
        if k not in ("max_steps", "epochs", "progress_every_s", "validate_every", *spread)
    }
    return {"model": resolved["model"], "train": json.loads(json.dumps(train)), "task": resolved.get("task", "synthetic")}


def _fault_from_env() -> dict | None:
    value = os.environ.get(FAULT_ENV)
    if not value:
        return None
    step, _, rank = value.partition(":")
    return FaultInjection(step=int(step), rank=int(rank or 1)).__dict__
