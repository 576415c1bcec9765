"""One concept task across label systems: a CinC-style archive (SNOMED CT `#Dx:`) gets English reports through
the concept table, and zero-shot scores it as it scores the same ECGs labelled with SCP codes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.preprocess import PreprocessConfig
from pipelines.data.records import RecordOptions, prepare_record
from pipelines.data.sources import SourceOptions, list_source
from pipelines.data.sources.wfdb_folder import fill_from_header
from pipelines.evaluation.report import write_report
from pipelines.evaluation.suite import evaluate_export
from pipelines.labels.concept_reports import statements_of
from pipelines.labels.concepts import concepts, concepts_of
from pipelines.prepare import main as prepare_main
from pipelines.synthetic import SyntheticConfig
from pipelines.synthetic.generate import generate_batch
from tests.archives import ecg_like, write_wfdb

UNKNOWN_SNOMED = "999999999"
"""A code the concept table does not list: kept as a label, left out of the report."""


def _snomed_codes(scp_codes: list[str]) -> list[str]:
    """The SNOMED codes of the concepts of these SCP codes (the first code of each concept that has one)."""
    found = [c.codes["snomed"][0] for code in scp_codes for c in concepts_of("scp", code) if c.codes["snomed"]]
    return list(dict.fromkeys(found))


def _write_archives(root: Path, n: int) -> tuple[Path, Path, list[list[str]]]:
    """The same `n` synthetic ECGs twice, as CinC-style WFDB folders: `#Dx:` SNOMED codes (record 0 also
    carries UNKNOWN_SNOMED) in one, SCP codes and the generator's report in the other. Returns both folders
    and each record's SCP codes."""
    signals, metadata = generate_batch(n, np.random.default_rng(7), SyntheticConfig(n=n))
    snomed, scp = root / "snomed", root / "scp"
    for i, (signal, meta) in enumerate(zip(signals, metadata)):
        codes = list(meta["codes"])
        dx = _snomed_codes(codes) + ([UNKNOWN_SNOMED] if i == 0 else [])
        about = [f"Age: {40 + i}", f"Sex: {'Male' if i % 2 else 'Female'}"]
        write_wfdb(snomed / "g1" / f"A{i:04d}", signal.T, 500, comments=[*about, f"Dx: {','.join(dx)}"])
        write_wfdb(scp / "g1" / f"A{i:04d}", signal.T, 500,
                   comments=[*about, f"Dx: {','.join(codes)}", meta["report"]])
    return snomed, scp, [list(m["codes"]) for m in metadata]


def test_header_codes_become_a_report_of_concept_names_and_unknown_ones_are_logged(caplog):
    row = {"ecg_id": "wfdb/g1/A0001"}
    comments = ["Age: 74", "Sex: Male", f"Dx: 164889003,{UNKNOWN_SNOMED},270492004,164889003", "free text"]
    with caplog.at_level(logging.WARNING):
        filled = fill_from_header(row, comments, seed=0, statements=statements_of("snomed"))
    assert filled["report"] == "atrial fibrillation. first degree av block."
    assert filled["labels"] == ["164889003", UNKNOWN_SNOMED, "270492004", "164889003"]
    assert f"wfdb/g1/A0001: Dx code(s) {UNKNOWN_SNOMED} have no statement" in caplog.text
    assert fill_from_header(row, comments, seed=0)["report"] == "free text"  # without statements: the comments


def test_statements_name_every_snomed_code_of_the_table_and_refuse_an_unknown_system():
    statements = statements_of("snomed")
    assert statements["164889003"] == "atrial fibrillation"
    assert set(statements) == {code for c in concepts().values() for code in c.codes["snomed"]}
    with pytest.raises(ValueError, match="unknown label system 'icd'"):
        statements_of("icd")


def test_wfdb_labels_reports_need_statements(tmp_path):
    write_wfdb(tmp_path / "g1" / "A0001", ecg_like(10, 500), 500, comments=["Dx: 164889003"])
    with pytest.raises(ValueError, match="--report labels needs label statements"):
        list_source("wfdb", SourceOptions(input=tmp_path, report="labels"))
    options = SourceOptions(input=tmp_path, report="labels", label_statements=statements_of("snomed"))
    row = list_source("wfdb", options).records.iloc[0].to_dict()
    filled, _ = prepare_record(row, PreprocessConfig(), RecordOptions(min_report_words=0,
                                                                        label_statements=statements_of("snomed")))[0]
    assert filled["report"] == "atrial fibrillation."


@pytest.mark.slow
def test_snomed_and_scp_archives_of_the_same_ecgs_score_alike_on_concepts(ray_cluster, tiny_export, tmp_path):
    snomed, scp, scp_codes = _write_archives(tmp_path / "archives", 60)
    prepared = {}
    for name, archive, report in (("snomed", snomed, "labels"), ("scp", scp, "raw")):
        prepared[name] = tmp_path / f"shards-{name}"
        manifest = prepare_main(["--source", "wfdb", "--input", str(archive), "--output", str(prepared[name]),
                                 "--report", report, "--min-report-words", "0"])
        assert (manifest["records_kept"], manifest["records_rejected"]) == (60, 0)

    parts = sorted(prepared["snomed"].glob("part-*.parquet"))
    rows = pa.concat_tables(pq.read_table(part, columns=["ecg_id", "report", "labels"]) for part in parts).to_pylist()
    by_id = {row["ecg_id"]: row for row in rows}
    first = by_id["wfdb/g1/A0000"]
    assert UNKNOWN_SNOMED in first["labels"] and "999" not in first["report"]
    for i, codes in enumerate(scp_codes):
        row = by_id[f"wfdb/g1/A{i:04d}"]
        names = [c.name for code in codes for c in concepts_of("scp", code) if c.codes["snomed"]]
        assert row["report"] == (". ".join(dict.fromkeys(names)) + "." if names else "")
        assert set(row["labels"]) - {UNKNOWN_SNOMED} == set(_snomed_codes(codes))

    export = str(tiny_export("melp"))
    evaluated = {
        name: evaluate_export(export, str(folder), "concepts", ["zero-shot"], tmp_path / f"eval-{name}",
                              split="all", baselines=False)
        for name, folder in prepared.items()
    }
    results = {name: result for name, (result, _) in evaluated.items()}
    assert results["snomed"]["rows"] == results["scp"]["rows"] == 60  # an external archive: every record, any split
    snomed_aurocs = results["snomed"]["zero_shot"]["per_class_auroc"]
    scp_aurocs = results["scp"]["zero_shot"]["per_class_auroc"]
    assert len(snomed_aurocs) >= 5
    for concept, auroc in snomed_aurocs.items():
        assert auroc == pytest.approx(scp_aurocs[concept], abs=1e-9), concept
    without_snomed = {c.name for c in concepts().values() if not c.codes["snomed"]}
    assert set(scp_aurocs) - set(snomed_aurocs) <= without_snomed  # ST changes, "normal ecg": no SNOMED code
    assert results["snomed"]["mapped_from"]["atrial fibrillation"] == ["164889003"]
    assert results["scp"]["mapped_from"]["atrial fibrillation"] == ["AFIB"]
    report = write_report(*evaluated["snomed"], tmp_path / "report").read_text()
    assert "| atrial fibrillation | 164889003 |" in report

    with pytest.raises(ValueError, match="no label of the train split maps to a class of task ptbxl-super; labels "
                                         "seen: 164889003"):
        evaluate_export(export, str(prepared["snomed"]), "ptbxl-super", ["zero-shot"],
                        tmp_path / "eval-super", split="train", baselines=False)
