"""The generator's own location of each abnormality, checked against the signals it drew: the PVC window holds
the premature beat's big deflection, the bundle-branch window the wide QRS, the ST window lies after the QRS
in the territory's leads; AF covers the record; records without the code get an empty mask."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.synthetic import SyntheticConfig, generate_batch
from pipelines.synthetic.locations import LOCATED_CODES, abnormality_mask

FS, T = 500, 5000
CONFIG = SyntheticConfig(n=300, probabilities={"PVC": 0.3, "CLBBB": 0.15, "CRBBB": 0.15, "STE_": 0.2, "STD_": 0.2})


@pytest.fixture(scope="module")
def batch():
    return generate_batch(CONFIG.n, np.random.default_rng(11), CONFIG)


def _with(metadata: list[dict], code: str) -> list[int]:
    found = [i for i, record in enumerate(metadata) if code in record["codes"]]
    assert len(found) >= 5, f"the batch should hold several {code} records"
    return found


def test_masks_are_empty_where_the_record_lacks_the_code_and_unlocated_codes_are_refused(batch):
    _, metadata = batch
    for code in LOCATED_CODES:
        without = next(record for record in metadata if code not in record["codes"])
        mask = abnormality_mask(without, code, FS, T)
        assert mask.shape == (12, T) and mask.dtype == bool and not mask.any()
    with pytest.raises(ValueError, match="'SBRAD' has no location"):
        abnormality_mask(metadata[0], "SBRAD", FS, T)


def test_pvc_window_holds_each_premature_beat_and_its_big_deflection(batch):
    signals, metadata = batch
    for i in _with(metadata, "PVC"):
        record, mask = metadata[i], abnormality_mask(metadata[i], "PVC", FS, T)
        assert mask.all(axis=0).sum() == mask.any(axis=0).sum()  # all leads alike
        for peak in record["pvc_peaks"]:
            assert mask[:, peak].all()
        if not record["baseline_drift"]:  # the PVC is larger than the conducted QRS in the limb leads
            conducted_qrs = abnormality_mask({**record, "codes": ["CLBBB"]}, "CLBBB", FS, T)[0] & ~mask[0]
            assert _limb_peak_to_peak(signals[i], mask[0]) > _limb_peak_to_peak(signals[i], conducted_qrs)
        sinus_only = [p for p in record["r_peaks"] if p not in set(record["pvc_peaks"])]
        assert not mask[0, sinus_only].any()


def _limb_peak_to_peak(signal: np.ndarray, samples: np.ndarray) -> float:
    """Largest peak-to-peak over the six limb leads of signal [12, T] at the chosen samples [T] bool."""
    limb = signal[:6, samples]
    return float((limb.max(axis=1) - limb.min(axis=1)).max())


@pytest.mark.parametrize("code", ["CLBBB", "CRBBB"])
def test_bundle_branch_window_is_each_conducted_beats_wide_qrs(batch, code):
    _, metadata = batch
    for i in _with(metadata, code):
        record, mask = metadata[i], abnormality_mask(metadata[i], code, FS, T)
        assert record["qrs_offset_s"] - record["qrs_onset_s"] >= 0.12  # wide: a bundle branch block
        conducted = [p for p in record["r_peaks"] if p not in set(record["pvc_peaks"]) and 0 <= p < T]
        assert mask[:, conducted].all()
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], mask[0].astype(int), [0]]))))[::2]
        assert runs.max() <= round((record["qrs_offset_s"] - record["qrs_onset_s"]) * FS) + 2


@pytest.mark.parametrize("code", ["STE_", "STD_"])
def test_st_window_follows_the_qrs_in_the_territory_leads(batch, code):
    signals, metadata = batch
    for i in _with(metadata, code):
        record, mask = metadata[i], abnormality_mask(metadata[i], code, FS, T)
        deviation = np.abs(record["st_deviation_mv"])
        leads = np.flatnonzero(mask.any(axis=1))
        assert int(np.argmax(deviation)) in leads and len(leads) < 12
        for peak in record["r_peaks"]:
            if peak in set(record["pvc_peaks"]):
                continue
            j = peak + int(np.ceil(record["qrs_offset_s"] * FS))
            if j + 1 < T:
                assert mask[leads, j + 1].all() and not mask[:, peak].any()  # after the QRS, not on the R peak


def test_af_covers_the_whole_record_and_a_lower_rate_keeps_the_times(batch):
    _, metadata = batch
    i = _with(metadata, "AFIB")[0]
    assert abnormality_mask(metadata[i], "AFIB", FS, T).all()
    j = _with(metadata, "PVC")[0]
    full, coarse = abnormality_mask(metadata[j], "PVC", FS, T), abnormality_mask(metadata[j], "PVC", 100, T // 5)
    assert np.array_equal(np.flatnonzero(coarse[0]), np.unique(np.flatnonzero(full[0]) // 5))
