"""Batch scoring in Ray Data: work units (a slice of an archive's record list, or one shard file) scored
by a callable class that loads the export once per actor and writes one output part per unit.

A unit's part appears whole or not at all (a local file is written to a temporary name and renamed
when complete; an object in a store is put in one piece, and exists only once its upload completes),
so a rerun into the same output (made the same way: `pipelines.score` checks its record) skips exactly
the units whose part exists. Shards, parts and the export may be local or URIs (`pipelines.storage`).
Reading uses the prepare stage's `prepare_batch` (archives) or the shard columns as written
(shards); scoring (and drafting, with `draft` options) uses `Scorer`, as the Serve app does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.report_generation import DraftOptions
from pipelines.data.records import RecordOptions, prepare_batch
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.serving.scorer import Scorer
from pipelines.storage import Location

SCORES_DIR, REJECTED_DIR = "scores", "rejected"


def part_names(output: Location, kind: str) -> set[str]:
    """The units whose part of `kind` (SCORES_DIR or REJECTED_DIR) is in `output`, from one listing."""
    return {Path(i.path).stem for i in output.child(kind).files(recursive=False) if i.path.endswith(".parquet")}


def part_of(output: Location, kind: str, unit: str) -> Location:
    return output.child(kind, f"{unit}.parquet")


def write_part(table: pa.Table, where: Location) -> None:
    """Write a parquet file whole or not at all: locally under a temporary name renamed when complete, in
    an object store as one finished file."""
    if not where.is_local:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        where.write_bytes(sink.getvalue())
        return
    path = Path(where.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


class ScoreUnits:
    """`map_batches` callable: each row of a batch is a unit {unit, shard_path or records (the unit's
    listed records as JSON)}; returns a summary row per unit (unit, rows scored, rows rejected). `labels`
    are resolved by the driver, which records them with the output. With `draft` options each row also
    gets its drafted `report`, `report_logprob` and `report_tokens` (`Scorer.draft`, as /v1/report). `model_dir`
    and `output` may be URIs: each actor loads the export from its own node's cached copy."""

    def __init__(
        self,
        model_dir: str,
        task: str,
        labels: list[str],
        output: str,
        batch_size: int,
        embeddings: bool,
        draft: DraftOptions | None = None,
    ) -> None:
        self.scorer = Scorer(model_dir, task, threads=None)
        self.labels = labels
        self.output = Location.of(output)
        self.batch_size = batch_size
        self.embeddings = embeddings
        self.draft = draft

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = [
            self._score_unit(unit, batch["shard_path"][i], batch["records"][i]) for i, unit in enumerate(batch["unit"])
        ]
        return {key: np.array([s[key] for s in summaries]) for key in ("unit", "scored", "rejected")}

    def _score_unit(self, unit: str, shard_path: str, records: str) -> dict:
        table = self._read(shard_path, records)
        rejected = table.filter(pc.is_valid(table["reject_reason"])) if "reject_reason" in table.column_names else None
        kept = table.filter(pc.is_null(table["reject_reason"])) if rejected is not None else table
        columns: dict[str, list] = {"ecg_id": kept["ecg_id"].to_pylist()}
        scores, embeddings, drafts = [], [], []
        for start in range(0, kept.num_rows, self.batch_size):
            rows = kept.slice(start, self.batch_size)
            signals, lead_masks = signals_of(rows), lead_masks_of(rows)
            embedded = self.scorer.embed(signals, lead_masks)  # [b, D]
            scores.append(self.scorer.scores(embedded, self.labels))  # [b, C]
            embeddings.append(embedded)
            if self.draft is not None:
                drafts += self.scorer.draft(signals, lead_masks, self.draft)
        matrix = np.concatenate(scores) if scores else np.zeros((0, len(self.labels)), np.float32)
        for c, label in enumerate(self.labels):
            columns[f"score_{label}"] = matrix[:, c].astype(np.float32)
        if self.draft is not None:
            columns["report"] = pa.array([d.text for d in drafts], pa.string())
            columns["report_logprob"] = pa.array([d.logprob for d in drafts], pa.float32())
            columns["report_tokens"] = pa.array([d.tokens for d in drafts], pa.int32())
        if self.embeddings:
            dim = self.scorer.model.config.objective.embed_dim
            stacked = np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(
                pa.array(stacked.reshape(-1).astype(np.float32)), dim
            )
        if rejected is not None and rejected.num_rows:
            write_part(
                rejected.select(["ecg_id", "record_path", "reject_reason"]), part_of(self.output, REJECTED_DIR, unit)
            )
        write_part(pa.table(columns), part_of(self.output, SCORES_DIR, unit))
        return {"unit": unit, "scored": kept.num_rows, "rejected": 0 if rejected is None else rejected.num_rows}

    def _read(self, shard_path: str, records: str) -> pa.Table:
        if shard_path:
            shard = Location.of(shard_path)
            return pq.read_table(shard.path, filesystem=shard.filesystem, columns=["ecg_id", "signal", "lead_mask"])
        listing = pa.Table.from_pylist(json.loads(records))
        return prepare_batch(listing, self.scorer.preprocess_config, RecordOptions(min_report_words=0))
