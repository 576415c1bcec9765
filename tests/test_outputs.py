"""Outputs a command owns (issue 13): `--overwrite` deletes only a folder that command made, a rerun that
differs is refused naming the field, inputs are checked before an output is touched, and a replaced
dataset is written beside the old one and swapped in only when complete."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from models.factory import resolve_config
from pipelines.data.shard_files import split_shards
from pipelines.outputs import MARKER_FILE, OutputRefused, check_output, claim_output
from pipelines.prepare import main as prepare_main
from pipelines.prepare import prepared_before_markers
from pipelines.pretrain import main as pretrain_main
from pipelines.storage import Location
from pipelines.training.config import TrainConfig
from pipelines.training.launch import pretrain, run_record
from tests.archives import write_ptbxl_archive


def notes_folder(root: Path) -> Path:
    """A folder that is not any command's output: a note and a sub-folder."""
    (root / "drafts").mkdir(parents=True)
    (root / "notes.txt").write_text("keep me")
    (root / "drafts" / "idea.md").write_text("and me")
    return root


def assert_notes_intact(root: Path) -> None:
    assert (root / "notes.txt").read_text() == "keep me" and (root / "drafts" / "idea.md").read_text() == "and me"
    assert not (root / MARKER_FILE).exists()


def test_a_foreign_folder_is_refused_even_with_overwrite(tmp_path, monkeypatch):
    notes = notes_folder(tmp_path / "notes")
    with pytest.raises(OutputRefused, match="was not made by pretrain.*nothing in it was touched"):
        claim_output(notes, "pretrain", {"lr": 1e-3}, overwrite=True)
    assert_notes_intact(notes)
    monkeypatch.chdir(notes)  # `--output .`
    with pytest.raises(OutputRefused, match="was not made by score"):
        claim_output(".", "score", {}, overwrite=True)
    assert_notes_intact(notes)
    checkout = Path(__file__).resolve().parents[1]
    with pytest.raises(OutputRefused, match="was not made by prepare"):
        check_output(checkout, "prepare", {}, overwrite=True)
    with pytest.raises(OutputRefused, match="was not made by score"):  # another command's output
        claim_output(tmp_path / "run", "pretrain", {})
        claim_output(tmp_path / "run", "score", {}, overwrite=True)


def test_a_rerun_continues_only_what_matches_and_overwrite_replaces_only_ours(tmp_path):
    output = tmp_path / "out"
    made_with = {"model": "ab12", "part_size": 200, "labels": ["AFIB", "NORM"]}
    assert claim_output(output, "score", made_with) is False
    (output / "scores").mkdir()
    (output / "scores" / "part-0.parquet").write_text("a finished part")
    assert claim_output(output, "score", dict(made_with)) is True
    with pytest.raises(OutputRefused, match=r"part_size: 200 there, 300 now") as refusal:
        claim_output(output, "score", {**made_with, "part_size": 300})
    assert "--overwrite" in str(refusal.value)
    with pytest.raises(OutputRefused, match=r"labels: \['AFIB', 'NORM'\] there, \['AFIB'\] now"):
        claim_output(output, "score", {**made_with, "labels": ["AFIB"]})
    assert (output / "scores" / "part-0.parquet").is_file(), "a refusal deletes nothing"
    assert claim_output(output, "score", {**made_with, "part_size": 300}, overwrite=True) is False
    assert not (output / "scores").exists()
    assert json.loads((output / MARKER_FILE).read_text()) == {
        "command": "score",
        "made_with": {**made_with, "part_size": 300},
    }


def test_pretrain_checks_its_data_before_it_deletes_a_run(ray_cluster, synthetic_shards, tmp_path):
    """--overwrite on a run directory with data that cannot train (missing; too few rows for one step) or
    on a folder of notes: nothing is deleted."""
    run = tmp_path / "run"
    claim_output(run, "pretrain", {"an": "older run"})
    (run / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit):
        pretrain_main(["--data", str(tmp_path / "missing"), "--output", str(run), "--overwrite"])
    config = resolve_config("tiny", "mets")
    too_big = TrainConfig(workers=1, batch_size=4096, progress_every_s=0.0)
    with pytest.raises(ValueError, match="one optimizer step needs 4096"):
        pretrain(str(synthetic_shards), run, config, too_big, overwrite=True)
    assert (run / "metrics.json").is_file() and (run / MARKER_FILE).is_file()

    notes = notes_folder(tmp_path / "notes")
    with pytest.raises(OutputRefused, match="was not made by pretrain"):
        pretrain(str(synthetic_shards), notes, config, TrainConfig(workers=1, batch_size=8), overwrite=True)
    assert_notes_intact(notes)


def test_a_run_continues_only_on_the_data_it_was_made_with(synthetic_shards, tmp_path):
    """Rerun into its directory with another shard folder, or with its folder prepared anew (another manifest), a
    run is refused before any worker starts, naming `data.<folder>`: its checkpoint would go on with other rows
    and its export would name only the new data. The same data continues it."""
    config, train = resolve_config("tiny", "mets"), TrainConfig(workers=1, batch_size=8, progress_every_s=0.0)
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_shards, copy)
    run = tmp_path / "run"
    claim_output(run, "pretrain", run_record([str(synthetic_shards)], config, train, "synthetic"))
    assert check_output(run, "pretrain", run_record([str(synthetic_shards)], config, train, "synthetic")) == "resume"

    with pytest.raises(OutputRefused, match=rf"data\.{re.escape(str(copy))}: \(absent\) there, '[0-9a-f]{{16}}' now"):
        pretrain(str(copy), run, config, train)
    run_with_copy = tmp_path / "run-with-copy"
    claim_output(run_with_copy, "pretrain", run_record([str(copy)], config, train, "synthetic"))
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "records_in": manifest["records_in"] - 1}))
    with pytest.raises(OutputRefused, match=rf"data\.{re.escape(str(copy))}: '[0-9a-f]{{16}}' there, '[0-9a-f]{{16}}' now"):
        pretrain(str(copy), run_with_copy, config, train)
    assert sorted(path.name for path in run.iterdir()) == [MARKER_FILE], "a refusal writes nothing"


