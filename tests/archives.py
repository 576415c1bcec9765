"""Builders of small WFDB archives for tests, written with `wfdb.wrsamp` (wfdb ships no samples)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from pipelines.data.leads import STANDARD_LEADS

DESCRIPTIONS = {
    "NORM": "normal ECG",
    "SR": "sinus rhythm",
    "AFIB": "atrial fibrillation",
    "LVH": "left ventricular hypertrophy",
    "IMI": "inferior myocardial infarction",
}


def ecg_like(seconds: float, fs: float, n_leads: int = 12, seed: int = 0) -> np.ndarray:
    """A deterministic ECG-ish signal [T, n_leads] in mV: a 1.2 Hz spike train plus sines and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fs))) / fs
    beats = np.exp(-(((t % (1 / 1.2)) - 0.3) ** 2) / (2 * 0.01**2))
    leads = [
        (0.5 + 0.1 * k) * beats + 0.1 * np.sin(2 * np.pi * (1 + k) * t) + 0.01 * rng.standard_normal(t.size)
        for k in range(n_leads)
    ]
    return np.stack(leads, axis=1)


def write_wfdb(
    record_path: Path,
    signal: np.ndarray,
    fs: float,
    leads: Sequence[str] = STANDARD_LEADS,
    comments: Sequence[str] = (),
    fmt: str = "16",
) -> Path:
    """Write `signal` [T, n_leads] (mV) with wfdb.wrsamp at `record_path` (no extension)."""
    record_path.parent.mkdir(parents=True, exist_ok=True)
    n = signal.shape[1]
    wfdb.wrsamp(
        record_path.name,
        fs=fs,
        units=["mV"] * n,
        sig_name=list(leads),
        p_signal=signal,
        fmt=[fmt] * n,
        adc_gain=[1000.0] * n if fmt == "16" else [200.0] * n,
        baseline=[0] * n,
        comments=list(comments),
        write_dir=str(record_path.parent),
    )
    return record_path


def write_multifile_wfdb(
    record_path: Path, signal: np.ndarray, fs: float, leads: Sequence[str], files: Sequence[str], comments: Sequence[str] = ()
) -> Path:
    """Write `signal` [T, n_leads] (mV) as one WFDB record whose leads lie in several signal files, as
    PTB Diagnostic's `s0010_re.dat` (12 leads) + `s0010_re.xyz` (Frank leads): `files[i]` holds lead i."""
    record_path.parent.mkdir(parents=True, exist_ok=True)
    n = signal.shape[1]
    record = wfdb.Record(
        record_name=record_path.name, fs=fs, file_name=list(files), fmt=["16"] * n, adc_gain=[1000.0] * n,
        baseline=[0] * n, units=["mV"] * n, sig_name=list(leads), p_signal=signal, comments=list(comments),
    )
    record.set_d_features(do_adc=True)  # as wfdb.wrsamp does, which writes one file only
    record.set_defaults()
    record.wrsamp(write_dir=str(record_path.parent))
    return record_path


CINC_COMMENTS = ("Age: 62", "Sex: Female", "Dx: 426783006", "Rx: Unknown", "Hx: Unknown", "Sx: Unknown")
"""A CinC 2020/2021 header's comments: metadata and SNOMED codes, no report text."""


def write_cinc_archive(root: Path, n: int, comments: Sequence[str] = CINC_COMMENTS) -> Path:
    """A CinC-2021-style folder: `n` 12-lead 500 Hz records `A0001` … in `training/cpsc_2018/g1/`."""
    for i in range(1, n + 1):
        write_wfdb(root / "training" / "cpsc_2018" / "g1" / f"A{i:04d}", ecg_like(10, 500, seed=i), 500, comments=comments)
    return root


def write_ptbxl_archive(root: Path, entries: Sequence[dict]) -> Path:
    """A PTB-XL-layout folder. Each entry: ecg_id, and optionally patient_id, scp_codes (dict or a
    raw string), strat_fold, report, signal ([T, n] mV; None writes no record file), leads, fs."""
    rows = []
    for entry in entries:
        ecg_id = entry["ecg_id"]
        name = f"records500/00000/{ecg_id:05d}_hr"
        signal = entry.get("signal", ecg_like(10, 500, seed=ecg_id))
        if signal is not None:
            write_wfdb(root / name, signal, entry.get("fs", 500), entry.get("leads", STANDARD_LEADS))
        codes = entry.get("scp_codes", {"NORM": 100.0, "SR": 0.0})
        rows.append(
            {
                "ecg_id": ecg_id,
                "patient_id": float(entry.get("patient_id", 1000 + ecg_id)),
                "report": entry.get("report", "sinusrhythmus normales ekg"),
                "scp_codes": codes if isinstance(codes, str) else repr(codes),
                "strat_fold": entry.get("strat_fold", 1 + ecg_id % 10),
                "filename_lr": "",
                "filename_hr": name,
            }
        )
    pd.DataFrame(rows).to_csv(root / "ptbxl_database.csv", index=False)
    statements = pd.DataFrame({"description": DESCRIPTIONS}).rename_axis(None)
    statements.to_csv(root / "scp_statements.csv")
    return root


def write_mimic_archive(root: Path, n_studies: int = 6) -> Path:
    """A MIMIC-IV-ECG-layout folder as PhysioNet publishes it: `record_list.csv`, `machine_measurements.csv` and
    `files/p1000/p<subject>/s<study>/<study>.hea|.dat`, two studies per subject; the last study has no
    machine measurements (a listing rejection)."""
    rows, reports = [], []
    for i in range(n_studies):
        subject, study = 10000000 + i // 2, 40000000 + i
        path = f"files/p1000/p{subject}/s{study}/{study}"
        write_wfdb(root / path, ecg_like(10, 500, seed=i), 500)
        rows.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": "2180-07-23 08:44:00", "path": path})
        reports.append({"subject_id": subject, "study_id": study, "report_0": "Sinus rhythm", "report_1": "*** Normal EKG ***",
                        **{f"report_{k}": None for k in range(2, 18)}})
    reports.pop()
    pd.DataFrame(rows).to_csv(root / "record_list.csv", index=False)
    pd.DataFrame(reports).to_csv(root / "machine_measurements.csv", index=False)
    return root


def rewrite_header(record_path: Path, edit) -> None:
    """Apply `edit(lines) -> lines` to a record's header text lines."""
    header = record_path.with_name(record_path.name + ".hea")
    header.write_text("\n".join(edit(header.read_text().splitlines())) + "\n")
