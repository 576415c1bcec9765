"""Scoring beside explaining (issue 28 item 9): scoring clients' latency alone, then beside clients that each
ask for the issue's worst case (/v1/score with explain for 16 ECGs and 5 labels), in one run against one app
(scoring replica and explainer, `pipelines.serve.scoring_app`), with what the explaining clients got.

    python -m tests.benchmarks.bench_serve_explain [--model EXPORT | --config tiny] [--seconds 60]
        [--scoring-clients 8] [--explaining-clients 4] [--explain-queue 4] [--explain-deadline-s 120]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import tempfile

import numpy as np
import torch

from models.factory import create_model
from pipelines.serving.explainer import ExplainBounds
from pipelines.serving.requests import MAX_EXPLAIN_LABELS, MAX_EXPLAINED_ECGS
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.serve_load import LoadResult, Traffic, run_load

LABELS = ["AFIB", "SR", "NORM", "sinus rhythm", "a long pr interval"][:MAX_EXPLAIN_LABELS]


def body(signals: np.ndarray, **options) -> bytes:
    ecg = {"b64": base64.b64encode(signals.astype("<f4").tobytes()).decode(), "shape": list(signals.shape)}
    return json.dumps({"ecg": ecg, **options}).encode()


def row(phase: str, result: LoadResult) -> str:
    return (
        f"| {phase} | {result.name} | {len(result.statuses)} | {result.count(200)} | {result.count(503)} "
        f"| {sum(s not in (200, 503) for s in result.statuses)} | {result.percentile_s(50):.3f} "
        f"| {result.percentile_s(99):.3f} | {max(result.latencies):.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an export (default: a freshly initialised model of --config)")
    parser.add_argument("--config", default="tiny", help="architecture of the fresh model")
    parser.add_argument("--seconds", type=float, default=60.0, help="each phase's length")
    parser.add_argument("--scoring-clients", type=int, default=8)
    parser.add_argument("--explaining-clients", type=int, default=4)
    parser.add_argument("--explain-queue", type=int, default=ExplainBounds().queue)
    parser.add_argument("--explain-deadline-s", type=float, default=ExplainBounds().deadline_s)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    model_dir = args.model or tempfile.mkdtemp(prefix="bench-serve-explain-")
    if args.model is None:
        torch.manual_seed(0)
        create_model(args.config, objective="melp")[0].save_pretrained(model_dir)
    signals, _ = generate_batch(64, np.random.default_rng(0), SyntheticConfig(n=64))  # mV [64, 12, 5000]

    import ray
    from ray import serve

    from pipelines.serve import scoring_app

    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    bounds = ExplainBounds(queue=args.explain_queue, deadline_s=args.explain_deadline_s)
    serve.run(scoring_app(model_dir, "synthetic", explain=bounds), name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/score"
    scoring = Traffic("score 4 ECGs", url, [body(signals[k : k + 4]) for k in range(0, 64, 4)], "application/json",
                      args.scoring_clients)
    n = MAX_EXPLAINED_ECGS
    explaining = Traffic(
        f"explain {n} ECGs × {len(LABELS)} labels",
        url,
        [body(signals[k : k + n], labels=LABELS, explain=True) for k in range(0, 64, n)],
        "application/json",
        args.explaining_clients,
        timeout_s=args.explain_deadline_s + 30,
    )
    run_load([scoring], 3.0)  # warm-up
    (alone,) = run_load([scoring], args.seconds)
    beside, explained = run_load([scoring, explaining], args.seconds)
    serve.shutdown()
    ray.shutdown()

    name = args.model or f"fresh {args.config}"
    print(
        f"\n### Scoring beside explaining, {name}, {os.cpu_count()} CPUs, {args.seconds:g} s per phase, explain "
        f"queue {bounds.queue}, deadline {bounds.deadline_s:g} s\n"
    )
    print("| phase | traffic | requests | 200 | 503 | other | p50 s | p99 s | slowest s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(row("alone", alone))
    print(row("beside explaining", beside))
    print(row("beside explaining", explained))
    print(f"\nScoring p99 beside explaining / alone: {beside.percentile_s(99) / alone.percentile_s(99):.2f}×")


if __name__ == "__main__":
    main()
