"""The lead model: a cardiac dipole seen by the 12 standard leads.

Dipole axes: X to the patient's left, Y inferior (down), Z anterior. Leads I, II and V1-V6 are
measured, i.e. projections of the dipole (plus their own electrode noise); III, aVR, aVL and aVF are
never projected but derived from I and II by the Einthoven and Goldberger identities, exactly as an
electrocardiograph does, so the identities hold to float precision whatever is added to I and II.
"""

from __future__ import annotations

import numpy as np

from pipelines.data.leads import STANDARD_LEADS

LEAD_NAMES: tuple[str, ...] = STANDARD_LEADS  # I II III aVR aVL aVF V1 V2 V3 V4 V5 V6
MEASURED_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _frontal(angle_deg: float) -> list[float]:
    """Unit vector at a hexaxial angle, clockwise from X (left) towards Y (inferior)."""
    angle = np.radians(angle_deg)
    return [np.cos(angle), np.sin(angle), 0.0]


def _precordial(angle_deg: float, inferior: float, gain: float) -> list[float]:
    """Lead vector at a horizontal-plane angle from X (left) towards Z (anterior), tilted down."""
    angle = np.radians(angle_deg)
    vector = np.array([np.cos(angle), inferior, np.sin(angle)])
    return list(gain * vector / np.linalg.norm(vector))


# Rows in MEASURED_LEADS order. Chest electrodes sit closer to the heart than limb electrodes, hence
# gains above 1 (largest at V2-V3); angles follow V1 right of the sternum round to V6 mid-axillary.
MEASURED_LEAD_VECTORS: np.ndarray = np.array(
    [
        _frontal(0.0),  # I
        _frontal(60.0),  # II
        _precordial(115.0, 0.0, 1.2),  # V1
        _precordial(94.0, 0.0, 1.6),  # V2
        _precordial(77.0, 0.1, 1.6),  # V3
        _precordial(60.0, 0.2, 1.5),  # V4
        _precordial(30.0, 0.25, 1.3),  # V5
        _precordial(0.0, 0.25, 1.0),  # V6
    ]
)


def measured_leads(dipole: np.ndarray) -> np.ndarray:
    """Project a dipole [..., 3, T] (mV) onto the measured leads: [..., 8, T] in MEASURED_LEADS order."""
    return MEASURED_LEAD_VECTORS.astype(dipole.dtype) @ dipole


def twelve_leads(measured: np.ndarray) -> np.ndarray:
    """Complete measured leads [..., 8, T] to the 12 standard leads [..., 12, T] (LEAD_NAMES order).

    III = II - I, aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2.
    """
    lead_i, lead_ii = measured[..., 0, :], measured[..., 1, :]
    leads = np.empty((*measured.shape[:-2], len(LEAD_NAMES), measured.shape[-1]), dtype=measured.dtype)
    leads[..., 0, :] = lead_i
    leads[..., 1, :] = lead_ii
    np.subtract(lead_ii, lead_i, out=leads[..., 2, :])
    np.add(lead_i, lead_ii, out=leads[..., 3, :])
    leads[..., 3, :] /= -2
    np.subtract(lead_i, lead_ii / 2, out=leads[..., 4, :])
    np.subtract(lead_ii, lead_i / 2, out=leads[..., 5, :])
    leads[..., 6:, :] = measured[..., 2:, :]
    return leads


def dipole_to_leads(dipole: np.ndarray) -> np.ndarray:
    """The 12 standard leads [..., 12, T] of a noise-free dipole [..., 3, T]."""
    return twelve_leads(measured_leads(dipole))
