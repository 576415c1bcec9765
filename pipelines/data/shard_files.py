"""Shard file names carry their split, so that a reader of one split opens only that split's files.

    part-train-00003-001.parquet      split, write task, k-th shard of that task and split
    split_shards(["data/synthetic"], "val")  → SplitShards(files=[…/part-val-….parquet], filtered=False)

Datasets prepared before shard names carried their split (`part-00003-001.parquet`, splits mixed within a
file) still read: for them `split_shards` lists every shard and says the rows must be filtered on the
`split` column. Folders are local paths or URIs (s3://…), listed through `pipelines.storage`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.storage import Location

SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")
"""What a split may be called: it becomes part of a file name."""
_SHARD = re.compile(r"part-(?:(?P<split>[a-z][a-z0-9_]*)-)?\d+-\d+\.parquet")


def shard_name(split: str, task: int, k: int) -> str:
    """The file name of write task `task`'s `k`-th shard of `split`."""
    return f"part-{split}-{task:05d}-{k:03d}.parquet"


@dataclass(frozen=True)
class SplitShards:
    """The shard files to read for one split (paths or URIs, sorted), their bytes on disk, and whether
    their rows must still be filtered on the `split` column (files that mix splits)."""

    files: list[str]
    bytes: int
    filtered: bool


def split_shards(folders: Sequence[str], split: str) -> SplitShards:
    """The files holding `split`'s rows in `folders`: only `part-<split>-*.parquet` where every folder names
    its shards by split; every shard of every folder, to be filtered, where any folder predates that."""
    listed = [(folder, info) for folder in folders for info in Location.of(folder).files(recursive=False)]
    shards = [(folder, info, match) for folder, info in listed if (match := _SHARD.fullmatch(info.base_name))]
    filtered = any(match["split"] is None for _, _, match in shards)
    chosen = [(folder, info) for folder, info, match in shards if filtered or match["split"] == split]
    return SplitShards(
        files=[Location.of(folder).child(info.base_name).uri for folder, info in chosen],
        bytes=sum(info.size for _, info in chosen),
        filtered=filtered,
    )
