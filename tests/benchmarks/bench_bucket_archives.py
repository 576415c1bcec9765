"""Archives straight from a bucket (issue 36), against the same archive on local disk, in one run on moto's S3
server (127.0.0.1):

1. `prepare --source mimic` of an N-record MIMIC-IV-ECG-layout archive: records/s per core from local disk and
   from the bucket (goal: the bucket ≥ 0.5× the disk), timed from listing to manifest.
2. Reading records: this project's reader (`read_record`: one request per file, parsed from memory) one at a
   time and 16 at once, against `wfdb.rdrecord` on `s3://` names through fsspec. That needs `s3fs`, whose
   aiobotocore pins an older botocore than this project's boto3, so it runs in another interpreter that has
   wfdb and s3fs (`--fsspec-python`), against the same server in the same run.
3. Planning an archive of P records: from its `record_list.csv` (one read) against listing its keys.

    python -m tests.benchmarks.bench_bucket_archives [--records 2000] [--plan-records 20000] [--read-sample 200] \
        [--fsspec-python /path/to/venv-with-wfdb-and-s3fs/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.sources import SourceOptions, list_source
from pipelines.data.wfdb_io import read_record, write_record
from pipelines.storage import Location
from tests.archives import ecg_like
from tests.housekeeping import end
from tests.object_store import start_object_store


def mimic_archive(root: Path, n: int, with_records: bool = True) -> Path:
    """A MIMIC-IV-ECG-layout archive of `n` studies (records written by `write_record`; with `with_records`
    False, empty .hea/.dat keys only, for planning)."""
    signal = ecg_like(10, 500, seed=0).T.astype(np.float32)  # [12, 5000] mV
    rows, reports = [], []
    for i in range(n):
        subject, study = 10000000 + (i // 2) * 997, 40000000 + i  # subjects over many pNNNN prefixes, as MIMIC's
        path = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        if with_records:
            write_record(root / path, signal, 500, STANDARD_LEADS)
        else:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / f"{path}.hea").touch()
            (root / f"{path}.dat").touch()
        rows.append({"subject_id": subject, "study_id": study, "file_name": study, "path": path})
        reports.append({"subject_id": subject, "study_id": study, "report_0": "Sinus rhythm", "report_1": "Normal ECG"})
    pd.DataFrame(rows).to_csv(root / "record_list.csv", index=False)
    pd.DataFrame(reports).to_csv(root / "machine_measurements.csv", index=False)
    return root


def prepare_rate(archive: str, output: str, cpus: int) -> tuple[float, dict]:
    """(records/s per core, manifest) of `prepare` from listing to manifest."""
    from pipelines.data.preprocess import PreprocessConfig
    from pipelines.data.records import RecordOptions
    from pipelines.prepare import prepare

    started = time.perf_counter()
    manifest = prepare("mimic", SourceOptions(input=archive), output, PreprocessConfig(), RecordOptions(min_report_words=0))
    return manifest["records_in"] / (time.perf_counter() - started) / cpus, manifest


def read_rate(paths: list[str], read, threads: int) -> float:
    started = time.perf_counter()
    if threads == 1:
        for path in paths:
            read(path)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, paths))
    return len(paths) / (time.perf_counter() - started)


FSSPEC_READS = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import wfdb
paths, threads = json.loads(sys.argv[1]), int(sys.argv[2])
wfdb.rdrecord(paths[0])  # imports and the first connection
started = time.perf_counter()
with ThreadPoolExecutor(threads) as pool:
    list(pool.map(wfdb.rdrecord, paths))
print(len(paths) / (time.perf_counter() - started))
"""


def wfdb_fsspec_rate(python: str, paths: list[str], threads: int) -> float:
    """Records/s of `wfdb.rdrecord` on the `s3://` names, `threads` at once, in the interpreter `python`."""
    done = subprocess.run([python, "-c", FSSPEC_READS, json.dumps(paths), str(threads)], capture_output=True, text=True,
                          env={**os.environ, "FSSPEC_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--plan-records", type=int, default=20000)
    parser.add_argument("--read-sample", type=int, default=200)
    parser.add_argument("--fsspec-python", help="an interpreter with wfdb and s3fs, to time wfdb's own s3:// reads")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    store, server = start_object_store()
    os.environ.update(store.env)
    cpus = os.cpu_count() or 1
    try:
        with tempfile.TemporaryDirectory(prefix="bench-bucket-archives-") as folder:
            root = Path(folder)
            local = mimic_archive(root / "archive", args.records)
            bucket = store.uri("mimic")
            started = time.perf_counter()
            Location.of(bucket).upload_from(local)
            print(f"uploaded {args.records:,} records ({2 * args.records:,} objects) in {time.perf_counter() - started:.0f} s")

            import ray

            ray.init(num_cpus=cpus, log_to_driver=False)
            (root / "shards-disk").mkdir()
            disk_rate, _ = prepare_rate(str(local), str(root / "shards-disk"), cpus)
            bucket_rate, manifest = prepare_rate(bucket, store.uri("shards"), cpus)
            ray.shutdown()
            assert manifest["records_kept"] == args.records, manifest

            listing = list_source("mimic", SourceOptions(input=bucket)).records["record_path"].tolist()
            sample = listing[: args.read_sample]
            reads = {
                "read_record, one at a time": read_rate(sample, read_record, 1),
                "read_record, 16 at once": read_rate(sample, read_record, 16),
            }
            if args.fsspec_python:
                reads["wfdb.rdrecord via fsspec, one at a time"] = wfdb_fsspec_rate(args.fsspec_python, sample, 1)
                reads["wfdb.rdrecord via fsspec, 16 at once"] = wfdb_fsspec_rate(args.fsspec_python, sample, 16)

            plan_local = mimic_archive(root / "plan", args.plan_records, with_records=False)
            plan_uri = store.uri("plan")
            started = time.perf_counter()
            Location.of(plan_uri).upload_from(plan_local)
            print(f"uploaded {2 * args.plan_records:,} empty keys in {time.perf_counter() - started:.0f} s")
            started = time.perf_counter()
            planned = list_source("mimic", SourceOptions(input=plan_uri))
            from_index = time.perf_counter() - started
            started = time.perf_counter()
            listed = list_source("wfdb", SourceOptions(input=f"{plan_uri}/files"))
            by_listing = time.perf_counter() - started
            assert len(planned.records) == len(listed.records) == args.plan_records
    finally:
        end(server)

    print(f"\n### Archives from a bucket: {args.records:,} MIMIC-layout records, {cpus} CPUs, moto S3 on 127.0.0.1\n")
    print("| prepare --source mimic | records/s per core | vs local disk |\n| --- | ---: | ---: |")
    print(f"| local disk | {disk_rate:,.1f} | 1.00× |")
    print(f"| moto bucket | {bucket_rate:,.1f} | {bucket_rate / disk_rate:.2f}× |")
    print(f"\n| reading {len(sample)} records from the bucket | records/s |\n| --- | ---: |")
    for name, rate in reads.items():
        print(f"| {name} | {rate:,.1f} |")
    print(f"\n| planning {args.plan_records:,} records | seconds |\n| --- | ---: |")
    print(f"| from record_list.csv | {from_index:.2f} |")
    print(f"| listing the keys | {by_listing:.2f} ({by_listing / from_index:.1f}×) |")


if __name__ == "__main__":
    main()
