"""Ingest benchmark: rows/s per CPU core from shards to torch batches, against plain pyarrow + numpy.

    python -m tests.benchmarks.bench_ingest                       # 2,000 synthetic ECGs, 2 CPUs
    python -m tests.benchmarks.bench_ingest --records 4000 --cpus 2 --passes 3

The same train-split shard files (synthetic ECGs prepared into a temporary folder) are read, in one run,
by (a) a loop of `pyarrow.parquet.read_table` (one thread) + numpy conversion (`signal` [B, 12, T]
float16, `lead_mask` [B, 12]) cut into batches, one core; (b) `split_dataset` streamed from the files
(`cache_fraction=0`) through `iter_torch_batches` (same batch size, no collate_fn) on a local Ray
cluster of --cpus CPUs; (c) the same split held in memory (`split_dataset`'s default where it fits), as
in the epochs of a training run. Per core = rows/s ÷ cores (1 for (a), --cpus for (b) and (c)); the
ratio (b) ÷ (a) is the figure the ingest goal is set on (≥ 0.7). The seconds to the first batch show what
a streamed pass pays before it (Ray Data's start, listing task, read tasks), once per epoch. Ray passes are
timed after a warm-up pass (which starts the worker processes).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

COLUMNS = ("signal", "lead_mask")
"""What a training batch carries as tensors (reports are tokenized by the model's collate, not here)."""


def prepared_shards(work: Path, records: int, cpus: int) -> Path:
    import ray

    from pipelines.data.sources import SourceOptions
    from pipelines.prepare import prepare
    from pipelines.synthetic import SyntheticConfig, generate_ptbxl_layout

    archive, shards = work / "archive", work / "shards"
    generate_ptbxl_layout(archive, SyntheticConfig(n=records))
    shards.mkdir()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    prepare("synthetic", SourceOptions(input=archive), str(shards), progress_interval_s=3600)
    shutil.rmtree(archive)
    return shards


def plain_rows_per_s(files: list[str], batch_size: int) -> float:
    """One core: read each file, convert to numpy, cut into batches (views, as a loader would hand out)."""
    rows = 0
    started = time.perf_counter()
    for file in files:
        table = pq.read_table(file, columns=list(COLUMNS), use_threads=False)
        signal = table["signal"].combine_chunks().to_numpy_ndarray()
        lead_mask = table["lead_mask"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, 12)
        for start in range(0, len(signal) - batch_size + 1, batch_size):
            batch = {"signal": signal[start : start + batch_size], "lead_mask": lead_mask[start : start + batch_size]}
            rows += len(batch["signal"])
    return rows / (time.perf_counter() - started)


def ray_rows_per_s(dataset, batch_size: int, passes: int) -> tuple[float, float]:
    """(rows/s of a whole pass, seconds to its first batch) of `iter_torch_batches` over `dataset`: the
    pass with the best rate after a warm-up pass."""
    timings = []
    for _ in range(passes + 1):
        rows, first = 0, None
        started = time.perf_counter()
        for batch in dataset.iter_torch_batches(batch_size=batch_size, drop_last=True, prefetch_batches=2):
            first = first or time.perf_counter() - started
            rows += len(batch["signal"])
        elapsed = time.perf_counter() - started
        timings.append((rows / elapsed, first))
    return max(timings[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000, help="synthetic ECGs to prepare")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per batch (the main job's micro-batch)")
    parser.add_argument("--passes", type=int, default=2, help="timed passes after a warm-up pass")
    args = parser.parse_args()

    import ray

    from pipelines.data.shard_files import split_shards
    from pipelines.training.data import split_dataset

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        shards = prepared_shards(work, args.records, args.cpus)
        files = split_shards([str(shards)], "train").files
        plain = max(plain_rows_per_s(files, args.batch_size) for _ in range(args.passes + 1))
        streamed = ray_rows_per_s(split_dataset(str(shards), "train", COLUMNS, cache_fraction=0), args.batch_size, args.passes)
        held = ray_rows_per_s(split_dataset(str(shards), "train", COLUMNS), args.batch_size, args.passes)
        ray.shutdown()
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        print(f"\n### ingest: train split of {args.records:,} synthetic ECGs ({rows:,} rows, {len(files)} files), "
              f"batch {args.batch_size}, Ray on {args.cpus} CPUs\n")
        print("| reader | rows/s | cores | rows/s per core | vs pyarrow + numpy | first batch |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, rate, cores, first in (
            ("`pq.read_table` + numpy batches, one thread", plain, 1, None),
            ("`split_dataset` streamed → `iter_torch_batches`", streamed[0], args.cpus, streamed[1]),
            ("`split_dataset` held in memory → `iter_torch_batches`", held[0], args.cpus, held[1]),
        ):
            latency = f"{first:.2f} s" if first is not None else ""
            print(f"| {name} | {rate:,.0f} | {cores} | {rate / cores:,.0f} | {rate / cores / plain:.2f} | {latency} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
