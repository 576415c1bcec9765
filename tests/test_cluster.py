"""The multi-node way, for real: a head and two worker nodes on this machine, a moto S3 server, and the
stages sent as `ray job submit --runtime-env` jobs, exactly as the README's cluster section types them.

The cluster (`tests.ray_cluster.LocalRayCluster`): a head with no CPU (it runs the job drivers, the Train
controller and the Serve proxy) and `node_a`, `node_b` with one CPU each and a custom resource naming the
node. Shards, checkpoints, the export, scores and evaluation live only in the bucket; the jobs reach it by
the AWS_* variables in their runtime environment (a copy of `cluster/runtime_env.yaml` with `env_vars`),
the way a user passes credentials to a cluster whose nodes have none. The cluster and the bucket start
once for the module; each stage's output is a module fixture, so the stages run once, in order.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors, list_nodes

from pipelines.storage import Location
from tests.object_store import object_store  # noqa: F401 (module fixture)
from tests.ray_cluster import REPO, LocalRayCluster, free_ports

N_ECGS = 600
TRAINER = {"trainer": 1}
"""Each worker node offers one `trainer`: an elastic run places one worker per node by it (Ray's elastic policy
counts the workers a node has room for by resources alone, so STRICT_SPREAD cannot express it)."""
WORKER_GROUP_START_TIMEOUT_S = "30"
"""Ray Train's wait for a worker group to start (60 s by default): after a node is lost, the first restart asks
for as many workers as before, and only this timeout sends it down to the workers left."""
PRETRAIN = ["--config", "tiny", "--objective", "melp", "--zero-stage", "2", "--val-rows", "64", "train.batch_size=16",
            "train.warmup_steps=2", "train.validate_every=4"]


@pytest.fixture(scope="module")
def cluster(object_store):  # noqa: F811
    with LocalRayCluster(head_cpus=0) as cluster:
        cluster.add_node("node_a", cpus=1, resources=TRAINER)
        cluster.add_node("node_b", cpus=1, resources=TRAINER)
        yield cluster


@pytest.fixture(scope="module")
def runtime_env(object_store, tmp_path_factory) -> Path:  # noqa: F811
    """`cluster/runtime_env.yaml` with the bucket's credentials and endpoint as `env_vars`."""
    spec = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    spec["env_vars"] = {
        **spec.get("env_vars", {}),
        **object_store.env,
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": WORKER_GROUP_START_TIMEOUT_S,
    }
    path = tmp_path_factory.mktemp("runtime-env") / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submit(cluster: LocalRayCluster, runtime_env: Path, job: str, *arguments: str, timeout_s: float = 600) -> str:
    """Run `python -m <arguments>` as a job to the end; its output (the job's log), or a failure showing it."""
    done = cluster.submit(["python", "-m", *arguments], runtime_env=runtime_env, submission_id=job, timeout_s=timeout_s)
    assert done.returncode == 0, f"job {job} failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def shards(cluster, runtime_env, object_store) -> str:  # noqa: F811
    uri = object_store.uri("shards")
    submit(cluster, runtime_env, "prepare", "pipelines.prepare", "--source", "synthetic", "--input", str(N_ECGS),
           "--output", uri)
    return uri


@pytest.fixture(scope="module")
def run(cluster, runtime_env, object_store, shards) -> str:  # noqa: F811
    uri = object_store.uri("runs/melp")
    log = submit(cluster, runtime_env, "pretrain", "pipelines.pretrain", "--data", shards, "--output", uri,
                 "--workers", "2", "--max-steps", "8", *PRETRAIN, "train.placement_strategy=STRICT_SPREAD")
    # The final table: the metric the best checkpoint was selected by, and its value.
    assert re.search(r"^selected by\s+val_macro_auroc$", log, re.MULTILINE), log[-3000:]
    assert re.search(r"^val_macro_auroc\s+\d\.\d{4}$", log, re.MULTILINE)
    return uri


def test_prepare_writes_shards_only_to_the_bucket(shards, object_store):  # noqa: F811
    manifest = Location.of(shards).child("manifest.json").read_json()
    assert manifest["records_in"] == N_ECGS == manifest["records_kept"] + manifest["records_rejected"]
    assert any(key.endswith(".parquet") for key in object_store.keys("shards/"))
    assert not (REPO / "data" / "shards").exists()


