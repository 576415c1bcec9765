"""What a test session starts and writes, and the check that none of it outlives the session.

Everything the suite writes lies under one folder of the session's own, `SESSION_ROOT` (outside /tmp, which
the share-nothing cluster's nodes mount over): its `tmp/` is the session's TMPDIR, so pytest's tmp_path,
tempfile, Ray's session folders and torch's scratch land there, and `nodes/` holds each cluster node's
private /tmp, HOME and working folder. Every process the harness starts goes through `spawn`: it is
recorded, dies with the test process (PR_SET_PDEATHSIG, so a killed pytest leaves no server behind), and
is ended by its process group. `leftovers()` is what `pytest_sessionfinish` (tests/conftest.py) reports and
fails on: a process the session started that still runs, a mount under the root, or a folder the session
left in /tmp; `remove_root()` then removes the root.

Pass `--basetemp DIR` to keep tmp_path folders for a look after a run: DIR lies outside the root.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil


def session_root(pid: int) -> Path:
    """The folder of the test session run by process `pid`. Short: Ray's socket paths under
    TMPDIR/ray/session_…/sockets have a length limit of 107 bytes."""
    return Path(f"/var/tmp/ecg-fm-{pid}")


SESSION_ROOT = session_root(os.getpid())
SESSION_TMP = SESSION_ROOT / "tmp"
SYSTEM_TMP = Path("/tmp")
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl  # looked up here: a forked child only calls it

_started: list[subprocess.Popen] = []
_namespaces: set[str] = set()
_tmp_before: set[str] = set()


def use_session_tmp() -> None:
    """Make SESSION_TMP this process's (and its children's) TMPDIR; note what /tmp held before."""
    import tempfile

    _tmp_before.update(_tmp_folders())
    SESSION_TMP.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(SESSION_TMP)
    tempfile.tempdir = None  # tempfile caches the folder it chose first


def _die_with_parent() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(command: Sequence[str], **popen: object) -> subprocess.Popen:
    """`subprocess.Popen(command)` in a process group of its own that dies with this process; recorded
    for `end` and `leftovers`."""
    process = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent, **popen)
    _started.append(process)
    return process


def end(process: subprocess.Popen) -> None:
    """SIGKILL the process's group and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def mount_namespace(pid: int) -> str:
    """The mount namespace of a process, as the kernel names it (`mnt:[4026532301]`)."""
    return os.readlink(f"/proc/{pid}/ns/mnt")


def record_namespace(namespace: str) -> None:
    """A mount namespace whose every process `leftovers` should find ended."""
    _namespaces.add(namespace)


def processes_in(namespaces: Iterable[str]) -> list[psutil.Process]:
    """Every process in one of these mount namespaces."""
    wanted, found = set(namespaces), []
    for process in psutil.process_iter():
        try:
            if mount_namespace(process.pid) in wanted:
                found.append(process)
        except (OSError, psutil.Error):
            pass
    return found


def kill_namespace(namespace: str) -> None:
    """SIGKILL every process in a mount namespace until none is left (a process can fork while it goes)."""
    deadline = time.monotonic() + 30
    while (members := processes_in([namespace])) and time.monotonic() < deadline:
        for process in members:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(members, timeout=2)


def leftovers(grace_s: float = 15) -> list[str]:
    """What the session started and did not end: processes (waited for up to `grace_s`, as Ray's workers take
    a moment to notice their raylet went), mounts under the root, and folders it left in /tmp."""
    deadline = time.monotonic() + grace_s
    while (running := _still_running()) and time.monotonic() < deadline:
        time.sleep(0.5)
    found = [f"process {p.pid}: {_describe(p)}" for p in running.values()]
    found += [
        f"mount {line.split()[4]}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(SESSION_ROOT) in line.split()[4]
    ]
    found += [f"folder {SYSTEM_TMP / name}" for name in sorted(_tmp_folders() - _tmp_before)]
    return found


def end_leftovers() -> None:
    """Kill what `leftovers` would list as processes (after it has been reported)."""
    for process in _started:
        end(process)
    for process in _still_running().values():
        try:
            process.kill()
        except psutil.Error:
            pass


def _still_running() -> dict[int, psutil.Process]:
    """The session's descendants (but Python's multiprocessing resource tracker, a child that ends when this
    process does: it reads a pipe), every process in a recorded namespace, and every spawned process alive."""
    running = {p.pid: p for p in psutil.Process().children(recursive=True) if p.pid != _resource_tracker_pid()}
    running.update((p.pid, p) for p in processes_in(_namespaces))
    running.update((p.pid, p) for p in _alive(_started))
    return running


def _tmp_folders() -> set[str]:
    """The folders in /tmp (files there are a person's own notes and logs as often as not)."""
    return {entry.name for entry in SYSTEM_TMP.iterdir() if entry.is_dir()}


def remove_root() -> None:
    shutil.rmtree(SESSION_ROOT, ignore_errors=True)


def _resource_tracker_pid() -> int | None:
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


def _alive(processes: Iterable[subprocess.Popen]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        if process.poll() is None:
            try:
                alive.append(psutil.Process(process.pid))
            except psutil.Error:
                pass
    return alive


def _describe(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:200] or process.name()
    except psutil.Error:
        return "(gone)"
