"""Prepare benchmark: throughput per core against a `wfdb.rdsamp` loop, and streaming memory.

    python -m tests.benchmarks.bench_prepare                      # both parts, figures as markdown
    python -m tests.benchmarks.bench_prepare --records 4000 --memory-sizes 1000 10000

Throughput: the same records (PTB-XL-500 from ../shared, replicated under new ids to --records so
cluster start-up does not dominate; synthetic records where ../shared is absent) are read by
(a) a plain Python loop of `wfdb.rdsamp`, one core; (b) a loop of this project's reader plus the
default preprocessing, one core, no Ray; (c) `prepare` on a local Ray cluster of --cpus CPUs, timed
from listing to manifest. Per core = records/s ÷ CPUs. All in one run, so the ratios are fair.

Memory: `prepare` on 1k and 10k synthetic records, each in its own process with its own Ray
cluster; the peak is the summed PSS of that process and all its descendants (driver, raylet,
workers, object store pages), sampled every 0.25 s. Streaming means it stays flat.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tests.benchmarks.peak_memory import run_measured

SHARED_PTBXL = Path(__file__).resolve().parents[3] / "shared" / "data" / "ptbxl-500"


def replicated_ptbxl(root: Path, n: int) -> Path:
    """A PTB-XL layout of n rows whose records are PTB-XL-500's, listed repeatedly under new ids."""
    root.mkdir(parents=True)
    (root / "records500").symlink_to(SHARED_PTBXL / "records500")
    (root / "records100").symlink_to(SHARED_PTBXL / "records100")
    shutil.copy(SHARED_PTBXL / "scp_statements.csv", root)
    database = pd.read_csv(SHARED_PTBXL / "ptbxl_database.csv")
    rows = pd.concat([database] * (n // len(database) + 1)).head(n).reset_index(drop=True)
    rows["ecg_id"] = range(1, n + 1)
    rows["patient_id"] = range(1, n + 1)
    rows.to_csv(root / "ptbxl_database.csv", index=False)
    return root


def synthetic_archive(root: Path, n: int) -> Path:
    from pipelines.synthetic import SyntheticConfig, generate_ptbxl_layout

    generate_ptbxl_layout(root, SyntheticConfig(n=n))
    return root


def record_paths(archive: Path) -> list[str]:
    database = pd.read_csv(archive / "ptbxl_database.csv")
    return [str(archive / name) for name in database["filename_hr"]]


def rate_of(loop, items) -> float:
    started = time.perf_counter()
    for item in items:
        loop(item)
    return len(items) / (time.perf_counter() - started)


def throughput(archive: Path, cpus: int) -> dict:
    import ray
    import wfdb

    from pipelines.data.preprocess import PreprocessConfig, preprocess
    from pipelines.data.sources import SourceOptions
    from pipelines.data.wfdb_io import read_record
    from pipelines.prepare import prepare

    paths = record_paths(archive)
    figures = {"records": len(paths)}
    figures["rdsamp_loop_per_s"] = rate_of(wfdb.rdsamp, paths)
    config = PreprocessConfig()
    figures["reader_preprocess_loop_per_s"] = rate_of(lambda p: preprocess(read_record(p), config), paths)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def timed_prepare(limit: int) -> float:
        output = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
        started = time.perf_counter()
        options = SourceOptions(input=archive, report="raw", limit=limit)
        manifest = prepare("ptbxl", options, str(output), progress_interval_s=3600)
        elapsed = time.perf_counter() - started
        assert manifest["records_in"] == limit == manifest["records_kept"] + manifest["records_rejected"]
        shutil.rmtree(output)
        return elapsed

    n, quarter = len(paths), len(paths) // 4
    figures["prepare_cold_per_s"] = n / timed_prepare(n)  # the first job also starts the worker processes
    full, small = timed_prepare(n), timed_prepare(quarter)
    figures["prepare_warm_per_s"] = n / full
    figures["prepare_marginal_per_s"] = (n - quarter) / (full - small)  # per-record rate, job overhead removed
    figures["prepare_job_overhead_s"] = full - n / figures["prepare_marginal_per_s"]
    ray.shutdown()
    figures["cpus"] = cpus
    return figures


def peak_memory_of_prepare(archive: Path) -> float:
    """Peak summed PSS (MiB) of a `python -m pipelines.prepare` process tree over `archive`."""
    output = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    command = [
        sys.executable,
        "-m",
        "pipelines.prepare",
        "--source",
        "ptbxl",
        "--report",
        "raw",
        "--input",
        str(archive),
        "--output",
        str(output / "shards"),
    ]
    try:
        return run_measured(command, env, timeout_s=1800).peak_mib
    finally:
        shutil.rmtree(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=4000, help="records for the throughput part")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[1000, 10000], help="synthetic archive sizes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-archives-"))
    try:
        if SHARED_PTBXL.is_dir():
            archive, corpus = replicated_ptbxl(work / "ptbxl", args.records), f"PTB-XL-500 x{args.records / 500:g}"
        else:
            archive, corpus = synthetic_archive(work / "synthetic", args.records), "synthetic"
        figures = throughput(archive, args.cpus)
        base = figures["rdsamp_loop_per_s"]
        print(f"\n### prepare throughput ({figures['records']:,} records, {corpus}, {figures['cpus']} CPUs)\n")
        print("| reader | records/s | per core | per core vs rdsamp loop |")
        print("| --- | ---: | ---: | ---: |")
        rows = [
            ("`wfdb.rdsamp` loop (1 core)", figures["rdsamp_loop_per_s"], 1),
            (
                "project reader + default preprocessing loop (1 core, no Ray)",
                figures["reader_preprocess_loop_per_s"],
                1,
            ),
            ("`prepare` on Ray, first run (includes worker start-up)", figures["prepare_cold_per_s"], figures["cpus"]),
            ("`prepare` on Ray, warm workers", figures["prepare_warm_per_s"], figures["cpus"]),
            (
                "`prepare` on Ray, per-record rate without the fixed job cost",
                figures["prepare_marginal_per_s"],
                figures["cpus"],
            ),
        ]
        for name, rate, cores in rows:
            print(f"| {name} | {rate:,.0f} | {rate / cores:,.0f} | {rate / cores / base:.1f}x |")
        print(
            f"\nFixed cost of one prepare job (listing, Ray Data planning, progress actor): "
            f"{figures['prepare_job_overhead_s']:.1f} s"
        )
        if args.memory_sizes:
            print("\n### prepare peak memory (PSS of driver + Ray processes)\n")
            print("| synthetic records | peak MiB | vs smallest |")
            print("| ---: | ---: | ---: |")
            peaks = []
            for n in args.memory_sizes:
                peaks.append(peak_memory_of_prepare(synthetic_archive(work / f"memory-{n}", n)))
                shutil.rmtree(work / f"memory-{n}")
                print(f"| {n:,} | {peaks[-1]:,.0f} | {peaks[-1] / peaks[0]:.2f}x |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
