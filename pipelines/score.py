"""Score: zero-shot scores (and optionally embeddings) for every ECG of an archive or of prepared shards,
streamed through Ray Data with the model loaded once per actor.

    python -m pipelines.score --model runs/sweep/best --input data/synthetic --output runs/scores
    python -m pipelines.score --model runs/sweep/best --input /mnt/ptb-xl --source ptbxl --output runs/ptbxl-scores \\
        --labels labels.json --batch-size 64 --embeddings

Output: `scores/<unit>.parquet` (`ecg_id`, `score_<label>` per label, `embedding` with --embeddings),
`rejected/<unit>.parquet` and `rejected_listing.parquet` (each unreadable record with its reason), and
`summary.json` (records in = scored + rejected). A unit is one input shard, or `--part-size` listed
records of an archive; a rerun into the same output skips the units already written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipelines.data.shard_sink import REJECTED_SCHEMA
from pipelines.data.sources import SourceOptions, list_source
from pipelines.data.trained_with import TrainedWith
from pipelines.logs import init_ray, setup_logging
from pipelines.serving.batch import ScoreUnits, unit_done

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
) -> dict:
    """Score every unit not yet written; returns the summary also written to `summary.json`. Archives are
    preprocessed as the export's training data was; shards must have been prepared that way (checked)."""
    started = time.time()
    if source == "shards":
        TrainedWith.of_export(model_dir).check_shards([input_path])
    output_dir = Path(output).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    units, listing_rejected, records_in = work_units(Path(input_path).resolve(), source, part_size)
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
    summary = _account(output_dir, units, listing_rejected, records_in)
    summary["elapsed_seconds"] = time.time() - started
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _account(output_dir: Path, units: list[dict], listing_rejected: pa.Table | None, records_in: int) -> dict:
    """Every record in is scored or rejected: counted from the parts on disk."""
    scored = sum(pq.ParquetFile(output_dir / "scores" / f"{u['unit']}.parquet").metadata.num_rows for u in units)
    rejected_files = [output_dir / "rejected" / f"{u['unit']}.parquet" for u in units]
    rejected = sum(pq.ParquetFile(p).metadata.num_rows for p in rejected_files if p.is_file())
    rejected += 0 if listing_rejected is None else listing_rejected.num_rows
    return {"records_in": records_in, "scored": scored, "rejected": rejected, "units": len(units)}


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
    args = parser.parse_args(argv)
    try:
        labels = json.loads(Path(args.labels).read_text()) if args.labels else None
        if labels is not None and not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise ValueError(f"--labels {args.labels}: expected a JSON list of strings")
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"--labels {args.labels}: {error}")
    except ValueError as error:
        parser.error(str(error))
    setup_logging(Path(args.output) / "logs" / "score.log")
    init_ray(args.address)
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
    )
    print(
        f"scored {summary['scored']:,} ECGs, rejected {summary['rejected']:,}, of {summary['records_in']:,} in "
        f"{summary['elapsed_seconds']:.0f} s → {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