def test_pretraining_runs_one_zero2_worker_per_node_with_everything_in_the_bucket(run, cluster, object_store):  # noqa: F811
    keys = object_store.keys("runs/melp/")
    for expected in ("config.json", "made_by.json", "metrics.json", "export/model.safetensors", "export/config.json",
                     "logs/pretrain.log", "logs/worker-0.log", "logs/worker-1.log"):
        assert f"runs/melp/{expected}" in keys, f"{expected} missing from the bucket: {keys[:40]}"
    assert any("/train/checkpoint-step" in key and "zero_pp_rank_1" in key for key in keys)  # rank 1's ZeRO-2 shard
    metrics = Location.of(run).child("metrics.json").read_json()
    assert metrics["total_steps"] == 8
    # Ray Train's two workers ran on different nodes: one on node_a, one on node_b.
    node_names = {
        node.node_id: next((name for name in ("node_a", "node_b") if name in (node.resources_total or {})), "head")
        for node in list_nodes(address=cluster.address)
    }
    workers = list_actors(address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")], limit=100)
    assert sorted({node_names[w.node_id] for w in workers}) == ["node_a", "node_b"]


def test_evaluate_and_score_jobs_read_the_export_from_the_bucket(cluster, runtime_env, object_store, shards, run):  # noqa: F811
    export = f"{run}/export"
    submit(cluster, runtime_env, "evaluate", "pipelines.evaluate", "--model", export, "--data", shards,
           "--output", object_store.uri("eval/melp"), "--no-baselines")
    report = Location.of(object_store.uri("eval/melp/report.md")).read_text()
    assert "AUROC" in report
    submit(cluster, runtime_env, "score", "pipelines.score", "--model", export, "--input", shards,
           "--output", object_store.uri("scores/melp"))
    summary = Location.of(object_store.uri("scores/melp/summary.json")).read_json()
    manifest = Location.of(shards).child("manifest.json").read_json()
    assert summary["scored"] == manifest["rows"]


def test_serve_loads_the_export_from_the_bucket(cluster, runtime_env, run, shard_batch):
    (port,) = free_ports(1)
    submitted = cluster.submit(
        ["python", "-m", "pipelines.serve", "--model", f"{run}/export", "--port", str(port), "--proxy-location",
         "HeadOnly"],
        runtime_env=runtime_env, submission_id="serve", wait=False,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    try:
        health = _wait_for_json(f"http://127.0.0.1:{port}/healthz", timeout_s=240)
        assert health["ready"] is True and health["model"]["name"] == "export"
        signals, _, _ = shard_batch
        body = json.dumps({"ecg": np.asarray(signals[0], dtype=float).tolist(), "fs": 500}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/score", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            scores = json.loads(response.read())
        assert len(scores["results"]) == 1
    finally:
        cluster.stop_job("serve")
        cluster.shutdown_serve()  # Serve's apps outlive the job that started them; its replica holds a CPU


def test_an_elastic_run_loses_a_node_goes_on_grows_back_and_ends_at_the_planned_samples(
    cluster, runtime_env, object_store, shards  # noqa: F811
):
    """`--workers 1-2`, one worker per node: node_b's raylet is killed after a checkpoint at two workers, the
    run goes on at one from that checkpoint (ZeRO-2 state resharded), and when a node joins again it grows
    back to two; it ends at its planned samples, and metrics.json and the progress lines record both resizes."""
    uri = object_store.uri("runs/elastic")
    steps, batch = 200, 8  # enough steps left after the node comes back for the run to grow before it ends
    submitted = cluster.submit(
        ["python", "-m", "pipelines.pretrain", "--data", shards, "--output", uri, "--workers", "1-2",
         "--max-steps", str(steps), "--config", "tiny", "--objective", "mets", "--zero-stage", "2", "--val-rows", "64",
         f"train.batch_size={batch}", "train.warmup_steps=1", "train.validate_every=8", "train.progress_every_s=0",
         "train.checkpoints_to_keep=1", "train.max_failures=3", "train.resize_check_s=2", "train.cpus_per_worker=0.5",
         f"train.worker_resources={json.dumps(TRAINER)}"],
        runtime_env=runtime_env, submission_id="elastic", wait=False,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    jobs = JobSubmissionClient(cluster.address)

    def log() -> str:
        return jobs.get_job_logs("elastic")

    _wait_until(lambda: _alive_train_workers(cluster) == 2, "two workers running", timeout_s=240)
    # Rank 0 says each epoch line before it reports that checkpoint: after the second, the first is Ray
    # Train's (a node lost before any checkpoint would restart the run from scratch, with nothing to resize).
    _wait_until(lambda: log().count("pretrain: epoch") >= 2, "two checkpoints at two workers", timeout_s=300)
    cluster.kill_node("node_b")
    _wait_until(lambda: "pretrain: resized 2 → 1" in log(), "the run resized to one worker", timeout_s=300)
    epochs_at_one = log().count("pretrain: epoch")
    _wait_until(lambda: log().count("pretrain: epoch") > epochs_at_one, "a checkpoint at one worker", timeout_s=300)
    cluster.add_node("node_b", cpus=1, resources=TRAINER)
    _wait_until(lambda: jobs.get_job_status("elastic").is_terminal(), "the job to end", timeout_s=600)
    assert jobs.get_job_status("elastic") == JobStatus.SUCCEEDED, log()[-4000:]

    metrics = Location.of(uri).child("metrics.json").read_json()
    assert metrics["samples"] == metrics["planned_samples"] == steps * batch and metrics["final"]["step"] == steps
    resize_lines = [line for line in log().splitlines() if "pretrain: resized" in line or "pretrain: epoch" in line]
    assert [(r["old_world_size"], r["new_world_size"], r["why"]) for r in metrics["resizes"]] == [
        (2, 1, "worker or node lost"),
        (1, 2, "capacity came back"),
    ], resize_lines
    lost, back = (r["step"] for r in metrics["resizes"])
    assert 0 < lost < back < steps, "each resize resumed from a checkpoint of the run"
    assert f"pretrain: resized 2 → 1 workers at step {lost} (worker or node lost)" in log()
    sizes = [report["world_size"] for report in metrics["history"]]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2


def _alive_train_workers(cluster: LocalRayCluster) -> int:
    filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    return len(list_actors(address=cluster.address, filters=filters, limit=100))


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(1)


def _wait_for_json(url: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
