"""A real Ray cluster on this machine whose nodes share nothing but the network: a head (`ray start --head`)
and worker nodes (`ray start --address`), for tests that submit jobs with `ray job submit` or lose a node.

    with LocalRayCluster(head_cpus=0) as cluster:
        cluster.add_node("node_a", "node_b", cpus=1)
        cluster.submit(["python", "-m", "pipelines.pretrain", ...], runtime_env="cluster/runtime_env.yaml")
        cluster.kill_node("node_b")          # SIGKILL every process of that node, as a lost host goes

Each node (the head too, so every job driver as well) runs in a mount and a PID namespace of its own (`unshare
--mount --propagation private --pid`) in which /tmp, HOME and the working folder are bind mounts of the node's own folder
on disk (`housekeeping.SESSION_ROOT/nodes/NAME`; not a tmpfs, whose files would sit in memory): a file one
node writes under /tmp or ~ is not there on another, as on separate hosts. HOME and the working folder have
the same path on every node, as on a real cluster. The checkout and its venv stay visible at their own paths
(bound back where they lie under /tmp), but the project's editable install is hidden: a node's Python finds
`pipelines`, `models` and `tune` only in a job's upload (its runtime env's `working_dir`), as on a cluster whose
nodes install only the dependencies (`cluster/gpu-cluster.yaml`). Ray keeps each node's session under that
node's /tmp/ray. Every node has its own ports and a small object store, so the nodes and the suite's own Ray
fit on this machine together. The network is shared: the head, the job API and the S3 server on 127.0.0.1
are reached from every node.

A node's processes are those in its mount namespace: a node is ended by killing each of them by pid, never by
name and never with `ray stop` (which would stop every Ray on the machine), and its folder is removed. The
session's cluster (`session_cluster`, the `multinode_cluster` fixture) is a head with no CPU and `node_a`, `node_b` with one CPU each; it
starts when a test first asks for it and serves every multi-node test of the session. A test that loses a node
adds one of its own to lose. Where `unshare` is refused (no CAP_SYS_ADMIN), the multi-node tests skip and say
why.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.housekeeping import SESSION_ROOT, SYSTEM_TMP, end, kill_namespace, mount_namespace, record_namespace, spawn

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
"""Where a process's state-API calls go. Set to each cluster's own dashboard for its processes: with several Ray
instances on one machine, the default ("auto") finds them all and fails."""
OBJECT_STORE_BYTES = 200 * 2**20
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
"""The head's health checks of each raylet every second instead of every 3 (as Ray's own node-death tests do): a
killed node is marked dead after ~5 s, not ~15. A refused connection fails a check at once; a live raylet that
does not answer still has 5 × the 10 s check timeout."""
NODES_ROOT, NODE_HOME, NODE_WORK = SESSION_ROOT / "nodes", SESSION_ROOT / "home", SESSION_ROOT / "work"
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--pid", "--mount-proc", "--kill-child=SIGKILL"]
"""A mount namespace of the node's own, and a PID namespace whose init (the node's `sh`) dies with `unshare`, which
dies with the test process: when a namespace's init dies the kernel kills every process in it, Ray's agents and
job drivers included (they outlive their raylet otherwise)."""
NODE_SCRIPT = """set -e
mount --bind /tmp "$NODE/keep"
mount --bind "$NODE/tmp" /tmp
for path in $BIND_BACK; do mkdir -p "$path"; mount --bind "$NODE/keep/${path#/tmp/}" "$path"; done
for file in $HIDDEN; do mount --bind /dev/null "$file"; done
mount --bind "$NODE/home" "$HOME"
mount --bind "$NODE/work" "$WORK"
cd "$WORK"
"$@" &
wait $!
"""
"""What a node's init runs in its new namespaces: keep a handle on the machine's /tmp, mount the node's own over
it, bind back the checkout and venv where they lie under /tmp, hide the editable install, give HOME and the
working folder the node's own content, then run `ray start` (as a child: Ray's processes would take a parent of
pid 1 for an orphan's)."""


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def unshare_problem() -> str | None:
    """Why this machine cannot give a node its own mount namespace, or None when it can."""
    try:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "`unshare` (util-linux) is not installed"
    if probe.returncode != 0:
        return f"`unshare --mount` was refused ({probe.stderr.strip()}); it needs root or CAP_SYS_ADMIN"
    return None


def editable_install_files() -> list[Path]:
    """The `.pth` files by which this venv's Python finds the checkout (pip's editable install)."""
    return sorted(Path(sysconfig.get_paths()["purelib"]).glob("__editable__.ecg_fm-*.pth"))


def _bound_back() -> list[Path]:
    """The checkout and the venv where they lie under /tmp (a clone can), outermost only."""
    under_tmp = sorted({p for p in (REPO, Path(sys.prefix)) if p.is_relative_to(SYSTEM_TMP)})
    return [p for p in under_tmp if not any(p != q and p.is_relative_to(q) for q in under_tmp)]


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    folder: Path
    namespace: str


