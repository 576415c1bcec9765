"""The read task: a batch of listed records → shard rows, or a rejection reason for each failure.

Runs inside Ray Data `map_batches`. Every listed record leaves as at least one row: kept rows
carry a null `reject_reason`; a rejected record leaves one row with its reason and a zero signal,
which the shard sink routes to `rejected.parquet`. Nothing is dropped silently. Records in an object
store are read `REMOTE_READS` at once (each file one request; the time is the store's latency, not CPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.data.preprocess import PreparedSignal, PreprocessConfig, preprocess_windows
from pipelines.data.rejection import RecordRejected
from pipelines.data.reports import clean_report, word_count
from pipelines.data.schema import N_LEADS, lead_mask_array, signal_array
from pipelines.data.sources.wfdb_folder import fill_from_header
from pipelines.data.wfdb_io import read_record
from pipelines.storage import is_uri

REMOTE_READS = 16
"""Records of one batch read at once when they are in an object store."""


@dataclass(frozen=True)
class RecordOptions:
    """Per-record rules beyond signal preprocessing."""

    min_report_words: int = 4
    """Reports with fewer words are rejected (MERL's rule); 0 keeps records without a report."""
    seed: int = 0
    """Seed of splits decided from headers (WFDB folders)."""
    label_statements: Mapping[str, str] | None = field(default=None, repr=False, compare=False)
    """Code → statement: reports of header-labelled records (WFDB folders) built from their codes."""
    unsigned: bool = False
    """Records in s3:// read without credentials (a public bucket)."""


WINDOW_MARK = "#w"
"""Between a record's id and its window number in the ecg_id of a windowed row."""


def prepare_batch(batch: pa.Table, preprocess: PreprocessConfig, options: RecordOptions) -> pa.Table:
    """Listed records [B rows of LISTING_COLUMNS] → shard rows plus `record_path`, `reject_reason`."""
    listed = batch.to_pylist()
    if any(is_uri(row["record_path"]) for row in listed):
        with ThreadPoolExecutor(REMOTE_READS) as pool:
            outcomes = list(pool.map(lambda row: _outcome(row, preprocess, options), listed))
    else:
        outcomes = [_outcome(row, preprocess, options) for row in listed]
    rows: list[dict] = []
    signals: list[PreparedSignal | None] = []
    for outcome in outcomes:
        for row, prepared in outcome:
            rows.append(row)
            signals.append(prepared)
    return _to_table(rows, signals, preprocess)


def _outcome(row: dict, preprocess: PreprocessConfig, options: RecordOptions) -> list[tuple[dict, PreparedSignal | None]]:
    """A listed record's rows with `reject_reason`: one per window, or one rejection (signal None)."""
    try:
        return [({**window_row, "reject_reason": None}, prepared) for window_row, prepared in
                prepare_record(row, preprocess, options)]
    except RecordRejected as rejection:
        return [({**row, "report": None, "reject_reason": str(rejection)}, None)]


def prepare_record(row: dict, preprocess: PreprocessConfig, options: RecordOptions) -> list[tuple[dict, PreparedSignal]]:
    """One listed record → [(row, prepared signal)], one per window; raises `RecordRejected`."""
    if row["report"] is not None:
        row = {**row, "report": _checked_report(row["report"], options)}
    recording = read_record(row["record_path"], unsigned=options.unsigned)
    expected_fs = row["expected_fs"]
    if expected_fs is not None and recording.fs != expected_fs:
        raise RecordRejected(
            f"rate disagrees with layout: header says {recording.fs:g} Hz where this layout holds "
            f"{expected_fs:g} Hz records"
        )
    if row["report"] is None:
        row = fill_from_header(row, recording.comments, options.seed, options.label_statements)
        row["report"] = _checked_report(row["report"], options)
    windows = preprocess_windows(recording, preprocess)
    if len(windows) == 1:
        return [(row, windows[0])]
    return [({**row, "ecg_id": f"{row['ecg_id']}{WINDOW_MARK}{i}"}, window) for i, window in enumerate(windows)]


def record_id_of(ecg_id: str) -> str:
    """The record a row came from: its `ecg_id` without the window number ("ptbxl/7#w2" → "ptbxl/7")."""
    return ecg_id.split(WINDOW_MARK)[0]


def _checked_report(report: str, options: RecordOptions) -> str:
    report = clean_report(report)
    words = word_count(report)
    if words < options.min_report_words:
        if words == 0:
            raise RecordRejected("empty report")
        raise RecordRejected(f"report too short: {words} words ({report!r}), minimum {options.min_report_words}")
    return report


def _to_table(rows: list[dict], prepared: list[PreparedSignal | None], config: PreprocessConfig) -> pa.Table:
    n, samples = len(rows), config.n_samples
    signals = np.zeros((n, N_LEADS, samples), dtype=np.float16)
    masks = np.zeros((n, N_LEADS), dtype=bool)
    flags = []
    for i, item in enumerate(prepared):
        if item is not None:
            signals[i] = item.signal
            masks[i] = item.lead_mask
        flags.append(item.flags if item is not None else [])
    column = lambda name: [row[name] for row in rows]  # noqa: E731
    return pa.table(
        {
            "ecg_id": pa.array(column("ecg_id"), pa.string()),
            "patient_id": pa.array(column("patient_id"), pa.string()),
            "signal": signal_array(signals),
            "lead_mask": lead_mask_array(masks),
            "fs": pa.array(np.full(n, config.fs, dtype=np.int32)),
            "report": pa.array(column("report"), pa.string()),
            "labels": pa.array(column("labels"), pa.list_(pa.string())),
            "split": pa.array(column("split"), pa.string()),
            "source": pa.array(column("source"), pa.string()),
            "flags": pa.array(flags, pa.list_(pa.string())),
            "record_path": pa.array(column("record_path"), pa.string()),
            "reject_reason": pa.array(column("reject_reason"), pa.string()),
        }
    )
