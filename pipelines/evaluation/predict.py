"""Run a model over one split of prepared shards (or several: `pipelines.data.splits.selected_splits`) on the
driver, in batches, straight from parquet.

    embeddings, labels = predict_split(model.encode_ecg, "data/ptbxl", "test")   # [n, D], n label lists
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow
import pyarrow.dataset
import torch

from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.data.shard_files import dataset_shards, pyarrow_dataset
from pipelines.data.splits import selected_splits

BATCH_SIZE = 64


@torch.no_grad()
def predict_split(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: str,
    split: str,
    batch_size: int = BATCH_SIZE,
) -> tuple[np.ndarray, list[list[str]]]:
    """`predict(signal [B, 12, T] float32, lead_mask [B, 12] bool) → [B, K]` over the rows of `split`:
    the outputs [n, K] and each row's label codes, in shard order."""
    outputs, labels = [], []
    for table in split_tables(data, split, ["signal", "lead_mask", "labels"], batch_size):
        outputs.append(predict(*model_inputs(table)).float().numpy())
        labels.extend(table["labels"].to_pylist())
    if not outputs:
        raise ValueError(f"{data} has no rows in the {split!r} split")
    return np.concatenate(outputs), labels


def split_tables(data: str, split: str, columns: list[str], batch_size: int = BATCH_SIZE) -> Iterator[pyarrow.Table]:
    """The `columns` of the rows of `split` ("test", "val,test" or "all"), in non-empty tables of at most
    `batch_size` rows, in shard order (the shards `data`'s manifest lists)."""
    splits = selected_splits(split)
    shards = [shard for shard in dataset_shards(data) if shard.split is None or shard.split in splits]
    if not shards:
        return
    chosen = pyarrow.dataset.field("split").isin(list(splits))
    scanner = pyarrow_dataset(shards).scanner(columns=columns, filter=chosen, batch_size=batch_size)
    for batch in scanner.to_batches():
        if batch.num_rows:
            yield pyarrow.Table.from_batches([batch])


def split_reports(data: str, split: str) -> list[str]:
    """The report column of a split ("" where a row has none), in the order `predict_split` reads rows."""
    tables = split_tables(data, split, ["report"], batch_size=2**16)
    return [report or "" for table in tables for report in table["report"].to_pylist()]


def model_inputs(table: pyarrow.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """A table's signal [B, 12, T] float32 and lead_mask [B, 12] bool, as the model takes them."""
    return torch.from_numpy(signals_of(table).astype(np.float32)), torch.from_numpy(lead_masks_of(table))
