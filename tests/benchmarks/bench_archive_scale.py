"""Archive scale: N synthetic ECGs through generate → prepare → score, plus one pretraining epoch, each stage
against its limit and its peak memory against the same pipeline at a smaller size, in one run.

    python -m tests.benchmarks.bench_archive_scale --records 100000 --train-records 20000 \\
        --compare-records 10000 --workdir /tmp/scale [--bucket]

Each stage runs as the user runs it, its command line as a subprocess (start-up included), timed from start to
exit, its peak memory the summed PSS of the command and every Ray process it starts (`peak_memory`):

- generate: `python -m pipelines.synthetic --n N` (WFDB records in PTB-XL's layout, one core);
- prepare: `python -m pipelines.prepare --source ptbxl --report raw` on that folder (what `--source synthetic`
  does after generating; the generator writes PTB-XL's layout). Limit: this project's reader
  (`wfdb_io.read_record`) in a loop on one core over the same files;
- pretrain: one epoch over a folder of links to the first train shards holding about --train-records rows,
  tiny config, 2 workers, ZeRO-2, `train.validate_every=0`. Limit: the bare PyTorch loop of `bench_pretrain`
  (same model and optimizer, rows held in memory, one thread);
- score: `python -m pipelines.score --actors <cores>` over all shards with that run's export. Limit:
  `Scorer.embed` + `Scorer.scores` over shard rows held in memory, same batch size, one thread.

The whole pipeline runs first at --compare-records (pretraining over the same fraction of its records) for the
memory comparison, then at --records; limits are measured on the --records run's files. Per core = records/s ÷
os.cpu_count() (generate: ÷ 1, it is one process); "own clock" = the stage's rate by its own timer, without
process and Ray start-up. With --bucket: a moto S3 server (`tests.object_store`), `prepare --output s3://…`, then
`score --input s3://… --output s3://…` SIGKILLed (its whole process group and every descendant) once about half
its parts are in the bucket, rerun to the end, and checked: every shard row scored exactly once (ids distinct,
their count equal to the summary's, records in = scored + rejected = rows prepared).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow.dataset
import pyarrow.parquet as pq
import torch

from models.factory import resolve_config
from models.model import ECGTextModel
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.data.wfdb_io import read_record
from pipelines.serving.batch_scoring import SCORES_DIR
from pipelines.serving.scorer import Scorer
from pipelines.training.config import TrainConfig
from tests.benchmarks.bench_prepare import rate_of, record_paths
from tests.benchmarks.bench_pretrain import bare_loop, in_memory_batches
from tests.benchmarks.bench_score import raw_forward
from tests.benchmarks.peak_memory import Measured, PeakSampler, run_measured

PYTHON = sys.executable
CONFIG, BATCH_SIZE, SCORE_BATCH = "tiny", 32, 64
ONE_PROCESS = {"generate"}
"""Stages that run in one single-threaded process: their per-core rate is their rate."""
READ_SAMPLE, FORWARD_ROWS, BARE_STEPS, BARE_SKIP = 3000, 1024, 24, 8


@dataclass(frozen=True)
class Run:
    """One pipeline at one size: its folders and, per stage, the records it handled and its measurement."""

    root: Path
    stages: dict[str, tuple[int, Measured]]

    @property
    def archive(self) -> Path:
        return self.root / "wfdb"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def train_subset(self) -> Path:
        return self.root / "train-subset"

    @property
    def export(self) -> Path:
        return self.root / "pretrain" / "export"


def stage_env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def train_subset(shards: Path, into: Path, rows: int) -> int:
    """A folder of links to `shards`' first train shards holding at least `rows` rows (or all of them), every
    val shard and the manifest; the train rows linked."""
    into.mkdir()
    linked = 0
    for shard in sorted(shards.glob("part-train-*.parquet")):
        if linked >= rows:
            break
        (into / shard.name).symlink_to(shard)
        linked += pq.ParquetFile(shard).metadata.num_rows
    for path in [*shards.glob("part-val-*.parquet"), shards / "manifest.json"]:
        (into / path.name).symlink_to(path)
    return linked


def run_pipeline(root: Path, records: int, train_records: int, cores: int) -> Run:
    """generate → prepare → pretrain (one epoch over about `train_records`) → score, each CLI measured."""
    run = Run(root, {})
    root.mkdir(parents=True)
    env, logs = stage_env(), root / "logs"
    logs.mkdir()

    def stage(name: str, count: int, *args: str) -> None:
        run.stages[name] = (count, run_measured([PYTHON, "-m", *args], env, logs / f"{name}.log"))
        print(f"  {name}: {count:,} records, {run.stages[name][1]}", flush=True)

    stage("generate", records, "pipelines.synthetic", "--n", str(records), "--output", str(run.archive))
    prepare_args = ["--source", "ptbxl", "--report", "raw", "--input", str(run.archive), "--output"]
    stage("prepare", records, "pipelines.prepare", *prepare_args, str(run.shards))
    trained = train_subset(run.shards, run.train_subset, train_records)
    stage(
        "pretrain", trained, "pipelines.pretrain", "--data", str(run.train_subset), "--output", str(root / "pretrain"),
        "--config", CONFIG, "--workers", "2", "--zero-stage", "2", "--epochs", "1",
        "train.validate_every=0", f"train.batch_size={BATCH_SIZE}",
    )  # fmt: skip
    kept = json.loads((run.shards / "manifest.json").read_text())["records_kept"]
    stage(
        "score", kept, "pipelines.score", "--model", str(run.export), "--input", str(run.shards),
        "--output", str(root / "scores"), "--actors", str(cores), "--batch-size", str(SCORE_BATCH),
    )  # fmt: skip
    return run


def limits(run: Run) -> dict[str, tuple[str, float]]:
    """Per stage, the limit's name and its records/s on one core, measured on `run`'s files."""
    torch.set_num_threads(1)
    paths = record_paths(run.archive)[:READ_SAMPLE]
    read = rate_of(read_record, paths)
    files = sorted(str(path) for path in run.shards.glob("part-*.parquet"))
    table = pyarrow.dataset.dataset(files, format="parquet").head(FORWARD_ROWS, columns=["signal", "lead_mask"])
    scorer = Scorer(run.export, "synthetic", threads=1)
    forward = raw_forward(scorer, signals_of(table), lead_masks_of(table), SCORE_BATCH)
    config = resolve_config(CONFIG)
    batches = in_memory_batches(str(run.train_subset), ECGTextModel(config), BATCH_SIZE, 4)
    bare = bare_loop(config, batches, BARE_STEPS, BARE_SKIP, threads=1, train=TrainConfig(batch_size=BATCH_SIZE))
    return {
        "prepare": (f"`read_record` loop, {len(paths):,} files", read),
        "pretrain": ("bare PyTorch loop, rows in memory", bare),
        "score": (f"bare forward, {len(table):,} rows in memory", forward),
    }


def own_clock(run: Run, name: str) -> float | None:
    """The stage's records/s by its own clock, without process and Ray start-up: prepare's manifest (listing to
    manifest), score's summary (its job), pretraining's final window (`samples_per_s` of metrics.json); None for
    generate (no start-up to leave out)."""
    if name == "prepare":
        return json.loads((run.shards / "manifest.json").read_text())["records_per_second"]
    if name == "score":
        summary = json.loads((run.root / "scores" / "summary.json").read_text())
        return summary["rows"] / summary["elapsed_seconds"]
    if name == "pretrain":
        return json.loads((run.root / "pretrain" / "metrics.json").read_text())["final"]["samples_per_s"]
    return None


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_tree(process: subprocess.Popen, known: list[psutil.Process]) -> None:
    """SIGKILL the process group of `process` (its own session) and every descendant seen, by PID."""
    os.killpg(process.pid, signal.SIGKILL)
    for proc in known + descendants(process.pid):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()
    psutil.wait_procs(known, timeout=30)


def killed_and_rerun(run: Run, store, env: dict[str, str]) -> dict:
    """prepare into the bucket, score from it killed half-way, rerun; the reconciliation figures."""
    shards, scores = store.uri("archive-scale/shards"), store.uri("archive-scale/scores")
    logs = run.root / "logs"
    prepared = run_measured(
        [PYTHON, "-m", "pipelines.prepare", "--source", "ptbxl", "--report", "raw", "--input", str(run.archive),
         "--output", shards], env, logs / "prepare-s3.log",
    )  # fmt: skip
    units = [key for key in store.keys("archive-scale/shards/") if key.rsplit("/", 1)[-1].startswith("part-")]
    command = [
        PYTHON, "-m", "pipelines.score", "--model", str(run.export), "--input", shards, "--output", scores,
        "--actors", str(os.cpu_count()), "--batch-size", str(SCORE_BATCH),
    ]  # fmt: skip
    with open(logs / "score-s3-killed.log", "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        sampler, seen = PeakSampler(process.pid), []
        while (parts := len(store.keys(f"archive-scale/scores/{SCORES_DIR}/"))) < len(units) / 2:
            if process.poll() is not None:
                raise RuntimeError(f"score exited {process.returncode} before half its parts were written: {out.name}")
            seen = list({proc.pid: proc for proc in seen + descendants(process.pid)}.values())
            time.sleep(0.2)
        kill_tree(process, seen)
        killed_after = time.perf_counter() - started
        peak_killed = sampler.stop()
    left = [proc.pid for proc in seen if alive(proc)]
    rerun = run_measured(command, env, logs / "score-s3-rerun.log")
    summary_object = store.client().get_object(Bucket=store.bucket, Key="archive-scale/scores/summary.json")
    summary = json.loads(summary_object["Body"].read())
    ids = pyarrow.dataset.dataset(f"{scores}/{SCORES_DIR}", format="parquet").to_table(columns=["ecg_id"])["ecg_id"]
    distinct = len(set(ids.to_pylist()))
    rows = json.loads((run.shards / "manifest.json").read_text())["records_kept"]
    resumed = re.search(r"(\d+) already done", (logs / "score-s3-rerun.log").read_text())
    return {
        "prepare_s3": prepared,
        "units": len(units),
        "parts_at_kill": parts,
        "killed_after_s": killed_after,
        "peak_killed_mib": peak_killed,
        "left_running": left,
        "rerun": rerun,
        "ids": len(ids),
        "distinct_ids": distinct,
        "rerun_found_done": int(resumed[1]) if resumed else None,
        "summary": {key: summary[key] for key in ("records_in", "scored", "rejected")},
        "rows_prepared": rows,
        "exactly_once": len(ids) == distinct == summary["scored"] == rows
        and summary["records_in"] == summary["scored"] + summary["rejected"] == rows,
    }


def bucket_run(run: Run) -> dict:
    from tests.object_store import start_object_store

    store, server = start_object_store()
    try:
        os.environ.update(store.env)  # for this process's reads of the bucket
        return killed_and_rerun(run, store, {**stage_env(), **store.env})
    finally:
        server.terminate()
        server.wait(timeout=30)


def cell(value: float | None) -> str:
    return f"{value:,.1f}" if value else "—"


def ratio(value: float | None, bound: float | None) -> str:
    return f"{value / bound:.2f}x" if value and bound else "—"


def print_report(big: Run, small: Run, limit: dict, cores: int, bucket: dict | None) -> None:
    print(
        f"\n### Archive scale: {big.stages['generate'][0]:,} records, {cores} cores (per core = ÷ {cores}; "
        f"{', '.join(sorted(ONE_PROCESS))}: one process, ÷ 1)\n"
    )
    print(
        "| stage | records | seconds | records/s per core | own clock, per core | limit | limit, per core "
        f"| stage / limit | own clock / limit | peak MiB | peak MiB at {small.stages['generate'][0]:,} | peak ratio |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (records, measured) in big.stages.items():
        used = 1 if name in ONE_PROCESS else cores
        rate, inner = records / measured.seconds / used, own_clock(big, name)
        inner = inner / cores if inner else None
        what, bound = limit.get(name, ("—", None))
        small_records, small_peak = small.stages[name][0], small.stages[name][1].peak_mib
        print(
            f"| {name} | {records:,} | {measured.seconds:,.1f} | {rate:,.1f} | {cell(inner)} | {what} | {cell(bound)} "
            f"| {ratio(rate, bound)} | {ratio(inner, bound)} | {measured.peak_mib:,.0f} "
            f"| {small_peak:,.0f} ({small_records:,} rec.) | {measured.peak_mib / small_peak:.2f}x |"
        )
    if bucket:
        summary = bucket["summary"]
        verdict = "every record scored exactly once" if bucket["exactly_once"] else "**DOES NOT RECONCILE**"
        print(
            f"\nBucket (moto S3): prepare → s3 {bucket['prepare_s3'].seconds:,.1f} s; score from s3 SIGKILLed after "
            f"{bucket['killed_after_s']:.1f} s at {bucket['parts_at_kill']}/{bucket['units']} parts "
            f"(peak {bucket['peak_killed_mib']:,.0f} MiB; processes left running: {len(bucket['left_running'])}), "
            f"rerun {bucket['rerun'].seconds:,.1f} s (found {bucket['rerun_found_done']} parts done; peak "
            f"{bucket['rerun'].peak_mib:,.0f} MiB): {bucket['ids']:,} ids, {bucket['distinct_ids']:,} distinct; "
            f"summary {summary['records_in']:,} in = {summary['scored']:,} scored + {summary['rejected']:,} rejected; "
            f"{bucket['rows_prepared']:,} rows prepared → {verdict}."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--train-records", type=int, default=20_000, help="train rows of the pretraining epoch")
    parser.add_argument("--compare-records", type=int, default=10_000, help="size of the memory comparison run")
    parser.add_argument("--workdir", type=Path, required=True, help="a new folder (removed at the end)")
    parser.add_argument("--bucket", action="store_true", help="also score from a moto S3 bucket, killed and rerun")
    parser.add_argument("--keep", action="store_true", help="keep --workdir")
    args = parser.parse_args()
    if args.workdir.exists():
        parser.error(f"--workdir {args.workdir} exists; give a new folder")
    cores = os.cpu_count()
    try:
        fraction = args.compare_records / args.records
        print(f"pipeline at {args.compare_records:,} records", flush=True)
        small_train = round(args.train_records * fraction)
        small = run_pipeline(args.workdir / "compare", args.compare_records, small_train, cores)
        shutil.rmtree(small.root / "wfdb")
        print(f"pipeline at {args.records:,} records", flush=True)
        big = run_pipeline(args.workdir / "main", args.records, args.train_records, cores)
        limit = limits(big)
        bucket = bucket_run(big) if args.bucket else None
        print_report(big, small, limit, cores, bucket)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
