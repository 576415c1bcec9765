"""The synthetic ECG generator: lead physics, reproducibility, labels recoverable from the signal,
PTB-XL layout and throughput.

Label checks measure the signal the way a reader of the ECG would (R-peak detection, median
beats, envelopes, areas), on records without strong noise or baseline wander.
"""

from __future__ import annotations

import ast
import json
import os
import tempfile
import time

import numpy as np
import pandas as pd
import pytest
import wfdb
from scipy.ndimage import binary_closing
from scipy.signal import butter, find_peaks, sosfiltfilt

from pipelines.synthetic import (
    CODES,
    STATEMENTS,
    SyntheticConfig,
    generate_batch,
    generate_ptbxl_layout,
    report_from_codes,
    sample_conditions,
    write_chunk,
)
from pipelines.synthetic.dipole import LEAD_NAMES
from pipelines.synthetic.ptbxl_layout import record_name

FS = 500
LEAD = {name: i for i, name in enumerate(LEAD_NAMES)}
BEAT_WINDOW_S = (-0.5, 0.5)  # median beats span this much around each R peak
QRS_BAND = butter(2, (8.0, 30.0), btype="bandpass", fs=FS, output="sos")


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, list[dict]]:
    return generate_batch(900, np.random.default_rng(2024), SyntheticConfig())


def select(metadata: list[dict], *, has=(), lacks=(), max_rate: float = np.inf) -> list[int]:
    """Indices of clean records (no static noise or baseline drift) with / without codes."""
    return [
        i
        for i, m in enumerate(metadata)
        if not (m["static_noise"] or m["baseline_drift"])
        and all(code in m["codes"] for code in has)
        and not any(code in m["codes"] for code in lacks)
        and m["heart_rate"] <= max_rate
    ]


def detect_r_peaks(signal: np.ndarray) -> np.ndarray:
    """QRS complexes of a [12, T] signal (samples), Pan-Tompkins style: 8-30 Hz band energy summed
    over the leads, integrated over 80 ms, peaks above a tenth of the largest."""
    band = sosfiltfilt(QRS_BAND, signal, axis=1)
    energy = np.convolve((band**2).sum(axis=0), np.ones(40) / 40, mode="same")
    peaks, _ = find_peaks(energy, height=0.1 * energy.max(), distance=int(0.25 * FS))
    edge = int(0.1 * FS)  # a complex cut by the record's start or end is not counted
    return peaks[(peaks >= edge) & (peaks < signal.shape[1] - edge)]


def measured_heart_rate(peaks: np.ndarray) -> float:
    return 60.0 * (len(peaks) - 1) / ((peaks[-1] - peaks[0]) / FS)


