"""PTB-XL layout: `ptbxl_database.csv`, `scp_statements.csv`, `records100/`, `records500/`.

Labels are the keys of `scp_codes`; the split follows `strat_fold` (1–8 train, 9 val, 10 test),
which PTB-XL assigns per patient. The synthetic generator writes this same layout.
"""

from __future__ import annotations

import ast

import pandas as pd

from pipelines.data.reports import join_statements
from pipelines.data.sources.listing import (
    LISTING_COLUMNS,
    Listing,
    SourceOptions,
    read_csv,
    reject_duplicate_ids,
    require_columns,
    require_files,
)

FOLD_SPLITS = {**{fold: "train" for fold in range(1, 9)}, 9: "val", 10: "test"}


def list_records(options: SourceOptions) -> Listing:
    source = options.source_name or "ptbxl"
    database_file, statements_file = require_files(options.input, ["ptbxl_database.csv", "scp_statements.csv"], "PTB-XL")
    database = read_csv(database_file, nrows=options.limit, dtype={"filename_lr": str, "filename_hr": str})
    require_columns(database, ["ecg_id", "patient_id", "scp_codes", "strat_fold", "filename_lr", "filename_hr"], database_file)
    statements = read_csv(statements_file, index_col=0)
    require_columns(statements, ["description"], statements_file)
    descriptions = statements["description"].to_dict()
    report_mode = options.report or "labels"
    prefer_high_rate = options.fs > 100

    rows, rejected = [], []
    for row in database.itertuples(index=False):
        ecg_id = f"{source}/{int(row.ecg_id):05d}"
        record_path, expected_fs = _record_file(row, prefer_high_rate)
        reason = None
        try:
            codes = ast.literal_eval(row.scp_codes)
            if not isinstance(codes, dict):
                raise ValueError("not a dict")
        except (ValueError, SyntaxError) as error:
            reason = f"unparsable scp_codes: {row.scp_codes!r}: {error}"
        fold = row.strat_fold
        if reason is None and fold not in FOLD_SPLITS:
            reason = f"bad strat_fold: {fold!r} is not in 1..10"
        if reason is None and record_path is None:
            reason = "no record file named: filename_lr and filename_hr are empty"
        if reason is not None:
            rejected.append({"ecg_id": ecg_id, "source": source, "record_path": record_path, "reason": reason})
            continue
        if report_mode == "labels":
            report = join_statements(descriptions.get(code, "") for code in codes)
        else:
            report = row.report if isinstance(getattr(row, "report", None), str) else ""
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": None if pd.isna(row.patient_id) else str(int(row.patient_id)),
                "record_path": options.input.child(record_path).uri,
                "report": report,
                "labels": list(codes),
                "split": FOLD_SPLITS[fold],
                "source": source,
                "expected_fs": expected_fs,
            }
        )
    records = reject_duplicate_ids(pd.DataFrame(rows, columns=LISTING_COLUMNS), rejected)
    return Listing(records=records, rejected=rejected)


def _record_file(row, prefer_high_rate: bool) -> tuple[str | None, float | None]:
    """(relative record path, its rate) at the preferred rate, else the other one that exists."""
    high = (row.filename_hr, 500.0)
    low = (row.filename_lr, 100.0)
    for name, fs in (high, low) if prefer_high_rate else (low, high):
        if isinstance(name, str) and name.strip():
            return name.strip(), fs
    return None, None
