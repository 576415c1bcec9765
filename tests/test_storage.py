"""`pipelines.storage` against a real S3 server (moto's, on 127.0.0.1) and the local disk: one API for a
folder named by a path or a URI, and `cached_copy`, a local copy of a remote folder downloaded once per
listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from pipelines.storage import CACHE_ENV, Location, cached_copy
from tests.export_loader import WEIGHTS
from tests.housekeeping import spawn


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """This test's own copy cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "copies"


def local_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_paths_and_uris_are_named_alike(object_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = Location.of("runs/x")
    assert local.is_local and local.uri == str(tmp_path / "runs/x") and local.name == "x"
    assert (
        Location.of(local) is local and str(local / "export" / "config.json") == f"{tmp_path}/runs/x/export/config.json"
    )
    remote = Location.of(object_store.uri("runs/x/"))
    assert not remote.is_local and remote.uri == f"s3://{object_store.bucket}/runs/x"
    assert remote.path == f"{object_store.bucket}/runs/x" and remote.name == "x"
    assert remote.child("export").uri == f"s3://{object_store.bucket}/runs/x/export"


def test_files_in_the_bucket_are_written_listed_read_and_deleted(object_store):
    run = Location.of(object_store.uri("runs/rw"))
    assert run.is_empty_or_missing() and not run.exists() and run.files() == []
    (run / "metrics.json").write_json({"step": 40})
    (run / "logs" / "train.log").write_text("one line\n")
    assert run.is_dir() and not run.is_empty_or_missing() and (run / "metrics.json").is_file()
    assert (run / "metrics.json").read_json() == {"step": 40} and (run / "logs/train.log").read_text() == "one line\n"
    assert [Path(i.path).name for i in run.files()] == ["train.log", "metrics.json"]
    assert [Path(i.path).name for i in run.files(recursive=False)] == ["metrics.json"]
    assert object_store.keys("runs/rw") == ["runs/rw/logs/train.log", "runs/rw/metrics.json"]
    (run / "logs").delete()
    assert object_store.keys("runs/rw") == ["runs/rw/metrics.json"]
    run.delete()
    assert object_store.keys("runs/rw") == [] and not run.exists()


def test_a_folder_goes_up_and_comes_back_whole(object_store, tmp_path):
    files = {"config.json": b"{}", "model.safetensors": os.urandom(3 * 2**20), "nested/deep/part.bin": b"x"}
    remote = Location.of(object_store.uri("runs/updown/export"))
    remote.upload_from(local_folder(tmp_path / "up", files))
    assert object_store.keys("runs/updown/") == sorted(f"runs/updown/export/{name}" for name in files)
    remote.download_to(tmp_path / "down")
    assert {
        p.relative_to(tmp_path / "down").as_posix(): p.read_bytes()
        for p in (tmp_path / "down").rglob("*")
        if p.is_file()
    } == files


def test_cached_copy_of_a_local_folder_is_the_folder(tmp_path, cache):
    folder = local_folder(tmp_path / "export", {"config.json": b"{}"})
    assert cached_copy(folder) == folder and cached_copy(f"file://{folder}") == folder
    assert not cache.exists()


def test_cached_copy_is_downloaded_once_and_again_when_the_folder_changes(object_store, tmp_path, cache):
    uri = object_store.uri("runs/cached/export")
    Location.of(uri).upload_from(local_folder(tmp_path / "v1", {"config.json": b'{"v": 1}', "weights.bin": b"1" * 100}))
    copy = cached_copy(uri)
    assert copy.parent.parent == cache and (copy / "config.json").read_bytes() == b'{"v": 1}'
    stamp = (copy / "weights.bin").stat().st_mtime_ns
    assert cached_copy(uri) == copy and (copy / "weights.bin").stat().st_mtime_ns == stamp  # reused, not fetched

    (tmp_path / "v1" / "config.json").write_bytes(b'{"v": 22}')  # a changed file (its size differs)
    Location.of(uri).upload_from(tmp_path / "v1")
    Location.of(uri).child("weights.bin").delete()  # and a file gone
    again = cached_copy(uri)
    assert (again / "config.json").read_bytes() == b'{"v": 22}' and not (again / "weights.bin").exists()
    assert (copy / "config.json").read_bytes() == b'{"v": 1}'  # the copy a loader may still read stays whole
    assert sorted(p.name for p in copy.parent.iterdir()) == sorted([".lock", copy.name, again.name])


def test_a_killed_download_is_cleaned_and_stale_copies_go(object_store, tmp_path, cache):
    uri = object_store.uri("runs/leftovers/export")
    Location.of(uri).upload_from(local_folder(tmp_path / "v1", {"config.json": b'{"v": 1}'}))
    first = cached_copy(uri)
    killed = first.parent / ".download-killed"  # what a process killed while downloading leaves
    local_folder(killed, {"config.json": b'{"v'})
    os.utime(first, (0, 0))  # unused for longer than STALE_COPY_S
    Location.of(uri).upload_from(local_folder(tmp_path / "v2", {"config.json": b'{"v": 22}'}))
    second = cached_copy(uri)
    assert (second / "config.json").read_bytes() == b'{"v": 22}'
    assert sorted(p.name for p in second.parent.iterdir()) == [".lock", second.name]


def _weights(folder: Path, value: float) -> Path:
    """An export-like folder whose 4 MiB of weights all hold `value`."""
    folder.mkdir(parents=True)
    save_file({"weight": np.full(2**20, value, dtype=np.float32)}, folder / WEIGHTS)
    return folder


def _load_together(uri: str, loaders: int, rounds: int, while_loading=lambda: None) -> tuple[list[dict], list[str]]:
    """Start `loaders` processes that each load `uri` `rounds` times; call `while_loading` meanwhile. Returns
    every round's result and the download lines the processes logged."""
    command = [sys.executable, "-m", "tests.export_loader", uri, str(rounds)]
    processes = [spawn(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(loaders)]
    while_loading()
    outputs = [process.communicate(timeout=120) for process in processes]
    failed = [(p.returncode, err[-2000:]) for p, (_, err) in zip(processes, outputs, strict=True) if p.returncode]
    assert not failed, failed
    rounds_out = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    downloads = [line for _, err in outputs for line in err.splitlines() if "pipelines.storage:downloaded" in line]
    return rounds_out, downloads


def test_eight_loaders_at_once_share_one_download_per_version(object_store, tmp_path, cache):
    uri = object_store.uri("runs/raced/export")
    Location.of(uri).upload_from(_weights(tmp_path / "v1", 1.0))
    loads, downloads = _load_together(uri, loaders=8, rounds=1)
    assert [load["values"] for load in loads] == [[1.0]] * 8
    assert len(downloads) == 1 and len({load["copy"] for load in loads}) == 1

    def change_once():
        time.sleep(1.5)  # the loaders are in their rounds
        Location.of(uri).upload_from(_weights(tmp_path / "v2", 2.0))

    loads, downloads = _load_together(uri, loaders=8, rounds=6, while_loading=change_once)
    assert len(loads) == 8 * 6 and all(load["values"] in ([1.0], [2.0]) for load in loads)  # never a torn file
    copies_of = {value: {load["copy"] for load in loads if load["values"] == [value]} for value in (1.0, 2.0)}
    assert all(len(copies) <= 1 for copies in copies_of.values()), copies_of  # one copy per version
    assert len(downloads) == len(copies_of[2.0]) <= 1, downloads  # version 1 was already here
    assert [load["values"] for load in _load_together(uri, loaders=1, rounds=1)[0]] == [[2.0]]


def test_cached_copy_of_an_empty_prefix_says_what_to_check(object_store, cache):
    with pytest.raises(ValueError, match="holds no file"):
        cached_copy(object_store.uri("runs/never-written"))
