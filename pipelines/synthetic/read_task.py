"""Synthetic ECGs generated where they are read: `prepare --source synthetic` without an archive to share.

Each of prepare's read tasks takes chunk indices, writes those chunks in PTB-XL's layout into its own node's
temp folder, lists them with the PTB-XL lister and reads them with the same reader as any archive
(`pipelines.data.records.prepare_batch`); only the prepared rows leave the node, and the folder goes when
the task ends. So the default data prepares on a cluster whose nodes share no disk, and the ECGs are the
ones `generate_ptbxl_layout` would write (chunk k draws from its own seed).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.data.preprocess import PreprocessConfig
from pipelines.data.records import RecordOptions, prepare_batch
from pipelines.data.sources import SourceOptions, list_source
from pipelines.synthetic.conditions import SyntheticConfig
from pipelines.synthetic.ptbxl_layout import CHUNK_SIZE, n_chunks, write_chunk, write_tables

RECORD_PREFIX = "synthetic:"
"""What a generated record's path starts with in the output (its temp folder is gone by then)."""


def chunk_table(config: SyntheticConfig) -> pa.Table:
    """One row per chunk of `config.n` ECGs: the work list of the read tasks."""
    return pa.table({"chunk": pa.array(range(n_chunks(config)), pa.int64())})


def generate_and_prepare(
    chunks: pa.Table,
    config: SyntheticConfig,
    options: SourceOptions,
    preprocess: PreprocessConfig,
    records: RecordOptions,
) -> pa.Table:
    """Chunk indices [B] → the prepared rows of their ECGs (`prepare_batch`'s table, record paths relative)."""
    tables = []
    for chunk in chunks["chunk"].to_pylist():
        with tempfile.TemporaryDirectory(prefix="ecg-fm-synthetic-") as folder:
            write_tables(folder, write_chunk(folder, config, chunk, CHUNK_SIZE), config)
            listing = list_source("ptbxl", replace(options, input=Path(folder), limit=None))
            if listing.rejected:  # the generator wrote something its own lister refuses: a bug, not data
                raise RuntimeError(f"synthetic chunk {chunk}: the PTB-XL lister rejected {listing.rejected[:3]}")
            table = prepare_batch(pa.Table.from_pandas(listing.records, preserve_index=False), preprocess, records)
            relative = pc.replace_substring(table["record_path"], f"{folder}/", RECORD_PREFIX)
            tables.append(table.set_column(table.schema.get_field_index("record_path"), "record_path", relative))
    return pa.concat_tables(tables)
