"""Ingest: shards named by split are listed per split, old mixed shards still read, small splits are held in
memory, the memory estimate made before reading is close to what Ray holds after, and a run validates the
same rows (chosen by the hash of their id) on every read."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray.data

from pipelines.data.schema import lead_mask_array, signal_array
from pipelines.data.shard_files import shard_name, split_shards
from pipelines.data.shard_sink import SHARD_WRITE_OPTIONS, _by_split
from pipelines.storage import Location
from pipelines.training.data import TRAIN_COLUMNS, VAL_COLUMNS, estimated_memory, split_dataset
from pipelines.training.validation_rows import validation_rows
from tests.shard_folders import write_manifest

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
    return write_manifest(folder)


def _write_old(folder: Path, table: pa.Table) -> Path:
    """As prepare wrote before: splits mixed within each file, no split in the name."""
    folder.mkdir()
    for task, start in enumerate((0, 4, 8)):
        pq.write_table(table.slice(start, 4), folder / f"part-{task:05d}-000.parquet", **SHARD_WRITE_OPTIONS)
    pq.write_table(pa.table({"ecg_id": ["x"], "reason": ["a reason"]}), folder / "rejected.parquet")
    return write_manifest(folder)


def test_split_named_shards_list_only_their_split(tmp_path):
    new = _write_new(tmp_path / "new", _rows())
    val = split_shards([str(new)], "val")
    assert [Path(f).name for f in val.files] == ["part-val-00001-000.parquet"] and not val.filtered
    assert val.bytes == (new / "part-val-00001-000.parquet").stat().st_size
    assert [Path(f).name for f in split_shards([str(new)], "train").files] == ["part-train-00000-000.parquet"]
    assert split_shards([str(new)], "holdout").files == []


def test_a_shard_its_manifest_lists_but_the_folder_lacks_is_refused_by_name(tmp_path):
    new = _write_new(tmp_path / "new", _rows())
    (new / "part-val-00001-000.parquet").unlink()
    with pytest.raises(ValueError, match=rf"{new}: 1 of the 3 shards its manifest.json lists are missing "
                                         r"\(part-val-00001-000.parquet\); prepare it again with --overwrite"):
        split_shards([str(new)], "train")
    assert sorted(p.name for p in new.glob("*.parquet")) == [
        "part-test-00001-000.parquet", "part-train-00000-000.parquet", "rejected.parquet"
    ], "a refusal deletes nothing"


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


def _batch_pairs(dataset, epoch: int, batch_size: int = 16, buffer: int = 256) -> set[tuple[str, str]]:
    """The pairs of rows that share a batch in one epoch's pass, drawn as a worker draws them (its local shuffle
    buffer, seeded by the epoch)."""
    batches = dataset.iter_batches(
        batch_size=batch_size, local_shuffle_buffer_size=buffer, local_shuffle_seed=31 * epoch, drop_last=True
    )
    return {pair for batch in batches for pair in itertools.combinations(sorted(batch["ecg_id"].tolist()), 2)}


def test_a_held_train_split_gives_each_epoch_other_batches(ray_cluster, tmp_path):
    """4,096 rows in shards of 512 as prepare writes them, read in blocks of whole shards as Ray Data reads real
    ones (it cuts blocks at 128 MiB, about two 60 MB shards; here 1 MiB shards at a 1 MiB cut): of the pairs that
    share a batch of 16 in the second epoch, about 0.37 % would have shared one in the first were batches drawn
    from all rows at random. Measured: 1.5 % with one fixed order of whole-shard blocks (a 256-row buffer then
    draws from one shard's rows, epoch after epoch), 0.56-0.7 % with 64-row blocks in an order new each epoch."""
    folder = tmp_path / "shards"
    folder.mkdir()
    for task in range(8):  # 2 KiB of payload a row: 1 MiB a shard
        ids = [f"r{task * 512 + i:05d}" for i in range(512)]
        payload = pa.array([os.urandom(2048) for _ in ids], pa.binary())
        pq.write_table(pa.table({"ecg_id": ids, "payload": payload, "split": ["train"] * 512}), folder / shard_name("train", task, 0))
    context = ray.data.DataContext.get_current()
    cut, context.target_max_block_size = context.target_max_block_size, 2**20
    try:
        held = split_dataset(str(write_manifest(folder)), "train", ("ecg_id", "payload"), shuffle_seed=0)
    finally:
        context.target_max_block_size = cut
    first, second = _batch_pairs(held, epoch=0), _batch_pairs(held, epoch=1)
    repeated, at_random = len(first & second) / len(second), 15 / 4095
    assert repeated < 3 * at_random, f"{repeated:.2%} of the second epoch's pairs shared a batch in the first"


def _val_heavy() -> pa.Table:
    """_rows() with every row in val and two classes among them (AUROC needs positives and negatives)."""
    table = _rows()
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(["val"] * len(SPLITS)))
    labels = [["AFIB"] if i % 2 else ["NORM"] for i in range(len(SPLITS))]
    return table.set_column(table.schema.get_field_index("labels"), "labels", pa.array(labels))