def test_prepare_replaces_a_dataset_only_when_the_new_one_is_whole(ray_cluster, tmp_path, restore_logging, capsys):
    archive = write_ptbxl_archive(tmp_path / "archive", [{"ecg_id": i, "report": "sinus rhythm normal ecg"} for i in range(1, 7)])
    output = tmp_path / "shards"
    arguments = ["--source", "ptbxl", "--input", str(archive), "--output", str(output), "--min-report-words", "0"]
    prepare_main(arguments)
    before = {path.name: path.read_bytes() for path in output.glob("*.parquet")}
    assert json.loads((output / MARKER_FILE).read_text())["command"] == "prepare" and before

    wrong_layout = tmp_path / "not-ptbxl"
    wrong_layout.mkdir()
    for wrong_input in (wrong_layout, tmp_path / "typo"):
        with pytest.raises(SystemExit):
            prepare_main([*arguments[:3], str(wrong_input), *arguments[4:], "--overwrite"])
        assert {path.name: path.read_bytes() for path in output.glob("*.parquet")} == before
        assert pq.ParquetDataset(sorted(output.glob("part-*.parquet"))).read().num_rows == 6
    with pytest.raises(SystemExit):
        prepare_main(arguments)  # a rerun without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err

    prepare_main([*arguments, "--fs", "250", "--overwrite"])
    assert json.loads((output / "manifest.json").read_text())["preprocessing"]["fs"] == 250
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "not-ptbxl", "shards"], "no sibling left"

    notes = notes_folder(tmp_path / "notes")
    with pytest.raises(SystemExit):
        prepare_main([*arguments[:5], str(notes), *arguments[6:], "--overwrite"])
    assert_notes_intact(notes)
    assert "was not made by prepare" in capsys.readouterr().err


def test_a_dataset_prepared_before_markers_counts_as_prepares_own(tmp_path):
    """A shard folder with its manifest (no marker) may be replaced; a stray manifest.json may not."""
    dataset = tmp_path / "old"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"records_in": 3, "shards": [{"file": "part-0.parquet"}]}))
    assert check_output(dataset, "prepare", {}, resume=False, overwrite=True, legacy=prepared_before_markers) == "replace"
    stray = tmp_path / "web-app"
    stray.mkdir()
    (stray / "manifest.json").write_text('{"name": "an extension"}')
    with pytest.raises(OutputRefused):
        check_output(stray, "prepare", {}, resume=False, overwrite=True, legacy=prepared_before_markers)


def test_a_bucket_dataset_is_refused_replaced_by_its_own_files_and_read_by_its_manifest(
    ray_cluster, object_store, tmp_path, restore_logging, capsys
):
    archive = write_ptbxl_archive(tmp_path / "archive", [{"ecg_id": i, "report": "sinus rhythm normal ecg"} for i in range(1, 13)])
    output = object_store.uri("shards")
    arguments = ["--source", "ptbxl", "--input", str(archive), "--output", output, "--min-report-words", "0",
                 "--batch-size", "2", "--rows-per-shard", "2"]  # fmt: skip
    first = prepare_main(arguments)
    assert Location.of(output).child(MARKER_FILE).read_json()["command"] == "prepare"
    with pytest.raises(SystemExit):
        prepare_main(arguments)  # a rerun without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    object_store.client().put_object(Bucket=object_store.bucket, Key="shards/NOTES.txt", Body=b"the user's")

    second = prepare_main([*arguments, "--limit", "4", "--overwrite"])  # fewer records: fewer shards
    assert second["records_in"] == 4 < first["records_in"] and len(second["shards"]) < len(first["shards"])
    listed = sorted(f"shards/{entry['file']}" for entry in second["shards"])
    own = ["shards/NOTES.txt", "shards/made_by.json", "shards/manifest.json", "shards/rejected.parquet"]
    assert object_store.keys("shards/") == sorted(listed + own), "the first run's files are gone, nothing else"

    leftover = Location.of(output).child("part-train-00099-000.parquet")  # as a prepare killed half-way leaves
    leftover.write_bytes(Location.of(f"s3://{object_store.bucket}/{listed[0]}").read_bytes())
    read = [file for split in ("train", "val", "test") for file in split_shards([output], split).files]
    assert sorted(read) == [f"s3://{object_store.bucket}/{key}" for key in listed], "the manifest's shards, no other"
    assert ray.data.read_parquet(read).count() == second["rows"] == 4

    Location.of(output).child("manifest.json").delete()  # a prepare killed before its manifest
    with pytest.raises(ValueError, match=f"{output} holds shards but no manifest.json: a prepare into it did not finish"):
        split_shards([output], "train")

    notes = object_store.uri("notes")
    Location.of(notes).child("todo.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        prepare_main([*arguments[:5], notes, *arguments[6:], "--overwrite"])
    assert "was not made by prepare" in capsys.readouterr().err and object_store.keys("notes/") == ["notes/todo.txt"]
