"""Output folders a command owns: a marker file naming the command and what made the output, checked
before anything is written into the folder or deleted from it.

    resumed = claim_output(path, "score", {"model": fingerprint, "labels": labels}, overwrite=False)

`MARKER_FILE` (`made_by.json`) in a folder holds `{"command": …, "made_with": {…}}`, where `made_with`
is plain JSON: what a rerun must match to continue the output. Checking a folder before writing:
- missing, or an empty folder: new;
- marked by this command with the same `made_with`: continued (`resume=True`), or refused
  ("pass --overwrite") for a command whose outputs are written once (prepare);
- marked by this command with another `made_with`: refused, naming the fields that differ;
- `overwrite=True` replaces a folder this command marked, and only such a folder;
- anything else that is not empty (a folder of notes, `.`, a checkout, another command's output) is
  refused with or without `overwrite`, and nothing in it is touched.
A command's outputs written before markers existed count as its own when `legacy` recognises them.

On a Ray cluster of more than one node a plain path names a folder on each node's own disk: the tasks
that write shards, checkpoints, trial results or score parts run on any node, and what the driver records
would list files it does not hold. `refuse_node_local` refuses such an output unless it is declared a
shared mount (`--shared-mount`, added to a command by `add_shared_mount_argument`).

The same holds for outputs given as URIs (s3://…, `pipelines.storage`): there a folder is a key prefix,
"empty" means no key under it, and `--overwrite` deletes the keys under it (prepare deletes only its
dataset's own files: `pipelines.prepare`). Object stores have no rename, so `written_beside` is for local
folders only; a command writing to a URI writes in place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pipelines.storage import Location

MARKER_FILE = "made_by.json"
SHOWN_DIFFERENCES = 3
"""Differing fields named in a refusal; the rest are counted."""

Action = Literal["new", "resume", "replace"]
LegacyRecord = Callable[[Location], "dict | None"]
"""Reads what made a folder written before markers existed: its `made_with`, or None when the folder is not
such an output."""


class OutputRefused(ValueError):
    """A folder this command may not write into; the message names it, says why and what to do."""


def check_output(
    path: str | os.PathLike,
    command: str,
    made_with: dict,
    *,
    overwrite: bool = False,
    resume: bool = True,
    legacy: LegacyRecord | None = None,
) -> Action:
    """What writing `command`'s output to `path` would do ("new", "resume" or "replace"), without writing
    or deleting anything; OutputRefused when it may not."""
    path = Location.of(path)
    if path.is_empty_or_missing():
        return "new"
    if not path.is_dir():
        raise OutputRefused(f"{path} is a file, not an output folder; choose a new or empty folder")
    before = recorded(path, command, legacy)
    if before is None:
        raise OutputRefused(
            f"{path} is not empty and was not made by {command} (it has no {MARKER_FILE} of {command}); nothing "
            f"in it was touched. Choose a new or empty folder (--overwrite only replaces {command}'s own output)"
        )
    if overwrite:
        return "replace"
    if not resume:
        raise OutputRefused(f"{path} already holds {command}'s output; pass --overwrite to replace it")
    differences = differing_fields(before, _plain(made_with))
    if differences:
        raise OutputRefused(
            f"{path} was made by {command} with a different config ({'; '.join(differences)}); continuing would "
            "mix the two. Use another output folder, or --overwrite to replace it"
        )
    return "resume"


def claim_output(
    path: str | os.PathLike,
    command: str,
    made_with: dict,
    *,
    overwrite: bool = False,
    legacy: LegacyRecord | None = None,
) -> bool:
    """Make `path` this command's output (see the module docstring): a folder it made before is deleted
    first with `overwrite`; returns True when an existing output is continued."""
    path = Location.of(path)
    action = check_output(path, command, made_with, overwrite=overwrite, legacy=legacy)
    if action == "replace":
        path.delete()
    if action != "resume" or read_marker(path) is None:  # a legacy output gets its marker now
        mark(path, command, made_with)
    return action == "resume"


@contextmanager
def written_beside(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh sibling folder of `path` to write a whole new output into. When the block succeeds the
    sibling takes `path`'s place (an old folder there is moved aside, then deleted); when it fails the
    sibling is deleted and `path` is as it was. `path` must have passed `check_output`."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    new = path.with_name(f".{path.name}.new-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    new.mkdir()
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if path.exists() and any(path.iterdir()):
        os.replace(path, old)  # between these two renames `path` is briefly absent; the old copy is whole
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def mark(path: str | os.PathLike | Location, command: str, made_with: dict) -> None:
    """Create `path` if needed and write its marker."""
    path = Location.of(path)
    path.mkdir()
    marker = {"command": command, "made_with": _plain(made_with)}
    path.child(MARKER_FILE).write_json(marker, sort_keys=True)


def read_marker(path: str | os.PathLike | Location) -> dict | None:
    """The marker in `path`, or None when there is none (or it is not one of ours)."""
    try:
        marker = Location.of(path).child(MARKER_FILE).read_json()
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("made_with"), dict) else None


def recorded(path: str | os.PathLike | Location, command: str, legacy: LegacyRecord | None = None) -> dict | None:
    """What made `path` if `command` made it (its marker, or `legacy` for an older output), else None."""
    path = Location.of(path)
    marker = read_marker(path)
    if marker is not None:
        return marker["made_with"] if marker.get("command") == command else None
    return legacy(path) if legacy is not None else None


def differing_fields(before: dict, now: dict) -> list[str]:
    """`field: X there, Y now` for each dotted field on which two records differ (a few, then a count)."""
    flat_before, flat_now = _flatten(before), _flatten(now)
    names = sorted(name for name in flat_before.keys() | flat_now.keys() if flat_before.get(name) != flat_now.get(name))
    shown = [
        f"{name}: {_short(flat_before, name)} there, {_short(flat_now, name)} now" for name in names[:SHOWN_DIFFERENCES]
    ]
    if len(names) > SHOWN_DIFFERENCES:
        shown.append(f"and {len(names) - SHOWN_DIFFERENCES} more")
    return shown


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(flat: dict, name: str, limit: int = 80) -> str:
    text = repr(flat[name]) if name in flat else "(absent)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(record: dict) -> dict:
    """As it reads back from JSON (tuples become lists), so a record compares equal to its saved self."""
    return json.loads(json.dumps(record, sort_keys=True, default=str))


SHARED_MOUNT_FLAG = "--shared-mount"


def add_shared_mount_argument(parser: argparse.ArgumentParser) -> None:
    """The flag that declares a plain --output path to be on storage every node mounts."""
    parser.add_argument(
        SHARED_MOUNT_FLAG, action="store_true",
        help="--output is a path on storage every node of the Ray cluster mounts at that path (NFS, a cluster "
             "filesystem); without it a plain path is refused on a cluster of more than one node (use s3://…)",
    )  # fmt: skip


def refuse_node_local(path: str | os.PathLike, option: str = "--output", shared_mount: bool = False) -> None:
    """OutputRefused when `path` is a plain path, Ray's cluster (connected to) has more than one node alive,
    and the path is not declared a shared mount; the refusal names the option and the flag."""
    import ray

    if shared_mount or not Location.of(path).is_local:
        return
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if nodes > 1:
        raise OutputRefused(
            f"{option} {path} is a path on each node's own disk, and the Ray cluster has {nodes} nodes: what tasks "
            f"write on other nodes would not be in it. Use a bucket URI (s3://…), or pass {SHARED_MOUNT_FLAG} if "
            "every node mounts that path on shared storage"
        )
