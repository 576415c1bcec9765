"""Serve throughput and latency on loopback: a bounded load generator (N client threads, one request in
flight each, bodies of one or more 12-lead ECGs: JSON with base64, or `.npy`) against the Serve app,
beside the raw forward (the same Scorer over prepared tensors in one process), with the CPU each process
spends per request.

    python -m tests.benchmarks.bench_serve [--model EXPORT | --config tiny] [--ecgs-per-request 1]
        [--seconds 20] [--concurrency 1 8 32] [--bodies json npy] [--throughput-optimized]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import tempfile

import numpy as np
import psutil
import torch

from models.factory import create_model
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.wfdb_io import Recording
from pipelines.serving.scorer import Scorer
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.benchmarks.bench_score import raw_forward
from tests.serve_load import Traffic, run_load

ROLES = (
    ("ServeReplica", "Serve replica"),
    ("ProxyActor", "Serve proxy"),
    ("ServeController", "other Ray"),
    ("raylet", "other Ray"),
    ("gcs_server", "other Ray"),
)
"""(command-line fragment, role) of the Ray processes whose CPU time is counted."""


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process (the load generator) and of the Ray processes, by role."""
    own = psutil.Process().cpu_times()
    totals = {"load generator": own.user + own.system}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        role = next((role for fragment, role in ROLES if fragment in command), None)
        if role is None:
            continue
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def load(url: str, bodies: list[bytes], content_type: str, concurrency: int, seconds: float) -> dict:
    """`concurrency` clients, one request in flight each, until `seconds` have passed (`run_load`)."""
    cpu_before = cpu_seconds()
    (result,) = run_load([Traffic("score", url, bodies, content_type, concurrency)], seconds)
    cpu = {role: seconds - cpu_before.get(role, 0.0) for role, seconds in cpu_seconds().items()}
    requests_sent = len(result.statuses)
    return {
        "throughput": result.throughput,  # requests/s
        "p50_ms": 1000 * float(np.percentile(result.latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(result.latencies, 99)),
        "server_errors": sum(s >= 500 for s in result.statuses),
        "requests": requests_sent,
        "cpu_ms_per_request": {role: 1000 * seconds / max(requests_sent, 1) for role, seconds in cpu.items()},
    }


def npy(array: np.ndarray) -> bytes:
    """An array as the `.npy` bytes `numpy.save` writes (the Serve app's binary body)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an export (default: a freshly initialised model of --config)")
    parser.add_argument("--config", default="tiny", help="architecture of the fresh model")
    parser.add_argument("--ecgs-per-request", type=int, default=1)
    parser.add_argument("--cpus-per-replica", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--bodies", nargs="+", choices=["json", "npy"], default=["json", "npy"])
    parser.add_argument(
        "--throughput-optimized", action="store_true", help="start Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    model_dir = args.model or tempfile.mkdtemp(prefix="bench-serve-")
    if args.model is None:
        torch.manual_seed(0)
        create_model(args.config, objective="melp")[0].save_pretrained(model_dir)

    signals, _ = generate_batch(64, np.random.default_rng(0), SyntheticConfig(n=64))  # mV [64, 12, 5000]
    per = args.ecgs_per_request
    groups = [signals[(np.arange(per) + k) % len(signals)] for k in range(len(signals))]  # [per, 12, 5000] each
    bodies = {
        "json": [
            json.dumps(
                {"ecg": {"b64": base64.b64encode(g.astype("<f4").tobytes()).decode(), "shape": list(g.shape)}}
            ).encode()
            for g in groups
        ],
        "npy": [npy(g.astype("<f4")) for g in groups],
    }
    content_types = {"json": "application/json", "npy": "application/octet-stream"}
    scorer = Scorer(model_dir, "synthetic")
    ready = [scorer.prepare(Recording(f"r{i}", s, 500, list(STANDARD_LEADS))) for i, s in enumerate(signals)]
    x, m = np.stack([r.signal for r in ready]), np.stack([r.lead_mask for r in ready])
    raw = raw_forward(scorer, np.concatenate([x] * 4), np.concatenate([m] * 4), batch_size=32)

    import ray
    from ray import serve

    from pipelines.serve import app_builder

    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = app_builder(
        {"model": model_dir, "task": "synthetic", "cpus_per_replica": args.cpus_per_replica, "allow_no_token": True}
    )
    serve.run(app, name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/score"
    load(url, bodies["json"], content_types["json"], 4, 3.0)  # warm-up
    rows = {
        (kind, c): load(url, bodies[kind], content_types[kind], c, args.seconds)
        for kind in args.bodies
        for c in args.concurrency
    }
    serve.shutdown()
    ray.shutdown()

    name = args.model or f"fresh {args.config}"
    print(
        f"\n### Serve on loopback, {name}, {per} ECG(s) per request, {args.cpus_per_replica} CPU(s) per replica, "
        f"{args.seconds:g} s per level{', RAY_SERVE_THROUGHPUT_OPTIMIZED=1' if args.throughput_optimized else ''}\n"
    )
    print(f"Raw forward (prepared tensors, batch 32, one process): {raw:,.0f} ECGs/s\n")
    print("| body | concurrency | ECGs/s | vs raw forward | p50 ms | p99 ms | 5xx | requests |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (kind, c), r in rows.items():
        ecgs = per * r["throughput"]
        print(
            f"| {kind} | {c} | {ecgs:,.1f} | {ecgs / raw:.2f}x | {r['p50_ms']:,.0f} | {r['p99_ms']:,.0f} "
            f"| {r['server_errors']} | {r['requests']} |"
        )
    print("\nCPU milliseconds per request, by process:\n")
    roles = list(next(iter(rows.values()))["cpu_ms_per_request"])
    print("| body | concurrency | " + " | ".join(roles) + " |\n| --- | ---: |" + " ---: |" * len(roles))
    for (kind, c), r in rows.items():
        cpu = " | ".join(f"{r['cpu_ms_per_request'].get(role, 0.0):.1f}" for role in roles)
        print(f"| {kind} | {c} | {cpu} |")


if __name__ == "__main__":
    main()
