"""Batch scoring in Ray Data: work units (a slice of an archive's record list, or one shard file) scored
by a callable class that loads the export once per actor and writes one output part per unit.

A unit's part appears whole or not at all (a local file is written to a temporary name and renamed
when complete; an object in a store is put in one piece, and exists only once its upload completes),
so a rerun into the same output (made the same way: `pipelines.score` checks its record) skips exactly
the units whose part exists. Shards, parts and the export may be local or URIs (`pipelines.storage`).
Reading uses the prepare stage's `prepare_batch` (archives) or the shard columns as written
(shards); scoring (drafting, with `draft` options, and explaining, with `explain` options) uses `Scorer`, as
the Serve app does, and evidence is written as /v1/score answers it (`pipelines.explaining.evidence_body`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from models.report_generation import DraftOptions
from pipelines.data.records import RecordOptions, prepare_batch
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.explaining.evidence_body import evidence_body
from pipelines.serving.requests import MAX_EXPLAIN_LABELS
from pipelines.serving.scorer import Scorer
from pipelines.storage import Location

SCORES_DIR, REJECTED_DIR = "scores", "rejected"

SEGMENT_TYPE = pa.struct(
    [("lead", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()), ("weight", pa.float64())]
)
PATCH_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("weight", pa.float64())])
EVIDENCE_TYPE = pa.list_(
    pa.struct(
        [
            ("label", pa.string()),
            ("score", pa.float64()),
            ("leads", pa.list_(pa.string())),
            ("segments", pa.list_(SEGMENT_TYPE)),
            ("attention", pa.list_(PATCH_TYPE)),
            ("beat_attention", pa.list_(PATCH_TYPE)),
        ]
    )
)
"""The `evidence` column: per ECG, `evidence_body` of each explained label (/v1/score's "evidence" items)."""


@dataclass(frozen=True)
class ExplainedLabels:
    """Which labels `pipelines.score --explain` explains per ECG, as /v1/score's `explain` does: every scored
    label (`top_k` None: the labels were given), or the ECG's `top_k` best by score."""

    top_k: int | None = None

    def problem(self, n_labels: int) -> str | None:
        """Why explaining with these options among `n_labels` scored labels is refused (over
        MAX_EXPLAIN_LABELS per ECG, the bound of /v1/score), or None."""
        count = n_labels if self.top_k is None else self.top_k
        if count < 1:
            return f"top_k must be at least 1, got {count}"
        if count > MAX_EXPLAIN_LABELS:
            what = "labels" if self.top_k is None else "best labels"
            return f"{count} {what} to explain per ECG; the limit is {MAX_EXPLAIN_LABELS}"
        return None

    def record(self) -> dict:
        """What the output's made_by.json records (no None values: an absent field reads as None there)."""
        return {"labels": "all"} if self.top_k is None else {"labels": "best", "top_k": self.top_k}

    def chosen(self, labels: Sequence[str], scores: np.ndarray) -> list[str]:
        """The labels explained for one ECG, scores [C] against `labels`: all of them in order, or the `top_k`
        best, best first (ties as /v1/score breaks them)."""
        if self.top_k is None:
            return list(labels)
        return [labels[i] for i in np.argsort(-scores)[: self.top_k]]


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
    listed records as JSON)}; returns a summary row per unit (unit, rows scored, rows rejected, the Ray node
    that scored it). `labels`
    are resolved by the driver, which records them with the output. With `draft` options each row also
    gets its drafted `report`, `report_logprob` and `report_tokens` (`Scorer.draft`, as /v1/report), and with
    `explain` options its `evidence` (`Scorer.explain`, as /v1/score with explain). `model_dir` and `output`
    may be URIs: each actor loads the export from its own node's cached copy; `unsigned`: archive records in
    s3:// read without credentials."""

    def __init__(
        self,
        model_dir: str,
        task: str,
        labels: list[str],
        output: str,
        batch_size: int,
        embeddings: bool,
        draft: DraftOptions | None = None,
        explain: ExplainedLabels | None = None,
        unsigned: bool = False,
    ) -> None:
        self.scorer = Scorer(model_dir, task, threads=None)
        self.records = RecordOptions(min_report_words=0, unsigned=unsigned)
        self.labels = labels
        self.output = Location.of(output)
        self.batch_size = batch_size
        self.embeddings = embeddings
        self.draft = draft
        self.explain = explain

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = [
            self._score_unit(unit, batch["shard_path"][i], batch["records"][i]) for i, unit in enumerate(batch["unit"])
        ]
        node = ray.get_runtime_context().get_node_id()
        return {**{key: np.array([s[key] for s in summaries]) for key in ("unit", "scored", "rejected")},
                "node": np.array([node] * len(summaries))}

    def _score_unit(self, unit: str, shard_path: str, records: str) -> dict:
        table = self._read(shard_path, records)
        rejected = table.filter(pc.is_valid(table["reject_reason"])) if "reject_reason" in table.column_names else None
        kept = table.filter(pc.is_null(table["reject_reason"])) if rejected is not None else table
        columns: dict[str, list] = {"ecg_id": kept["ecg_id"].to_pylist()}
        scores, embeddings, drafts, evidence = [], [], [], []
        for start in range(0, kept.num_rows, self.batch_size):
            rows = kept.slice(start, self.batch_size)
            signals, lead_masks = signals_of(rows), lead_masks_of(rows)
            embedded = self.scorer.embed(signals, lead_masks)  # [b, D]
            scores.append(self.scorer.scores(embedded, self.labels))  # [b, C]
            embeddings.append(embedded)
            if self.draft is not None:
                drafts += self.scorer.draft(signals, lead_masks, self.draft)
            if self.explain is not None:
                evidence += self._evidence(signals, lead_masks, scores[-1])
        matrix = np.concatenate(scores) if scores else np.zeros((0, len(self.labels)), np.float32)
        for c, label in enumerate(self.labels):
            columns[f"score_{label}"] = matrix[:, c].astype(np.float32)
        if self.draft is not None:
            columns["report"] = pa.array([d.text for d in drafts], pa.string())
            columns["report_logprob"] = pa.array([d.logprob for d in drafts], pa.float32())
            columns["report_tokens"] = pa.array([d.tokens for d in drafts], pa.int32())
        if self.explain is not None:
            columns["evidence"] = pa.array(evidence, EVIDENCE_TYPE)
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

    def _evidence(self, signals: np.ndarray, lead_masks: np.ndarray, scores: np.ndarray) -> list[list[dict]]:
        """signals [b, 12, T], lead_masks [b, 12], scores [b, C] → per ECG, `evidence_body` of each label it
        explains. ECGs that explain the same labels are explained together (one integrated-gradients pass
        per label over all of them)."""
        chosen = [self.explain.chosen(self.labels, row) for row in scores]
        together: dict[tuple[str, ...], list[int]] = {}
        for row, labels in enumerate(chosen):
            together.setdefault(tuple(sorted(labels)), []).append(row)
        bodies: list[list[dict]] = [[] for _ in chosen]
        for labels, rows in together.items():
            for row, explained in zip(rows, self.scorer.explain(signals[rows], lead_masks[rows], labels)):
                by_label = dict(zip(labels, explained))
                bodies[row] = [evidence_body(label, by_label[label]) for label in chosen[row]]
        return bodies

    def _read(self, shard_path: str, records: str) -> pa.Table:
        if shard_path:
            shard = Location.of(shard_path)
            return pq.read_table(shard.path, filesystem=shard.filesystem, columns=["ecg_id", "signal", "lead_mask"])
        listing = pa.Table.from_pylist(json.loads(records))
        return prepare_batch(listing, self.scorer.preprocess_config, self.records)
