"""Prepared shards as Ray datasets for training, and the worker-side batch collation.

    train = split_dataset("data/synthetic", "train")         # streams only the columns training reads
    batch = collate_batch(model, numpy_batch, torch.float32)  # signal, lead_mask, tokenized reports

Ray Train splits every dataset across the workers with `streaming_split(equal=True)`, so each worker
sees the same number of rows; with `drop_last` and one batch size everywhere, every rank runs the
same number of steps, which ZeRO's collectives need.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray.data
import torch

from models.objectives import objective_class

TRAIN_COLUMNS = ("signal", "lead_mask", "report")
VAL_COLUMNS = (*TRAIN_COLUMNS, "labels")


def train_columns(objective: str) -> tuple[str, ...]:
    """The shard columns a run of `objective` trains on: text-only objectives never read the signals."""
    return TRAIN_COLUMNS if objective_class(objective).reads_signals else ("report",)


def val_columns(objective: str) -> tuple[str, ...]:
    return VAL_COLUMNS if objective_class(objective).reads_signals else ("report",)


def split_dataset(shards: str | Sequence[str], split: str, columns: Sequence[str] = TRAIN_COLUMNS) -> ray.data.Dataset:
    """The rows of one split (train / val / test) of one or more shard folders, with only `columns`."""
    dataset = ray.data.read_parquet(shards, columns=[*columns, "split"], file_extensions=["parquet"])
    return dataset.filter(expr=f"split == '{split}'").select_columns(list(columns))


def label_lists(labels: np.ndarray) -> list[list[str]]:
    """The `labels` column of a numpy batch (an object array of string arrays) as lists of codes."""
    return [list(row) for row in labels]


def collate_batch(model, batch: dict[str, np.ndarray], dtype: torch.dtype, device: torch.device) -> dict:
    """A numpy batch from the shards → the model's training batch on `device`, floats cast to `dtype`
    (signal [B, 12, T] float16 on disk → dtype; lead_mask [B, 12] bool; reports tokenized). A batch
    without signals (text-only objectives) gets the tokenized reports only."""
    reports = list(batch["report"])
    if "signal" in batch:
        collated = model.collate(batch["signal"], np.stack(batch["lead_mask"]), reports)
    else:
        collated = model.objective.text_inputs(reports, model.text)
    return {
        name: tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        for name, tensor in collated.items()
    }
