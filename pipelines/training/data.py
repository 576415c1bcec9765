"""Prepared shards as Ray datasets for training, and the worker-side batch collation.

    train = split_dataset("data/synthetic", "train")         # only the train split's files and columns
    batch = collate_batch(model, numpy_batch, torch.float32)  # signal, lead_mask, tokenized reports

A split read once and held in the object store (where it fits `TrainConfig.data_cache_fraction`) costs no reading in
later epochs: Ray Train's `streaming_split` of a materialized dataset hands out its blocks each epoch.
Ray Train splits every dataset across the workers with `streaming_split(equal=True)`, so each worker
sees the same number of rows; with `drop_last` and one batch size everywhere, every rank runs the
same number of steps, which ZeRO's collectives need.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.data
import torch
from ray.data import FileShuffleConfig, RandomSeedConfig
from ray.data.expressions import col

from models.objectives import objective_class
from pipelines.data.shard_files import SplitShards, split_shards
from pipelines.training.config import TrainConfig

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("signal", "lead_mask", "report")
VAL_COLUMNS = (*TRAIN_COLUMNS, "labels")
SHUFFLE_BLOCK_ROWS = 64
"""Rows per block of a shuffled split: a quarter of a worker's default local shuffle buffer (256 rows), so the
buffer draws each batch from several blocks, in an order new each epoch. A shard's 512 rows as one block
would fill the buffer alone, and rows of one shard would share batches epoch after epoch."""


def train_columns(objective: str) -> tuple[str, ...]:
    """The shard columns a run of `objective` trains on: text-only objectives never read the signals."""
    return TRAIN_COLUMNS if objective_class(objective).reads_signals else ("report",)


def val_columns(objective: str) -> tuple[str, ...]:
    return VAL_COLUMNS if objective_class(objective).reads_signals else ("report",)


def split_dataset(
    shards: str | Sequence[str],
    split: str,
    columns: Sequence[str] = TRAIN_COLUMNS,
    *,
    shuffle_seed: int | None = None,
    ecg_ids: Sequence[str] | None = None,
    cache_fraction: float = TrainConfig.data_cache_fraction,
) -> ray.data.Dataset:
    """The rows of one split (train / val / test) of one or more shard folders, with only `columns`; read
    now and held in memory where it fits `cache_fraction` of the object store (Ray must be running).
    `shuffle_seed`: the rows in blocks of `SHUFFLE_BLOCK_ROWS`, in an order drawn anew each epoch from the seed
    and the epoch (held in memory: the blocks; streamed: the files, with no barrier before the first block).
    `ecg_ids`: only these records' rows (`pipelines.training.validation_rows`), filtered in the Parquet scan,
    in file order."""
    folders = [str(shards)] if isinstance(shards, str) else [str(folder) for folder in shards]
    found = split_shards(folders, split)
    if not found.files:
        raise ValueError(f"{', '.join(folders)}: no shard holds rows of the {split!r} split")
    memory = estimated_memory(found, columns)
    budget = cache_fraction * ray.cluster_resources().get("object_store_memory", 0)
    cached = memory <= budget
    log.debug(  # the log file's: the console starts with the run's plan
        "%s split: %d files, ~%.0f MB in memory (budget %.0f MB): %s",
        split, len(found.files), memory / 2**20, budget / 2**20, "read once" if cached else "streamed each epoch",
    )
    shuffle = FileShuffleConfig(seed=shuffle_seed) if shuffle_seed is not None and not cached else None
    dataset = ray.data.read_parquet(found.files, shuffle=shuffle)
    if ecg_ids is not None:
        dataset = dataset.filter(expr=col("ecg_id").is_in(list(ecg_ids)))
        dataset.context.execution_options.preserve_order = True  # one checkpoint validated twice: same batches
    if found.filtered:  # prepared before shard names carried the split: read all, keep this split's rows
        dataset = dataset.select_columns([*columns, "split"]).filter(expr=f"split == '{split}'")
    dataset = dataset.select_columns(list(columns))
    if shuffle_seed is not None:
        dataset = dataset.repartition(target_num_rows_per_block=SHUFFLE_BLOCK_ROWS)
    if not cached:
        return dataset
    dataset = dataset.materialize()
    if shuffle_seed is None:
        return dataset
    # Ray Data combines the seed with the execution's index: each epoch's pass gets another block order.
    return dataset.randomize_block_order(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))


def estimated_memory(found: SplitShards, columns: Sequence[str]) -> float:
    """Bytes that `columns` of `found` take in memory: their bytes on disk scaled by the uncompressed-to-file
    size ratio of those columns in the first file's footer (an upper bound where the files mix splits)."""
    first = found.shards[0].location
    with first.filesystem.open_input_file(first.path) as stream:
        metadata = pq.ParquetFile(stream).metadata
        file_size = stream.size()
    uncompressed = sum(
        group.column(i).total_uncompressed_size
        for group in (metadata.row_group(g) for g in range(metadata.num_row_groups))
        for i in range(group.num_columns)
        if group.column(i).path_in_schema.split(".")[0] in columns
    )
    return found.bytes * uncompressed / max(1, file_size)


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
