"""MIMIC-IV-ECG layout: `record_list.csv`, `machine_measurements.csv`, records under `files/`.

Reports are the machine statements `report_0` … `report_17` joined with ". " and cleaned as
MERL/MELP do; the split is patient-disjoint (hash of `subject_id`), 98 % train / 2 % val, seeded.
"""

from __future__ import annotations

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
from pipelines.data.splits import hashed_split

VAL_FRACTION = 0.02
REPORT_COLUMNS = [f"report_{i}" for i in range(18)]


def list_records(options: SourceOptions) -> Listing:
    source = options.source_name or "mimic-iv-ecg"
    record_file, measurement_file = require_files(
        options.input, ["record_list.csv", "machine_measurements.csv"], "MIMIC-IV-ECG"
    )
    records = read_csv(record_file, nrows=options.limit)
    require_columns(records, ["subject_id", "study_id", "path"], record_file)
    measurements = read_csv(measurement_file)
    require_columns(measurements, ["study_id"], measurement_file)
    report_columns = [c for c in REPORT_COLUMNS if c in measurements.columns]
    if not report_columns:
        raise ValueError(f"{measurement_file} has none of the columns report_0 … report_17")
    reports = measurements.drop_duplicates("study_id").set_index("study_id")[report_columns]
    joined = records.join(reports, on="study_id")

    rejected = []
    rows = []
    for row in joined.itertuples(index=False):
        ecg_id = f"{source}/{row.study_id}"
        record_path = options.input.child(row.path).uri
        if row.study_id not in reports.index:
            rejected.append(
                {"ecg_id": ecg_id, "source": source, "record_path": record_path,
                 "reason": f"no machine measurements: study_id {row.study_id} has no row in machine_measurements.csv"}
            )
            continue
        statements = [getattr(row, c) for c in report_columns]
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": str(row.subject_id),
                "record_path": record_path,
                "report": join_statements(s for s in statements if isinstance(s, str)),
                "labels": [],
                "split": hashed_split(str(row.subject_id), options.seed, VAL_FRACTION),
                "source": source,
                "expected_fs": 500.0,
            }
        )
    listing = reject_duplicate_ids(pd.DataFrame(rows, columns=LISTING_COLUMNS), rejected)
    return Listing(records=listing, rejected=rejected)