@dataclass
class LocalRayCluster:
    """A head with `head_cpus` CPUs; worker nodes added with `add_node`. `env` is what every `ray` command runs
    with, and every node too (with HOME, TMPDIR and the working folder its own; extra variables given here are
    added to it)."""

    head_cpus: int = 2
    extra_env: dict = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    ports_taken: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.gcs_port, dashboard = self._fresh_ports(2)
        self.address = f"http://127.0.0.1:{dashboard}"
        self.env = {
            **os.environ,
            **self.extra_env,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            API_SERVER_ENV: self.address,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            **FAST_NODE_DEATH,
        }
        for folder in (NODE_HOME, NODE_WORK):
            folder.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        self._start("head", ["--head", "--num-cpus", str(self.head_cpus), "--port", str(self.gcs_port),
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard)])  # fmt: skip
        self._wait_for_jobs_api(timeout_s=120)

    def add_node(
        self, *names: str, cpus: int = 1, resources: dict | None = None, project_installed: bool = False
    ) -> None:
        """Worker nodes, each with `cpus` CPUs and a custom resource `{name: 1}` (tests place work per node with
        it), plus `resources`; started together, then waited for until the cluster counts every one. With
        `project_installed`, the node's Python finds the checkout through the editable install, as on a node
        whose image installs the project (`cluster/Dockerfile`)."""
        for name in names:
            self._start(name, ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", str(cpus),
                               "--resources", json.dumps({name: 1, **(resources or {})})],
                        project_installed=project_installed)  # fmt: skip
        for name in names:
            self.wait_for_resource(name, present=True)

    def kill_node(self, name: str) -> None:
        """Lose a node: SIGKILL every process in its mount namespace (its raylet, workers, and on the head the
        job drivers), as a preempted machine vanishes; then remove its folder."""
        node = self.nodes.pop(name)
        end(node.process)  # `unshare`: its child, the namespace's init, and with it every process there go too
        kill_namespace(node.namespace)  # anything that was still on its way out
        shutil.rmtree(node.folder, ignore_errors=True)

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
        atexit.unregister(self.stop)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _fresh_ports(self, n: int) -> list[int]:
        """`n` free ports that this cluster has not handed out before: a port probed free and closed again can
        be probed free a second time, and Ray refuses a node whose two components share one."""
        while True:
            ports = free_ports(n)
            if self.ports_taken.isdisjoint(ports):
                self.ports_taken.update(ports)
                return ports

    def _start(self, name: str, arguments: list[str], project_installed: bool = False) -> None:
        folder = NODES_ROOT / name
        shutil.rmtree(folder, ignore_errors=True)  # a node of that name lost earlier
        for sub in ("keep", "tmp", "home", "work"):
            (folder / sub).mkdir(parents=True)
        ports = self._fresh_ports(8)
        worker_ports = 20000 + 2000 * len(self.nodes)
        command = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", *arguments,
                   "--object-store-memory", str(OBJECT_STORE_BYTES),
                   "--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
                   "--runtime-env-agent-port", str(ports[2]), "--metrics-export-port", str(ports[3]),
                   "--node-manager-port", str(ports[4]), "--object-manager-port", str(ports[5]),
                   "--min-worker-port", str(worker_ports), "--max-worker-port", str(worker_ports + 1999)]  # fmt: skip
        if name == "head":
            command += ["--ray-client-server-port", str(ports[6])]
        env = {
            **self.env,
            "NODE": str(folder),
            "BIND_BACK": " ".join(map(str, _bound_back())),
            "HIDDEN": "" if project_installed else " ".join(map(str, editable_install_files())),
            "HOME": str(NODE_HOME),
            "WORK": str(NODE_WORK),
            "TMPDIR": str(SYSTEM_TMP),
        }
        with open(folder / "ray-start.log", "wb") as log:
            process = spawn(
                [*UNSHARE, "sh", "-c", NODE_SCRIPT, name, *command], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        namespace = self._namespace_of(process, folder)
        record_namespace(namespace)
        self.nodes[name] = Node(name, process, folder, namespace)

    @staticmethod
    def _namespace_of(process: subprocess.Popen, folder: Path) -> str:
        """The mount namespace the node's process entered (read once `unshare` has made it)."""
        ours, deadline = mount_namespace(os.getpid()), time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"node at {folder} exited with {process.returncode}: "
                    f"{(folder / 'ray-start.log').read_text()[-2000:]}"
                )
            try:
                if (namespace := mount_namespace(process.pid)) != ours:
                    return namespace
            except OSError:
                pass
            time.sleep(0.01)
        raise TimeoutError(f"node at {folder} did not enter a mount namespace of its own within 10 s")

    def _wait_for_jobs_api(self, timeout_s: float) -> None:
        """The dashboard answers, then the job agent does (right after start, `ray job submit` can answer
        "No available agent to submit job")."""
        head = self.nodes["head"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if head.process.poll() is not None:
                raise RuntimeError(
                    f"ray start --head exited with {head.process.returncode}: "
                    f"{(head.folder / 'ray-start.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the head's job API did not answer at {self.address} within {timeout_s} s")


def session_cluster() -> Iterator[LocalRayCluster]:
    """The session's 3-node cluster (`multinode_cluster` in tests/conftest.py): a head with no CPU (it runs job
    drivers, Train controllers and Serve's proxy) and worker nodes `node_a`, `node_b` with one CPU each, sharing
    nothing but the network."""
    if problem := unshare_problem():
        pytest.skip(f"multi-node tests need each node in a mount namespace of its own, and here {problem}")
    with LocalRayCluster(head_cpus=0) as cluster:
        cluster.add_node("node_a", "node_b", cpus=1)
        yield cluster
