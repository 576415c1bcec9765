"""Fine-tuning (transfer learning): the pretrained ECG tower + a linear head, trained with Ray Train and
DeepSpeed on the task's train split, the best epoch by val macro AUROC scored on the test split.

    result = finetune("runs/tiny/export", "data/ptbxl", load_task("ptbxl-super"), "runs/tiny/eval", FINETUNE_DEFAULTS)

Each call starts afresh in `STORAGE/finetune/` (Ray Train's storage, a folder or a URI: a checkpoint per
epoch); within a call, a worker that fails is restarted from the last epoch's checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray

from models.classifier import ECGClassifier
from pipelines.evaluation.finetune_loop import FinetuneSpec, finetune_loop_per_worker
from pipelines.evaluation.predict import predict_split
from pipelines.labels.metrics import auroc_per_class, macro_auroc
from pipelines.labels.tasks import Task
from pipelines.storage import Location, cached_copy
from pipelines.training.checkpoints import consolidated_state_dict
from pipelines.training.config import TrainConfig
from pipelines.training.console import RelayedConsole
from pipelines.training.data import split_dataset
from pipelines.training.trainer import best_checkpoint, build_trainer, with_cpus_per_worker

log = logging.getLogger(__name__)

FINETUNE_DEFAULTS = TrainConfig(batch_size=32, lr=3e-4, warmup_steps=10, epochs=10, checkpoints_to_keep=1)
"""Shorter warm-up and a lower learning rate than pretraining: the tower starts from trained weights."""
STORAGE_NAME = "finetune"
COLUMNS = ("signal", "lead_mask", "labels")


def finetune(export_dir: str, data: str, task: Task, storage: str | Path, config: TrainConfig) -> dict:
    """Train, pick the best epoch, score the test split: macro_auroc, per_class_auroc, and the `scores`
    [n, C] and `labels` of the test rows (for the report's ROC curves). Ray Train keeps its checkpoints under
    `storage/finetune/` (on a cluster, a URI every node reaches: workers write there, the driver reads)."""
    storage = Location.of(storage)
    storage.child(STORAGE_NAME).delete()
    if not ray.is_initialized():
        ray.init()
    config = with_cpus_per_worker(config)
    train, val = split_dataset(data, "train", COLUMNS), split_dataset(data, "val", COLUMNS)
    n_train = train.count()
    steps_per_epoch = config.steps_per_epoch(n_train)
    if steps_per_epoch < 1:
        raise ValueError(f"{data}: the train split has {n_train} rows; one step needs {config.batch_size}")
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    log.info(
        "finetune: %s, %d classes, %s train rows, %d steps on %d workers (ZeRO-%d)",
        task.name,
        len(task.codes),
        f"{n_train:,}",
        total_steps,
        config.workers,
        config.zero_stage,
    )
    with RelayedConsole(log) as console:
        spec = FinetuneSpec(
            export_dir=Location.of(export_dir).uri,  # each worker loads its node's copy (pipelines.storage)
            task=task,
            train=config.to_dict(),
            total_steps=total_steps,
            console=console.relay,
        )
        trainer = build_trainer(
            finetune_loop_per_worker,
            spec.to_dict(),
            config,
            storage=storage.uri,
            name=STORAGE_NAME,
            datasets={"train": train, "val": val},
            score=("val_macro_auroc", "max"),
        )
        result = trainer.fit()
    checkpoint, best_metrics = best_checkpoint(result.best_checkpoints, "val_macro_auroc", "max")
    classifier = ECGClassifier.from_pretrained_tower(cached_copy(export_dir), task.codes)
    with checkpoint.as_directory() as directory:
        classifier.load_state_dict(consolidated_state_dict(directory))
    scores, labels = predict_split(classifier.eval().predict, data, "test")
    per_class = auroc_per_class(scores, task.targets(labels), task.codes)
    return {
        "macro_auroc": macro_auroc(per_class),
        "per_class_auroc": per_class,
        "epochs": int(best_metrics["epoch"]),
        "best_val_macro_auroc": float(best_metrics["val_macro_auroc"]),
        "train_rows": n_train,
        "steps": total_steps,
        "scores": scores,
        "labels": labels,
    }
