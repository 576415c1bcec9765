"""A prepared dataset's files: `manifest.json`, which lists every shard prepare wrote, and the shards, named
by their split so that a reader of one split opens only that split's files.

    part-train-00003-001.parquet      split, write task, k-th shard of that task and split
    split_shards(["data/synthetic"], "val")  → SplitShards(shards=[Shard(…/part-val-….parquet, …)], filtered=False)

Readers take the shards from the manifest, never from a listing of the folder: in an object store, files
another run left under the prefix are not this dataset's, and a folder with shards but no manifest is a
prepare that did not finish (refused, naming it). Datasets prepared before shard names carried their split
(`part-00003-001.parquet`, splits mixed within a file) still read: `split_shards` then gives every shard
and says the rows must be filtered on the `split` column. Folders are local paths or URIs (s3://…).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.dataset as pads

from pipelines.storage import Location

MANIFEST_FILE = "manifest.json"
REJECTED_FILE = "rejected.parquet"
SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")
"""What a split may be called: it becomes part of a file name."""
_SHARD = re.compile(r"part-(?:(?P<split>[a-z][a-z0-9_]*)-)?\d+-\d+\.parquet")


def shard_name(split: str, task: int, k: int) -> str:
    """The file name of write task `task`'s `k`-th shard of `split`."""
    return f"part-{split}-{task:05d}-{k:03d}.parquet"


def read_manifest(folder: str | Location) -> dict:
    """`manifest.json` of a prepared dataset (a local folder or a URI); ValueError naming the folder when it
    has none (an unfinished prepare when shards lie there) or it records no preprocessing."""
    location = Location.of(folder)
    try:
        manifest = location.child(MANIFEST_FILE).read_json()
    except (OSError, ValueError) as error:
        if any(_SHARD.fullmatch(info.base_name) for info in location.files(recursive=False)):
            raise ValueError(
                f"{location} holds shards but no {MANIFEST_FILE}: a prepare into it did not finish (was it killed?); "
                "run prepare into it again with --overwrite"
            ) from None
        raise ValueError(
            f"{location} has no readable {MANIFEST_FILE} ({error}): is it a folder that pipelines.prepare wrote?"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("preprocessing"), dict):
        raise ValueError(f"{location.child(MANIFEST_FILE)} records no preprocessing: is it a folder that pipelines.prepare wrote?")
    return manifest


@dataclass(frozen=True)
class Shard:
    """One shard of a prepared dataset: where it lies (a child of its folder's Location, so no file system is
    resolved per shard), its split (None for a file that mixes splits, from before names carried them), its
    rows, and its size in bytes."""

    location: Location
    split: str | None
    rows: int
    bytes: int

    @property
    def uri(self) -> str:
        return self.location.uri


def dataset_shards(folder: str) -> list[Shard]:
    """The shards `folder`'s manifest lists, in its order, with their sizes from one listing of the folder;
    ValueError naming the folder when it has no manifest or a listed shard is missing."""
    location = Location.of(folder)
    manifest = read_manifest(location)
    sizes = {info.base_name: info.size for info in location.files(recursive=False)}
    listed = manifest.get("shards", [])
    missing = [entry["file"] for entry in listed if entry["file"] not in sizes]
    if missing:
        raise ValueError(
            f"{location}: {len(missing)} of the {len(listed)} shards its {MANIFEST_FILE} lists are missing "
            f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); prepare it again with --overwrite"
        )
    return [
        Shard(location.child(entry["file"]), _split_of(entry["file"]), entry["rows"], sizes[entry["file"]])
        for entry in listed
    ]


def pyarrow_dataset(shards: Sequence[Shard]) -> pads.Dataset:
    """Shards (at least one, in one file system) as one pyarrow dataset, which reads them threaded."""
    paths = [shard.location.path for shard in shards]
    return pads.dataset(paths, format="parquet", filesystem=shards[0].location.filesystem)


def _split_of(name: str) -> str | None:
    """The split a shard's file name carries; None for a name that carries none (splits mixed in the file)."""
    match = _SHARD.fullmatch(name)
    return match["split"] if match else None


@dataclass(frozen=True)
class SplitShards:
    """The shards to read for one split (in manifest order), and whether their rows must still be filtered on
    the `split` column (files that mix splits); `files` their paths or URIs, `bytes` their size on disk."""

    shards: list[Shard]
    filtered: bool

    @property
    def files(self) -> list[str]:
        return [shard.uri for shard in self.shards]

    @property
    def bytes(self) -> int:
        return sum(shard.bytes for shard in self.shards)


def split_shards(folders: Sequence[str], split: str) -> SplitShards:
    """The files holding `split`'s rows in `folders`: only `part-<split>-*.parquet` where every folder names
    its shards by split; every shard of every folder, to be filtered, where any folder predates that."""
    shards = [shard for folder in folders for shard in dataset_shards(folder)]
    filtered = any(shard.split is None for shard in shards)
    chosen = [shard for shard in shards if filtered or shard.split == split]
    return SplitShards(chosen, filtered)
