"""Run as a job on the multi-node cluster: stages whose --output is a plain path on the driver's own /tmp, and
prepare with --shared-mount into a folder every node sees (SHARED), each called in this one process (one
import, one connection to the job's cluster). Prints one JSON line, {stage: [exit code, last stderr line]}.

    ray job submit … -- python -m tests.node_local_outputs s3://bucket/shards SHARED
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile

from pipelines.prepare import main as prepare
from pipelines.pretrain import main as pretrain
from tune.sweep import main as sweep


def exit_code(main, arguments: list[str]) -> list:
    """[exit code, last line of stderr] of a CLI's `main` called here."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            main(arguments)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return [code, (errors.getvalue().strip().splitlines() or [""])[-1]]


if __name__ == "__main__":
    shards, shared = sys.argv[1:3]
    folder = tempfile.mkdtemp(prefix="node-local-", dir="/tmp")
    results = {
        "prepare": exit_code(prepare, ["--source", "synthetic", "--input", "8", "--output", f"{folder}/shards"]),
        "pretrain": exit_code(pretrain, ["--data", shards, "--output", f"{folder}/run", "--config", "tiny"]),
        "sweep": exit_code(sweep, ["--data", shards, "--output", f"{folder}/sweep"]),
        "prepare --shared-mount": exit_code(
            prepare, ["--source", "synthetic", "--input", "8", "--output", f"{shared}/shards", "--shared-mount"]
        ),
    }
    print(json.dumps(results))
