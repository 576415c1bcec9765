"""Any folder tree of WFDB records (`.hea` + `.dat`): CinC/CPSC challenge folders and the like.

Any lead set, rate and length. Header comments in the CinC style (`#Dx: 426783006,164889003`,
`#Age: 74`, `#Sex: Male`) become labels and metadata; other comments become the report text, or with
`--report labels` the report is the statements of the `#Dx` codes (`SourceOptions.label_statements`, which the
prepare CLI fills from the concept table); codes without a statement stay labels and are logged.
Report, labels and split are only known once the header is read, so listing leaves them empty
and `fill_from_header` completes each row in the read task. The split is a seeded hash of the
record id, 80 / 10 / 10 (these archives carry no patient ids). Signal files without a header and
symlinked folders not followed are listed as rejected, each one input (see `folder_walk`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd

from pipelines.data.reports import join_statements
from pipelines.data.sources.folder_walk import walk_records
from pipelines.data.sources.listing import LISTING_COLUMNS, Listing, SourceOptions
from pipelines.data.splits import hashed_split

log = logging.getLogger(__name__)

METADATA_KEYS = {"age", "sex", "rx", "hx", "sx"}
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1


def list_records(options: SourceOptions) -> Listing:
    if options.report == "labels" and options.label_statements is None:
        raise ValueError("--report labels needs label statements (code → text), which WFDB folders lack; "
                         "pass SourceOptions.label_statements (the prepare CLI does) or use --report raw")
    source = options.source_name or "wfdb"
    entries = walk_records(options.input)
    if options.limit is not None:
        entries = entries[: options.limit]
    root = options.input.uri
    rows, rejected = [], []
    for entry in entries:  # strings, not Paths: listing 800k records stays a matter of seconds
        if entry.reason is not None:  # a signal file without a header, a folder not walked
            rejected.append(
                {"ecg_id": f"{source}/{entry.path}", "source": source,
                 "record_path": f"{root}/{entry.path}", "reason": entry.reason}
            )
            continue
        record = entry.path.removesuffix(".hea")
        rows.append(
            {
                "ecg_id": f"{source}/{record}",
                "patient_id": None,
                "record_path": f"{root}/{record}",
                "report": None,
                "labels": [],
                "split": None,
                "source": source,
                "expected_fs": None,
            }
        )
    return Listing(records=pd.DataFrame(rows, columns=LISTING_COLUMNS), rejected=rejected)


def fill_from_header(row: dict, comments: list[str], seed: int, statements: Mapping[str, str] | None = None) -> dict:
    """Complete a listed row from its header comments: labels from `Dx`; the report from the other comments,
    or, given `statements` (code → text), the statements of the `Dx` codes in their order, each once."""
    labels: list[str] = []
    report_lines = []
    for comment in comments:
        key, separator, value = comment.partition(":")
        key = key.strip().lower()
        if separator and key == "dx":
            labels = [code.strip() for code in value.split(",") if code.strip()]
        elif not (separator and key in METADATA_KEYS):
            report_lines.append(comment)
    report = " ".join(report_lines) if statements is None else _labels_report(row["ecg_id"], labels, statements)
    return {
        **row,
        "report": report,
        "labels": labels,
        "split": hashed_split(row["ecg_id"], seed, VAL_FRACTION, TEST_FRACTION),
    }


def _labels_report(ecg_id: str, labels: list[str], statements: Mapping[str, str]) -> str:
    unmapped = [code for code in labels if code not in statements]
    if unmapped:
        log.warning("%s: Dx code(s) %s have no statement; kept as labels, left out of the report",
                    ecg_id, ", ".join(unmapped))
    return join_statements(dict.fromkeys(statements[code] for code in labels if code in statements))
