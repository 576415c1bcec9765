"""Shard folders written by hand for tests, with the `manifest.json` that readers take their shards from."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.data.shard_files import MANIFEST_FILE


def write_manifest(folder: Path, **fields) -> Path:
    """A manifest listing every `part-*.parquet` in `folder` with its rows, as prepare's; `fields` added."""
    shards = [{"file": p.name, "rows": pq.read_metadata(p).num_rows} for p in sorted(folder.glob("part-*.parquet"))]
    (folder / MANIFEST_FILE).write_text(json.dumps({"preprocessing": {}, **fields, "shards": shards}))
    return folder