def median_beat(signal: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Median of the beats around `peaks` [12, W]; beats whose window leaves the record are skipped."""
    start, stop = (int(round(s * FS)) for s in BEAT_WINDOW_S)
    peaks = peaks[(peaks + start >= 0) & (peaks + stop <= signal.shape[1])]
    return np.median([signal[:, p + start : p + stop] for p in peaks], axis=0)


def at(seconds: float) -> int:
    """Index into a median beat of a time relative to the R peak."""
    return int(round((seconds - BEAT_WINDOW_S[0]) * FS))


def sinus_beat(signal: np.ndarray, record: dict) -> np.ndarray:
    """Median supraventricular beat of a record, aligned on its R peaks, each lead measured from its
    PR baseline (its level 5-20 ms before the QRS onset)."""
    beat = median_beat(signal, np.setdiff1d(record["r_peaks"], record["pvc_peaks"]))
    onset = record["qrs_onset_s"]
    return beat - beat[:, at(onset - 0.02) : at(onset - 0.005)].mean(axis=1, keepdims=True)


def qrs_extent(beat: np.ndarray) -> tuple[float, float]:
    """QRS onset and offset (s from the R peak): the stretch around the R peak where the 12-lead
    magnitude stays above 5 % of its peak, bridging dips shorter than 10 ms (R-S crossings)."""
    magnitude = np.linalg.norm(beat, axis=0)
    above = magnitude >= 0.05 * magnitude[at(-0.1) : at(0.1)].max()
    above = binary_closing(above, structure=np.ones(int(0.01 * FS)))
    centre = at(0.0)
    left = centre - np.argmin(above[centre::-1])
    right = centre + np.argmin(above[centre:])
    return left / FS + BEAT_WINDOW_S[0], right / FS + BEAT_WINDOW_S[0]


def test_lead_identities_hold_exactly(batch):
    signals, _ = batch
    lead = {name: signals[:, i] for name, i in LEAD.items()}
    np.testing.assert_allclose(lead["III"], lead["II"] - lead["I"], atol=1e-6)
    np.testing.assert_allclose(lead["aVR"], -(lead["I"] + lead["II"]) / 2, atol=1e-6)
    np.testing.assert_allclose(lead["aVL"], lead["I"] - lead["II"] / 2, atol=1e-6)
    np.testing.assert_allclose(lead["aVF"], lead["II"] - lead["I"] / 2, atol=1e-6)
    assert signals.dtype == np.float32 and signals.shape == (900, 12, 5000)


def test_same_seed_same_output_other_seed_differs():
    config = SyntheticConfig()
    first, first_meta = generate_batch(32, np.random.default_rng(7), config)
    again, again_meta = generate_batch(32, np.random.default_rng(7), config)
    other, _ = generate_batch(32, np.random.default_rng(8), config)
    np.testing.assert_array_equal(first, again)
    assert [m["report"] for m in first_meta] == [m["report"] for m in again_meta]
    assert not np.allclose(first, other)


def test_layout_does_not_depend_on_chunk_scheduling(tmp_path):
    config = SyntheticConfig(n=20, seed=3)
    in_order = generate_ptbxl_layout(tmp_path / "in_order", config, chunk_size=8)
    reversed_map = lambda function, chunks: [function(k) for k in reversed(list(chunks))]  # noqa: E731
    shuffled = generate_ptbxl_layout(tmp_path / "reversed", config, chunk_size=8, map_fn=reversed_map)
    assert (in_order / "ptbxl_database.csv").read_text() == (shuffled / "ptbxl_database.csv").read_text()
    dat_files = sorted(p.relative_to(in_order) for p in in_order.rglob("*.dat"))
    assert len(dat_files) == 20
    for name in dat_files:
        assert (in_order / name).read_bytes() == (shuffled / name).read_bytes()
    other_seed = generate_ptbxl_layout(tmp_path / "other", SyntheticConfig(n=20, seed=4), chunk_size=8)
    assert (other_seed / dat_files[0]).read_bytes() != (in_order / dat_files[0]).read_bytes()


@pytest.mark.parametrize("rhythm, low, high", [("SR", 60, 100), ("SBRAD", 0, 60), ("STACH", 100, 250)])
def test_sinus_heart_rate_recovered_from_r_peaks(batch, rhythm, low, high):
    signals, metadata = batch
    records = select(metadata, has=[rhythm], lacks=["PVC", "1AVB"])  # a late P can ride on the T
    assert len(records) >= 10
    for i in records:
        rate = measured_heart_rate(detect_r_peaks(signals[i]))
        assert rate == pytest.approx(metadata[i]["heart_rate"], rel=0.05)
        assert low < rate < high


def test_atrial_fibrillation_irregular_without_p_waves(batch):
    signals, metadata = batch

    def rr_variation(i: int) -> float:
        rr = np.diff(detect_r_peaks(signals[i]))
        return rr.std() / rr.mean()

    def p_wave_height(i: int) -> float:
        """Largest bump in lead II over the 200 ms before the QRS, above the line joining its ends."""
        onset = metadata[i]["qrs_onset_s"]
        lead_ii = sinus_beat(signals[i], metadata[i])[LEAD["II"], at(onset - 0.2) : at(onset - 0.015)]
        ends = np.linspace(lead_ii[:5].mean(), lead_ii[-5:].mean(), len(lead_ii))
        return np.abs(lead_ii - ends).max()

    af = select(metadata, has=["AFIB"], lacks=["PVC", "LVOLT"], max_rate=100)  # f waves rival a low QRS
    sinus = select(metadata, lacks=["AFIB", "PVC", "1AVB", "LVOLT"], max_rate=100)
    assert len(af) >= 10 and len(sinus) >= 50
    assert min(rr_variation(i) for i in af) > 0.06 > max(rr_variation(i) for i in sinus)
    assert max(p_wave_height(i) for i in af) < 0.075 < min(p_wave_height(i) for i in sinus)


def test_first_degree_av_block_has_long_pr(batch):
    signals, metadata = batch

    def pr_interval(i: int) -> float:
        """From the P onset (where the most prominent lead II bump before the QRS rises 10 % above
        its base) to the QRS onset."""
        beat = sinus_beat(signals[i], metadata[i])
        onset, _ = qrs_extent(beat)
        search_start = onset - 0.4
        lead_ii = beat[LEAD["II"], at(search_start) : at(onset - 0.01)]
        peaks, properties = find_peaks(lead_ii, prominence=0.03)
        peak, prominence = peaks[np.argmax(properties["prominences"])], properties["prominences"].max()
        threshold = lead_ii[peak] - 0.9 * prominence
        p_onset = peak - np.argmax(lead_ii[peak::-1] < threshold)
        return onset - (search_start + p_onset / FS)

    # Slow rates keep the P wave clear of the previous T; low voltage shrinks P below delineation.
    block = select(metadata, has=["1AVB"], lacks=["PVC", "LVOLT"], max_rate=75)
    normal = select(metadata, lacks=["1AVB", "AFIB", "PVC", "LVOLT"], max_rate=75)
    assert len(block) >= 5 and len(normal) >= 20
    assert min(pr_interval(i) for i in block) > 0.2 > max(pr_interval(i) for i in normal)


def test_bundle_branch_blocks_widen_qrs(batch):
    signals, metadata = batch

    def width(i: int) -> float:
        onset, offset = qrs_extent(sinus_beat(signals[i], metadata[i]))
        return offset - onset

    # Where the envelope cannot tell the QRS end from what follows: an ST offset, a low QRS next to
    # a normal T, f waves (AF) or a T that starts early (fast rates).
    unclear_end = ["STE_", "STD_", "LVOLT", "AFIB"]
    for code in ("CLBBB", "CRBBB"):
        records = select(metadata, has=[code], lacks=unclear_end, max_rate=100)
        assert len(records) >= 10
        assert min(width(i) for i in records) >= 0.12
    narrow = select(metadata, lacks=["CLBBB", "CRBBB", *unclear_end], max_rate=100)
    assert max(width(i) for i in narrow) < 0.12


def test_axis_from_net_qrs_area(batch):
    signals, metadata = batch
    # An ST offset adds to the QRS area; AF's f waves leave ~0.1 mV residue even in a median beat,
    # as noise does next to a low-voltage QRS.
    for i in select(metadata, lacks=["PVC", "STE_", "STD_", "AFIB", "LVOLT"]):
        record = metadata[i]
        beat = sinus_beat(signals[i], record)
        qrs = slice(at(record["qrs_onset_s"]), at(record["qrs_offset_s"]))
        area_i, area_avf = beat[LEAD["I"], qrs].sum(), beat[LEAD["aVF"], qrs].sum()
        axis = np.degrees(np.arctan2(area_avf / (np.sqrt(3) / 2), area_i))
        assert axis == pytest.approx(record["axis_deg"], abs=10)
        if "LAD" in record["codes"]:
            assert -90 < axis < -30
        elif "RAD" in record["codes"]:
            assert 90 < axis < 180
        else:
            assert -30 <= axis <= 90


def test_st_deviation_at_j_plus_60ms(batch):
    signals, metadata = batch

    def st_deviation(i: int) -> np.ndarray:
        return sinus_beat(signals[i], metadata[i])[:, at(metadata[i]["qrs_offset_s"] + 0.06)]

    # AF has no PR segment to take a baseline from (f waves leave ~0.1 mV residue in a median beat).
    for code, sign in (("STE_", 1.0), ("STD_", -1.0)):
        records = select(metadata, has=[code], lacks=["CRBBB", "PVC", "AFIB"], max_rate=100)
        assert len(records) >= 10
        for i in records:
            affected = sign * np.array(metadata[i]["st_deviation_mv"]) >= 0.15
            assert affected.any()
            assert np.all(sign * st_deviation(i)[affected] > 0.1)
    for i in select(metadata, lacks=["STE_", "STD_", "CLBBB", "CRBBB", "PVC", "AFIB"], max_rate=100):
        assert np.all(np.abs(st_deviation(i)) < 0.1)


def test_t_inversion_flips_lateral_t_waves(batch):
    signals, metadata = batch

    def lateral_t(i: int) -> float:
        record = metadata[i]
        beat = sinus_beat(signals[i], record)
        t_wave = beat[[LEAD["I"], LEAD["II"], LEAD["V5"], LEAD["V6"]], at(record["qrs_offset_s"] + 0.1) : at(0.45)]
        return t_wave.sum(axis=0)[np.argmax(np.abs(t_wave.sum(axis=0)))]

    inverted = select(metadata, has=["INVT"], lacks=["CRBBB", "STE_", "STD_", "PVC"], max_rate=100)
    upright = select(metadata, lacks=["INVT", "CLBBB", "CRBBB", "STE_", "STD_", "PVC"], max_rate=100)
    assert len(inverted) >= 5
    assert max(lateral_t(i) for i in inverted) < 0 < min(lateral_t(i) for i in upright)


def test_low_voltage_limb_leads(batch):
    signals, metadata = batch

    def limb_qrs_amplitude(i: int) -> np.ndarray:
        record = metadata[i]
        qrs = sinus_beat(signals[i], record)[:6, at(record["qrs_onset_s"]) : at(record["qrs_offset_s"])]
        return qrs.max(axis=1) - qrs.min(axis=1)

    low = select(metadata, has=["LVOLT"])
    assert len(low) >= 10
    assert all(limb_qrs_amplitude(i).max() < 0.5 for i in low)
    assert all(limb_qrs_amplitude(i).max() > 0.5 for i in select(metadata, lacks=["LVOLT"]))


def test_premature_ventricular_beats_are_early_and_wide(batch):
    signals, metadata = batch
    records = select(metadata, has=["PVC"], lacks=["AFIB"])
    assert len(records) >= 10
    for i in records:
        record = metadata[i]
        assert len(record["pvc_peaks"]) >= 1
        peaks = detect_r_peaks(signals[i])
        rr = np.diff(peaks)
        early = peaks[1:][rr < 0.85 * np.median(rr)]
        assert len(early) == len(record["pvc_peaks"])
        assert np.all(np.abs(early - record["pvc_peaks"]) < 0.1 * FS)
        for pvc in record["pvc_peaks"]:
            if BEAT_WINDOW_S[0] * -FS <= pvc <= signals.shape[-1] - BEAT_WINDOW_S[1] * FS:
                beat = median_beat(signals[i], np.array([pvc]))
                onset, offset = qrs_extent(beat - np.median(beat, axis=1, keepdims=True))
                assert offset - onset >= 0.12


def test_reports_match_codes_and_exclusivity(batch):
    _, metadata = batch
    description = {s.description.lower(): s.code for s in STATEMENTS}
    for record in metadata:
        codes = record["codes"]
        statements = record["report"].removesuffix(".").split(". ")
        assert statements[-1] == ("normal ecg" if "NORM" in codes else "abnormal ecg")
        assert [description[s] for s in statements[:-1]] == [c for c in codes if c != "NORM"]
        assert sum(c in codes for c in ("SR", "SBRAD", "STACH", "AFIB")) == 1
        assert sum(c in codes for c in ("CLBBB", "CRBBB")) <= 1
        assert sum(c in codes for c in ("LAD", "RAD")) <= 1
        assert not {"STE_", "STD_"} <= set(codes) and not {"AFIB", "1AVB"} <= set(codes)
        assert ("NORM" in codes) == (codes == ["SR", "NORM"])
    assert report_from_codes(["SBRAD", "LAD"]) == "sinus bradycardia. left axis deviation. abnormal ecg."
    assert report_from_codes(["SR", "NORM"]) == "sinus rhythm. normal ecg."
    conditions = sample_conditions(20_000, np.random.default_rng(0), SyntheticConfig())
    assert conditions.mean(axis=0).min() > 0.02  # every code occurs
    assert conditions.shape == (20_000, len(CODES))


def test_config_json_round_trip(tmp_path):
    config = SyntheticConfig(n=5, seed=9, rates=(100, 500), probabilities={"AFIB": 0.3})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert SyntheticConfig.from_json(path) == config
    path.write_text(json.dumps({"n": 3, "probabilities": {"PVC": 0.5}}))
    partial = SyntheticConfig.from_json(path)
    assert partial.n == 3 and partial.probabilities["PVC"] == 0.5 and partial.probabilities["AFIB"] == 0.12


def test_ptbxl_layout_is_readable_and_matches_generator(tmp_path):
    config = SyntheticConfig(n=40, seed=11, rates=(100, 500))
    out = generate_ptbxl_layout(tmp_path / "ptbxl", config, chunk_size=16)
    database = pd.read_csv(out / "ptbxl_database.csv", index_col="ecg_id", keep_default_na=False)
    assert list(database.columns) == [
        "patient_id", "age", "sex", "report", "scp_codes", "heart_axis",
        "baseline_drift", "static_noise", "strat_fold", "filename_lr", "filename_hr",
    ]  # fmt: skip
    assert list(database.index) == list(range(1, 41))
    assert database.loc[1, "filename_hr"] == "records500/00000/00001_hr"
    assert record_name(1001, 500) == "records500/01000/01001_hr"
    assert record_name(999, 100) == "records100/00000/00999_lr"
    assert database["strat_fold"].between(1, 10).all()
    assert (database.groupby("patient_id")["strat_fold"].nunique() == 1).all()
    assert (database.groupby("patient_id")[["age", "sex"]].nunique() == 1).all().all()

    signals, metadata = generate_batch(16, np.random.default_rng([11, 0]), config)
    for i in range(16):
        row = database.loc[i + 1]
        assert sorted(ast.literal_eval(row["scp_codes"])) == sorted(metadata[i]["codes"])
        assert row["report"] == metadata[i]["report"]
        assert row["heart_axis"] == next((c for c in ("LAD", "RAD") if c in metadata[i]["codes"]), "MID")
        assert (row["baseline_drift"] != "") == metadata[i]["baseline_drift"]
        assert (row["static_noise"] != "") == metadata[i]["static_noise"]
        written, fields = wfdb.rdsamp(str(out / row["filename_hr"]))
        assert fields["fs"] == 500 and fields["sig_name"] == list(LEAD_NAMES)
        np.testing.assert_allclose(written.T, signals[i], atol=0.0005 + 1e-6)
        low_rate, low_fields = wfdb.rdsamp(str(out / row["filename_lr"]))
        assert low_fields["fs"] == 100 and low_rate.shape == (1000, 12)

    statements = pd.read_csv(out / "scp_statements.csv", index_col=0)
    assert list(statements.columns) == [
        "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass",
        "Statement Category", "SCP-ECG Statement Description",
    ]  # fmt: skip
    assert set(statements.index) == set(CODES)
    assert statements.loc["CLBBB", "diagnostic_class"] == "CD" and statements.loc["AFIB", "rhythm"] == 1.0


def test_write_chunk_returns_rows_of_its_ids(tmp_path):
    rows = write_chunk(tmp_path, SyntheticConfig(n=10), chunk_index=1, chunk_size=4)
    assert [row["ecg_id"] for row in rows] == [5, 6, 7, 8]
    assert all((tmp_path / f"{row['filename_hr']}.hea").exists() for row in rows)
    assert all(row["filename_lr"] == "" for row in rows)


def test_throughput_at_least_500_records_per_second():
    """Generation + WFDB writing on one core, best of 3. Written to tmpfs where there is one: the same
    file-system calls, without the shared machine's disk writeback, which is not the generator's cost."""
    memory_fs = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    config = SyntheticConfig(n=1000)
    timings = []
    for _ in range(3):
        with tempfile.TemporaryDirectory(dir=memory_fs) as out:
            start = time.perf_counter()
            generate_ptbxl_layout(out, config)
            timings.append(time.perf_counter() - start)
    assert config.n / min(timings) >= 500
