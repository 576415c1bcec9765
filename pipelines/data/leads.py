"""The 12 standard leads, and putting any header's lead set into their order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_INDEX = {name.upper(): i for i, name in enumerate(STANDARD_LEADS)}
# Names other archives use for a standard lead: Holter's modified limb lead, Roman-numeral variants.
_ALIASES = {"MLII": "II", "ML2": "II", "MLI": "I", "MLIII": "III", "D1": "I", "D2": "II", "D3": "III"}


def lead_index(name: str) -> int | None:
    """Position of `name` among the 12 standard leads (case-insensitive, common aliases), or None."""
    key = name.strip().upper().removeprefix("LEAD").strip(" _-")
    key = _ALIASES.get(key, key)
    return _INDEX.get(key.upper())


def arrange_leads(signal: np.ndarray, lead_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reorder `signal` [n_leads, T] into the standard order, zero-filling absent leads.

    Returns (signal [12, T] float32, lead_mask [12] bool, names that are not standard leads).
    A lead named twice keeps its first occurrence; the repeat is reported like an unknown name.
    """
    if len(lead_names) != signal.shape[0]:
        raise ValueError(f"{len(lead_names)} lead names for {signal.shape[0]} signal rows")
    arranged = np.zeros((len(STANDARD_LEADS), signal.shape[1]), dtype=np.float32)
    mask = np.zeros(len(STANDARD_LEADS), dtype=bool)
    ignored = []
    for row, name in enumerate(lead_names):
        index = lead_index(name)
        if index is None or mask[index]:
            ignored.append(name)
            continue
        arranged[index] = signal[row]
        mask[index] = True
    return arranged, mask, ignored
