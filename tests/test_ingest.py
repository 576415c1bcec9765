"""Ingest: shards named by split are listed per split, old mixed shards still read, small splits are held in
memory, and the memory estimate made before reading is close to what Ray holds after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.schema import lead_mask_array, signal_array
from pipelines.data.shard_files import shard_name, split_shards
from pipelines.data.shard_sink import SHARD_WRITE_OPTIONS, _by_split
from pipelines.storage import Location
from pipelines.training.data import TRAIN_COLUMNS, estimated_memory, split_dataset

SPLITS = ["train"] * 6 + ["val"] * 3 + ["test"] * 3


def _rows(n_samples: int = 500) -> pa.Table:
    """12 shard-like rows (ids r00…r11) over three splits; each signal holds its row number."""
    n = len(SPLITS)
    signals = np.broadcast_to(np.arange(n, dtype=np.float16)[:, None, None], (n, 12, n_samples))
    return pa.table(
        {
            "ecg_id": [f"r{i:02d}" for i in range(n)],
            "signal": signal_array(np.ascontiguousarray(signals)),
            "lead_mask": lead_mask_array(np.ones((n, 12), bool)),
            "report": [f"report {i}" for i in range(n)],
            "labels": [["NORM"]] * n,
            "split": SPLITS,
        }
    )


def _write_new(folder: Path, table: pa.Table) -> Path:
    """As prepare writes now: one file per split and write task."""
    folder.mkdir()
    for task, half in enumerate((table.slice(0, 6), table.slice(6))):
        for split, rows in _by_split(half):
            pq.write_table(rows, folder / shard_name(split, task, 0), **SHARD_WRITE_OPTIONS)
    pq.write_table(pa.table({"ecg_id": ["x"], "reason": ["a reason"]}), folder / "rejected.parquet")
    return folder


def _write_old(folder: Path, table: pa.Table) -> Path:
    """As prepare wrote before: splits mixed within each file, no split in the name."""
    folder.mkdir()
    for task, start in enumerate((0, 4, 8)):
        pq.write_table(table.slice(start, 4), folder / f"part-{task:05d}-000.parquet", **SHARD_WRITE_OPTIONS)
    pq.write_table(pa.table({"ecg_id": ["x"], "reason": ["a reason"]}), folder / "rejected.parquet")
    return folder


def test_split_named_shards_list_only_their_split(tmp_path):
    new = _write_new(tmp_path / "new", _rows())
    val = split_shards([str(new)], "val")
    assert [Path(f).name for f in val.files] == ["part-val-00001-000.parquet"] and not val.filtered
    assert val.bytes == (new / "part-val-00001-000.parquet").stat().st_size
    assert [Path(f).name for f in split_shards([str(new)], "train").files] == ["part-train-00000-000.parquet"]
    assert split_shards([str(new)], "holdout").files == []


def test_old_or_mixed_folders_list_every_shard_to_be_filtered(tmp_path):
    old = _write_old(tmp_path / "old", _rows())
    new = _write_new(tmp_path / "new", _rows())
    listed = split_shards([str(new), str(old)], "val")
    assert listed.filtered, "a folder of mixed shards makes the rows be filtered"
    assert sorted(Path(f).name for f in listed.files) == sorted(
        [p.name for p in new.glob("part-*.parquet")] + [p.name for p in old.glob("part-*.parquet")]
    ), "every shard of both folders, never rejected.parquet"


def test_split_named_shards_list_from_a_bucket(object_store, tmp_path):
    local = _write_new(tmp_path / "new", _rows())
    Location.of(object_store.uri("shards")).upload_from(local)
    train = split_shards([object_store.uri("shards")], "train")
    assert train.files == [object_store.uri("shards/part-train-00000-000.parquet")] and not train.filtered
    assert estimated_memory(train, TRAIN_COLUMNS) == estimated_memory(split_shards([str(local)], "train"), TRAIN_COLUMNS)


def test_a_row_without_a_split_name_is_refused_naming_the_record():
    table = _rows().slice(0, 3)
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(["train", None, "val"]))
    with pytest.raises(ValueError, match=r"record r01: split None is not a split name"):
        _by_split(table)
    assert [(split, rows.num_rows) for split, rows in _by_split(_rows())] == [("test", 3), ("train", 6), ("val", 3)]


@pytest.mark.slow
def test_splits_read_the_same_rows_from_new_and_old_shards_held_or_streamed(ray_cluster, tmp_path):
    table = _rows()
    new, old = _write_new(tmp_path / "new", table), _write_old(tmp_path / "old", table)
    for split in ("train", "val", "test"):
        expected = sorted(r for r, s in zip(table["report"].to_pylist(), SPLITS) if s == split)
        for folder in (new, old):
            for cache_fraction in (0.25, 0.0):
                dataset = split_dataset(str(folder), split, TRAIN_COLUMNS, cache_fraction=cache_fraction)
                assert dataset.schema().names == list(TRAIN_COLUMNS)
                assert sorted(dataset.to_pandas()["report"]) == expected, (folder.name, split, cache_fraction)
    with pytest.raises(ValueError, match=r"no shard holds rows of the 'holdout' split"):
        split_dataset(str(new), "holdout")


def test_memory_estimate_is_close_to_what_ray_holds(ray_cluster, tmp_path):
    new = _write_new(tmp_path / "new", _rows(n_samples=5000))
    held = split_dataset(str(new), "train", TRAIN_COLUMNS, shuffle_seed=0)
    estimate = estimated_memory(split_shards([str(new)], "train"), TRAIN_COLUMNS)
    actual = held.materialize().size_bytes()
    assert 0.8 < estimate / actual < 1.25, (estimate, actual)
    assert sorted(held.to_pandas()["report"]) == [f"report {i}" for i in range(6)]
