"""Embedding index throughput: build seconds and queries/s of exact and HNSW search, and HNSW's recall@10.

    python -m tests.benchmarks.bench_index [--count 100000] [--dims 32 256] [--queries 1000] [--threads 1]

Per dim and per distribution, `--count` L2-normalised vectors go through `EmbeddingIndex.build` in parts
of 1,000 rows (as scoring writes them), once with the exact limit above the count (exact) and once below
it (HNSW with the default `HNSWParameters`). Measured: build seconds (parts checked and added), queries/s
for one batch of `--queries` queries and for single queries (`--singles`, one call each), and HNSW's
recall@10 against exact search. `--threads` sets faiss's OpenMP threads (default: every core); on a machine
shared with other work, give 1: OpenMP threads that wait for a busy core slow single queries ~15× here.
The distributions:
- `uniform`: random directions on the sphere, what the issue names. The hardest case for a graph index:
  at D=256 every vector is almost equally far from a query (cosines within ±0.2), so "nearest" carries
  little structure and HNSW's recall falls.
- `low-rank`: 32 latent dimensions plus isotropic noise (≈10 % of the variance), normalised: a stand-in
  for trained embeddings, which cluster by condition and lie near a low-dimensional subspace.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import pyarrow as pa

from pipelines.retrieval import EmbeddingIndex
from tests.test_retrieval_index import parts_of, unit_vectors

PART_ROWS = 1000
LATENT_DIMS = 32


def low_rank_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors near a random `LATENT_DIMS`-dimensional subspace (noise ≈10 % of the variance)."""
    rng = np.random.default_rng(seed)
    latent = min(LATENT_DIMS, dim)
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, latent)))[0].astype(np.float32)
    noise = 0.3 * np.sqrt(latent / dim) * rng.standard_normal((n, dim), dtype=np.float32)
    vectors = rng.standard_normal((n, latent), dtype=np.float32) @ basis.T + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


DISTRIBUTIONS = {"uniform": unit_vectors, "low-rank": low_rank_vectors}


def measure(parts: list[pa.Table], queries: np.ndarray, singles: int, exact_limit: int) -> dict:
    started = time.perf_counter()
    index = EmbeddingIndex.build(parts, model_fingerprint="bench", model=None, exact_limit=exact_limit)
    built = time.perf_counter() - started
    started = time.perf_counter()
    hits = index.search(queries, k=10)
    batch = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for query in queries[:singles]:
        index.search(query[None], k=10)
    single = singles / (time.perf_counter() - started)
    return {"kind": index.record["kind"], "build_s": built, "batch_qps": batch, "single_qps": single, "hits": hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--threads", type=int, help="faiss OpenMP threads (default: faiss's, every core)")
    parser.add_argument("--distributions", nargs="+", default=list(DISTRIBUTIONS), choices=list(DISTRIBUTIONS))
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(
        f"{args.count:,} vectors, batch of {args.queries:,} queries, {args.singles} single queries, k=10, "
        f"{faiss.omp_get_max_threads()} faiss thread(s)"
    )
    print("| distribution | D | kind | build s | batch q/s | single q/s | recall@10 |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for distribution in args.distributions:
        for dim in args.dims:
            draw = DISTRIBUTIONS[distribution]
            parts, queries = parts_of(draw(args.count, dim, 1), PART_ROWS), draw(args.queries, dim, 2)
            exact = measure(parts, queries, args.singles, exact_limit=args.count)
            approximate = measure(parts, queries, args.singles, exact_limit=args.count - 1)
            truth = [{ecg_id for ecg_id, _ in hits} for hits in exact["hits"]]
            found = [{ecg_id for ecg_id, _ in hits} for hits in approximate["hits"]]
            recall = np.mean([len(t & f) / 10 for t, f in zip(truth, found)])
            for row, shown in ((exact, "1"), (approximate, f"{recall:.3f}")):
                print(
                    f"| {distribution} | {dim} | {row['kind']} | {row['build_s']:.1f} | {row['batch_qps']:,.0f} | "
                    f"{row['single_qps']:,.0f} | {shown} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
