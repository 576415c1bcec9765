"""The fast WFDB reader agrees with wfdb sample for sample, and damaged records are named precisely."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from pipelines.data.preprocess import PreprocessConfig, preprocess
from pipelines.data.rejection import RecordRejected
from pipelines.data.wfdb_io import read_record, write_record
from tests.archives import ecg_like, rewrite_header, write_multifile_wfdb, write_wfdb


def _wfdb_reference(record_path):
    record = wfdb.rdrecord(str(record_path))
    return record.p_signal.T.astype(np.float32), record.fs, record.sig_name


@pytest.mark.parametrize("leads", [("I", "II", "V1"), ("II",), ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")])
def test_fast_path_matches_wfdb_sample_for_sample(tmp_path, leads):
    path = write_wfdb(tmp_path / "rec", ecg_like(10, 500, n_leads=len(leads)), 500, leads, comments=["Age: 61"])
    recording = read_record(path)
    expected, fs, names = _wfdb_reference(path)
    np.testing.assert_array_equal(recording.signal, expected)
    assert (recording.fs, recording.lead_names, recording.comments) == (fs, names, ["Age: 61"])


def test_fast_path_handles_nonzero_baseline_and_gain(tmp_path):
    signal = ecg_like(2, 250, n_leads=2)
    wfdb.wrsamp("rec", fs=250, units=["mV", "mV"], sig_name=["I", "II"], p_signal=signal, fmt=["16", "16"],
                adc_gain=[200.0, 400.0], baseline=[-120, 37], write_dir=str(tmp_path))
    recording = read_record(tmp_path / "rec")
    np.testing.assert_array_equal(recording.signal, _wfdb_reference(tmp_path / "rec")[0])


def test_other_formats_fall_back_to_wfdb(tmp_path):
    path = write_wfdb(tmp_path / "rec212", ecg_like(4, 360, n_leads=2), 360, ("MLII", "V1"), fmt="212")
    recording = read_record(path)
    np.testing.assert_allclose(recording.signal, _wfdb_reference(path)[0])
    assert recording.lead_names == ["MLII", "V1"]


def test_real_ptbxl_records_match_wfdb(ptbxl_dir):
    for name in ("records500/00000/00001_hr", "records100/00000/00007_lr", "records500/00000/00449_hr"):
        recording = read_record(ptbxl_dir / name)
        expected, fs, names = _wfdb_reference(ptbxl_dir / name)
        np.testing.assert_array_equal(recording.signal, expected)
        assert recording.fs == fs and recording.lead_names == names


def test_write_record_round_trips_through_wfdb(tmp_path):
    signal = np.random.default_rng(0).normal(0, 0.5, (12, 1000)).astype(np.float32)
    signal[4, 100:110] = np.nan
    write_record(tmp_path / "out", signal, 500, ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"], ["Dx: 426783006"])
    p_signal, fields = wfdb.rdsamp(str(tmp_path / "out"))
    assert fields["fs"] == 500 and fields["comments"] == ["Dx: 426783006"]
    np.testing.assert_allclose(p_signal.T, signal, atol=0.5e-3)  # 1 µV quantisation
    assert np.isnan(p_signal.T[4, 100:110]).all() and np.isnan(p_signal).sum() == 10
    digital = wfdb.rdrecord(str(tmp_path / "out"), physical=False)
    assert all((c - s) % 65536 == 0 for c, s in zip(digital.checksum, digital.d_signal.sum(axis=0)))


def test_truncated_data_file_is_rejected(tmp_path):
    path = write_wfdb(tmp_path / "rec", ecg_like(10, 500), 500)
    data = path.with_suffix(".dat")
    data.write_bytes(data.read_bytes()[: 12 * 2 * 3000])
    with pytest.raises(RecordRejected, match=r"truncated signal: rec.dat holds 3000 of 5000 samples per lead"):
        read_record(path)


def test_header_lying_about_lead_count_is_rejected(tmp_path):
    path = write_wfdb(tmp_path / "rec", ecg_like(10, 500), 500)
    rewrite_header(path, lambda lines: [lines[0].replace("rec 12", "rec 8")] + lines[1:9])
    with pytest.raises(RecordRejected, match=r"header disagrees with data: .* header declares 8 leads x 5000"):
        read_record(path)


def test_missing_and_garbled_files_are_rejected(tmp_path):
    with pytest.raises(RecordRejected, match="missing record: no header file"):
        read_record(tmp_path / "absent")
    path = write_wfdb(tmp_path / "rec", ecg_like(1, 500), 500)
    path.with_suffix(".dat").unlink()
    with pytest.raises(RecordRejected, match="missing record: no data file"):
        read_record(path)
    (tmp_path / "bad.hea").write_text("bad twelve 500 5000\n")
    with pytest.raises(RecordRejected, match="unreadable header: "):
        read_record(tmp_path / "bad")


PTB_LEADS = ("i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "vx", "vy", "vz")


def test_multifile_record_missing_a_signal_file_keeps_the_leads_of_the_others(tmp_path):
    files = ["s0010_re.dat"] * 12 + ["s0010_re.xyz"] * 3  # PTB Diagnostic: 12 leads + Frank leads apart
    path = write_multifile_wfdb(tmp_path / "s0010_re", ecg_like(10, 1000, n_leads=15), 1000, PTB_LEADS, files)
    whole = read_record(path)
    assert whole.signal.shape == (15, 10000) and whole.flags == []
    path.with_suffix(".xyz").unlink()
    partial = read_record(path)
    assert partial.lead_names == list(PTB_LEADS[:12])
    np.testing.assert_array_equal(partial.signal, whole.signal[:12])
    assert partial.flags == ["missing signal file: s0010_re.xyz (leads vx, vy, vz)"]
    prepared = preprocess(partial, PreprocessConfig())
    assert prepared.lead_mask.all() and prepared.flags[0] == "missing signal file: s0010_re.xyz (leads vx, vy, vz)"
    path.with_suffix(".dat").unlink()
    with pytest.raises(RecordRejected, match=r"missing record: no data file .*s0010_re.dat"):
        read_record(path)


def test_utf8_header_comments_are_decoded_as_utf8_and_latin1_still_reads(tmp_path):
    path = write_wfdb(tmp_path / "utf8", ecg_like(2, 500, n_leads=2), 500, ("I", "II"))
    header = path.with_name("utf8.hea")
    header.write_bytes(header.read_bytes() + "# überdrehter linkstyp\n".encode())
    assert read_record(path).comments[-1] == "überdrehter linkstyp"
    header.write_bytes(header.read_bytes() + "# sinusrhythmus, lagetyp: überdreht\n".encode("latin-1"))
    assert read_record(path).comments[-1] == "sinusrhythmus, lagetyp: überdreht"  # not valid UTF-8: latin-1
    fallback = write_wfdb(tmp_path / "r212", ecg_like(2, 360, n_leads=2), 360, ("MLII", "V1"), fmt="212")
    fallback.with_name("r212.hea").write_bytes(fallback.with_name("r212.hea").read_bytes() + "# ärger\n".encode())
    assert read_record(fallback).comments[-1] == "ärger"  # the wfdb fallback keeps our decoding
