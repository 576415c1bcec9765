"""Archives nothing falls out of silently: every file and folder of a WFDB tree becomes a record or a
rejection with its reason, rejections count by kind, and a run that rejects most records for one reason
says at its end which flag changes that."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import scipy.io

from pipelines.data.records import RecordOptions
from pipelines.data.rejection_hint import dominant_rejection_hint
from pipelines.data.schema import lead_masks_of
from pipelines.data.sources import SourceOptions
from pipelines.prepare import main as prepare_main
from pipelines.prepare import prepare
from tests.archives import CINC_COMMENTS, ecg_like, write_cinc_archive, write_multifile_wfdb, write_wfdb
from tests.test_prepare import read_output

REPORT = "sinus rhythm with normal axis"
PTB_LEADS = ("i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "vx", "vy", "vz")


def _write_cpsc2018_own_layout(folder: Path, n: int) -> None:
    """CPSC2018 as its organisers ship it: `A0001.mat` … (a struct holding the 12 × T samples) and
    `REFERENCE.csv`, no WFDB headers."""
    folder.mkdir(parents=True)
    for i in range(1, n + 1):
        ecg = {"sex": "Male", "age": 60, "data": ecg_like(10, 500, seed=i).T}
        scipy.io.savemat(folder / f"A{i:04d}.mat", {"ECG": ecg})
    (folder / "REFERENCE.csv").write_text(
        "Recording,First_label,Second_label,Third_label\n" + "".join(f"A{i:04d},1,,\n" for i in range(1, n + 1))
    )


def _mixed_wfdb_tree(root: Path, elsewhere: Path) -> Path:
    write_cinc_archive(root, 4, comments=(*CINC_COMMENTS, REPORT))
    for folder in ("g2", "g3", "g4"):  # three records missing their data, at three paths
        write_wfdb(root / folder / "B0001", ecg_like(10, 500), 500, comments=[REPORT])
        (root / folder / "B0001.dat").unlink()
    for folder in ("g5", "g6"):  # two headers that cannot be parsed, at two paths
        (root / folder).mkdir()
        (root / folder / "C0001.hea").write_text("C0001 twelve leads\n")
    _write_cpsc2018_own_layout(root / "cpsc2018", 1)
    write_wfdb(root / "g2" / "D0001", ecg_like(10, 500), 500)
    (root / "g2" / "D0001.hea").unlink()  # an orphan .dat
    files = ["s0010_re.dat"] * 12 + ["s0010_re.xyz"] * 3
    write_multifile_wfdb(
        root / "ptbdb" / "patient001" / "s0010_re",
        ecg_like(10, 1000, n_leads=15),
        1000,
        PTB_LEADS,
        files,
        comments=[REPORT],
    )
    (root / "ptbdb" / "patient001" / "s0010_re.xyz").unlink()
    write_wfdb(elsewhere / "E0001", ecg_like(10, 500), 500, comments=[REPORT])
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "ptbdb" / "up").symlink_to(root, target_is_directory=True)  # a loop
    return root


@pytest.mark.slow
def test_wfdb_tree_every_file_and_folder_accounted_for(ray_cluster, tmp_path):
    archive = _mixed_wfdb_tree(tmp_path / "archive", tmp_path / "elsewhere")
    output = tmp_path / "shards"
    output.mkdir()
    manifest = prepare("wfdb", SourceOptions(input=archive), str(output))
    kept, rejected, _ = read_output(output)

    assert sorted(kept["ecg_id"].to_pylist()) == [
        "wfdb/linked/E0001",
        "wfdb/ptbdb/patient001/s0010_re",
        *(f"wfdb/training/cpsc_2018/g1/A000{i}" for i in range(1, 5)),
    ]
    assert (
        rejected["wfdb/cpsc2018/A0001.mat"]
        == "no header: orphan signal file cpsc2018/A0001.mat (no A0001.hea beside it)"
    )
    assert rejected["wfdb/g2/D0001.dat"] == "no header: orphan signal file g2/D0001.dat (no D0001.hea beside it)"
    assert rejected["wfdb/ptbdb/up"].startswith("symlinked folder not followed: ptbdb/up → ")
    assert manifest["records_in"] == 14 == kept.num_rows + len(rejected)
    assert manifest["rejections_by_reason"] == {
        "missing record": 3,
        "no header": 2,
        "unreadable header": 2,
        "symlinked folder not followed": 1,
    }
    assert all(not re.search(r"[\d/]", kind) for kind in manifest["rejections_by_reason"])

    rows = {row["ecg_id"]: row for row in kept.select(["ecg_id", "flags"]).to_pylist()}
    assert rows["wfdb/ptbdb/patient001/s0010_re"]["flags"] == ["missing signal file: s0010_re.xyz (leads vx, vy, vz)"]
    masks = dict(zip(kept["ecg_id"].to_pylist(), lead_masks_of(kept)))
    assert masks["wfdb/ptbdb/patient001/s0010_re"].all()  # the 12 leads of the .dat file, all kept
    assert manifest["repairs"] == {"missing signal file": 1}
    assert dominant_rejection_hint(manifest) is None  # no reason took most records


def test_cinc_archive_under_the_defaults_names_the_flag_that_keeps_it(ray_cluster, tmp_path, restore_logging, capsys):
    archive = write_cinc_archive(tmp_path / "cinc", 50)  # headers hold only #Age, #Sex, #Dx, #Rx, #Hx, #Sx
    manifest = prepare_main(["--source", "wfdb", "--input", str(archive), "--output", str(tmp_path / "default")])
    printed = capsys.readouterr()
    assert (manifest["records_kept"], manifest["records_rejected"]) == (0, 50)
    assert "0 kept" in printed.out and "50 rejected" in printed.out
    assert (
        "warning: 50 of 50 records were rejected as 'empty report': --min-report-words 0 keeps records "
        "whatever their report"
    ) in printed.err
    assert "--report labels" not in printed.err  # WFDB folders have no label table to build reports from

    output = tmp_path / "evaluation"
    output.mkdir()
    manifest = prepare(
        "wfdb", SourceOptions(input=archive, limit=10), str(output), records=RecordOptions(min_report_words=0)
    )
    kept, rejected, _ = read_output(output)
    assert not rejected and kept.num_rows == 10 and set(map(tuple, kept["labels"].to_pylist())) == {("426783006",)}
    assert dominant_rejection_hint(manifest) is None


def test_cpsc2018_own_layout_is_rejected_file_by_file_with_a_hint(ray_cluster, tmp_path):
    _write_cpsc2018_own_layout(tmp_path / "TrainingSet1", 3)
    output = tmp_path / "shards"
    output.mkdir()
    manifest = prepare("wfdb", SourceOptions(input=tmp_path / "TrainingSet1"), str(output))
    kept, rejected, _ = read_output(output)
    assert kept is None and sorted(rejected) == ["wfdb/A0001.mat", "wfdb/A0002.mat", "wfdb/A0003.mat"]
    assert (manifest["records_in"], manifest["records_rejected"]) == (3, 3)
    assert dominant_rejection_hint(manifest).startswith(
        "3 of 3 records were rejected as 'no header': these signal files have no WFDB header (.hea) beside them"
    )


def _manifest(
    reasons: dict[str, int], records_in: int, source: str = "wfdb", report: str | None = None, min_leads: int = 1
) -> dict:
    return {
        "source": source,
        "report": report,
        "records_in": records_in,
        "rejections_by_reason": reasons,
        "preprocessing": {"min_leads": min_leads},
    }


def test_hint_names_only_options_that_exist_and_only_for_most_records():
    assert dominant_rejection_hint(_manifest({"report too short": 6, "empty report": 1}, 10)).startswith(
        "6 of 10 records were rejected as 'report too short': --min-report-words 0"
    )
    assert dominant_rejection_hint(_manifest({"empty report": 5}, 10)) is None  # half is not most
    raw_ptbxl = dominant_rejection_hint(_manifest({"empty report": 9}, 10, source="ptbxl", report="raw"))
    assert raw_ptbxl.endswith("and --report labels writes reports from the label descriptions")
    assert "--report labels" not in dominant_rejection_hint(_manifest({"empty report": 9}, 10, source="mimic"))
    assert "--min-leads 12 asks for 12" in dominant_rejection_hint(_manifest({"too few leads": 9}, 10, min_leads=12))
    assert dominant_rejection_hint(_manifest({"too few leads": 9}, 10)) is None  # 1 is the least there is
    assert dominant_rejection_hint(_manifest({"truncated signal": 9}, 10)) is None  # no flag changes it
    assert dominant_rejection_hint(_manifest({}, 0)) is None
