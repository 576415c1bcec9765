"""Which val rows a run validates on: the same ones on every read, every epoch and every rerun.

    chosen = validation_rows(["data/synthetic"], 2000)   # ecg_ids by hash, and those rows' labels
    val = split_dataset(data, "val", VAL_COLUMNS, ecg_ids=chosen.ecg_ids)

The `ecg_id` and `labels` columns of the val split are read once, on the driver (two small columns,
not the signals). A record's place in the order is a hash of its `ecg_id` (not of where its row lies in
a file or which read task finished first), so the subset is fixed by the data alone: the rows whose ids
hash lowest, whole records at a time, until `rows` are chosen. The classes validated are counted on
those very rows, and the Ray dataset reads only them (a filter the Parquet scan applies).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.compute as pc

from pipelines.data.shard_files import pyarrow_dataset, split_shards


@dataclass(frozen=True)
class ValidationRows:
    """The chosen records' ids (sorted) and the labels of every val row they hold (one list per row, by id)."""

    ecg_ids: list[str]
    labels: list[list[str]]


def validation_rows(folders: Sequence[str], rows: int) -> ValidationRows:
    """At least `rows` rows of the val split of `folders` (all of them where there are fewer; a record's rows
    are never split), chosen by the hash of their `ecg_id`. ValueError when no shard holds val rows."""
    found = split_shards(folders, "val")
    if not found.files:
        raise ValueError(f"{', '.join(folders)}: no shard holds rows of the 'val' split")
    table = pyarrow_dataset(found.shards).to_table(
        columns=["ecg_id", "labels"], filter=pc.field("split") == "val" if found.filtered else None
    )
    ids = table.column("ecg_id").to_pylist()
    rows_of = Counter(ids)
    chosen, count = set(), 0
    for ecg_id in sorted(rows_of, key=lambda i: (_hash(i), i)):
        if count >= rows:
            break
        chosen.add(ecg_id)
        count += rows_of[ecg_id]
    rows_chosen = sorted((ecg_id, row) for ecg_id, row in zip(ids, table.column("labels").to_pylist()) if ecg_id in chosen)
    return ValidationRows(sorted(chosen), [labels for _, labels in rows_chosen])


def _hash(ecg_id: str) -> bytes:
    """A hash of the id that is the same in every process and Python version (unlike `hash`)."""
    return hashlib.blake2b(ecg_id.encode(), digest_size=8).digest()
