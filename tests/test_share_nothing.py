"""The session's multi-node cluster shares nothing but the network, like separate hosts: a file a task writes
under /tmp or HOME on one node is absent on the others and on the head, and a node's Python finds the project
only in the job's upload. Where a node's image installs the project too (`cluster/Dockerfile`), a job runs the
upload's copy: Ray puts the job's `working_dir` ahead of site-packages on every worker's path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cluster_probe import NAME
from tests.ray_cluster import REPO

pytestmark = pytest.mark.slow


def test_a_file_written_on_one_node_is_absent_on_the_others_and_each_node_runs_the_upload(multinode_cluster):
    cluster = multinode_cluster
    cluster.add_node("image_node", cpus=0, project_installed=True)
    try:
        done = cluster.submit(
            ["python", "-m", "tests.cluster_probe", "node_a", "node_b", "image_node"],
            runtime_env=REPO / "cluster" / "runtime_env.yaml",
            submission_id="share-nothing-probe",
        )
    finally:
        cluster.kill_node("image_node")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    seen = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))

    assert seen["node_a"]["tmp"] and seen["node_a"]["home"], seen
    for other in ("node_b", "image_node", "driver"):
        assert not seen[other]["tmp"] and not seen[other]["home"], f"{other} sees node_a's files: {seen}"
    assert not (REPO.parent / NAME).exists()
    for where, view in seen.items():
        assert "runtime_resources" in view["pipelines"] and not view["pipelines"].startswith(str(REPO)), (
            f"{where} ran pipelines from {view['pipelines']}, not from the job's upload"
        )


def test_a_node_finds_the_project_only_in_a_job_upload(multinode_cluster):
    """The venv's editable install is hidden on the nodes: outside a job's upload, `import pipelines` fails."""
    node = multinode_cluster.nodes["node_b"]
    find = [sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('pipelines'))"]
    inside = subprocess.run(
        ["nsenter", "--target", str(node.process.pid), "--mount", "--wd=/", *find],
        capture_output=True,
        text=True,
        timeout=60,
    )
    outside = subprocess.run(find, cwd="/", capture_output=True, text=True, timeout=60)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.strip() == "None", inside.stdout
    assert str(REPO / "pipelines") in outside.stdout, "the test process itself finds the checkout"
