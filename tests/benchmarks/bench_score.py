"""Batch scoring throughput: `pipelines.score` on Ray Data against the model's raw forward over the same
tensors in one process.

    python -m tests.benchmarks.bench_score --shards data/synthetic-2k [--model EXPORT] [--actors 2] [--copies 5]

The raw loop holds every signal of the shards in memory and runs `Scorer.embed` + `Scorer.scores` in
batches (prepared tensors in, scores out; the export loaded before timing). The Ray path is the whole
`pipelines.score` job: it reads the shards, scores them with the same Scorer inside actors (each loads
the export when it starts) and writes parquet. It runs twice, on the shards as they are and on an
archive of `--copies` links to each shard file, so the per-ECG rate without the job's fixed cost
(actor start-up, model load) is the difference of the two.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset
import torch

from models.factory import create_model
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.score import score
from pipelines.serving.scorer import Scorer


def raw_forward(scorer: Scorer, signals: np.ndarray, masks: np.ndarray, batch_size: int) -> float:
    """ECGs/s of embed + scores over in-memory tensors."""
    labels = scorer.default_labels
    scorer.scores(scorer.embed(signals[:batch_size], masks[:batch_size]), labels)  # warm-up, classifier cached
    started = time.perf_counter()
    for start in range(0, len(signals), batch_size):
        scorer.scores(scorer.embed(signals[start : start + batch_size], masks[start : start + batch_size]), labels)
    return len(signals) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--model", help="an export (default: a freshly initialised tiny model)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--copies", type=int, default=5, help="links to each shard in the larger archive")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    model_dir = args.model or tempfile.mkdtemp(prefix="bench-score-")
    if args.model is None:
        torch.manual_seed(0)
        create_model("tiny", objective="melp")[0].save_pretrained(model_dir)

    table = pyarrow.dataset.dataset(args.shards, format="parquet", exclude_invalid_files=True).to_table(
        columns=["signal", "lead_mask"]
    )
    signals, masks = signals_of(table), lead_masks_of(table)
    scorer = Scorer(model_dir, "synthetic")
    raw = {threads: None for threads in (torch.get_num_threads(), 1)}
    for threads in raw:
        torch.set_num_threads(threads)
        raw[threads] = raw_forward(scorer, signals, masks, args.batch_size)
    torch.set_num_threads(max(raw))

    import ray

    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    with tempfile.TemporaryDirectory() as work:
        copies = Path(work) / "copies"
        shards = sorted(Path(args.shards).resolve().rglob("part-*.parquet"))
        for k in range(args.copies):
            (copies / f"copy{k}").mkdir(parents=True)
            for shard in shards:
                (copies / f"copy{k}" / shard.name).symlink_to(shard)
        score(model_dir, args.shards, f"{work}/warm", batch_size=args.batch_size, actors=args.actors)
        jobs = {}
        for name, archive in (("shards", args.shards), (f"{args.copies} copies", copies)):
            started = time.perf_counter()
            summary = score(model_dir, str(archive), f"{work}/{name}", batch_size=args.batch_size, actors=args.actors)
            jobs[name] = (summary["scored"], time.perf_counter() - started)
    ray.shutdown()

    best_raw = max(raw.values())
    (small, small_s), (large, large_s) = jobs.values()
    marginal = (large - small) / (large_s - small_s)
    print(f"\n### Batch scoring, batch {args.batch_size}, {args.actors} actor(s)\n")
    print("| path | ECGs | seconds | ECGs/s | vs raw forward |\n| --- | ---: | ---: | ---: | ---: |")
    for threads, rate in raw.items():
        print(
            f"| raw forward, one process, {threads} thread(s) | {len(signals):,} | {len(signals) / rate:.1f} | {rate:,.0f} | {rate / best_raw:.2f}x |"
        )
    for name, (rows, seconds) in jobs.items():
        print(
            f"| pipelines.score job, {name} | {rows:,} | {seconds:.1f} | {rows / seconds:,.0f} | {rows / seconds / best_raw:.2f}x |"
        )
    print(f"| pipelines.score per ECG, without the fixed job cost | | | {marginal:,.0f} | {marginal / best_raw:.2f}x |")


if __name__ == "__main__":
    main()
