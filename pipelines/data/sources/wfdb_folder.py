"""Any folder tree of WFDB records (`.hea` + `.dat`): CinC/CPSC challenge folders and the like.

Any lead set, rate and length. Header comments in the CinC style (`#Dx: 426783006,164889003`,
`#Age: 74`, `#Sex: Male`) become labels and metadata; other comments become the report text.
Report, labels and split are only known once the header is read, so listing leaves them empty
and `fill_from_header` completes each row in the read task. The split is a seeded hash of the
record id, 80 / 10 / 10 (these archives carry no patient ids). Signal files without a header and
symlinked folders not followed are listed as rejected, each one input (see `folder_walk`).
"""

from __future__ import annotations

import os

import pandas as pd

from pipelines.data.sources.folder_walk import walk_records
from pipelines.data.sources.listing import LISTING_COLUMNS, Listing, SourceOptions
from pipelines.data.splits import hashed_split

METADATA_KEYS = {"age", "sex", "rx", "hx", "sx"}
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1


def list_records(options: SourceOptions) -> Listing:
    if options.report == "labels":
        raise ValueError("--report labels needs a label table, which WFDB folders lack; use --report raw")
    source = options.source_name or "wfdb"
    entries = walk_records(options.input)
    if options.limit is not None:
        entries = entries[: options.limit]
    root = str(options.input)
    rows, rejected = [], []
    for entry in entries:  # strings, not Paths: listing 800k records stays a matter of seconds
        if entry.reason is not None:  # a signal file without a header, a folder not walked
            rejected.append(
                {"ecg_id": f"{source}/{entry.path}", "source": source,
                 "record_path": os.path.join(root, entry.path), "reason": entry.reason}
            )
            continue
        record = entry.path.removesuffix(".hea")
        rows.append(
            {
                "ecg_id": f"{source}/{record}",
                "patient_id": None,
                "record_path": os.path.join(root, record),
                "report": None,
                "labels": [],
                "split": None,
                "source": source,
                "expected_fs": None,
            }
        )
    return Listing(records=pd.DataFrame(rows, columns=LISTING_COLUMNS), rejected=rejected)


def fill_from_header(row: dict, comments: list[str], seed: int) -> dict:
    """Complete a listed row from its header comments: labels from `Dx`, the rest as report."""
    labels: list[str] = []
    report_lines = []
    for comment in comments:
        key, separator, value = comment.partition(":")
        key = key.strip().lower()
        if separator and key == "dx":
            labels = [code.strip() for code in value.split(",") if code.strip()]
        elif not (separator and key in METADATA_KEYS):
            report_lines.append(comment)
    return {
        **row,
        "report": " ".join(report_lines),
        "labels": labels,
        "split": hashed_split(row["ecg_id"], seed, VAL_FRACTION, TEST_FRACTION),
    }
