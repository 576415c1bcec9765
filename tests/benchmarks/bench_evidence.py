"""Evidence benchmark: what explaining a zero-shot score costs against scoring it.

    python -m tests.benchmarks.bench_evidence                                  # tiny and merl-vit-tiny
    python -m tests.benchmarks.bench_evidence --configs tiny --batch-sizes 1 8 --classes 1 5 --threads 2

Per config, on synthetic ECGs: one forward (the ECG embedding a score needs), the poolers' attention, and
`models.evidence.explain_score` (captum's integrated gradients, 32 steps, the whole Evidence: lead ranking and
segments included) for 1..C classes, each at batch sizes 1 and 8, measured alternately so machine noise hits
them alike. Milliseconds per ECG, median of the repeats, and the ratio to the forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from models.evidence import explain_score, pooler_attention
from models.factory import create_model
from pipelines.synthetic import SyntheticConfig, generate_batch


def milliseconds_per_ecg(work, n_ecgs: int, repeats: int) -> float:
    """Median wall time of `work()` over `repeats` runs after one warm-up, per ECG."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / n_ecgs


def bench_config(name: str, batch_sizes: list[int], classes: list[int], repeats: int) -> list[tuple]:
    torch.manual_seed(0)
    model = create_model(name)[0].eval()
    signals, _ = generate_batch(max(batch_sizes), np.random.default_rng(0), SyntheticConfig(n=max(batch_sizes)))
    signals = torch.from_numpy(signals)
    class_vectors = F.normalize(torch.randn(max(classes), model.config.objective.embed_dim), dim=-1)
    rows = []
    for batch in batch_sizes:
        signal, mask = signals[:batch], torch.ones(batch, 12, dtype=torch.bool)

        forward_ms = milliseconds_per_ecg(partial(torch.no_grad()(model.encode_ecg), signal, mask), batch, repeats)
        attention_ms = milliseconds_per_ecg(partial(pooler_attention, model, signal, mask, 1 / 500), batch, repeats)
        rows.append((name, batch, "forward (score)", forward_ms, 1.0))
        rows.append((name, batch, "poolers' attention", attention_ms, attention_ms / forward_ms))
        for n_classes in classes:
            vectors = class_vectors[:n_classes]
            explain_ms = milliseconds_per_ecg(partial(explain_score, model, signal, mask, vectors), batch, repeats)
            rows.append((name, batch, f"explain {n_classes} class(es)", explain_ms, explain_ms / forward_ms))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "merl-vit-tiny"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--classes", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), integrated gradients with 32 steps\n")
    print("| config | ECGs per call | what | ms per ECG | × forward |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name in args.configs:
        for config, batch, what, ms, ratio in bench_config(name, args.batch_sizes, args.classes, args.repeats):
            print(f"| {config} | {batch} | {what} | {ms:.1f} | {ratio:.3g} |")


if __name__ == "__main__":
    main()
