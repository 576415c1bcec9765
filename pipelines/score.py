"""Score: zero-shot scores (and optionally embeddings) for every ECG of an archive or of prepared shards,
streamed through Ray Data with the model loaded once per actor.

    python -m pipelines.score --model runs/sweep/best --input data/synthetic --output runs/scores
    python -m pipelines.score --model runs/sweep/best --input /mnt/ptb-xl --source ptbxl --output runs/ptbxl-scores \\
        --labels labels.json --batch-size 64 --embeddings

Output: `scores/<unit>.parquet` (`ecg_id`, `score_<label>` per label, `embedding` with --embeddings),
`rejected/<unit>.parquet` and `rejected_listing.parquet` (each unreadable record with its reason), and
`summary.json` (records in = scored + rejected, counted from the parts on disk; counts that do not
reconcile raise instead of being written). A unit is one input shard, or `--part-size` listed records of
an archive. The output's `made_by.json` records what made it (the export's fingerprint, task and labels,
source, part size, embeddings, a fingerprint of the input's unit listing): a rerun that matches skips
the units already written, one that differs is refused naming the difference (`--overwrite` replaces an
output that scoring made, and nothing else).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from models.model import export_fingerprint
from pipelines.data.records import record_id_of
from pipelines.data.shard_sink import REJECTED_SCHEMA
from pipelines.data.sources import SourceOptions, list_source
from pipelines.data.trained_with import TrainedWith
from pipelines.labels.tasks import load_task
from pipelines.logs import init_ray, setup_logging
from pipelines.outputs import claim_output
from pipelines.serving.batch import REJECTED_DIR, SCORES_DIR, ScoreUnits, unit_done

log = logging.getLogger("pipelines.score")

SOURCES = ("shards", "ptbxl", "mimic", "wfdb")


def work_units(input_path: Path, source: str, part_size: int) -> tuple[list[dict], pa.Table | None, int]:
    """(units, records rejected while listing, records in): one unit per shard file, or per `part_size`
    listed records of an archive."""
    if source == "shards":
        shards = sorted(p for p in input_path.rglob("*.parquet") if p.name != "rejected.parquet")
        if not shards:
            raise ValueError(f"{input_path} holds no parquet shards")
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
        units = [
            {
                "unit": p.relative_to(input_path).with_suffix("").as_posix().replace("/", "__"),
                "shard_path": str(p),
                "records": "",
            }
            for p in shards
        ]
        return units, None, rows
    listing = list_source(source, SourceOptions(input=input_path))
    records = listing.records
    units = [
        {
            "unit": f"part-{start // part_size:05d}",
            "shard_path": "",
            "records": records.iloc[start : start + part_size].to_json(orient="records"),
        }
        for start in range(0, len(records), part_size)
    ]
    rejected = pa.Table.from_pylist(listing.rejected, schema=REJECTED_SCHEMA) if listing.rejected else None
    return units, rejected, listing.records_in


def score(
    model_dir: str,
    input_path: str,
    output: str,
    *,
    source: str = "shards",
    task: str | None = None,
    labels: list[str] | None = None,
    batch_size: int = 64,
    part_size: int = 1000,
    embeddings: bool = False,
    actors: int = 1,
    overwrite: bool = False,
    log_file: str | None = None,
) -> dict:
    """Score every unit not yet written; returns the summary also written to `summary.json`. Archives are
    preprocessed as the export's training data was; shards must have been prepared that way (checked).
    The input is listed and checked before the output is claimed (`pipelines.outputs`; OutputRefused
    names what differs); `log_file` then also logs to `OUTPUT/logs/<log_file>`."""
    started = time.time()
    input_dir = Path(input_path).resolve()
    trained_with = TrainedWith.of_export(model_dir)
    if source == "shards":
        trained_with.check_shards([input_path])
    units, listing_rejected, records_in = work_units(input_dir, source, part_size)
    task = task or trained_with.task
    labels = labels or list(load_task(task).codes)
    made_with = {
        "model": export_fingerprint(model_dir),
        "task": task,
        "labels": labels,
        "source": source,
        "part_size": None if source == "shards" else part_size,
        "embeddings": embeddings,
        "input_listing": _listing_fingerprint(units),
    }
    output_dir = Path(output).resolve()
    claim_output(output_dir, "score", made_with, overwrite=overwrite)
    if log_file:
        setup_logging(output_dir / "logs" / log_file)
    todo = [unit for unit in units if not unit_done(output_dir, unit["unit"])]
    if listing_rejected is not None:
        pq.write_table(listing_rejected, output_dir / "rejected_listing.parquet")
    log.info("score: %d units, %d already done, %d to score", len(units), len(units) - len(todo), len(todo))
    if todo:
        if not ray.is_initialized():
            ray.init()
        ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            ScoreUnits,
            batch_size=1,
            concurrency=actors,
            fn_constructor_kwargs={
                "model_dir": str(Path(model_dir).resolve()),
                "task": task,
                "labels": labels,
                "output": str(output_dir),
                "batch_size": batch_size,
                "embeddings": embeddings,
            },
        ).materialize()
    summary = _account(output_dir, units, listing_rejected, records_in, by_record=source != "shards")
    summary["elapsed_seconds"] = time.time() - started
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _listing_fingerprint(units: list[dict]) -> str:
    """16 hex digits over the units (names, shard paths and sizes, or listed records): what a rerun must
    find again to continue an output."""
    digest = hashlib.sha256(json.dumps(units, sort_keys=True).encode())
    for unit in units:
        if unit["shard_path"]:
            digest.update(str(Path(unit["shard_path"]).stat().st_size).encode())
    return digest.hexdigest()[:16]


def _account(
    output_dir: Path, units: list[dict], listing_rejected: pa.Table | None, records_in: int, by_record: bool
) -> dict:
    """Every record in is scored or rejected, counted from the parts on disk: `scored` is the number of
    distinct records among the score rows (of distinct `ecg_id`s for shards, whose rows are the records
    in). RuntimeError when an id is scored twice or the counts do not add up: parts of different runs."""
    parts = [output_dir / SCORES_DIR / f"{u['unit']}.parquet" for u in units]
    ids = [ecg_id for part in parts for ecg_id in pq.read_table(part, columns=["ecg_id"])["ecg_id"].to_pylist()]
    if len(set(ids)) != len(ids):
        twice = next(ecg_id for ecg_id, count in Counter(ids).items() if count > 1)
        raise RuntimeError(
            f"{output_dir / SCORES_DIR}: {len(ids) - len(set(ids))} ecg_id(s) are scored more than once (first: "
            f"{twice}); the parts come from different runs. Rerun with --overwrite"
        )
    scored = len({record_id_of(ecg_id) for ecg_id in ids}) if by_record else len(ids)
    rejected_files = [output_dir / REJECTED_DIR / f"{u['unit']}.parquet" for u in units]
    rejected = sum(pq.ParquetFile(p).metadata.num_rows for p in rejected_files if p.is_file())
    rejected += 0 if listing_rejected is None else listing_rejected.num_rows
    if scored + rejected != records_in:
        raise RuntimeError(
            f"{output_dir}: {scored} scored + {rejected} rejected != {records_in} records in; the parts do not "
            "match the input. Rerun with --overwrite"
        )
    return {"records_in": records_in, "scored": scored, "rejected": rejected, "rows": len(ids), "units": len(units)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export folder")
    parser.add_argument("--input", required=True, help="prepared shards, or an archive with --source")
    parser.add_argument("--output", required=True, help="output folder (rerun with it to continue)")
    parser.add_argument("--source", default="shards", choices=SOURCES, help="input layout (default: shards)")
    parser.add_argument("--task", help="label set when --labels is not given (default: the export's validation task)")
    parser.add_argument("--labels", help="JSON list of class codes or prompts to score")
    parser.add_argument("--batch-size", type=int, default=64, help="ECGs per forward")
    parser.add_argument("--part-size", type=int, default=1000, help="archive records per output part")
    parser.add_argument("--actors", type=int, default=1, help="scoring actors (one model each)")
    parser.add_argument("--embeddings", action="store_true", help="also write each ECG's embedding")
    parser.add_argument("--address", help="Ray cluster address (default: a local one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output this command made before (one made differently is refused without it)")
    args = parser.parse_args(argv)
    for flag, path in (("--model", args.model), ("--input", args.input)):
        if not Path(path).exists():
            parser.error(f"{flag} {path} does not exist")
    if not Path(args.input).is_dir():
        parser.error(f"--input {args.input} is not a directory")
    for name in ("batch_size", "part_size", "actors"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        labels = json.loads(Path(args.labels).read_text()) if args.labels else None
        if labels is not None and not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise ValueError(f"--labels {args.labels}: expected a JSON list of strings")
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"--labels {args.labels}: {error}")
    except ValueError as error:
        parser.error(str(error))
    setup_logging()
    init_ray(args.address)
    try:
        summary = score(
            args.model,
            args.input,
            args.output,
            source=args.source,
            task=args.task,
            labels=labels,
            batch_size=args.batch_size,
            part_size=args.part_size,
            embeddings=args.embeddings,
            actors=args.actors,
            overwrite=args.overwrite,
            log_file="score.log",
        )
    except ValueError as error:  # the export, the input or the output is not what it must be
        parser.error(str(error))
    print(
        f"scored {summary['scored']:,} ECGs, rejected {summary['rejected']:,}, of {summary['records_in']:,} in "
        f"{summary['elapsed_seconds']:.0f} s → {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
