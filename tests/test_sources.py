"""Sources parse their layouts from fixtures written with wfdb.wrsamp; the read task completes rows."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io

from pipelines.data.preprocess import PreprocessConfig
from pipelines.data.records import RecordOptions, prepare_record
from pipelines.data.sources import SourceOptions, list_source
from pipelines.data.splits import hashed_split
from tests.archives import ecg_like, write_mimic_archive, write_ptbxl_archive, write_wfdb


def test_ptbxl_labels_reports_and_fold_splits(tmp_path):
    write_ptbxl_archive(
        tmp_path,
        [
            {"ecg_id": 1, "strat_fold": 3, "scp_codes": {"NORM": 100.0, "SR": 0.0}},
            {"ecg_id": 2, "strat_fold": 9, "scp_codes": {"AFIB": 100.0, "LVH": 50.0}},
            {"ecg_id": 3, "strat_fold": 10, "scp_codes": {"IMI": 100.0, "SR": 0.0}, "report": "Sinusrhythmus  EKG"},
        ],
    )
    listing = list_source("ptbxl", SourceOptions(input=tmp_path))
    records = listing.records.set_index("ecg_id")
    assert list(records.index) == ["ptbxl/00001", "ptbxl/00002", "ptbxl/00003"]
    assert records["split"].tolist() == ["train", "val", "test"]
    assert records.loc["ptbxl/00002", "labels"] == ["AFIB", "LVH"]
    assert records.loc["ptbxl/00002", "report"] == "atrial fibrillation. left ventricular hypertrophy."
    assert records.loc["ptbxl/00001", "patient_id"] == "1001" and records["expected_fs"].eq(500).all()
    raw = list_source("ptbxl", SourceOptions(input=tmp_path, report="raw")).records
    assert raw["report"].iloc[2] == "Sinusrhythmus  EKG"  # cleaned later, in the read task


def test_ptbxl_listing_rejects_bad_rows(tmp_path):
    write_ptbxl_archive(
        tmp_path,
        [
            {"ecg_id": 1},
            {"ecg_id": 2, "scp_codes": "{'NORM': 100.0"},
            {"ecg_id": 3, "strat_fold": 11},
            {"ecg_id": 1, "signal": None},
        ],
    )
    listing = list_source("ptbxl", SourceOptions(input=tmp_path))
    reasons = {r["ecg_id"]: r["reason"] for r in listing.rejected}
    assert reasons["ptbxl/00002"].startswith("unparsable scp_codes: \"{'NORM': 100.0\"")
    assert reasons["ptbxl/00003"] == "bad strat_fold: 11 is not in 1..10"
    assert reasons["ptbxl/00001"] == "duplicate ecg_id: ptbxl/00001 (first listed at index row 1)"
    assert listing.records["ecg_id"].tolist() == ["ptbxl/00001"] and listing.records_in == 4


def test_ptbxl_limit_and_a_folder_that_is_not_ptbxl(tmp_path):
    write_ptbxl_archive(tmp_path, [{"ecg_id": i} for i in range(1, 6)])
    assert len(list_source("ptbxl", SourceOptions(input=tmp_path, limit=2)).records) == 2
    (tmp_path / "scp_statements.csv").unlink()
    with pytest.raises(ValueError, match="not a PTB-XL folder: scp_statements.csv is missing"):
        list_source("ptbxl", SourceOptions(input=tmp_path))


def test_mimic_reports_are_joined_and_cleaned(tmp_path):
    write_mimic_archive(tmp_path)
    listing = list_source("mimic", SourceOptions(input=tmp_path))
    assert len(listing.records) == 5 and listing.rejected[0]["ecg_id"] == "mimic-iv-ecg/40000005"
    assert "has no row in machine_measurements.csv" in listing.rejected[0]["reason"]
    assert set(listing.records["report"]) == {"sinus rhythm. normal ecg."}
    assert listing.records["patient_id"].iloc[0] == "10000000"
    row, prepared = prepare_record(listing.records.iloc[0].to_dict(), PreprocessConfig(), RecordOptions())[0]
    assert row["split"] in ("train", "val") and prepared.lead_mask.all()


def test_hashed_split_is_patient_disjoint_seeded_and_near_its_fractions():
    patients = [str(10000000 + i) for i in range(20000)]
    splits = [hashed_split(p, seed=0, val_fraction=0.02) for p in patients]
    assert splits == [hashed_split(p, seed=0, val_fraction=0.02) for p in patients]
    assert 0.015 < splits.count("val") / len(splits) < 0.025
    assert splits != [hashed_split(p, seed=1, val_fraction=0.02) for p in patients]
    three_way = [hashed_split(p, 0, 0.1, 0.1) for p in patients]
    assert 0.08 < three_way.count("test") / len(patients) < 0.12


def test_wfdb_folder_reads_cinc_comments_any_rate_and_lead_set(tmp_path):
    cinc = ["Age: 74", "Sex: Male", "Dx: 426783006,164889003", "Rx: Unknown", "Atrial fibrillation with rapid ventricular response"]
    write_wfdb(tmp_path / "g1" / "A0001", ecg_like(12, 257, n_leads=12), 257, comments=cinc)
    write_wfdb(tmp_path / "g1" / "A0002", ecg_like(10, 1000, n_leads=3), 1000, leads=("I", "II", "ABP"),
               comments=["Dx: 426783006", "sinus rhythm with normal axis"])
    listing = list_source("wfdb", SourceOptions(input=tmp_path))
    assert listing.records["ecg_id"].tolist() == ["wfdb/g1/A0001", "wfdb/g1/A0002"]
    first, _ = prepare_record(listing.records.iloc[0].to_dict(), PreprocessConfig(), RecordOptions())[0]
    assert first["labels"] == ["426783006", "164889003"]
    assert first["report"] == "atrial fibrillation with rapid ventricular response"
    assert first["split"] in ("train", "val", "test")
    second, prepared = prepare_record(listing.records.iloc[1].to_dict(), PreprocessConfig(), RecordOptions())[0]
    assert prepared.lead_mask.tolist() == [True, True] + [False] * 10
    assert prepared.flags == ["ignored non-standard leads: ABP"] and prepared.signal.shape == (12, 5000)
    with pytest.raises(ValueError, match="--report labels needs label statements"):
        list_source("wfdb", SourceOptions(input=tmp_path, report="labels"))


def test_wfdb_folder_lists_what_it_cannot_read_and_follows_folder_links_once(tmp_path):
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    write_wfdb(archive / "g1" / "A0001", ecg_like(10, 500), 500)
    write_wfdb(archive / "g1" / "B0001", ecg_like(10, 500), 500)
    (archive / "g1" / "B0001.hea").unlink()  # its .dat stays, an orphan
    cpsc = archive / "cpsc2018"  # CPSC2018's own layout: .mat signals and REFERENCE.csv, no headers
    cpsc.mkdir()
    scipy.io.savemat(cpsc / "A0002.mat", {"ECG": {"sex": "Male", "age": 60, "data": np.zeros((12, 5000))}})
    (cpsc / "REFERENCE.csv").write_text("Recording,First_label,Second_label,Third_label\nA0002,1,,\n")
    write_wfdb(elsewhere / "C0001", ecg_like(10, 500), 500)
    (archive / "external").symlink_to(elsewhere, target_is_directory=True)
    (archive / "mirror").symlink_to(elsewhere, target_is_directory=True)  # a second link to the same folder
    (archive / "g1" / "loop").symlink_to(archive, target_is_directory=True)  # a loop back to the root
    (archive / "broken").symlink_to(tmp_path / "nowhere", target_is_directory=True)

    listing = list_source("wfdb", SourceOptions(input=archive))
    assert listing.records["ecg_id"].tolist() == ["wfdb/external/C0001", "wfdb/g1/A0001"]
    assert listing.records["record_path"].tolist() == [str(archive / "external" / "C0001"), str(archive / "g1" / "A0001")]
    assert {r["ecg_id"]: r["reason"] for r in listing.rejected} == {
        "wfdb/broken": f"broken link: broken → {tmp_path / 'nowhere'} does not exist",
        "wfdb/cpsc2018/A0002.mat": "no header: orphan signal file cpsc2018/A0002.mat (no A0002.hea beside it)",
        "wfdb/g1/B0001.dat": "no header: orphan signal file g1/B0001.dat (no B0001.hea beside it)",
        "wfdb/g1/loop": f"symlinked folder not followed: g1/loop → {os.path.realpath(archive)} is already listed as .",
        "wfdb/mirror": f"symlinked folder not followed: mirror → {os.path.realpath(elsewhere)} is already listed as external",
    }
    assert listing.records_in == 7
    limited = list_source("wfdb", SourceOptions(input=archive, limit=3))  # the first 3 entries by path
    assert limited.records["ecg_id"].tolist() == ["wfdb/external/C0001"] and len(limited.rejected) == 2
    row, prepared = prepare_record(listing.records.iloc[0].to_dict(), PreprocessConfig(), RecordOptions(min_report_words=0))[0]
    assert row["ecg_id"] == "wfdb/external/C0001" and prepared.lead_mask.all()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder whatever its mode")
def test_wfdb_folder_lists_an_unreadable_folder(tmp_path):
    write_wfdb(tmp_path / "open" / "A0001", ecg_like(10, 500), 500)
    (tmp_path / "closed").mkdir(mode=0)
    try:
        listing = list_source("wfdb", SourceOptions(input=tmp_path))
    finally:
        (tmp_path / "closed").chmod(0o755)
    assert listing.rejected[0]["reason"].startswith("unreadable folder: closed: ")
    assert listing.records_in == 2


def test_unknown_source_and_missing_input(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'edf'"):
        list_source("edf", SourceOptions(input=tmp_path))
    with pytest.raises(ValueError, match="is not a directory"):
        list_source("ptbxl", SourceOptions(input=tmp_path / "nowhere"))
