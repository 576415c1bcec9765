"""What the harness starts never outlives the test process, even when that process is killed outright (CI's
time limit, a `kill -9`): every process it spawns dies with it (PR_SET_PDEATHSIG), a Ray node's raylet and
workers follow their `ray start`, and nothing of a node's mount namespace stays."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.housekeeping import processes_in, session_root
from tests.ray_cluster import REPO, unshare_problem

STARTS_A_CLUSTER_AND_A_SERVER = """
import json, os
from tests.object_store import start_object_store
from tests.ray_cluster import LocalRayCluster
store, server = start_object_store()
cluster = LocalRayCluster(head_cpus=0)
cluster.add_node("node_a", cpus=1)
print(json.dumps({"server": server.pid, "namespaces": [node.namespace for node in cluster.nodes.values()]}), flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.mark.slow
def test_a_killed_test_process_leaves_no_node_and_no_server(tmp_path):
    if problem := unshare_problem():
        pytest.skip(f"the cluster's nodes need a mount namespace of their own, and here {problem}")
    child = subprocess.Popen([sys.executable, "-c", STARTS_A_CLUSTER_AND_A_SERVER], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        out, err = child.communicate(timeout=180)
        assert child.returncode == -signal.SIGKILL, err[-3000:]
        started = json.loads(out.strip().splitlines()[-1])
        deadline = time.monotonic() + 60
        while (left := processes_in(started["namespaces"])) or _running(started["server"]):
            assert time.monotonic() < deadline, f"still running 60 s after the test process died: {left}"
            time.sleep(0.5)
    finally:
        shutil.rmtree(session_root(child.pid), ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
