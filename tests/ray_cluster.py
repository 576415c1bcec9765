"""A real Ray cluster of this test's own on this machine: a head (`ray start --head`) and worker nodes
(`ray start --address`), each a raylet of its own, for tests that submit jobs with `ray job submit` or
lose a node.

    with LocalRayCluster(head_cpus=0) as cluster:
        cluster.add_node("node_a", "node_b", cpus=1)
        cluster.submit(["python", "-m", "pipelines.pretrain", ...], runtime_env="cluster/runtime_env.yaml")
        cluster.kill_node("node_b")          # SIGKILL that node's raylet and everything it started

The session's cluster (`multinode_cluster`, a pytest fixture that tests/conftest.py takes from here) is a
head with no CPU and `node_a`, `node_b` with one CPU each; it starts when a test first asks for it and
serves every multi-node test of the session. A test that loses a node adds one of its own to lose, so the
nodes the others rely on stay.

Every port is chosen free and every node has its own temp dir under /tmp, so the cluster runs beside the
test session's own (`ray.init` in conftest); it is stopped by killing the processes that run out of those
temp dirs, never with `ray stop` (which would stop every Ray on the machine). Nodes start with this
venv's `bin/` first on PATH, so submitted jobs run this venv's Python.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
"""Where a process's state-API calls go. Set to each cluster's own dashboard for its processes: with several Ray
instances on one machine, the default ("auto") finds them all and fails."""


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    temp_dir: str


@dataclass
class LocalRayCluster:
    """A head with `head_cpus` CPUs; worker nodes added with `add_node`. `env` is what every node and every
    `ray` command runs with (extra variables given here are added to it)."""

    head_cpus: int = 2
    extra_env: dict = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gcs_port, dashboard = free_ports(2)
        self.address = f"http://127.0.0.1:{dashboard}"
        self.env = {
            **os.environ,
            **self.extra_env,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            API_SERVER_ENV: self.address,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self._start("head", ["--head", "--num-cpus", str(self.head_cpus), "--port", str(self.gcs_port),
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard)])
        self._wait_for_jobs_api(timeout_s=120)

    def add_node(self, *names: str, cpus: int = 1, resources: dict | None = None) -> None:
        """Worker nodes, each with `cpus` CPUs and a custom resource `{name: 1}` (tests place work per node with
        it), plus `resources`; started together, then waited for until the cluster counts every one."""
        for name in names:
            self._start(name, ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", str(cpus),
                               "--resources", json.dumps({name: 1, **(resources or {})})])
        for name in names:
            self.wait_for_resource(name, present=True)

    def kill_node(self, name: str) -> None:
        """Lose a node: SIGKILL its raylet and every process that runs out of its temp dir (its workers),
        as a preempted machine would vanish."""
        node = self.nodes.pop(name)
        _kill_tree(node.process, node.temp_dir)

    def wait_for_resource(self, name: str, present: bool, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (name in self.resources()) == present:
                return
            time.sleep(0.5)
        raise TimeoutError(f"resource {name} still {'absent' if present else 'present'} after {timeout_s} s")

    def resources(self) -> dict:
        """Total resources of the cluster's alive nodes (from the dashboard's state API; no driver joins)."""
        from ray.util.state import list_nodes

        totals: dict = {}
        for node in list_nodes(address=self.address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False):
            for name, amount in (node.resources_total or {}).items():
                totals[name] = totals.get(name, 0) + amount
        return totals

    def submit(self, entrypoint: Sequence[str], *, runtime_env: str | Path, submission_id: str,
               timeout_s: float = 600, wait: bool = True) -> subprocess.CompletedProcess:
        """`ray job submit --runtime-env FILE -- ENTRYPOINT` from the repository root, as a user types it;
        the finished command: its output holds the job's logs, or with `wait=False` only the submission."""
        command = [RAY, "job", "submit", "--address", self.address, "--submission-id", submission_id,
                   "--runtime-env", str(runtime_env), *([] if wait else ["--no-wait"]), "--", *entrypoint]
        return subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout_s if wait else 120)

    def stop_job(self, submission_id: str) -> None:
        subprocess.run([RAY, "job", "stop", "--address", self.address, submission_id], env=self.env,
                       capture_output=True, timeout=120)

    def shutdown_serve(self) -> None:
        """`serve shutdown`: Serve's controller, proxies and replicas are detached actors that outlive the job
        that started them."""
        serve = str(Path(sys.executable).parent / "serve")
        subprocess.run([serve, "shutdown", "--yes", "--address", self.address], env=self.env, capture_output=True,
                       timeout=120, check=True)

    def stop(self) -> None:
        for name in list(self.nodes)[::-1]:
            self.kill_node(name)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self, name: str, arguments: list[str]) -> None:
        temp_dir = tempfile.mkdtemp(prefix=f"rc-{name[:6]}-", dir="/tmp")  # Ray's socket paths have a length limit
        ports = free_ports(8)
        command = [RAY, "start", "--block", "--temp-dir", temp_dir, "--node-ip-address", "127.0.0.1", *arguments,
                   "--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
                   "--runtime-env-agent-port", str(ports[2]), "--metrics-export-port", str(ports[3]),
                   "--node-manager-port", str(ports[4]), "--object-manager-port", str(ports[5]),
                   "--min-worker-port", str(20000 + 2000 * len(self.nodes)),
                   "--max-worker-port", str(20000 + 2000 * len(self.nodes) + 1999)]
        if name == "head":
            command += ["--ray-client-server-port", str(ports[6])]
        process = subprocess.Popen(command, env=self.env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.nodes[name] = Node(name, process, temp_dir)

    def _wait_for_jobs_api(self, timeout_s: float) -> None:
        """The dashboard answers, then the job agent does (right after start, `ray job submit` can answer
        "No available agent to submit job")."""
        head = self.nodes["head"].process
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if head.poll() is not None:
                raise RuntimeError(f"ray start --head exited with {head.returncode}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the head's job API did not answer at {self.address} within {timeout_s} s")


def _kill_tree(process: subprocess.Popen, temp_dir: str) -> None:
    """SIGKILL a node's process group, then anything still running out of its temp dir; remove the dir."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for other in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in other.info["cmdline"] or []):
                other.kill()
        except psutil.Error:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def multinode_cluster() -> Iterator[LocalRayCluster]:
    """The session's 3-node cluster: a head with no CPU (it runs job drivers, Train controllers and Serve's
    proxy) and worker nodes `node_a`, `node_b` with one CPU each."""
    with LocalRayCluster(head_cpus=0) as cluster:
        cluster.add_node("node_a", "node_b", cpus=1)
        yield cluster