def test_validation_rows_are_chosen_by_their_ids_not_by_where_they_lie(tmp_path):
    table = _val_heavy()
    reversed_rows = table.take(list(reversed(range(len(SPLITS)))))
    new, old = _write_new(tmp_path / "new", table), _write_old(tmp_path / "old", reversed_rows)
    chosen = validation_rows([str(new)], 5)
    assert len(chosen.ecg_ids) == 5 == len(chosen.labels)
    assert validation_rows([str(old)], 5) == chosen, "another file layout and row order: the same rows"
    labels_by_id = dict(zip(table["ecg_id"].to_pylist(), table["labels"].to_pylist()))
    assert sorted(chosen.labels) == sorted(labels_by_id[ecg_id] for ecg_id in chosen.ecg_ids)
    assert set(chosen.ecg_ids) < set(validation_rows([str(new)], 8).ecg_ids), "more rows keep the first ones"
    everything = validation_rows([str(new)], 1000)
    assert everything.ecg_ids == sorted(table["ecg_id"].to_pylist())

    twice = pa.concat_tables([table, table.slice(0, 6)])  # six records with two rows each
    (tmp_path / "doubled").mkdir()
    pq.write_table(twice, tmp_path / "doubled" / shard_name("val", 0, 0))
    doubled = validation_rows([str(write_manifest(tmp_path / "doubled"))], 5)
    counts = {ecg_id: twice["ecg_id"].to_pylist().count(ecg_id) for ecg_id in doubled.ecg_ids}
    assert len(doubled.labels) == sum(counts.values()) >= 5, "a record's rows are chosen whole"
    with pytest.raises(ValueError, match=r"no shard holds rows of the 'val' split"):
        validation_rows([str(_write_new(tmp_path / "no-val", _rows().filter(pc.field("split") != "val")))], 5)


def test_two_validations_of_one_checkpoint_give_the_same_figures(ray_cluster, tmp_path):
    """The chosen rows are the ones read, the classes scored are counted on them, and a second read of them
    validates the same batches: the same loss and the same AUROC."""
    import torch

    from models.factory import create_model
    from pipelines.labels.tasks import load_task
    from pipelines.training.validation import validate

    folder = str(_write_new(tmp_path / "shards", _val_heavy()))
    chosen = validation_rows([folder], 7)
    torch.manual_seed(0)
    model = create_model("tiny", objective="mets", overrides={"ecg.n_samples": 500})[0].eval()
    task = load_task("synthetic")
    codes = task.present_codes(chosen.labels)
    assert sorted(codes) == ["AFIB", "NORM"], "both classes among the chosen rows"
    figures = []
    for _ in range(2):
        dataset = split_dataset(folder, "val", [*VAL_COLUMNS, "ecg_id"], ecg_ids=chosen.ecg_ids, cache_fraction=0.0)
        batches = list(dataset.iter_batches(batch_size=3))
        assert sorted(ecg_id for batch in batches for ecg_id in batch["ecg_id"]) == chosen.ecg_ids
        figures.append(validate(model, batches, task, codes, torch.float32, torch.device("cpu")))
    assert figures[0] == figures[1] and "val_macro_auroc" in figures[0]
