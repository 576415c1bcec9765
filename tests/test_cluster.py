"""The multi-node way, for real: a head and two worker nodes on this machine, a moto S3 server, and the
stages sent as `ray job submit --runtime-env` jobs, exactly as the README's cluster section types them.

The cluster is the session's (`tests.ray_cluster.multinode_cluster`): a head with no CPU (it runs the job
drivers, the Train controller and the Serve proxy) and `node_a`, `node_b` with one CPU each, sharing nothing
but the network (no /tmp, HOME or working folder in common; the project only in each job's upload). The
pretraining run takes its text tower from the bucket, as MELP's stage 2 takes stage 1's encoder, and adds two nodes of its own that offer a `trainer` each (one Ray Train worker per node), loses one mid-run
and gets one back: the elastic run is also the run whose export is evaluated, scored and served. Shards,
checkpoints, the export, scores and evaluation live only in the bucket; the jobs reach it by the AWS_*
variables in their runtime environment (a copy of `cluster/runtime_env.yaml` with `env_vars`), the way a user
passes credentials to a cluster whose nodes have none. Each stage's output is a module fixture, so the stages
run once, in order.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors, list_nodes

from pipelines.storage import Location
from tests.archives import write_mimic_archive
from tests.ray_cluster import REPO, LocalRayCluster, free_ports

pytestmark = pytest.mark.slow

N_ECGS = 600
WORKER_GROUP_START_TIMEOUT_S = "5"
"""Ray Train's wait for a worker group's placement group (60 s by default; the workers' start-up is not in it):
after a node is lost, the first restart asks for as many workers as before, and only this timeout sends it down
to the workers left. Measured 2026-12-07 at 30: node marked dead 13 s after the kill, resized 37 s later."""
STEPS, BATCH = 160, 8
"""Enough steps left after the shrink for the run to grow back before it ends. Measured 2026-12-07 (tiny model,
random tiny text tower, the node added back at once): one worker trains 0.9 to 2.4 steps/s while the new node
boots, and the run grew back 42 to 46 s after the shrink (at step 16 or 32), at step 56 to 110: at 160, at least
50 steps (20 s at two workers) are left when it does. Every step after that costs 0.4 s of the suite."""
TRAINER = {"trainer": 1}
"""What each Ray Train worker needs and each trainer node offers one of: one worker per node (Ray's elastic policy
counts the workers a node has room for by resources alone, so STRICT_SPREAD cannot express it)."""
TRAINER_NODES = ("trainer_a", "trainer_b")
PRETRAIN = ["--workers", "1-2", "--max-steps", str(STEPS), "--config", "tiny", "--objective", "mets", "--zero-stage",
            "2", "--val-rows", "64", f"train.batch_size={BATCH}", "train.warmup_steps=1", "train.validate_every=16",
            "train.progress_every_s=0", "train.checkpoints_to_keep=1", "train.max_failures=3", "train.resize_check_s=2",
            "train.cpus_per_worker=0.5", f"train.worker_resources={json.dumps(TRAINER)}"]


@pytest.fixture(scope="module")
def cluster(multinode_cluster) -> LocalRayCluster:
    return multinode_cluster


@pytest.fixture(scope="module")
def runtime_env(object_store, tmp_path_factory) -> Path:
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
def shards(cluster, runtime_env, object_store) -> str:
    uri = object_store.uri("shards")
    submit(cluster, runtime_env, "prepare", "pipelines.prepare", "--source", "synthetic", "--input", str(N_ECGS),
           "--output", uri)
    return uri


@dataclass(frozen=True)
class ElasticRun:
    """The pretraining job as it went: its run directory, its log, and the nodes its two workers started on."""

    uri: str
    log: str
    first_workers_on: list[str]


@pytest.fixture(scope="module")
def text_encoder(object_store, tmp_path_factory) -> str:
    """A text encoder's Hugging Face folder (a small random BERT with the MiniLM tokenizer), in the bucket only."""
    import torch

    from models.config import TextTowerConfig
    from models.text_tower import TextTower

    folder = tmp_path_factory.mktemp("text-encoder")
    torch.manual_seed(0)
    TextTower(TextTowerConfig(name_or_path="random:tiny")).save_encoder(folder)
    uri = object_store.uri("text-encoder")
    Location.of(uri).upload_from(folder)
    return uri


@pytest.fixture(scope="module")
def run(cluster, runtime_env, object_store, shards, text_encoder) -> ElasticRun:
    """`--workers 1-2`, one worker per trainer node: trainer_b's raylet is killed after a checkpoint at two
    workers, the run goes on at one from that checkpoint (ZeRO-2 state resharded), and when a node joins again it
    grows back to two. The trainer nodes are the run's own and go when it ends."""
    uri = object_store.uri("runs/elastic")
    cluster.add_node(*TRAINER_NODES, cpus=1, resources=TRAINER)
    try:
        submitted = cluster.submit(
            ["python", "-m", "pipelines.pretrain", "--data", shards, "--output", uri, *PRETRAIN,
             f"text.name_or_path={text_encoder}"],
            runtime_env=runtime_env, submission_id="elastic", wait=False,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        jobs = JobSubmissionClient(cluster.address)

        def log() -> str:
            return jobs.get_job_logs("elastic")

        _wait_until(lambda: len(_alive_train_workers(cluster)) == 2, "two workers running", timeout_s=240)
        first_workers_on = sorted(_alive_train_workers(cluster))
        # Rank 0 says each epoch line before it reports that checkpoint: after the second, the first is Ray
        # Train's (a node lost before any checkpoint would restart the run from scratch, with nothing to resize).
        _wait_until(lambda: log().count("pretrain: epoch") >= 2, "two checkpoints at two workers", timeout_s=300)
        cluster.kill_node("trainer_b")
        _wait_until(lambda: "pretrain: resized 2 → 1" in log(), "the run resized to one worker", timeout_s=300)
        cluster.add_node("trainer_b", cpus=1, resources=TRAINER)  # it grows from a checkpoint made at one worker
        _wait_until(lambda: jobs.get_job_status("elastic").is_terminal(), "the job to end", timeout_s=600)
        assert jobs.get_job_status("elastic") == JobStatus.SUCCEEDED, log()[-4000:]
        return ElasticRun(uri, log(), first_workers_on)
    finally:
        for node in TRAINER_NODES:
            if node in cluster.nodes:
                cluster.kill_node(node)
        # Until the head marks them dead (a few missed health checks), it would still place work on them.
        cluster.wait_for_resource("trainer", present=False)


def test_prepare_writes_shards_only_to_the_bucket(shards, object_store):
    manifest = Location.of(shards).child("manifest.json").read_json()
    assert manifest["records_in"] == N_ECGS == manifest["records_kept"], "every generated ECG read on every node"
    assert any(key.endswith(".parquet") for key in object_store.keys("shards/"))
    assert not (REPO / "data" / "shards").exists()


def test_prepare_reads_an_archive_that_lies_only_in_the_bucket(cluster, runtime_env, object_store, tmp_path):
    """A MIMIC-IV-ECG-layout archive in the bucket: the job plans from its record_list.csv and the read tasks,
    on nodes that share nothing, read each record from the bucket; every record accounted."""
    archive = object_store.uri("archives/mimic-iv-ecg")
    Location.of(archive).upload_from(write_mimic_archive(tmp_path / "mimic", n_studies=8))
    output = object_store.uri("shards-from-mimic")
    submit(cluster, runtime_env, "prepare-mimic", "pipelines.prepare", "--source", "mimic", "--input", archive,
           "--output", output, "--min-report-words", "0", "--batch-size", "2")
    manifest = Location.of(output).child("manifest.json").read_json()
    assert manifest["input"] == archive and manifest["records_in"] == 8 and manifest["records_kept"] == 7
    assert manifest["rejections_by_reason"] == {"no machine measurements": 1}


def test_a_plain_output_path_is_refused_unless_declared_a_shared_mount(cluster, runtime_env, shards, tmp_path):
    """A path on the driver's disk would not hold what tasks on the other nodes write: each stage refuses it before
    anything runs, naming the flag; with the flag, prepare writes into a folder every node sees (the session's
    folder, which no node mounts over: a shared mount here)."""
    output = submit(cluster, runtime_env, "node-local-outputs", "tests.node_local_outputs", shards, str(tmp_path))
    results = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    for stage in ("prepare", "pretrain", "sweep"):
        code, message = results[stage]
        assert code == 2 and re.search(r"--output /\S+ is a path on each node's own disk, and the Ray cluster has \d nodes", message), (stage, message)
        assert "pass --shared-mount if every node mounts that path" in message
    assert results["prepare --shared-mount"][0] == 0, results
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["records_in"] == 8 and all((tmp_path / "shards" / shard["file"]).is_file() for shard in manifest["shards"])


def test_pretraining_runs_one_zero2_worker_per_node_with_everything_in_the_bucket(run, object_store):
    keys = object_store.keys("runs/elastic/")
    for expected in ("config.json", "made_by.json", "metrics.json", "export/model.safetensors", "export/config.json",
                     "logs/pretrain.log", "logs/worker-0.log", "logs/worker-1.log"):
        assert f"runs/elastic/{expected}" in keys, f"{expected} missing from the bucket: {keys[:40]}"
    assert any("/train/checkpoint-step" in key and "zero_pp_rank_1" in key for key in keys)  # rank 1's ZeRO-2 shard
    assert Location.of(run.uri).child("metrics.json").read_json()["total_steps"] == STEPS
    assert run.first_workers_on == ["trainer_a", "trainer_b"], "one Ray Train worker on each trainer node"
    assert "pretrain: started on 2 workers" in run.log, "the world size at start, after the plan's 1-2"
    lines = run.log.splitlines()
    assert not any(line.startswith("(raylet)") for line in lines) and "\x1b[" not in run.log, "Ray's own printing"
    assert any(line.startswith("error: The node with node id") for line in lines), "the node's loss, through our log"
    # The final table: the metric the best checkpoint was selected by, and its value.
    assert re.search(r"^selected by\s+val_macro_auroc$", run.log, re.MULTILINE), run.log[-3000:]
    assert re.search(r"^val_macro_auroc\s+\d\.\d{4}$", run.log, re.MULTILINE)


def test_an_elastic_run_loses_a_node_goes_on_grows_back_and_ends_at_the_planned_samples(run, object_store):
    """It ends at its planned samples, and metrics.json and the progress lines record both resizes; each start
    of the loop wrote its checkpoints into folders of its own, each holding the shards of its own world size."""
    metrics = Location.of(run.uri).child("metrics.json").read_json()
    assert metrics["samples"] == metrics["planned_samples"] == STEPS * BATCH and metrics["final"]["step"] == STEPS
    resize_lines = [line for line in run.log.splitlines() if "pretrain: resized" in line or "pretrain: epoch" in line]
    assert [(r["old_world_size"], r["new_world_size"], r["why"]) for r in metrics["resizes"]] == [
        (2, 1, "worker or node lost"),
        (1, 2, "capacity came back"),
    ], resize_lines
    lost, back = (r["step"] for r in metrics["resizes"])
    assert 0 < lost < back < STEPS, "each resize resumed from a checkpoint of the run"
    assert f"pretrain: resized 2 → 1 workers at step {lost} (worker or node lost)" in run.log
    sizes = [report["world_size"] for report in metrics["history"]]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2
    reports = {report["checkpoint"]: report for report in metrics["history"]}
    assert len(reports) == len(metrics["history"]), "no attempt reported into another attempt's folder"
    attempts = list(dict.fromkeys(name.rsplit("-", 1)[1] for name in reports))
    assert len(attempts) >= 3, list(reports)  # two workers, one after the loss, two again
    keys = object_store.keys("runs/elastic/train/")
    for name, report in reports.items():
        shards = [key for key in keys if f"/{name}/" in key and key.endswith("optim_states.pt")]
        assert not shards or len(shards) == report["world_size"], (name, shards)  # kept checkpoints are whole


def test_evaluate_and_score_jobs_read_the_export_from_the_bucket(cluster, runtime_env, object_store, shards, run):
    """Fine-tuning's two workers, one per node, keep their checkpoints in the bucket, where the driver reads them."""
    export = f"{run.uri}/export"
    submit(cluster, runtime_env, "evaluate", "pipelines.evaluate", "--model", export, "--data", shards,
           "--output", object_store.uri("eval/mets"), "--no-baselines", "--mode", "zero-shot", "finetune",
           "--workers", "2", "train.epochs=1", "train.batch_size=32")
    report = Location.of(object_store.uri("eval/mets/report.md")).read_text()
    assert "AUROC" in report
    metrics = Location.of(object_store.uri("eval/mets/metrics.json")).read_json()
    assert 0 <= metrics["finetune"]["macro_auroc"] <= 1 and metrics["finetune"]["epochs"] == 1
    assert metrics["finetune"]["per_class_auroc"].keys() == metrics["zero_shot"]["per_class_auroc"].keys()
    assert any("eval/mets/finetune/" in key for key in object_store.keys("eval/mets/"))
    submit(cluster, runtime_env, "score", "pipelines.score", "--model", export, "--input", shards,
           "--output", object_store.uri("scores/mets"), "--actors", "2")
    summary = Location.of(object_store.uri("scores/mets/summary.json")).read_json()
    manifest = Location.of(shards).child("manifest.json").read_json()
    assert summary["scored"] == manifest["rows"]
    assert sum(summary["units_by_node"].values()) == summary["units"]
    scoring_actors = [actor for actor in list_actors(address=cluster.address, detail=True, limit=1000,
                                                      raise_on_missing_output=False)
                      if "MapWorker" in actor.class_name and actor.job_id == _job_id(cluster, "score")]
    assert len(scoring_actors) == 2 and len({actor.node_id for actor in scoring_actors}) == 2, "spread over two nodes"
    assert set(summary["units_by_node"]) <= {actor.node_id for actor in scoring_actors}


def test_serve_loads_the_export_from_the_bucket(cluster, runtime_env, run, shard_batch):
    (port,) = free_ports(1)
    submitted = cluster.submit(
        ["python", "-m", "pipelines.serve", "--model", f"{run.uri}/export", "--port", str(port), "--proxy-location",
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


def _job_id(cluster: LocalRayCluster, submission_id: str) -> str:
    """The Ray job id of a submitted job."""
    return JobSubmissionClient(cluster.address).get_job_info(submission_id).job_id


def _alive_train_workers(cluster: LocalRayCluster) -> list[str]:
    """The node names (by their custom resource) of the alive Ray Train workers."""
    names = {node.node_id: next((name for name in cluster.nodes if name in (node.resources_total or {})), "head")
             for node in list_nodes(address=cluster.address, filters=[("state", "=", "ALIVE")],
                                    raise_on_missing_output=False)}
    filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    workers = list_actors(address=cluster.address, filters=filters, limit=100, raise_on_missing_output=False)
    return [names.get(worker.node_id, "?") for worker in workers]


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
