"""Pretraining benchmark: the Ray Train + DeepSpeed loop against a bare single-process PyTorch loop.

    python -m tests.benchmarks.bench_pretrain --data data/synthetic              # shards from pipelines.prepare
    python -m tests.benchmarks.bench_pretrain --data data/synthetic --config merl-vit-tiny --objective mets

One run, side by side: (1) a bare loop (the same model and AdamW, one process, `torch` threads =
the CPUs one Ray worker gets, the same train rows collated once and held in memory); (2)
`pipelines.pretrain` with 1 worker and (3) with 2 workers, ZeRO-2, the same global batch, streaming
from the shards. Ray figures are the workers' own window over the second half of the steps: the
meter restarts after a validation half-way, so start-up, the first data fetch and validation are
left out. The bare loop is timed over the same second half.
Data wait = the share of step time a worker spent waiting for its next batch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from itertools import cycle

import numpy as np
import pyarrow.dataset
import ray
import torch

from models.factory import resolve_config
from models.model import ECGTextModel
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.training.config import TrainConfig
from pipelines.training.launch import pretrain
from pipelines.training.optimization import build_optimizer


def bare_loop(
    config,
    batches: list[dict],
    steps: int,
    skip: int,
    threads: int,
    train: TrainConfig,
    device: str = "cpu",
    autocast: torch.dtype | None = None,
) -> float:
    """Samples/s of forward + backward + clip + AdamW over in-memory batches on `device` (forward under
    `torch.autocast` to `autocast`, if given), the steps after `skip`."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ECGTextModel(config).to(device)
    optimizer = build_optimizer(model, train)
    batches = [{name: tensor.to(device) for name, tensor in batch.items()} for batch in batches]
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    started = None
    for step, batch in zip(range(steps), cycle(batches)):
        if step == skip:
            synchronize()
            started = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=autocast, enabled=autocast is not None):
            loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
    synchronize()
    return (steps - skip) * len(batches[0]["signal"]) / (time.perf_counter() - started)


def in_memory_batches(data: str, model: ECGTextModel, batch_size: int, n_batches: int) -> list[dict]:
    table = (
        pyarrow.dataset.dataset(data, format="parquet", exclude_invalid_files=True)
        .to_table(columns=["signal", "lead_mask", "report"], filter=pyarrow.dataset.field("split") == "train")
        .slice(0, batch_size * n_batches)
    )
    signals, masks, reports = signals_of(table).astype(np.float32), lead_masks_of(table), table["report"].to_pylist()
    return [
        model.collate(signals[i : i + batch_size], masks[i : i + batch_size], reports[i : i + batch_size])
        for i in range(0, len(reports) - batch_size + 1, batch_size)
    ]


def ray_loop(data: str, config, train: TrainConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as run_dir:
        final = pretrain(data, run_dir, config, train, val_rows=64)["final"]
    return {"samples_per_s": final["samples_per_s"], "data_wait_fraction": final["data_wait_fraction"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--objective", default="melp")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()

    config = resolve_config(args.config, args.objective)
    half = args.steps // 2
    base = dict(
        batch_size=args.batch_size,
        max_steps=2 * half,
        validate_every=half,
        warmup_steps=10,
        zero_stage=2,
        progress_every_s=30.0,
    )
    ray.init(num_cpus=2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    one = ray_loop(args.data, config, TrainConfig(workers=1, **base))
    two = ray_loop(args.data, config, TrainConfig(workers=2, **base))
    ray.shutdown()
    batches = in_memory_batches(args.data, ECGTextModel(config), args.batch_size, 8)
    bare = bare_loop(config, batches, 2 * half, half, threads=1, train=TrainConfig(**base))
    result = {
        "config": args.config,
        "objective": args.objective,
        "batch_size": args.batch_size,
        "bare_samples_per_s": bare,
        "ray_1_worker": one,
        "ray_2_workers": two,
        "ray_1_worker_vs_bare": one["samples_per_s"] / bare,
        "scaling_2_vs_1_workers": two["samples_per_s"] / one["samples_per_s"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
