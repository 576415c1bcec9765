"""Archive layouts → a record list: one row per ECG to read, with its report, labels and split.

A source lists records without reading signals (metadata only, cheap even for MIMIC-IV-ECG's
800k rows); prepare turns the list into a Ray dataset and reads the signals in parallel.
Rows that are wrong already in the metadata (duplicate ids, unparsable label fields, bad folds)
are rejected here, with the reason, so that records in = kept + rejected holds from the start.
"""

from __future__ import annotations

from collections.abc import Callable

from pipelines.data.sources import mimic, ptbxl, wfdb_folder
from pipelines.data.sources.listing import LISTING_COLUMNS, REJECTED_COLUMNS, Listing, SourceOptions
from pipelines.storage import is_uri

__all__ = ["LISTING_COLUMNS", "REJECTED_COLUMNS", "Listing", "SourceOptions", "archive_uri_problem", "list_source"]

LISTERS: dict[str, Callable[[SourceOptions], Listing]] = {
    "ptbxl": ptbxl.list_records,
    "mimic": mimic.list_records,
    "wfdb": wfdb_folder.list_records,
}


def list_source(name: str, options: SourceOptions) -> Listing:
    """The record list of archive `options.input` in layout `name` (ptbxl, mimic or wfdb)."""
    if name not in LISTERS:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(LISTERS)}")
    if not options.input.is_dir():
        raise ValueError(f"input {options.input} is not a directory")
    return LISTERS[name](options)


def archive_uri_problem(archive: str) -> str | None:
    """Why an archive named by a URI cannot be read (archives are listed and read file by file, from a
    mounted filesystem), or None for a path."""
    if not is_uri(archive):
        return None
    return (
        f"--input {archive}: archives must be on a mounted filesystem (a local or network path), not in an object "
        "store; to work from a bucket, prepare the archive into shards there (pipelines.prepare --output s3://…) "
        "and use the shards"
    )
