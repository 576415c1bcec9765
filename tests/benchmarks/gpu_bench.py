"""GPU readiness in one JSON: the `gpu` tests, training and scoring throughput, the ECG tower's MFU.

    python -m tests.benchmarks.gpu_bench --output gpu_check.json     # tests/benchmarks/gpu_check.sh runs this

Parts, each written into the JSON as soon as it is done (a run cut short keeps what it had; a part that
fails records its error and the rest go on; one that would not fit before `--deadline-s` is skipped):
- tests: `pytest -m gpu tests/test_gpu.py` (a bf16 ZeRO-2 step with nccl, a scoring batch on CUDA);
- device: its name, its bf16 dense peak (`flops.BF16_DENSE_TFLOPS`; null when unknown) and the TFLOP/s an
  8192³ bf16 matmul reaches on it;
- mfu, per config: the ECG tower alone, forward + backward under bf16 autocast, best step; samples/s × its
  training FLOPs counted from the config (`flops.ecg_tower_flops`) against the peak;
- training, per config (MELP objective): `pipelines.pretrain` under Ray Train + DeepSpeed (1 worker, use_gpu,
  ZeRO-2, bf16, synthetic shards) against the bare loop (the same model, batch, AdamW and clipping,
  torch.autocast bf16, batches held on the GPU), each timed over the steps after a validation half-way, as
  `bench_pretrain` does; `tower_mfu` counts only the ECG tower's FLOPs of the whole model's step;
- scoring, per config: whole `pipelines.score` jobs (Ray Data, actors sharing the GPU, fp32 as `Scorer` runs)
  on one shard and on all, against `Scorer`'s raw forward over the same ECGs held in memory; the per-ECG rate
  without the job's fixed cost is the difference of the two jobs.
Without CUDA it writes {"skipped": why}. Exit status 1 when a test failed or a part raised.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from xml.etree import ElementTree

import pyarrow.dataset
import torch

from models.config import load_config
from models.ecg_tower import ECGTower
from models.factory import create_model, resolve_config
from models.model import ECGTextModel
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.data.sources import SourceOptions
from pipelines.prepare import prepare
from pipelines.score import score
from pipelines.serving.scorer import Scorer
from pipelines.synthetic import SyntheticConfig
from pipelines.training.config import TrainConfig
from tests.benchmarks.bench_models import samples_per_second
from tests.benchmarks.bench_pretrain import bare_loop, in_memory_batches, ray_loop
from tests.benchmarks.bench_score import raw_forward
from tests.benchmarks.flops import bf16_peak_tflops, ecg_tower_flops

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("merl-vit-tiny", "melp-base")
NEEDS_S = {"tests": 150, "device": 10, "mfu": 20, "shards": 60, "training": 120, "scoring": 60}
"""About how long each part takes on an H200-class machine (one config where per config): a part is skipped
when less than this is left before the deadline."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu_check.json")
    parser.add_argument("--deadline-s", type=float, default=420.0, help="skip parts that would end after this")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--ecgs", type=int, default=12000, help="synthetic ECGs prepared for training and scoring")
    parser.add_argument("--batch-size", type=int, default=128, help="global training batch")
    parser.add_argument("--steps", type=int, default=72, help="training steps; the second half is timed")
    parser.add_argument("--mfu-batch-size", type=int, default=256)
    parser.add_argument("--score-batch-size", type=int, default=256)
    parser.add_argument("--score-actors", type=int, default=4)
    args = parser.parse_args()
    deadline = time.monotonic() + args.deadline_s
    output = Path(args.output)
    result: dict = {"started": _now(), "environment": environment()}
    if not torch.cuda.is_available():
        _write(output, {"skipped": f"torch {torch.__version__} at {sys.executable} sees no CUDA GPU"} | result)
        return 0

    def part(section: dict, key: str, needs_s: float, measure: Callable[[], dict]) -> dict:
        """section[key] = measure(), or why not (too little time left, or what it raised); then the JSON."""
        left = deadline - time.monotonic()
        if left < needs_s:
            section[key] = {"skipped": f"{left:.0f} s left before the deadline, ~{needs_s} s needed"}
        else:
            try:
                section[key] = measure()
            except Exception as error:  # one broken part must not hide the others' figures
                section[key] = {
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-3000:],
                }
        _write(output, result)
        return section[key]

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        part(result, "tests", NEEDS_S["tests"], lambda: gpu_tests(Path(work) / "gpu-tests.xml"))
        peak = part(result, "device", NEEDS_S["device"], device_figures).get("bf16_dense_peak_tflops")
        result["mfu"] = {}
        for name in args.configs:
            part(result["mfu"], name, NEEDS_S["mfu"], partial(tower_mfu, name, args.mfu_batch_size, peak))
        torch.cuda.empty_cache()
        _start_ray()
        shards = Path(work) / "shards"
        part(result, "shards", NEEDS_S["shards"], lambda: synthetic_shards(args.ecgs, shards))
        result["training"], result["scoring"] = {}, {}
        with_shards = args.configs if "rows_by_split" in result["shards"] else []
        for name in with_shards:
            measure = partial(training, name, shards, args.batch_size, args.steps, peak)
            part(result["training"], name, NEEDS_S["training"], measure)
        for name in with_shards:
            measure = partial(scoring, name, shards, Path(work), args.score_batch_size, args.score_actors)
            part(result["scoring"], name, NEEDS_S["scoring"], measure)
    result["finished"] = _now()
    _write(output, result)
    return 1 if _failed(result) else 0


