"""What a synthetic ECG can show: the configuration, the label table, condition sampling, reports.

Conditions are a boolean matrix [n, len(CODES)] with columns in `CODES` order. Codes are PTB-XL SCP
statements where PTB-XL has one; LAD and RAD (PTB-XL keeps the axis in its `heart_axis` column)
are added in the same style.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from pipelines.data.reports import join_statements
from pipelines.labels.table_files import read_table


@dataclass(frozen=True)
class Statement:
    """One label: its meaning and its row in PTB-XL's `scp_statements.csv`."""

    code: str
    description: str
    """Also the report phrase (lower-cased), so text and label always agree."""
    category: str
    """rhythm, conduction, axis, voltage, st-t, ectopy or summary."""
    kind: str
    """PTB-XL statement kind: diagnostic, form or rhythm."""
    diagnostic_class: str = ""
    diagnostic_subclass: str = ""
    scp_category: str = ""
    """PTB-XL's 'Statement Category' text."""


STATEMENTS: tuple[Statement, ...] = tuple(Statement(**row) for row in read_table("synthetic")["statements"])
"""In report order: rhythm, conduction, axis, voltage, ST-T, ectopy; NORM is the closing summary."""
CODES: tuple[str, ...] = tuple(s.code for s in STATEMENTS)
CODE_INDEX: dict[str, int] = {code: i for i, code in enumerate(CODES)}

# Codes drawn as one categorical choice per group: (what "none of them" means, the choices).
EXCLUSIVE_GROUPS: tuple[tuple[str | None, tuple[str, ...]], ...] = (
    ("SR", ("SBRAD", "STACH", "AFIB")),
    (None, ("CLBBB", "CRBBB")),
    (None, ("LAD", "RAD")),
    (None, ("STE_", "STD_")),
)
INDEPENDENT_CODES: tuple[str, ...] = ("1AVB", "LVOLT", "INVT", "PVC")

DEFAULT_PROBABILITIES: dict[str, float] = {
    "SBRAD": 0.12,  # sinus rhythm (SR) takes the rest of the rhythm probability
    "STACH": 0.12,
    "AFIB": 0.12,
    "1AVB": 0.08,  # of non-AF records
    "CLBBB": 0.06,
    "CRBBB": 0.06,
    "LAD": 0.08,
    "RAD": 0.06,
    "LVOLT": 0.06,
    "STE_": 0.07,  # of non-CLBBB records, as are STD_ and INVT (LBBB's ST-T changes are secondary)
    "STD_": 0.07,
    "INVT": 0.08,
    "PVC": 0.08,
}


@dataclass(frozen=True)
class SyntheticConfig:
    """How many synthetic ECGs to make, and what they look like."""

    n: int = 10_000
    """Number of ECGs."""
    seed: int = 0
    """Seed of every random draw; chunk k draws from `np.random.default_rng([seed, k])`."""
    fs: int = 500
    """Sampling rate of the generated signal in Hz."""
    seconds: float = 10.0
    """Length of every ECG in seconds."""
    probabilities: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PROBABILITIES))
    """Probability of each code (keys of DEFAULT_PROBABILITIES); codes left out keep their default."""
    noise_floor_mv: tuple[float, float] = (0.003, 0.012)
    """Range of the always-present white amplifier noise (standard deviation, mV)."""
    static_noise_probability: float = 0.15
    """Probability that a record has strong white noise (PTB-XL's `static_noise`)."""
    static_noise_mv: tuple[float, float] = (0.02, 0.06)
    """Range of that noise's standard deviation in mV."""
    baseline_drift_probability: float = 0.2
    """Probability that a record has baseline wander (PTB-XL's `baseline_drift`)."""
    baseline_drift_mv: tuple[float, float] = (0.1, 0.4)
    """Range of the wander's amplitude in mV (frequencies 0.05-0.5 Hz)."""
    ecgs_per_patient: tuple[int, int] = (1, 3)
    """Inclusive range of ECGs recorded per synthetic patient."""
    age_range: tuple[int, int] = (18, 90)
    """Inclusive range of patient ages in years."""
    rates: tuple[int, ...] = (500,)
    """PTB-XL record sets to write: 500 -> records500 (*_hr), 100 -> records100 (*_lr)."""

    def __post_init__(self) -> None:
        unknown = set(self.probabilities) - set(DEFAULT_PROBABILITIES)
        if unknown:
            raise ValueError(f"unknown condition codes in probabilities: {sorted(unknown)}")
        object.__setattr__(self, "probabilities", {**DEFAULT_PROBABILITIES, **self.probabilities})
        if self.seconds < 6.0:
            raise ValueError(f"seconds must be at least 6 (room for a PVC between two beats), got {self.seconds}")
        if not set(self.rates) <= {100, 500} or 500 not in self.rates:
            raise ValueError(f"rates must include 500 and be drawn from (100, 500), got {self.rates}")
        for _, choices in EXCLUSIVE_GROUPS:
            if sum(self.probabilities[code] for code in choices) > 1.0:
                raise ValueError(f"probabilities of {choices} sum above 1")

    def to_dict(self) -> dict:
        """JSON-ready dict that `from_dict` turns back into an equal config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SyntheticConfig:
        """The config of a `to_dict` result (JSON lists become tuples); absent fields keep their defaults."""
        data = dict(data)
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = tuple(value)
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> SyntheticConfig:
        """Read a config from a JSON object of field values (see `from_dict`)."""
        with open(path, encoding="utf-8") as file:
            return cls.from_dict(json.load(file))


def sample_conditions(n: int, rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """Draw the codes of `n` ECGs: bool [n, len(CODES)], columns in `CODES` order.

    One rhythm each; at most one bundle branch block, one axis deviation, one of STE_/STD_;
    AFIB excludes 1AVB; CLBBB excludes STE_, STD_ and INVT. NORM is SR with nothing else.
    """
    conditions = np.zeros((n, len(CODES)), dtype=bool)
    for default, choices in EXCLUSIVE_GROUPS:
        cumulative = np.cumsum([config.probabilities[code] for code in choices])
        choice = np.searchsorted(cumulative, rng.random(n), side="right")  # len(choices): none drawn
        for i, code in enumerate(choices):
            conditions[:, CODE_INDEX[code]] = choice == i
        if default is not None:
            conditions[:, CODE_INDEX[default]] = choice == len(choices)
    for code in INDEPENDENT_CODES:
        conditions[:, CODE_INDEX[code]] = rng.random(n) < config.probabilities[code]
    conditions[:, CODE_INDEX["1AVB"]] &= ~conditions[:, CODE_INDEX["AFIB"]]
    for code in ("STE_", "STD_", "INVT"):
        conditions[:, CODE_INDEX[code]] &= ~conditions[:, CODE_INDEX["CLBBB"]]
    abnormal = np.delete(conditions, [CODE_INDEX["SR"], CODE_INDEX["NORM"]], axis=1).any(axis=1)
    conditions[:, CODE_INDEX["NORM"]] = conditions[:, CODE_INDEX["SR"]] & ~abnormal
    return conditions


def codes_of(condition_row: np.ndarray) -> list[str]:
    """The codes set in one row of a condition matrix, in `CODES` order."""
    return [CODES[i] for i in np.flatnonzero(condition_row)]


def report_from_codes(codes: Sequence[str]) -> str:
    """Machine-style report, e.g. "sinus bradycardia. left axis deviation. abnormal ecg."."""
    present = set(codes)
    statements = [s.description for s in STATEMENTS if s.code in present and s.code != "NORM"]
    statements.append("normal ecg" if "NORM" in present else "abnormal ecg")
    return join_statements(statements)
