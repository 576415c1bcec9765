"""Synthetic ECGs written in PTB-XL's layout, so the default data goes through the real-data reader.

    out_dir/
      ptbxl_database.csv      one row per ECG, PTB-XL's columns (scp_codes as a python-dict literal)
      scp_statements.csv      the label table in PTB-XL's format
      records500/00000/00001_hr.{hea,dat}   1000 records per folder, format 16, 1 uV resolution
      records100/00000/00001_lr.{hea,dat}   only when 100 is in config.rates
      synthetic_config.json   the config that made it

Chunk k holds ecg_ids k * chunk_size + 1 ... and draws from `np.random.default_rng([seed, k])`, so
the output depends on (config, chunk_size) and not on the order or place chunks run in.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import resample_poly

from pipelines.data.wfdb_io import write_record
from pipelines.synthetic.conditions import STATEMENTS, SyntheticConfig
from pipelines.synthetic.dipole import LEAD_NAMES
from pipelines.synthetic.generate import generate_batch

RECORDS_PER_FOLDER = 1000
N_FOLDS = 10
DATABASE_COLUMNS = (
    "ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "heart_axis",
    "baseline_drift", "static_noise", "strat_fold", "filename_lr", "filename_hr",
)  # fmt: skip
CHUNK_SIZE = 256
"""ECGs per chunk: what one task generates (and, with the seed, what the data depends on)."""
ALL_LEADS = "alles"  # PTB-XL's noise columns name the affected leads; this is its word for all of them


def record_name(ecg_id: int, fs: int) -> str:
    """PTB-XL's relative record path, e.g. records500/01000/01001_hr (no extension)."""
    suffix = {500: "hr", 100: "lr"}[fs]
    folder = ecg_id // RECORDS_PER_FOLDER * RECORDS_PER_FOLDER
    return f"records{fs}/{folder:05d}/{ecg_id:05d}_{suffix}"


def patient_fold(patient_id: int) -> int:
    """Stratification fold 1..10 of a patient: a stable hash, so every ECG of a patient shares it."""
    return zlib.crc32(str(patient_id).encode()) % N_FOLDS + 1


def n_chunks(config: SyntheticConfig, chunk_size: int = CHUNK_SIZE) -> int:
    return -(-config.n // chunk_size)


def write_chunk(out_dir: str | os.PathLike, config: SyntheticConfig, chunk_index: int, chunk_size: int) -> list[dict]:
    """Generate and write the records of chunk `chunk_index`; return their database rows."""
    if config.fs != 500:
        raise ValueError(f"the PTB-XL layout stores 500 Hz records; config.fs is {config.fs}")
    out_dir = Path(out_dir)
    first_id = chunk_index * chunk_size + 1
    n = min(chunk_size, config.n - chunk_index * chunk_size)
    rng = np.random.default_rng([config.seed, chunk_index])
    signals, metadata = generate_batch(n, rng, config)
    low_rate = resample_poly(signals, 1, 5, axis=-1) if 100 in config.rates else None  # [n, 12, T / 5]
    patients = _patients(n, first_id, rng, config)
    rows = []
    for i, (record, (patient_id, age, sex)) in enumerate(zip(metadata, patients)):
        ecg_id = first_id + i
        write_record(out_dir / record_name(ecg_id, 500), signals[i], 500, LEAD_NAMES)
        if low_rate is not None:
            write_record(out_dir / record_name(ecg_id, 100), low_rate[i], 100, LEAD_NAMES)
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": patient_id,
                "age": age,
                "sex": sex,
                "report": record["report"],
                "scp_codes": str({code: 100.0 for code in record["codes"]}),
                "heart_axis": next((c for c in ("LAD", "RAD") if c in record["codes"]), "MID"),
                "baseline_drift": ALL_LEADS if record["baseline_drift"] else "",
                "static_noise": ALL_LEADS if record["static_noise"] else "",
                "strat_fold": patient_fold(patient_id),
                "filename_lr": record_name(ecg_id, 100) if low_rate is not None else "",
                "filename_hr": record_name(ecg_id, 500),
            }
        )
    return rows


def _patients(
    n: int, first_id: int, rng: np.random.Generator, config: SyntheticConfig
) -> Iterator[tuple[int, int, int]]:
    """(patient_id, age, sex) of each of `n` consecutive ECGs; a patient's id is its first ecg_id.

    Sex is PTB-XL's coding: 0 male, 1 female.
    """
    low, high = config.ecgs_per_patient
    counts = rng.integers(low, high + 1, size=n)  # at least n patients' worth
    age = rng.integers(config.age_range[0], config.age_range[1] + 1, size=n)
    sex = rng.integers(0, 2, size=n)
    patient = np.repeat(np.arange(n), counts)[:n]
    first_of_patient = np.searchsorted(patient, patient)  # index of each patient's first ECG
    for i in range(n):
        yield int(first_id + first_of_patient[i]), int(age[patient[i]]), int(sex[patient[i]])


def write_tables(out_dir: str | os.PathLike, rows: Iterable[dict], config: SyntheticConfig) -> None:
    """Write ptbxl_database.csv (rows sorted by ecg_id), scp_statements.csv and the config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    database = pd.DataFrame(sorted(rows, key=lambda row: row["ecg_id"]), columns=list(DATABASE_COLUMNS))
    database.to_csv(out_dir / "ptbxl_database.csv", index=False)
    statements = pd.DataFrame(
        {
            "description": [s.description for s in STATEMENTS],
            "diagnostic": [1.0 if s.kind == "diagnostic" else None for s in STATEMENTS],
            "form": [1.0 if s.kind == "form" else None for s in STATEMENTS],
            "rhythm": [1.0 if s.kind == "rhythm" else None for s in STATEMENTS],
            "diagnostic_class": [s.diagnostic_class for s in STATEMENTS],
            "diagnostic_subclass": [s.diagnostic_subclass for s in STATEMENTS],
            "Statement Category": [s.scp_category for s in STATEMENTS],
            "SCP-ECG Statement Description": [s.description for s in STATEMENTS],
        },
        index=[s.code for s in STATEMENTS],
    )
    statements.to_csv(out_dir / "scp_statements.csv")
    (out_dir / "synthetic_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def generate_ptbxl_layout(
    out_dir: str | os.PathLike,
    config: SyntheticConfig,
    chunk_size: int = CHUNK_SIZE,
    map_fn: Callable[[Callable[[int], list[dict]], Iterable[int]], Iterable[list[dict]]] = map,
) -> Path:
    """Write `config.n` ECGs under `out_dir` in PTB-XL's layout; chunks run through `map_fn`.

    `map_fn(function, chunk_indices)` may run chunks in any order or in parallel; `function` is a
    plain function (not a partial), so `ray.remote(function)` accepts it.
    """

    def write(chunk_index: int) -> list[dict]:
        return write_chunk(out_dir, config, chunk_index, chunk_size)

    chunks = map_fn(write, range(n_chunks(config, chunk_size)))
    write_tables(out_dir, [row for rows in chunks for row in rows], config)
    return Path(out_dir)
