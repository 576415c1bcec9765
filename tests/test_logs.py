"""`pipelines.logs`: what libraries say reaches the log file, and the console only at ERROR. Ray's raylet
messages (printed by Ray itself, with colour codes) and DeepSpeed's own console handler (added when DeepSpeed is
first imported, often after logging is set up) are the two that used to reach a job's console."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import ray._private.worker as ray_worker

from pipelines.logs import _raylet_messages_to_log, setup_logging

REPO = Path(__file__).resolve().parents[1]


def test_raylet_messages_go_to_the_log_and_only_errors_to_the_console(tmp_path, capsys, monkeypatch, restore_logging):
    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # Ray's, back afterwards
    setup_logging(tmp_path / "job.log")
    _raylet_messages_to_log()  # what init_ray does before ray.init
    ray_worker.print_to_stdstream(
        {
            "lines": ["\x1b[33mWARNING: 4 PYTHON worker processes have been started on node: x\x1b[0m"],
            "pid": "raylet",
            "is_err": False,
        },
        ignore_prefix=False,
    )
    ray_worker.print_to_stdstream(
        {"lines": ["The node with node id: abc has been marked dead"], "pid": "raylet", "is_err": False},
        ignore_prefix=False,
    )
    retried = ("Task ServeController.graceful_shutdown failed. There are infinite retries remaining, so the task will "
               "be retried. Error: The actor is dead because it was killed by `ray.kill`.")
    ray_worker.print_to_stdstream({"lines": [retried], "pid": "raylet", "is_err": True}, ignore_prefix=False)
    console = capsys.readouterr()
    assert "PYTHON worker processes" not in console.out + console.err and "retried" not in console.err
    assert console.err.strip() == "error: The node with node id: abc has been marked dead"
    log = (tmp_path / "job.log").read_text()
    assert "WARNING ray.raylet" in log and "WARNING: 4 PYTHON worker processes" in log and "\x1b[" not in log
    assert any("WARNING ray.raylet" in line and retried in line for line in log.splitlines())


def test_deepspeed_imported_after_logging_is_set_up_keeps_its_notices_in_the_log(tmp_path):
    script = textwrap.dedent(f"""
        import logging
        from pipelines.logs import setup_logging
        setup_logging({str(tmp_path / "job.log")!r})
        from deepspeed.accelerator import get_accelerator
        get_accelerator()
        logging.getLogger("DeepSpeed").error("an error still shows")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and done.stderr.strip() == "error: an error still shows"
    assert "Setting accelerator to CPU" in (tmp_path / "job.log").read_text()
