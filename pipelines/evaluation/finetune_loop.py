"""The loop every Ray Train worker runs to fine-tune a pretrained ECG tower on a labelled task.

The pretraining machinery, smaller: a DeepSpeed engine (ZeRO stage, precision, clipping and the
warm-up + cosine schedule from a `TrainConfig`), the train split streamed by Ray Data, and after
each epoch a validation pass (macro AUROC of the classifier on the val split, gathered over the
ranks) reported to Ray Train with the DeepSpeed checkpoint, so the best epoch can be picked and a
restarted worker resumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np
import ray.train
import ray.train.torch
import torch

from models.classifier import ECGClassifier
from pipelines.labels.metrics import auroc_per_class, macro_auroc
from pipelines.labels.tasks import Task
from pipelines.storage import cached_copy
from pipelines.training.checkpoints import report_with_checkpoint, restore_latest
from pipelines.training.config import TrainConfig
from pipelines.training.data import label_lists
from pipelines.training.engine import DTYPES, initialize_engine, resolve_precision
from pipelines.training.validation import gather_rows, mean_over_ranks

VAL_BATCH_SIZE = 64


@dataclass(frozen=True)
class FinetuneSpec:
    export_dir: str
    """The pretrained `save_pretrained` folder; every worker reads it (a shared path on a cluster)."""
    task: Task
    train: dict
    total_steps: int
    console: object
    """The driver's `ConsoleRelay` actor handle: rank 0's epoch lines."""

    def to_dict(self) -> dict:
        return {**asdict(self), "task": self.task, "console": self.console}


def collate_labelled(task: Task, batch: dict[str, np.ndarray], dtype: torch.dtype, device: torch.device) -> dict:
    """Numpy batch (signal [B, 12, T] float16, lead_mask [B, 12], labels) → signal in `dtype`,
    lead_mask bool and targets [B, C] in `dtype`, on `device`."""
    targets = task.targets(label_lists(batch["labels"]))
    return {
        "signal": torch.as_tensor(np.asarray(batch["signal"])).to(device=device, dtype=dtype),
        "lead_mask": torch.as_tensor(np.stack(batch["lead_mask"]).astype(bool)).to(device),
        "targets": torch.as_tensor(targets).to(device=device, dtype=dtype),
    }


@torch.no_grad()
def validate_classifier(model: ECGClassifier, batches, task: Task, dtype, device) -> dict[str, float]:
    """val_bce_loss and val_macro_auroc (+ val_auroc/<code>) over every rank's val batches."""
    model.eval()
    losses, n_batches, scores, labels = 0.0, 0, [], []
    for batch in batches:
        inputs = collate_labelled(task, batch, dtype, device)
        logits = model.logits(inputs["signal"], inputs["lead_mask"]).float()
        losses += float(torch.nn.functional.binary_cross_entropy_with_logits(logits, inputs["targets"].float()))
        n_batches += 1
        scores.append(logits.sigmoid().cpu().numpy())
        labels.extend(label_lists(batch["labels"]))
    metrics = mean_over_ranks({"bce_loss": losses}, n_batches)
    local = np.concatenate(scores) if scores else np.zeros((0, len(task.codes)), np.float32)
    all_scores, all_labels = gather_rows((local, labels))
    per_class = auroc_per_class(all_scores, task.targets(all_labels), task.codes)
    metrics["val_macro_auroc"] = macro_auroc(per_class)
    metrics.update({f"val_auroc/{code}": value for code, value in per_class.items()})
    model.train()
    return metrics


def finetune_loop_per_worker(loop_config: dict) -> None:
    spec = FinetuneSpec(**loop_config)
    train = TrainConfig.from_dict(spec.train)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    precision = resolve_precision(train.precision, train.use_gpu)
    dtype = DTYPES[precision]

    torch.manual_seed(train.seed)  # the same head initialisation on every rank
    model = ECGClassifier.from_pretrained_tower(cached_copy(spec.export_dir), spec.task.codes).to(device)
    engine, _ = initialize_engine(model, train, spec.total_steps, precision)
    state = restore_latest(engine)
    torch.manual_seed(train.seed + 7919 * rank + 104729 * state.step)

    collate = partial(collate_labelled, spec.task, dtype=dtype, device=device)
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    step, epoch = state.step, state.epoch
    while step < spec.total_steps:
        loss_sum, n_batches = 0.0, 0
        for batch in train_shard.iter_torch_batches(
            batch_size=train.micro_batch,
            collate_fn=collate,
            drop_last=True,
            local_shuffle_buffer_size=train.shuffle_buffer or None,
            local_shuffle_seed=train.seed + 31 * epoch + rank,
        ):
            loss = engine(batch)["loss"]
            engine.backward(loss)
            engine.step()
            loss_sum, n_batches = loss_sum + float(loss), n_batches + 1
            step = engine.global_steps
            if step >= spec.total_steps:
                break
        if n_batches == 0:
            raise RuntimeError(f"rank {rank}: a pass over its train shard gave no batch")
        epoch += 1
        metrics = {"step": step, "epoch": epoch, "train_bce_loss": loss_sum / max(1, n_batches)}
        metrics.update(
            validate_classifier(model, val_shard.iter_batches(batch_size=VAL_BATCH_SIZE), spec.task, dtype, device)
        )
        if rank == 0:
            spec.console.say.remote(
                f"finetune: epoch {epoch} step {step}/{spec.total_steps} · train_bce_loss {metrics['train_bce_loss']:.4f}"
                f" · val_bce_loss {metrics['val_bce_loss']:.4f} · val_macro_auroc {metrics['val_macro_auroc']:.4f}"
            )
        report_with_checkpoint(engine, metrics, replace(state, step=step, epoch=epoch))
