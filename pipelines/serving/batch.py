"""Batch scoring in Ray Data: work units (a slice of an archive's record list, or one shard file) scored
by a callable class that loads the export once per actor and writes one output part per unit.

A unit's part is written to a temporary name and renamed when complete, so a rerun into the same
output (made the same way: `pipelines.score` checks its record) skips exactly the units whose part
exists. Reading uses the prepare stage's `prepare_batch` (archives) or the shard columns as written
(shards); scoring uses `Scorer`, as the Serve app does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.data.records import RecordOptions, prepare_batch
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.serving.scorer import Scorer

SCORES_DIR, REJECTED_DIR = "scores", "rejected"


def unit_done(output: Path, unit: str) -> bool:
    return (output / SCORES_DIR / f"{unit}.parquet").is_file()


class ScoreUnits:
    """`map_batches` callable: each row of a batch is a unit {unit, shard_path or records (the unit's
    listed records as JSON)}; returns a summary row per unit (unit, rows scored, rows rejected). `labels`
    are resolved by the driver, which records them with the output."""

    def __init__(
        self, model_dir: str, task: str, labels: list[str], output: str, batch_size: int, embeddings: bool
    ) -> None:
        self.scorer = Scorer(model_dir, task, threads=None)
        self.labels = labels
        self.output = Path(output)
        self.batch_size = batch_size
        self.embeddings = embeddings

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
        scores, embeddings = [], []
        for start in range(0, kept.num_rows, self.batch_size):
            rows = kept.slice(start, self.batch_size)
            embedded = self.scorer.embed(signals_of(rows), lead_masks_of(rows))  # [b, D]
            scores.append(self.scorer.scores(embedded, self.labels))  # [b, C]
            embeddings.append(embedded)
        matrix = np.concatenate(scores) if scores else np.zeros((0, len(self.labels)), np.float32)
        for c, label in enumerate(self.labels):
            columns[f"score_{label}"] = matrix[:, c].astype(np.float32)
        if self.embeddings:
            dim = self.scorer.model.config.objective.embed_dim
            stacked = np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(
                pa.array(stacked.reshape(-1).astype(np.float32)), dim
            )
        if rejected is not None and rejected.num_rows:
            _write_atomic(
                rejected.select(["ecg_id", "record_path", "reject_reason"]),
                self.output / REJECTED_DIR / f"{unit}.parquet",
            )
        _write_atomic(pa.table(columns), self.output / SCORES_DIR / f"{unit}.parquet")
        return {"unit": unit, "scored": kept.num_rows, "rejected": 0 if rejected is None else rejected.num_rows}

    def _read(self, shard_path: str, records: str) -> pa.Table:
        if shard_path:
            return pq.read_table(shard_path, columns=["ecg_id", "signal", "lead_mask"])
        listing = pa.Table.from_pylist(json.loads(records))
        return prepare_batch(listing, self.scorer.preprocess_config, RecordOptions(min_report_words=0))


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
