"""A run directory on the local disk or in an object store, and the local folder a process writes it through.

    run = RunDirectory.open("s3://bucket/runs/x", "worker-0")    # or a local path: then .local is the folder
    setup_logging(run.local / "logs" / "worker-0.log")           # files only a local disk can hold …
    run.sync("logs/worker-0.log", "tensorboard")                 # … reach the run directory at checkpoints
    (run.location / "metrics.json").write_json(metrics)          # whole files go straight to it
    run.close("logs/worker-0.log", "tensorboard")                # last sync; the scratch folder is removed

A local run directory is its own local folder: `sync` and `close` do nothing and the layout is what it always
was. For a URI, `local` is a scratch folder of this process under `$TMPDIR/ecg-fm-runs/` named by the run and
the process's `role` ("driver", "worker-<rank>"), so a worker restarted on the same node goes on with the files
its predecessor left; `resume` fetches a file the run directory already holds (a log to append to) when the
scratch folder lacks it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.storage import Location

SCRATCH_DIR = "ecg-fm-runs"


@dataclass(frozen=True)
class RunDirectory:
    location: Location
    """The run directory itself (a local folder or a URI)."""
    local: Path
    """Where this process writes files that need a local disk: the run directory when it is local, else a
    scratch folder."""

    @classmethod
    def open(cls, where: str | os.PathLike | Location, role: str) -> RunDirectory:
        location = Location.of(where)
        if location.is_local:
            return cls(location, Path(location.path))
        local = scratch_folder(location, role)
        local.mkdir(parents=True, exist_ok=True)
        return cls(location, local)

    @property
    def is_scratch(self) -> bool:
        """True when `local` is a scratch folder whose files must be synced to `location`."""
        return not self.location.is_local

    def resume(self, *names: str) -> None:
        """Fetch each file `names` (paths relative to the run directory) that the run directory holds and the
        scratch folder does not."""
        if not self.is_scratch:
            return
        for name in names:
            remote, local = self.location.child(name), self.local / name
            if not local.exists() and remote.is_file():
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(remote.read_bytes())

    def sync(self, *names: str) -> None:
        """Upload the files and folders `names` (relative paths) from the scratch folder to the run directory,
        replacing what is there under the same names; absent ones are skipped."""
        if not self.is_scratch:
            return
        for name in names:
            local = self.local / name
            if local.is_dir():
                self.location.child(name).upload_from(local)
            elif local.is_file():
                self.location.child(name).write_bytes(local.read_bytes())

    def close(self, *names: str) -> None:
        """`sync(*names)`, then remove the scratch folder."""
        if not self.is_scratch:
            return
        self.sync(*names)
        shutil.rmtree(self.local, ignore_errors=True)
        try:
            self.local.parent.rmdir()  # the run's folder, once no other process of the run on this node uses it
        except OSError:
            pass


def scratch_folder(location: Location, role: str) -> Path:
    """The scratch folder of the process `role` of the run at `location` (a URI) on this node."""
    run = hashlib.sha256(location.uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / SCRATCH_DIR / run / role
