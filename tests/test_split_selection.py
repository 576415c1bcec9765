"""`evaluate --split`: one split, several joined by commas, or all (an external archive none of which was trained
on is scored whole), read straight from the shards; modes that fit on train refuse a selection holding it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.splits import SPLITS, selected_splits
from pipelines.evaluate import main as evaluate_main
from pipelines.evaluation.predict import split_reports
from pipelines.evaluation.suite import check_split
from tests.shard_folders import write_manifest


def test_a_selection_names_one_split_several_or_all():
    assert selected_splits("test") == ("test",)
    assert selected_splits("val, test,val") == ("val", "test")
    assert selected_splits("all") == SPLITS == ("train", "val", "test")
    with pytest.raises(ValueError, match="split 'tset' is not one of train, val, test"):
        selected_splits("val,tset")


def test_split_reports_read_the_rows_of_every_selected_split(tmp_path):
    splits = ["train", "val", "test", "test", "train"]
    table = pa.table({"report": [f"report {i}" for i in range(5)], "split": splits, "x": np.arange(5)})
    pq.write_table(table, tmp_path / "part-00000.parquet")
    write_manifest(tmp_path)
    assert split_reports(str(tmp_path), "test") == ["report 2", "report 3"]
    assert split_reports(str(tmp_path), "val,test") == ["report 1", "report 2", "report 3"]
    assert split_reports(str(tmp_path), "all") == [f"report {i}" for i in range(5)]


def test_modes_that_fit_on_train_refuse_a_selection_that_holds_it():
    check_split("all", ["zero-shot", "retrieval"])
    check_split("val,test", ["linear-probe", "finetune"])
    with pytest.raises(ValueError, match="split 'all' includes train, which finetune and linear-probe fit"):
        check_split("all", ["zero-shot", "linear-probe", "finetune"])


def test_the_cli_refuses_an_unknown_split_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--model", str(tmp_path), "--data", str(tmp_path), "--output", str(tmp_path / "eval"),
                       "--split", "validation"])
    assert exit_.value.code == 2
    assert "split 'validation' is not one of train, val, test" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