def environment() -> dict:
    """Where this ran: how gpu_check.sh found the interpreter (ECG_FM_ENV_SOURCE), and the stack's versions."""
    import deepspeed
    import ray

    return {
        "source": os.environ.get("ECG_FM_ENV_SOURCE", "run directly"),
        "python": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "ray": ray.__version__,
        "deepspeed": deepspeed.__version__,
        "cpus": os.cpu_count(),
    }


def gpu_tests(junit: Path) -> dict:
    """Run the tests marked `gpu`; each test's outcome from pytest's JUnit XML."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    run = subprocess.run([*command, "tests/test_gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=600)
    outcomes = {}
    for case in ElementTree.parse(junit).iter("testcase") if junit.is_file() else ():
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        outcomes[case.get("name")] = "passed" if problem is None else f"{problem.tag}: {problem.get('message')}"[:500]
    figures = {"exit_code": run.returncode, "seconds": time.perf_counter() - started, "outcomes": outcomes}
    return figures | ({"output_tail": (run.stdout + run.stderr)[-3000:]} if run.returncode else {})


def device_figures() -> dict:
    name = torch.cuda.get_device_name()
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    measured = 10 * 2 * 8192**3 / (time.perf_counter() - started) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return {
        "name": name,
        "bf16_dense_peak_tflops": bf16_peak_tflops(name),
        "matmul_8192_bf16_tflops": measured,
        "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
    }


def tower_mfu(config_name: str, batch_size: int, peak_tflops: float | None) -> dict:
    """The ECG tower alone: forward + backward under bf16 autocast on random signals, best step."""
    config = load_config(config_name)
    flops = ecg_tower_flops(config)
    tower = ECGTower(config.ecg).cuda().train()
    signal = torch.rand(batch_size, config.ecg.n_leads, config.ecg.n_samples, device="cuda")

    def step() -> None:
        tower.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pooled = tower(signal).pooled
        pooled.float().square().mean().backward()
        torch.cuda.synchronize()

    rate = samples_per_second(step, batch_size, seconds=4.0)
    return {
        "batch_size": batch_size,
        "forward_gflops_per_sample": flops.forward / 1e9,
        "train_gflops_per_sample": flops.train / 1e9,
        "samples_per_s": rate,
        "achieved_tflops": rate * flops.train / 1e12,
        "mfu": _mfu(rate, flops.train, peak_tflops),
    }


def synthetic_shards(n: int, output: Path) -> dict:
    """Generate `n` synthetic ECGs and prepare them into shards at `output`, as `--source synthetic` does."""
    started = time.perf_counter()
    output.mkdir(parents=True)  # prepare() writes into a folder its CLI has claimed
    manifest = prepare("synthetic", SourceOptions(input=output), str(output), generate=SyntheticConfig(n=n))
    return {"ecgs": n, "rows_by_split": manifest["rows_by_split"], "seconds": time.perf_counter() - started}


def training(
    config_name: str, shards: Path, batch_size: int, steps: int, peak_tflops: float | None, device: str = "cuda"
) -> dict:
    config = resolve_config(config_name, "melp")
    half = steps // 2
    base = dict(
        batch_size=batch_size,
        max_steps=2 * half,
        validate_every=half,
        warmup_steps=10,
        zero_stage=2,
        precision="bf16",
        progress_every_s=30.0,
    )
    ray_figures = ray_loop(str(shards), config, TrainConfig(workers=1, use_gpu=device == "cuda", **base))
    batches = in_memory_batches(str(shards), ECGTextModel(config), batch_size, 8)
    threads = torch.get_num_threads()
    bare = bare_loop(config, batches, 2 * half, half, 1, TrainConfig(workers=1, **base), device, torch.bfloat16)
    torch.set_num_threads(threads)
    torch.cuda.empty_cache()
    tower_flops = ecg_tower_flops(config).train
    return {
        "objective": "melp",
        "batch_size": batch_size,
        "timed_steps": half,
        "bare_samples_per_s": bare,
        "ray_deepspeed": ray_figures,
        "ray_vs_bare": ray_figures["samples_per_s"] / bare,
        "tower_mfu": {
            "bare": _mfu(bare, tower_flops, peak_tflops),
            "ray_deepspeed": _mfu(ray_figures["samples_per_s"], tower_flops, peak_tflops),
        },
    }


def scoring(config_name: str, shards: Path, work: Path, batch_size: int, actors: int) -> dict:
    """A freshly initialised export of `config_name`: raw forward, then a one-shard and an all-shards job."""
    model_dir = work / f"export-{config_name}"
    torch.manual_seed(0)
    create_model(config_name, objective="melp")[0].save_pretrained(model_dir)
    files = sorted(shards.rglob("part-*.parquet"))
    table = pyarrow.dataset.dataset([str(f) for f in files], format="parquet").to_table(columns=["signal", "lead_mask"])
    scorer = Scorer(model_dir, "synthetic")
    raw = raw_forward(scorer, signals_of(table), lead_masks_of(table), batch_size)
    del scorer, table
    torch.cuda.empty_cache()
    one_shard = work / f"one-shard-{config_name}"
    one_shard.mkdir()
    for source in (files[0], shards / "manifest.json"):
        shutil.copy(source, one_shard)
    jobs = {}
    for name, archive in (("one shard", one_shard), ("all shards", shards)):
        scores = work / f"scores-{config_name}-{name.replace(' ', '-')}"
        started = time.perf_counter()
        summary = score(str(model_dir), str(archive), str(scores), batch_size=batch_size, actors=actors)
        jobs[name] = {"ecgs": summary["scored"], "seconds": time.perf_counter() - started}
        jobs[name]["ecgs_per_s"] = jobs[name]["ecgs"] / jobs[name]["seconds"]
    small, large = jobs["one shard"], jobs["all shards"]
    marginal = (large["ecgs"] - small["ecgs"]) / (large["seconds"] - small["seconds"])
    return {
        "batch_size": batch_size,
        "actors": actors,
        "actors_see_cuda": _zero_gpu_task_sees_cuda(),
        "raw_forward_ecgs_per_s": raw,
        "jobs": jobs,
        "job_vs_raw": large["ecgs_per_s"] / raw,
        "per_ecg_without_fixed_cost": marginal,
        "per_ecg_vs_raw": marginal / raw,
    }


def _start_ray() -> None:
    import ray

    ray.init(address="local", log_to_driver=False)  # a cluster of its own, never one found running here
    ray.data.DataContext.get_current().enable_progress_bars = False


def _zero_gpu_task_sees_cuda() -> bool:
    """Whether a Ray task that asks for no GPU (as the scoring actors do) sees it: Ray 2.60 leaves
    CUDA_VISIBLE_DEVICES alone for those, so `Scorer` there runs on the GPU."""
    import ray

    return ray.get(ray.remote(num_gpus=0)(torch.cuda.is_available).remote())


def _mfu(samples_per_s: float, flops_per_sample: int, peak_tflops: float | None) -> float | None:
    return None if peak_tflops is None else samples_per_s * flops_per_sample / (peak_tflops * 1e12)


def _failed(result: dict) -> bool:
    """A `gpu` test that did not pass (on a GPU none may skip), or a part that raised."""
    outcomes = result.get("tests", {}).get("outcomes", {})
    if not outcomes or any(outcome != "passed" for outcome in outcomes.values()):
        return True
    parts = [result.get("device", {}), result.get("shards", {})]
    parts += [figures for key in ("mfu", "training", "scoring") for figures in result.get(key, {}).values()]
    return any("error" in figures for figures in parts)


def _write(path: Path, result: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    sys.exit(main())
