"""Where the generator put each abnormality of a synthetic ECG: a lead × time mask per code.

    mask = abnormality_mask(metadata[i], "PVC", fs=500, n_samples=5000)   # bool [12, 5000]

Built from what `generate_batch` returns per record (beat times in samples of the generator's rate,
wave bounds in seconds from the R peak, the ST offset per lead), so it can be drawn at any model rate:

- PVC: every premature beat, its QRS onset to its T end (`pvc_onset_s` .. `pvc_end_s`), all leads;
- CLBBB / CRBBB: every supraventricular beat's QRS (`qrs_onset_s` .. `qrs_offset_s`), all leads;
- STE_ / STD_: every supraventricular beat's ST segment, J .. J + ST_SEGMENT_S, in the leads whose
  |ST offset| is at least half the record's largest (the territory);
- AFIB: the whole record, every lead: the f waves run through it and the irregular RR is a property
  of all beats together. Any segment overlaps it, so AF meets an overlap test trivially; report the
  overlap with and without AF.

A record without the code gets an empty mask.
"""

from __future__ import annotations

import numpy as np

from pipelines.synthetic.conditions import SyntheticConfig
from pipelines.synthetic.generate import ST_CENTER_AFTER_J_S, ST_WIDTH_S

LOCATED_CODES = ("PVC", "CLBBB", "CRBBB", "STE_", "STD_", "AFIB")
"""Codes whose cause lies somewhere in the signal (rate, axis or voltage codes have no place)."""
ST_SEGMENT_S = ST_CENTER_AFTER_J_S + ST_WIDTH_S
"""From J to one width past the centre of the generator's ST wave, where its offset is at least 0.6 of its peak."""
ST_TERRITORY_FRACTION = 0.5
"""A lead is in the ST territory when its |ST offset| is at least this fraction of the record's largest."""
N_LEADS = 12


def abnormality_mask(
    meta: dict, code: str, fs: float, n_samples: int, *, generated_fs: float = SyntheticConfig.fs
) -> np.ndarray:
    """bool [12, n_samples] at `fs` Hz: where record `meta` (from `generate_batch` at `generated_fs` Hz, the
    same time origin) shows `code`; all False when the record lacks it. ValueError for a code with no place."""
    if code not in LOCATED_CODES:
        raise ValueError(f"code {code!r} has no location in a synthetic ECG; located codes: {', '.join(LOCATED_CODES)}")
    mask = np.zeros((N_LEADS, n_samples), dtype=bool)
    if code not in meta["codes"]:
        return mask
    if code == "AFIB":
        mask[:] = True
        return mask
    peaks_s = np.asarray(meta["r_peaks"]) / generated_fs
    premature = np.isin(meta["r_peaks"], meta["pvc_peaks"])
    if code == "PVC":
        (start_s, end_s), peaks_s = (meta["pvc_onset_s"], meta["pvc_end_s"]), peaks_s[premature]
        leads = np.ones(N_LEADS, dtype=bool)
    elif code in ("CLBBB", "CRBBB"):
        (start_s, end_s), peaks_s = (meta["qrs_onset_s"], meta["qrs_offset_s"]), peaks_s[~premature]
        leads = np.ones(N_LEADS, dtype=bool)
    else:
        (start_s, end_s), peaks_s = (meta["qrs_offset_s"], meta["qrs_offset_s"] + ST_SEGMENT_S), peaks_s[~premature]
        deviation = np.abs(np.asarray(meta["st_deviation_mv"]))
        leads = deviation >= ST_TERRITORY_FRACTION * deviation.max()
    for peak_s in peaks_s:
        start = max(0, int(np.floor((peak_s + start_s) * fs)))
        end = min(n_samples, int(np.ceil((peak_s + end_s) * fs)))
        mask[leads, start:end] = True
    return mask
