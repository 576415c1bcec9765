"""Seeded, patient-disjoint splits that need no global state: a stable hash of the patient id."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")
ALL_SPLITS = "all"
"""A split selection naming every split: what evaluating an archive none of which was trained on reads."""


def selected_splits(selection: str) -> tuple[str, ...]:
    """The splits a selection names: one split ("test"), several joined by commas ("val,test"), or "all".
    ValueError naming an unknown split."""
    if selection.strip() == ALL_SPLITS:
        return SPLITS
    names = tuple(dict.fromkeys(name.strip() for name in selection.split(",")))
    unknown = [name for name in names if name not in SPLITS]
    if unknown:
        raise ValueError(
            f"split {', '.join(map(repr, unknown))} is not one of {', '.join(SPLITS)} (or {ALL_SPLITS!r}, or several "
            "joined by commas)"
        )
    return names


def hashed_split(patient_key: str, seed: int, val_fraction: float, test_fraction: float = 0.0) -> str:
    """train / val / test for a patient, the same on every machine and in every run with `seed`.

    All records of one patient share the key, so the split is patient-disjoint by construction.
    """
    digest = hashlib.blake2b(f"{seed}:{patient_key}".encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "little") / 2**64  # uniform in [0, 1)
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"
