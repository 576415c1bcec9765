"""Preprocessing is correct: resampling, lead order, crop/pad, normalisation, repairs and rejections."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.leads import STANDARD_LEADS, arrange_leads, lead_index
from pipelines.data.preprocess import PreprocessConfig, preprocess, preprocess_windows
from pipelines.data.rejection import RecordRejected
from pipelines.data.reports import clean_report, join_statements, word_count
from pipelines.data.wfdb_io import Recording

RAW = PreprocessConfig(normalize="none")


def sine_recording(fs: float, seconds: float, hz: float = 5.0, leads=STANDARD_LEADS) -> Recording:
    t = np.arange(int(round(fs * seconds))) / fs
    signal = np.stack([(1 + k / 10) * np.sin(2 * np.pi * hz * t) for k in range(len(leads))]).astype(np.float32)
    return Recording(name="sine", signal=signal, fs=fs, lead_names=list(leads))


@pytest.mark.parametrize("fs_in", [100, 250, 257, 1000])
def test_resampling_a_known_sine_between_rates(fs_in):
    out = preprocess(sine_recording(fs_in, 10), RAW)
    t = np.arange(5000) / 500
    expected = np.sin(2 * np.pi * 5 * t)
    interior = slice(250, 4750)  # away from the filter's edge transients
    np.testing.assert_allclose(out.signal[0, interior].astype(np.float32), expected[interior], atol=0.02)
    np.testing.assert_allclose(out.signal[11, interior].astype(np.float32), 2.1 * expected[interior], atol=0.04)


def test_downsampling_to_100_hz():
    out = preprocess(sine_recording(500, 10), PreprocessConfig(fs=100, normalize="none"))
    t = np.arange(1000) / 100
    np.testing.assert_allclose(out.signal[0, 50:950].astype(np.float32), np.sin(2 * np.pi * 5 * t)[50:950], atol=0.02)


def test_leads_are_reordered_and_missing_leads_masked():
    names = ["V6", "AVR", "lead II", "MLI"]  # out of order, upper-case, prefixed, an alias for I
    signal = np.stack([np.full(5000, value, np.float32) + np.sin(np.arange(5000)) for value in (6, 4, 2, 1)])
    out = preprocess(Recording("r", signal, 500, names), RAW)
    assert out.lead_mask.tolist() == [name in ("I", "II", "aVR", "V6") for name in STANDARD_LEADS]
    for name, value in (("V6", 6), ("aVR", 4), ("II", 2), ("I", 1)):
        assert abs(float(out.signal[STANDARD_LEADS.index(name)].mean()) - value) < 0.05
    assert not out.signal[~out.lead_mask].any()


def test_arrange_leads_reports_unknown_and_repeated_names():
    arranged, mask, ignored = arrange_leads(np.ones((3, 10), np.float32), ["II", "ABP", "II"])
    assert mask.sum() == 1 and ignored == ["ABP", "II"] and lead_index("avf") == 5


def test_crop_pad_and_too_short():
    long = preprocess(sine_recording(500, 12), RAW)
    np.testing.assert_allclose(long.signal[0].astype(np.float32), sine_recording(500, 10).signal[0], atol=2e-3)
    short = preprocess(sine_recording(500, 8), RAW)
    assert short.signal.shape == (12, 5000) and not short.signal[:, 4000:].any()
    assert short.flags == ["padded: from 8.00 s"]
    with pytest.raises(RecordRejected, match=r"too short: 3.00 s, minimum 5 s"):
        preprocess(sine_recording(500, 3), RAW)


def test_windows_cut_long_records_into_full_windows():
    windows = preprocess_windows(sine_recording(500, 35), PreprocessConfig(long_records="windows", normalize="none"))
    assert len(windows) == 3 and all(w.signal.shape == (12, 5000) for w in windows)
    assert len(preprocess_windows(sine_recording(500, 35), RAW)) == 1


def test_minmax_and_zscore_normalisation():
    recording = sine_recording(500, 10, leads=("I", "II", "V1"))
    recording.signal[2] += 3.0
    minmax = preprocess(recording, PreprocessConfig())
    real = minmax.signal[minmax.lead_mask].astype(np.float32)
    assert real.min() == 0.0 and abs(real.max() - 1.0) < 1e-3
    assert minmax.signal.dtype == np.float16 and not minmax.signal[~minmax.lead_mask].any()
    zscore = preprocess(recording, PreprocessConfig(normalize="zscore")).signal[[0, 1, 6]].astype(np.float32)
    np.testing.assert_allclose(zscore.mean(axis=1), 0, atol=1e-3)
    np.testing.assert_allclose(zscore.std(axis=1), 1, atol=1e-2)


def test_bandpass_removes_baseline_wander():
    t = np.arange(5000) / 500
    signal = np.tile(np.sin(2 * np.pi * 10 * t) + 2 * np.sin(2 * np.pi * 0.1 * t), (12, 1)).astype(np.float32)
    out = preprocess(Recording("r", signal, 500, list(STANDARD_LEADS)), PreprocessConfig(normalize="none", bandpass=(0.5, 40)))
    residual = out.signal[0, 500:4500].astype(np.float32) - np.sin(2 * np.pi * 10 * t)[500:4500]
    assert np.sqrt(np.mean(residual**2)) < 0.02 and np.abs(residual).max() < 0.1  # the 2 mV wander is gone


def test_short_invalid_gap_is_interpolated_and_flagged():
    recording = sine_recording(500, 10)
    recording.signal[3, 1000:1010] = np.nan
    recording.signal[3, 2000] = np.inf
    out = preprocess(recording, RAW)
    assert np.isfinite(out.signal.astype(np.float32)).all()
    assert out.flags == ["invalid samples interpolated: 11 in lead aVR"]
    before, after = recording.signal[3, 999], recording.signal[3, 1010]
    expected = before + (after - before) * np.arange(1, 11) / 11
    np.testing.assert_allclose(out.signal[3, 1000:1010].astype(np.float32), expected, atol=2e-3)


def test_long_invalid_run_rejects_with_lead_and_time():
    recording = sine_recording(500, 10)
    recording.signal[7, 1500:1800] = np.nan
    with pytest.raises(RecordRejected, match=r"invalid-sample gap too long: run of 300 samples \(0.60 s\) in lead V2 at 3.00 s"):
        preprocess(recording, RAW)


def test_lead_without_valid_samples_is_masked():
    recording = sine_recording(500, 10)
    recording.signal[8] = np.nan
    out = preprocess(recording, RAW)
    assert not out.lead_mask[8] and out.flags == ["no valid samples, masked: lead V3"]


def test_flat_leads_are_masked_and_an_all_flat_record_rejected():
    recording = sine_recording(500, 10)
    recording.signal[9] = 0.25
    out = preprocess(recording, RAW)
    assert not out.lead_mask[9] and out.lead_mask.sum() == 11 and out.flags == ["flat leads masked: V4"]
    recording.signal[:] = 0.0
    with pytest.raises(RecordRejected, match="flat signal: every lead is constant"):
        preprocess(recording, RAW)


def test_rate_lead_set_and_min_leads_rejections():
    with pytest.raises(RecordRejected, match="implausible sampling rate: 5 Hz"):
        preprocess(sine_recording(5, 100, hz=1), RAW)
    with pytest.raises(RecordRejected, match="no standard leads: none among ABP, PLETH"):
        preprocess(sine_recording(500, 10, leads=("ABP", "PLETH")), RAW)
    with pytest.raises(RecordRejected, match="only 2 usable leads; 12 required"):
        preprocess(sine_recording(500, 10, leads=("I", "II")), PreprocessConfig(min_leads=12))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"normalize": "l2"}, "normalize must be"),
        ({"bandpass": (0.5, 300.0)}, "bandpass"),
        ({"fs": 0}, "must be positive"),
        ({"min_leads": 13}, "min_leads"),
    ],
)
def test_bad_config_values_fail_with_a_message(fields, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**fields)


def test_report_cleaning():
    assert clean_report("*** Sinus rhythm.  Normal EKG ***") == "sinus rhythm. normal ecg"
    assert join_statements(["Sinus rhythm", None, "  ", "Left axis deviation.", "Abnormal EKG"]) == (
        "sinus rhythm. left axis deviation. abnormal ecg."
    )
    assert word_count("non-diagnostic t abnormalities") == 4 and word_count("") == 0
