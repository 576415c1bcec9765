"""The concept table: one concept per condition across SCP-ECG, CinC SNOMED CT and MIMIC-IV-ECG phrases."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.labels.concepts import (
    PARENTS,
    SYSTEMS,
    concept_of,
    concepts,
    concepts_named,
    parse_concepts,
)
from pipelines.labels.mentions import LabelMentions
from pipelines.labels.table_files import read_table
from pipelines.labels.tasks import load_task

FAKE = Path("fake.json")


def _entry(name, parent="rhythm", **codes):
    return {
        "name": name,
        "description": "a clinical line",
        "parent": parent,
        "codes": codes,
        "source": {system: "clinical judgement" for system in codes},
    }


def test_the_shipped_table_loads_and_passes_its_checks():
    table = concepts()
    assert len(table) >= 30
    assert {concept.parent for concept in table.values()} == set(PARENTS)
    for concept in table.values():
        assert len(concept.description.split()) >= 3, concept.name
        assert all(phrase == phrase.lower() for phrase in concept.codes["mimic"]), concept.name
    assert "about" in read_table("concepts")


def test_every_cinc_class_and_equivalent_code_maps_to_the_concept_of_that_name():
    cinc = read_table("cinc")
    for code, entry in cinc["classes"].items():
        assert concept_of("snomed", code).name == entry["name"]
        assert concept_of("snomed", code).source["snomed"] == "PhysioNet/CinC 2020-21 dx_mapping_scored.csv"
    for raw, (target,) in cinc["label_map"].items():
        assert concept_of("snomed", raw) == concept_of("snomed", target)


def test_every_synthetic_statement_maps_and_every_scp_code_is_a_real_statement():
    for statement in read_table("synthetic")["statements"]:
        assert concept_of("scp", statement["code"])
    known = set(read_table("ptbxl")["statements"]) | {s["code"] for s in read_table("synthetic")["statements"]}
    assert {code for c in concepts().values() for code in c.codes["scp"]} <= known


def test_ptbxl_labels_snomed_codes_and_report_phrases_give_the_same_concept_targets():
    task = load_task("concepts")
    ptbxl = [["NORM", "SR"], ["AFIB", "CLBBB", "LAFB"], ["SBRAD", "1AVB", "INVT"], ["PVC", "IRBBB", "STACH"]]
    snomed = [
        ["426783006"],
        ["164889003", "164909002", "445118002"],
        ["426177001", "270492004", "59931005"],
        ["17338001", "713426002", "427084000"],
    ]
    mimic = [
        ["normal ecg", "sinus rhythm"],
        ["atrial fibrillation", "left bundle branch block", "left anterior fascicular block"],
        ["sinus bradycardia", "1st degree a-v block", "t wave inversion"],
        ["ventricular premature complexes", "incomplete right bundle branch block", "sinus tachycardia"],
    ]
    expected = task.targets(ptbxl)
    assert (task.targets(snomed)[1:] == expected[1:]).all()  # row 0: SNOMED has no "normal ecg"
    assert (task.targets(mimic) == expected).all()
    assert [task.codes[c] for c in expected[1].nonzero()[0]] == [
        "atrial fibrillation",
        "complete left bundle branch block",
        "left anterior fascicular block",
    ]
    for concept in concepts().values():  # every code of every system lands on its own concept, alone
        for system in SYSTEMS:
            for code in concept.codes[system]:
                assert task.row_classes([code]) == {concept.name}, (system, code)


def test_unknown_names_and_codes_are_named_in_the_error():
    with pytest.raises(ValueError, match="'no such rhythm'.*'nor this'"):
        concepts_named(["atrial fibrillation", "no such rhythm", "nor this"])
    assert [c.name for c in concepts_named(["t wave inversion"])] == ["t wave inversion"]
    with pytest.raises(ValueError, match="snomed code '999999'"):
        concept_of("snomed", "999999")
    with pytest.raises(ValueError, match="label system 'icd10'"):
        concept_of("icd10", "I48")


def test_a_damaged_table_is_refused_naming_the_entry():
    with pytest.raises(ValueError, match="'sinus rhythm' appears twice"):
        parse_concepts({"concepts": [_entry("sinus rhythm", scp=["SR"]), _entry("sinus rhythm", scp=["X"])]}, FAKE)
    with pytest.raises(ValueError, match="'a' has parent 'heart'"):
        parse_concepts({"concepts": [_entry("a", parent="heart", scp=["A"])]}, FAKE)
    two = {"concepts": [_entry("a", snomed=["1"]), _entry("b", snomed=["1"])]}
    with pytest.raises(ValueError, match="snomed code '1' maps to both 'a' and 'b'"):
        parse_concepts(two, FAKE)
    assert set(parse_concepts({**two, "shared": {"snomed:1": "a and b are both meant"}}, FAKE)) == {"a", "b"}
    unsourced = {"concepts": [{**_entry("a", mimic=["a"]), "source": {}}]}
    with pytest.raises(ValueError, match="'a': its mimic codes need a 'source'"):
        parse_concepts(unsourced, FAKE)


def test_label_mentions_find_concepts_in_a_report():
    mentions = LabelMentions(load_task("concepts"))
    text = "Sinus rhythm. Incomplete right bundle branch block. Inverted T-waves. Left axis deviation."
    assert mentions.codes_in(text) == {
        "sinus rhythm",
        "incomplete right bundle branch block",
        "t wave inversion",
        "left axis deviation",
    }
    assert mentions.codes_in("atrial fibrillation with ventricular premature complex") == {
        "atrial fibrillation",
        "premature ventricular contraction",
    }
    assert mentions.codes_in("1st degree A-V block. Left bundle branch block.") == {
        "first degree av block",
        "complete left bundle branch block",
    }
