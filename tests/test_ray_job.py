"""`ray job submit` against a real local head: the README's cluster command, end to end.

The head is this test's own (`ray start --head --block` in a new process group, every port chosen
free, its own temp dir) and is stopped by killing that group: `ray stop` would also stop the test
session's cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from models.model import ECGTextModel

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def local_head():
    """(dashboard address, env) of a 2-CPU head started for this test only."""
    gcs, dashboard, agent, agent_grpc, runtime_env, metrics, client, node, objects = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [
        RAY,
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "2",
        "--temp-dir",
        temp_dir,
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        "--port",
        str(gcs),
        "--dashboard-port",
        str(dashboard),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(runtime_env),
        "--metrics-export-port",
        str(metrics),
        "--ray-client-server-port",
        str(client),
        "--node-manager-port",
        str(node),
        "--object-manager-port",
        str(objects),
    ]
    head = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for(f"{address}/api/version", head, timeout_s=90)
        yield address, env
    finally:
        _stop(head, temp_dir)


def test_pretraining_job_submitted_with_ray_job_submit_succeeds(local_head, synthetic_shards, tmp_path):
    address, env = local_head
    run_dir = tmp_path / "run"
    submit = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            address,
            "--submission-id",
            "pretrain-test",
            "--runtime-env",
            "cluster/runtime_env.yaml",
            "--",
            "python",
            "-m",
            "pipelines.pretrain",
            "--data",
            str(synthetic_shards),
            "--output",
            str(run_dir),
            "--objective",
            "mets",
            "--workers",
            "1",
            "--max-steps",
            "2",
            "train.batch_size=8",
            "train.warmup_steps=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert JobSubmissionClient(address).get_job_status("pretrain-test") == JobStatus.SUCCEEDED
    # The final table: the metric the best checkpoint was selected by, and its value.
    assert re.search(r"^selected by\s+val_macro_auroc$", submit.stdout, re.MULTILINE)
    assert re.search(r"^val_macro_auroc\s+\d\.\d{4}$", submit.stdout, re.MULTILINE)
    ECGTextModel.from_pretrained(run_dir / "export")


def _wait_for(url: str, head: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the head's dashboard did not answer at {url} within {timeout_s} s")


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM the head's process group, then kill anything still running out of its temp dir, and
    remove that dir."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in process.info["cmdline"] or []):
                process.kill()
        except psutil.Error:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)
