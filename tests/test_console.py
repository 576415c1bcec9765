"""The pretraining command's console, as a person reads it: a plan, progress and epoch lines from rank 0
only, the export path and the final table; no line twice, no Ray report dumps, no escape codes (the
output is not a terminal), no FutureWarning from our own calls. The rest is in RUN_DIR/logs/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pretrain_console_is_readable(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.pretrain",
            "--data",
            str(synthetic_shards),
            "--output",
            str(run_dir),
            "--workers",
            "2",
            "--epochs",
            "2",
            "--val-rows",
            "32",
            "train.batch_size=16",
            "train.progress_every_s=0",
            "train.warmup_steps=1",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    # Ray's raylet may still print one "(raylet) WARNING: N worker processes started" line of its own (a
    # system message, not forwarded worker output); everything else is ours.
    lines = [line for line in completed.stderr.splitlines() if line.strip() and not line.startswith("(raylet) WARNING")]
    table = completed.stdout.splitlines()
    repeated = [line for line, count in Counter(lines + table).items() if count > 1]
    assert not repeated, repeated
    assert "TrainingReport(" not in output and "\x1b[" not in output and "FutureWarning" not in output
    bar = output.find("\r")  # a progress bar (DeepSpeed's consolidation draws one with tqdm)
    assert bar == -1, repr(output[max(0, bar - 300) : bar + 100])
    assert lines[0].startswith("pretrain: melp on ") and "validation: zero-shot AUROC of task synthetic" in lines[0]
    progress = [line for line in lines if line.startswith("pretrain: step ")]
    epochs = [line for line in lines if line.startswith("pretrain: epoch ")]
    assert progress and [line.split(" · ")[0] for line in epochs] == ["pretrain: epoch 1", "pretrain: epoch 2"]
    assert all("val macro AUROC" in line and "data wait" in line for line in epochs)
    assert any(line.startswith("pretrain: exported ") and str(run_dir / "export") in line for line in lines)
    assert table[-1].startswith("wall time") and any(line.startswith("val_macro_auroc") for line in table)
    logs = {path.name for path in (run_dir / "logs").iterdir()}
    assert {"pretrain.log", "worker-0.log", "worker-1.log"} <= logs
    assert "Started a local Ray instance" in (run_dir / "logs" / "pretrain.log").read_text()
