"""A Ray Data sink that writes kept rows as parquet shards and accounts for every rejected one.

Write tasks receive the read task's rows (kept and rejected together), write the kept rows as
`part-<task>-<k>.parquet` of at most `rows_per_shard` rows each, and return the rejected rows and
the counts. `on_write_complete` runs once on the driver with every task's return and writes
`rejected.parquet` (listing rejections included) and `manifest.json`. One pass over the archive,
nothing held in memory but a shard's worth of rows per task.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data._internal.execution.interfaces import TaskContext
from ray.data.block import Block
from ray.data.datasource.datasink import WriteResult

from pipelines.data.schema import shard_schema
from pipelines.data.sources import REJECTED_COLUMNS

REJECTED_SCHEMA = pa.schema([(name, pa.string()) for name in REJECTED_COLUMNS])


class ShardSink(Datasink[dict]):
    """Writes shards, `rejected.parquet` and `manifest.json` under `output` (a path or URI)."""

    def __init__(
        self,
        output: str,
        n_samples: int,
        fs: int,
        rows_per_shard: int,
        listing_rejected: list[dict],
        records_in: int,
        manifest_fields: dict,
        started: float,
    ) -> None:
        self.output = output.rstrip("/")
        self.schema = shard_schema(n_samples, fs)
        self.rows_per_shard = rows_per_shard
        self.listing_rejected = listing_rejected
        self.records_in = records_in
        self.manifest_fields = manifest_fields
        self.started = started
        self.manifest: dict | None = None

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_shard

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> dict:
        filesystem, root = pafs.FileSystem.from_uri(self.output)
        table = pa.concat_tables([pa.table(block) for block in blocks if block.num_rows > 0])
        is_rejected = pc.is_valid(table["reject_reason"])
        kept = table.filter(pc.invert(is_rejected)).select(self.schema.names).cast(self.schema)
        rejected = table.filter(is_rejected)
        shards = []
        for k, start in enumerate(range(0, kept.num_rows, self.rows_per_shard)):
            name = f"part-{ctx.task_idx:05d}-{k:03d}.parquet"
            chunk = kept.slice(start, self.rows_per_shard)
            pq.write_table(chunk, f"{root}/{name}", filesystem=filesystem)
            shards.append({"file": name, "rows": chunk.num_rows})
        return {
            "shards": shards,
            "rejected": pa.table(
                {
                    "ecg_id": rejected["ecg_id"],
                    "source": rejected["source"],
                    "record_path": rejected["record_path"],
                    "reason": rejected["reject_reason"],
                },
                schema=REJECTED_SCHEMA,
            ),
            "rows_by_split_source": Counter(
                f"{split}/{source}" for split, source in zip(kept["split"].to_pylist(), kept["source"].to_pylist())
            ),
            "records_kept": len({ecg_id.split("#w")[0] for ecg_id in kept["ecg_id"].to_pylist()}),
            "flags": Counter(flag.split(":")[0] for flags in kept["flags"].to_pylist() for flag in flags),
        }

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        returns = write_result.write_returns
        filesystem, root = pafs.FileSystem.from_uri(self.output)
        rejected = pa.concat_tables(
            [pa.Table.from_pylist(self.listing_rejected, schema=REJECTED_SCHEMA)]
            + [r["rejected"] for r in returns]
        ).sort_by("ecg_id")
        pq.write_table(rejected, f"{root}/rejected.parquet", filesystem=filesystem)
        rows = sum((Counter(r["rows_by_split_source"]) for r in returns), Counter())
        shards = sorted((s for r in returns for s in r["shards"]), key=lambda s: s["file"])
        records_kept = sum(r["records_kept"] for r in returns)
        elapsed = time.time() - self.started
        self.manifest = {
            **self.manifest_fields,
            "records_in": self.records_in,
            "records_kept": records_kept,
            "records_rejected": rejected.num_rows,
            "rows": sum(rows.values()),
            "rows_by_split": _totals(rows, 0),
            "rows_by_source": _totals(rows, 1),
            "rows_by_split_and_source": dict(sorted(rows.items())),
            "rejections_by_reason": dict(Counter(_reason_kind(r) for r in rejected["reason"].to_pylist()).most_common()),
            "repairs": dict(sum((Counter(r["flags"]) for r in returns), Counter()).most_common()),
            "schema": {field.name: str(field.type) for field in self.schema},
            "shards": shards,
            "elapsed_seconds": round(elapsed, 2),
            "records_per_second": round(self.records_in / elapsed, 1) if elapsed > 0 else None,
        }
        with filesystem.open_output_stream(f"{root}/manifest.json") as stream:
            stream.write(json.dumps(self.manifest, indent=2).encode())


def _totals(rows: Counter, part: int) -> dict[str, int]:
    totals: Counter = Counter()
    for key, count in rows.items():
        totals[key.split("/")[part]] += count
    return dict(sorted(totals.items()))


def _reason_kind(reason: str) -> str:
    """The stable part of a reason ("truncated signal: …" → "truncated signal") for counting."""
    return reason.split(":")[0].split(" (")[0]
