"""Score accounting at archive scale: `pipelines.score._account` over 1,000,000 scored rows in 1,000 parts
(and 100 rejection parts), against the per-part loop it replaced (each part's ecg_id column read in turn on
the driver, then each rejection part's footer in turn), side by side on the local disk and in a moto S3 bucket.

    python -m tests.benchmarks.bench_accounting [--parts 1000] [--rows-per-part 1000] [--repeats 3]

Both count the same: the test at the end checks that they agree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.score import WorkList, _account
from pipelines.serving.batch_scoring import REJECTED_DIR, SCORES_DIR, part_names, part_of
from pipelines.storage import Location
from tests.housekeeping import end
from tests.object_store import start_object_store

REJECTED_EVERY, REJECTED_ROWS = 10, 10
"""One unit in ten has a rejection part, of this many records."""


def write_parts(root: Path, parts: int, rows: int) -> WorkList:
    """`parts` score parts of `rows` rows (ecg_id, five label probabilities) and their rejection parts."""
    rng = np.random.default_rng(0)
    units = []
    for i in range(parts):
        unit = f"part-{i:05d}"
        ids = pa.array([f"mimic/{i * rows + j:08d}" for j in range(rows)])
        probabilities = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(rows * 5, dtype=np.float32)), 5)
        (root / SCORES_DIR).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"ecg_id": ids, "probabilities": probabilities}), root / SCORES_DIR / f"{unit}.parquet")
        if i % REJECTED_EVERY == 0:
            (root / REJECTED_DIR).mkdir(parents=True, exist_ok=True)
            rejected = pa.table({"ecg_id": [f"bad/{i}-{j}" for j in range(REJECTED_ROWS)], "reason": ["x"] * REJECTED_ROWS})
            pq.write_table(rejected, root / REJECTED_DIR / f"{unit}.parquet")
        units.append({"unit": unit, "shard_path": "", "records": ""})
    records_in = parts * rows + len(range(0, parts, REJECTED_EVERY)) * REJECTED_ROWS
    return WorkList(units, records_in)


def per_part(output: Location, work: WorkList) -> tuple[int, int]:
    """The accounting before: (scored, rejected), one part at a time."""
    parts = [part_of(output, SCORES_DIR, unit["unit"]) for unit in work.units]
    ids = [e for part in parts for e in pq.read_table(part.path, filesystem=part.filesystem, columns=["ecg_id"])["ecg_id"].to_pylist()]
    assert len(set(ids)) == len(ids)
    with_rejections = part_names(output, REJECTED_DIR)
    rejected_parts = [part_of(output, REJECTED_DIR, u["unit"]) for u in work.units if u["unit"] in with_rejections]
    return len(ids), sum(pq.read_metadata(p.path, filesystem=p.filesystem).num_rows for p in rejected_parts)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--rows-per-part", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    store, server = start_object_store()
    os.environ.update(store.env)  # pyarrow's S3 reaches the server by the AWS_* variables
    try:
        with tempfile.TemporaryDirectory(prefix="bench-accounting-") as folder:
            work = write_parts(Path(folder), args.parts, args.rows_per_part)
            bucket = Location.of(store.uri("scores"))
            bucket.upload_from(folder)
            rows = args.parts * args.rows_per_part
            print(f"{rows:,} scored rows in {args.parts:,} parts; median of {args.repeats}")
            for where, output in (("local disk", Location.of(folder)), ("moto S3", bucket)):
                before, (scored, rejected) = timed(partial(per_part, output, work), args.repeats)
                after, summary = timed(partial(_account, output, work, by_record=False), args.repeats)
                assert (summary["scored"], summary["rejected"]) == (scored, rejected), (summary, scored, rejected)
                print(f"{where}: per part {before:.2f} s, as one dataset {after:.2f} s ({before / after:.1f}× faster)")
    finally:
        end(server)


if __name__ == "__main__":
    main()
