"""Run as a job on the multi-node cluster: stages whose --output is a plain path on the driver's own /tmp, and
prepare with --shared-mount into a folder every node sees (SHARED), each a subprocess that connects to the
job's cluster. Prints one JSON line, {stage: [exit code, last stderr line]}.

    ray job submit … -- python -m tests.node_local_outputs s3://bucket/shards SHARED
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

if __name__ == "__main__":
    shards, shared = sys.argv[1:3]
    folder = tempfile.mkdtemp(prefix="node-local-", dir="/tmp")
    stages = {
        "prepare": ["pipelines.prepare", "--source", "synthetic", "--input", "8", "--output", f"{folder}/shards"],
        "pretrain": ["pipelines.pretrain", "--data", shards, "--output", f"{folder}/run", "--config", "tiny"],
        "sweep": ["tune.sweep", "--data", shards, "--output", f"{folder}/sweep"],
        "prepare --shared-mount": ["pipelines.prepare", "--source", "synthetic", "--input", "8", "--output",
                                   f"{shared}/shards", "--shared-mount"],
    }  # fmt: skip
    results = {}
    for name, arguments in stages.items():
        done = subprocess.run([sys.executable, "-m", *arguments], capture_output=True, text=True, timeout=300)
        results[name] = [done.returncode, (done.stderr.strip().splitlines() or [""])[-1]]
    print(json.dumps(results))
