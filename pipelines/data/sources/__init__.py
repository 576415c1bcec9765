"""Archive layouts → a record list: one row per ECG to read, with its report, labels and split.

A source lists records without reading signals (metadata only, cheap even for MIMIC-IV-ECG's
800k rows); prepare turns the list into a Ray dataset and reads the signals in parallel. An archive in
an object store is planned from its index where it has one (PTB-XL's database CSV, MIMIC's
`record_list.csv`: one read, no listing of keys) and listed by prefix otherwise (WFDB folders).
Rows that are wrong already in the metadata (duplicate ids, unparsable label fields, bad folds)
are rejected here, with the reason, so that records in = kept + rejected holds from the start.
"""

from __future__ import annotations

from collections.abc import Callable

from pipelines.data.sources import mimic, ptbxl, wfdb_folder
from pipelines.data.sources.listing import LISTING_COLUMNS, REJECTED_COLUMNS, Listing, SourceOptions

__all__ = ["LISTING_COLUMNS", "REJECTED_COLUMNS", "Listing", "SourceOptions", "list_source"]

LISTERS: dict[str, Callable[[SourceOptions], Listing]] = {
    "ptbxl": ptbxl.list_records,
    "mimic": mimic.list_records,
    "wfdb": wfdb_folder.list_records,
}


def list_source(name: str, options: SourceOptions) -> Listing:
    """The record list of archive `options.input` (a folder, or a prefix in an object store) in layout `name`
    (ptbxl, mimic or wfdb)."""
    if name not in LISTERS:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(LISTERS)}")
    if not options.input.is_dir():
        raise ValueError(f"input {options.input} is not a directory")
    return LISTERS[name](options)
