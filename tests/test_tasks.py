"""Evaluation tasks: PTB-XL, CinC, synthetic and user class tables map raw label codes onto classes."""

from __future__ import annotations

import ast
import json

import pandas as pd
import pytest

from pipelines.labels.table_files import TABLES_DIR as TABLES
from pipelines.labels.tasks import TASK_NAMES, load_task


@pytest.mark.parametrize(
    ("name", "size"),
    [("ptbxl-super", 5), ("ptbxl-sub", 23), ("ptbxl-form", 19), ("ptbxl-rhythm", 12), ("cinc", 26), ("synthetic", 15)],
)
def test_builtin_tasks_have_their_published_sizes(name, size):
    assert len(load_task(name).codes) == size


@pytest.mark.parametrize("name", [n for n in TASK_NAMES if n not in ("synthetic", "concepts")])
def test_every_builtin_class_has_a_name_and_a_clinical_description(name):
    task = load_task(name)
    assert all(c.name and len(c.description.split()) >= 3 for c in task.classes.values())
    assert task.published, f"{name} is one of the published benchmarks"


def test_real_ptbxl_records_map_onto_each_task(ptbxl_dir):
    database = pd.read_csv(ptbxl_dir / "ptbxl_database.csv", index_col="ecg_id")
    labels = [list(ast.literal_eval(database.loc[ecg_id, "scp_codes"])) for ecg_id in (1, 2)]
    assert labels[0] == ["NORM", "LVOLT", "SR"]
    expected = {
        "ptbxl-super": [{"NORM"}, {"NORM"}],
        "ptbxl-sub": [{"NORM"}, {"NORM"}],
        "ptbxl-form": [{"LVOLT"}, set()],
        "ptbxl-rhythm": [{"SR"}, {"SBRAD"}],
    }
    for name, rows in expected.items():
        task = load_task(name)
        targets = task.targets(labels)
        assert [{task.codes[c] for c in row.nonzero()[0]} for row in targets] == rows, name


def test_shipped_ptbxl_table_agrees_with_scp_statements(ptbxl_dir):
    statements = pd.read_csv(ptbxl_dir / "scp_statements.csv", index_col=0)
    shipped = json.loads((TABLES / "ptbxl.json").read_text())["statements"]
    assert set(shipped) == set(statements.index)
    for code, row in statements.iterrows():
        entry = shipped[code]
        assert entry["description"] == row.description
        assert entry["diagnostic_class"] == (None if pd.isna(row.diagnostic_class) else row.diagnostic_class)
        assert entry["diagnostic_subclass"] == (None if pd.isna(row.diagnostic_subclass) else row.diagnostic_subclass)
        assert (entry["form"], entry["rhythm"]) == (row.form == 1, row.rhythm == 1)


def test_superclass_follows_every_diagnostic_statement_of_a_row():
    task = load_task("ptbxl-super")
    targets = task.targets([["IMI", "LAFB", "SR"], ["SR"], ["LVH", "ISC_"]])
    assert targets.tolist() == [
        [False, True, False, True, False],
        [False, False, False, False, False],
        [False, False, True, False, True],
    ]


def test_cinc_equivalent_codes_land_on_one_class():
    task = load_task("cinc")
    rbbb = task.codes.index("713427006")
    targets = task.targets([["59118001"], ["713427006"], ["426783006"]])
    assert targets[:, rbbb].tolist() == [True, True, False]
    assert targets.sum(axis=1).tolist() == [1, 1, 1]


def test_user_json_and_csv_tables_load(tmp_path):
    json_table = tmp_path / "mine.json"
    json_table.write_text(
        json.dumps(
            {
                "classes": {
                    "af": {"name": "atrial fibrillation", "description": "no p waves"},
                    "sr": {"name": "sinus"},
                },
                "label_map": {"164889003": ["af"], "AFIB": "af"},
                "templates": ["{}.", "ecg: {}."],
            }
        )
    )
    task = load_task(json_table)
    assert task.codes == ["af", "sr"] and task.name == "mine"
    assert task.targets([["164889003"], ["AFIB", "sr"], ["x"]]).tolist() == [
        [True, False],
        [True, True],
        [False, False],
    ]
    assert task.prompts_of("af") == [
        "atrial fibrillation.",
        "ecg: atrial fibrillation.",
        "no p waves.",
        "ecg: no p waves.",
    ]

    csv_table = tmp_path / "mine.csv"
    csv_table.write_text(
        "\ufeffcode,name,description,source_codes\nAF,atrial fibrillation,no p waves,164889003|AFIB\nSR,sinus,,\n",
        encoding="utf-8",
    )  # with the byte-order mark a spreadsheet writes
    task = load_task(csv_table)
    assert task.codes == ["AF", "SR"]
    assert task.targets([["AFIB"], ["164889003", "SR"]]).tolist() == [[True, False], [True, True]]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("{}", ".json", "non-empty 'classes'"),
        ('{"classes": {"a": {"description": "x"}}}', ".json", "class 'a' needs a 'name'"),
        ('{"classes": {"a": {"name": "x"}}, "label_map": {"r": ["b"]}}', ".json", "names unknown class(es) b"),
        ('{"classes": {"a": {"name": "x"}}, "label_map": {"r": 3}}', ".json", "entry 'r' must be a class code"),
        ("not json", ".json", "not a readable JSON file"),
        ("code,description\nA,x\n", ".csv", "missing column(s) name"),
        ("code,name\nA,x\nA,y\n", ".csv", "line 3: class 'A' appears twice"),
        ("code,name\n", ".csv", "has no rows"),
    ],
)
def test_bad_class_tables_fail_with_the_problem_named(tmp_path, content, suffix, message):
    path = tmp_path / f"table{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError) as error:
        load_task(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_unknown_task_names_the_builtins():
    with pytest.raises(ValueError, match="ptbxl-super"):
        load_task("ptbxl-superclass")


def test_prompt_file_replaces_only_the_classes_it_names(tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"AFIB": ["irregular rhythm, no p waves", "af"]}))
    task = load_task("ptbxl-rhythm").with_prompts(prompts)
    assert task.prompts_of("AFIB") == ["irregular rhythm, no p waves", "af"]
    assert task.prompts_of("SR") == load_task("ptbxl-rhythm").prompts_of("SR")
    prompts.write_text(json.dumps({"XYZ": ["x"]}))
    with pytest.raises(ValueError, match="'XYZ' is not a class of task ptbxl-rhythm"):
        load_task("ptbxl-rhythm").with_prompts(prompts)


def test_superclass_prompts_include_the_statements_they_group():
    """A model pretrained on statement-level reports has seen 'complete right bundle branch block', not
    'conduction disturbance': a superclass is prompted with its own name and description and with the
    phrases of every statement it groups."""
    prompts = load_task("ptbxl-super").prompts_of("CD")
    assert prompts[:2] == ["conduction disturbance.", load_task("ptbxl-super").classes["CD"].description + "."]
    assert "complete right bundle branch block." in prompts and "first degree av block." in prompts
    assert "inferior myocardial infarction." not in prompts
