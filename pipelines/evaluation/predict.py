"""Run a model over one split of prepared shards on the driver, in batches, straight from parquet.

    embeddings, labels = predict_split(model.encode_ecg, "data/ptbxl", "test")   # [n, D], n label lists
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow
import pyarrow.dataset
import torch

from pipelines.data.schema import lead_masks_of, signals_of

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
    dataset = pyarrow.dataset.dataset(data, format="parquet", exclude_invalid_files=True)
    scanner = dataset.scanner(
        columns=["signal", "lead_mask", "labels"],
        filter=pyarrow.dataset.field("split") == split,
        batch_size=batch_size,
    )
    outputs, labels = [], []
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        table = pyarrow.Table.from_batches([batch])
        signal = torch.from_numpy(signals_of(table).astype(np.float32))
        lead_mask = torch.from_numpy(lead_masks_of(table))
        outputs.append(predict(signal, lead_mask).float().numpy())
        labels.extend(table["labels"].to_pylist())
    if not outputs:
        raise ValueError(f"{data} has no rows in the {split!r} split")
    return np.concatenate(outputs), labels
