"""What every source shares: its options, the record list it returns, and the checks of a layout."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from pipelines.storage import Location

LISTING_COLUMNS = ["ecg_id", "patient_id", "record_path", "report", "labels", "split", "source", "expected_fs"]
"""record_path: record without extension; report: raw text (None: taken from the header comments);
split: None means decided from the header (wfdb folders); expected_fs: the rate the layout implies."""

REJECTED_COLUMNS = ["ecg_id", "source", "record_path", "reason"]
"""reason: "kind: detail", as every rejection reason reads: the kind (before the first ':') names what
is wrong in words alone, no path or number, so the manifest counts by it; the detail names the file."""


@dataclass(frozen=True)
class SourceOptions:
    """What a source needs to know to list an archive."""

    input: Location
    """The archive's folder: a path or an object-store URI (given as a string or path, resolved here)."""
    report: Literal["raw", "labels"] | None = None
    """raw: the archive's report text; labels: English built from label descriptions; None: the
    source's default (labels for PTB-XL, whose raw reports are mostly German; raw otherwise)."""
    fs: int = 500
    """Target rate; PTB-XL reads records500 above 100 Hz, records100 otherwise."""
    limit: int | None = None
    """List only the first N rows of the archive's index (for trials and tests)."""
    seed: int = 0
    """Seed of the hashed patient splits (MIMIC-IV-ECG, WFDB folders)."""
    source_name: str | None = None
    """The `source` column and ecg_id prefix; default per source (ptbxl, mimic-iv-ecg, wfdb)."""
    label_statements: Mapping[str, str] | None = field(default=None, repr=False, compare=False)
    """Label code → English statement, for `report="labels"` where the archive has no label table (WFDB
    folders: the prepare CLI passes the concept table's SNOMED statements)."""
    unsigned: bool = False
    """An s3:// archive read without credentials (a public bucket)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", Location.of(self.input, unsigned=self.unsigned))


@dataclass
class Listing:
    """A source's record list and what it rejected while listing."""

    records: pd.DataFrame
    rejected: list[dict] = field(default_factory=list)

    @property
    def records_in(self) -> int:
        return len(self.records) + len(self.rejected)


def reject_duplicate_ids(rows: pd.DataFrame, rejected: list[dict]) -> pd.DataFrame:
    """Keep the first row of each ecg_id; every repeat becomes a rejection naming the first."""
    duplicated = rows["ecg_id"].duplicated(keep="first")
    first_position = {ecg_id: i for i, ecg_id in reversed(list(enumerate(rows["ecg_id"])))}
    for row in rows[duplicated].itertuples():
        rejected.append(
            {
                "ecg_id": row.ecg_id,
                "source": row.source,
                "record_path": row.record_path,
                "reason": f"duplicate ecg_id: {row.ecg_id} (first listed at index row {first_position[row.ecg_id] + 1})",
            }
        )
    return rows[~duplicated].reset_index(drop=True)


def require_files(folder: Location, names: list[str], layout: str) -> list[Location]:
    """The files `names` in `folder`; a ValueError naming the first that is missing."""
    files = [folder.child(name) for name in names]
    for file in files:
        if not file.is_file():
            raise ValueError(f"{folder} is not a {layout} folder: {file.name} is missing")
    return files


def read_csv(file: Location, **read_options) -> pd.DataFrame:
    """An index file of the archive (a path or a URI) as a table: one read, no listing."""
    with file.open() as stream:
        return pd.read_csv(stream, **read_options)


def require_columns(table: pd.DataFrame, columns: list[str], file: Location) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{file} lacks required columns: {', '.join(missing)}")
