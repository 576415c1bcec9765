"""The label-mention matcher behind clinical efficacy: phrases, word boundaries, longest phrase first; and its
ceiling on the templated synthetic reports, where every label is stated in the text."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd
import pytest

from pipelines.data.reports import join_statements
from pipelines.labels.mentions import LabelMentions
from pipelines.labels.table_files import read_table
from pipelines.labels.tasks import load_task
from pipelines.synthetic import SyntheticConfig, report_from_codes, sample_conditions
from pipelines.synthetic.conditions import codes_of


@pytest.fixture(scope="module")
def ptbxl_sub() -> LabelMentions:
    return LabelMentions(load_task("ptbxl-sub"))


def test_a_longer_phrase_consumes_the_shorter_one_inside_it(ptbxl_sub):
    assert ptbxl_sub.codes_in("incomplete right bundle branch block.") == {"IRBBB"}
    assert ptbxl_sub.codes_in("complete right bundle branch block.") == {"CRBBB"}
    both = "incomplete right bundle branch block. complete right bundle branch block."
    assert ptbxl_sub.codes_in(both) == {"IRBBB", "CRBBB"}


def test_words_match_whole_and_in_any_case(ptbxl_sub):
    assert ptbxl_sub.codes_in("Sinus rhythm.  Inferior   MYOCARDIAL infarction.") == {"IMI"}
    assert ptbxl_sub.codes_in("abnormal ecg.") == set()  # "normal ecg" only on a word boundary
    assert ptbxl_sub.codes_in("normal ecg.") == {"NORM"}
    assert ptbxl_sub.codes_in("") == set() and ptbxl_sub.codes_in(None) == set()


def test_texts_decoded_from_word_pieces_match_the_phrases_as_written():
    mentions = LabelMentions(load_task("synthetic"))
    assert mentions.codes_in("sinus rhythm. inverted t - waves. non - specific st depression.") == {
        "SR",
        "INVT",
        "STD_",
    }
    assert LabelMentions(load_task("ptbxl-super")).codes_in("st / t change") == {"STTC"}
    assert (
        LabelMentions(load_task("ptbxl-sub")).codes_in("voltage criteria ( qrs ) for left ventricular hypertrophy")
        == set()
    )


def test_a_statement_outside_the_task_names_no_class_and_hides_what_it_contains():
    mentions = LabelMentions(load_task("ptbxl-super"))
    assert mentions.codes_in("left ventricular hypertrophy.") == {"HYP"}
    assert mentions.codes_in("voltage criteria (qrs) for left ventricular hypertrophy.") == set()  # VCLVH


def test_class_names_descriptions_and_member_statements_are_phrases():
    mentions = LabelMentions(load_task("ptbxl-super"))
    assert mentions.codes_in("conduction disturbance") == {"CD"}  # the class name
    assert mentions.codes_in("left anterior fascicular block.") == {"CD"}  # a statement the label map sends to CD
    assert mentions.phrases["myocardial infarction"] == {"MI"}


@pytest.mark.parametrize("name", ["ptbxl-super", "ptbxl-sub", "ptbxl-form", "ptbxl-rhythm"])
def test_every_ptbxl_statement_report_is_read_back_as_its_classes(name):
    """A label-built PTB-XL report of one statement names exactly the task classes of that statement."""
    task, statements = load_task(name), read_table("ptbxl")["statements"]
    mentions = LabelMentions(task)
    wrong = {
        code: mentions.codes_in(report)
        for code, statement in statements.items()
        if mentions.codes_in(report := join_statements([statement["description"]])) != task.row_classes([code])
    }
    assert wrong == {}


def test_synthetic_reports_are_read_back_as_their_labels():
    """The matcher's ceiling: the synthetic reports are templated from the labels, so the classes found in a
    row's report are the row's classes for (nearly) every row."""
    task = load_task("synthetic")
    mentions = LabelMentions(task)
    conditions = sample_conditions(5000, np.random.default_rng(7), SyntheticConfig(n=5000))
    rows = [codes_of(row) for row in conditions]
    exceptions = [
        (report, sorted(codes), sorted(found))
        for codes in rows
        if (found := mentions.codes_in(report := report_from_codes(codes))) != task.row_classes(codes)
    ]
    assert len(exceptions) <= 0.01 * len(rows), exceptions[:10]
    assert len({report_from_codes(codes) for codes in rows}) > 50  # many different reports, not a few


def test_ptbxl_label_reports_are_read_back_as_their_classes(ptbxl_dir):
    """PTB-XL-500's English label reports (as the ptbxl source builds them, every statement's description in
    scp_codes order) name exactly each record's classes, in all four PTB-XL tasks."""
    database = pd.read_csv(ptbxl_dir / "ptbxl_database.csv")
    descriptions = pd.read_csv(ptbxl_dir / "scp_statements.csv", index_col=0)["description"].to_dict()
    records = [list(ast.literal_eval(codes)) for codes in database["scp_codes"]]
    for name in ("ptbxl-super", "ptbxl-sub", "ptbxl-form", "ptbxl-rhythm"):
        task = load_task(name)
        mentions = LabelMentions(task)
        wrong = [
            (report, codes)
            for codes in records
            if mentions.codes_in(report := join_statements(descriptions.get(c, "") for c in codes))
            != task.row_classes(codes)
        ]
        assert wrong == [], (name, wrong[:5])
