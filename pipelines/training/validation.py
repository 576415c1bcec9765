"""Validation inside the workers: mean loss terms and zero-shot AUROC on the val split.

Every rank runs the same number of val batches (the split is equal), builds the same zero-shot
classifier, and the ECG embeddings and labels are gathered so that every rank returns the same
figures. Under ZeRO-3 all ranks must run every forward together, which this keeps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from pipelines.labels.metrics import macro_auroc
from pipelines.labels.tasks import Task
from pipelines.labels.zero_shot import zero_shot_auroc
from pipelines.training.data import collate_batch, label_lists


@torch.no_grad()
def validate(
    model, batches, task: Task, codes: Sequence[str], dtype: torch.dtype, device: torch.device
) -> dict[str, float]:
    """model: the module inside the engine; batches: numpy batches of VAL_COLUMNS; codes: the classes of
    `task` scored.

    Returns val_<term> for each loss term, and (when `codes` is not empty) val_macro_auroc and
    val_auroc/<code> per class.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    n_batches = 0
    embeddings, labels = [], []
    for batch in batches:
        inputs = collate_batch(model, batch, dtype, device)
        for name, value in model(inputs).items():
            sums[name] += float(value)
        n_batches += 1
        if codes:
            embeddings.append(model.encode_ecg(inputs["signal"], inputs["lead_mask"]).float().cpu().numpy())
            labels.extend(label_lists(batch["labels"]))
    metrics = mean_over_ranks(sums, n_batches)
    if codes:
        dim = model.config.objective.embed_dim
        local = np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)
        all_embeddings, all_labels = gather_rows((local, labels))
        per_class = zero_shot_auroc(model, all_embeddings, all_labels, codes, task)
        metrics["val_macro_auroc"] = macro_auroc(per_class)
        metrics.update({f"val_auroc/{code}": value for code, value in per_class.items()})
    model.train(was_training)
    return metrics


def mean_over_ranks(sums: dict[str, float], n_batches: int) -> dict[str, float]:
    """{name: sum over this rank's batches} → {val_<name>: mean over every rank's batches}."""
    names = sorted(sums)
    totals = torch.tensor([sums[name] for name in names] + [n_batches], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(totals)
    count = max(1.0, float(totals[-1]))
    return {f"val_{name}": float(total) / count for name, total in zip(names, totals[:-1])}


def gather_rows(local: tuple[np.ndarray, list]) -> tuple[np.ndarray, list]:
    """(this rank's rows [n, K], their labels) → every rank's, concatenated in rank order, on every rank."""
    if not dist.is_initialized():
        return local
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return np.concatenate([p[0] for p in parts]), [row for p in parts for row in p[1]]
