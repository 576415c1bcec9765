"""Score: zero-shot scores (and optionally embeddings) for every ECG of an archive or of prepared shards,
streamed through Ray Data with the model loaded once per actor.

    python -m pipelines.score --model runs/sweep/best --input data/synthetic --output runs/scores
    python -m pipelines.score --model runs/sweep/best --input /mnt/ptb-xl --source ptbxl --output runs/ptbxl-scores \\
        --labels labels.json --batch-size 64 --embeddings
    python -m pipelines.score --model runs/melp/export --input data/synthetic --output runs/drafts --reports --num-beams 4
    python -m pipelines.score --model runs/sweep/best --input data/synthetic --output runs/evidence --explain --top-k 2
    python -m pipelines.score --model s3://bucket/runs/x/export --input s3://bucket/shards --output s3://bucket/scores

Output: `scores/<unit>.parquet` (`ecg_id`, `score_<label>` per label, `report`, `report_logprob` and
`report_tokens` with --reports (a MELP export's draft of each ECG, as /v1/report drafts it), `evidence` with
--explain (per ECG and explained label: its score, the leads best first and the top time segments, as /v1/score
answers with explain; the labels of --labels, or each ECG's --top-k best, at most MAX_EXPLAIN_LABELS; each
costs an integrated-gradients pass of ~47 forwards), `embedding` with --embeddings),
`rejected/<unit>.parquet` and `rejected_listing.parquet` (each unreadable record with its reason), and
`summary.json` (records in = scored + rejected, counted from the parts on disk; counts that do not
reconcile raise instead of being written), and with --embeddings `index/`, the embeddings' search index
(`pipelines.search`), built once the summary is written. A unit is one input shard, or `--part-size` listed records of
an archive. The output's `made_by.json` records what made it (the export's fingerprint, task and labels,
source, part size, embeddings, the drafting and explaining options, a fingerprint of the input's unit listing): a rerun that matches skips
the units already written, one that differs is refused naming the difference (`--overwrite` replaces an
output that scoring made, and nothing else).

The export, the shards and the output may be URIs (s3://…, `pipelines.storage`; credentials from the
standard variables): each node that loads the export (the driver, every scoring actor) loads a cached
copy of it, and parts are written straight into the output, where a rerun finds them as it does on disk.
Archives (--source ptbxl/mimic/wfdb) may be a folder every node mounts or a URI, read in place as prepare
reads them (`--unsigned` for a public bucket). The log file
(OUTPUT/logs/score.log) is written for a local output only.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset
import ray

from models.model import export_fingerprint
from models.report_generation import DraftOptions
from pipelines.data.records import WINDOW_MARK
from pipelines.data.shard_files import dataset_shards
from pipelines.data.shard_sink import REJECTED_SCHEMA
from pipelines.data.sources import SourceOptions, list_source
from pipelines.data.trained_with import TrainedWith
from pipelines.labels.tasks import load_task
from pipelines.logs import init_ray, setup_logging
from pipelines.outputs import add_shared_mount_argument, claim_output, refuse_node_local
from pipelines.search import INDEX_DIR, build_index
from pipelines.serving.batch_scoring import (
    REJECTED_DIR,
    SCORES_DIR,
    ExplainedLabels,
    ScoreUnits,
    part_names,
    part_of,
    write_part,
)
from pipelines.serving.requests import MAX_EXPLAIN_LABELS, ScoreOptions
from pipelines.serving.scorer import DraftRefused, check_export_drafts
from pipelines.storage import Location, cached_copy

log = logging.getLogger("pipelines.score")

SOURCES = ("shards", "ptbxl", "mimic", "wfdb")
TOP_K = ScoreOptions.model_fields["top_k"].default
"""Labels --explain explains per ECG without --labels: /v1/score's default."""


@dataclass
class WorkList:
    """What to score: `units` ({unit, shard_path, records}: one per shard file, or per `part_size` listed
    records of an archive), the records in, those rejected while listing, and each shard's size in bytes
    (in unit order)."""

    units: list[dict]
    records_in: int
    rejected: pa.Table | None = None
    shard_sizes: list[int] = field(default_factory=list)

    def fingerprint(self) -> str:
        """16 hex digits over the units (names, shard paths and sizes, or listed records): what a rerun must
        find again to continue an output."""
        digest = hashlib.sha256(json.dumps(self.units, sort_keys=True).encode())
        for size in self.shard_sizes:
            digest.update(str(size).encode())
        return digest.hexdigest()[:16]


def work_units(source_location: Location, source: str, part_size: int) -> WorkList:
    """The units of prepared shards (a folder or URI: the shards its manifest lists) or of an archive (a
    folder or URI, listed by its source)."""
    if source == "shards":
        shards = dataset_shards(source_location.uri)
        if not shards:
            raise ValueError(f"{source_location} holds no parquet shards")
        units = [
            {"unit": shard.location.name.removesuffix(".parquet"), "shard_path": shard.uri, "records": ""}
            for shard in shards
        ]
        return WorkList(units, sum(shard.rows for shard in shards), shard_sizes=[shard.bytes for shard in shards])
    listing = list_source(source, SourceOptions(input=source_location))
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
    return WorkList(units, listing.records_in, rejected)


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
    reports: DraftOptions | None = None,
    explain: ExplainedLabels | None = None,
    actors: int = 1,
    overwrite: bool = False,
    log_file: str | None = None,
    unsigned: bool = False,
) -> dict:
    """Score every unit not yet written; returns the summary also written to `summary.json`. Archives are
    preprocessed as the export's training data was; shards must have been prepared that way (checked).
    The input is listed and checked before the output is claimed (`pipelines.outputs`; OutputRefused
    names what differs); `log_file` then also logs to `OUTPUT/logs/<log_file>` (a local output only).
    `reports`: draft a report per ECG with these options; an export that cannot (no caption decoder,
    max_tokens over its limit) is refused first (`DraftRefused`, a ValueError). `explain`: write each ECG's
    evidence for the labels these options choose; more than MAX_EXPLAIN_LABELS per ECG is a ValueError, raised
    before the input is listed. `unsigned`: an s3:// archive read without credentials (a public bucket)."""
    started = time.time()
    export = cached_copy(model_dir)  # the driver reads the export's record and fingerprint from a local copy
    trained_with = TrainedWith.of_export(str(export))
    if reports is not None:
        check_export_drafts(export, reports)
    task = task or trained_with.task
    labels = labels or list(load_task(task).codes)
    if explain is not None and (problem := explain.problem(len(labels))):
        raise ValueError(f"explain: {problem}")
    if source == "shards":
        trained_with.check_shards([input_path])
    work = work_units(Location.of(input_path, unsigned=unsigned), source, part_size)
    made_with = {
        "model": export_fingerprint(export),
        "task": task,
        "labels": labels,
        "source": source,
        "part_size": None if source == "shards" else part_size,
        "embeddings": embeddings,
        "input_listing": work.fingerprint(),
    }
    if reports is not None:  # absent without drafts, so outputs made before drafting existed still continue
        made_with["reports"] = asdict(reports)
    if explain is not None:  # absent without evidence, likewise
        made_with["explain"] = explain.record()
    destination = Location.of(output)
    claim_output(destination, "score", made_with, overwrite=overwrite)
    if log_file and destination.is_local:
        setup_logging(Path(destination.path) / "logs" / log_file)
    done = part_names(destination, SCORES_DIR)
    todo = [unit for unit in work.units if unit["unit"] not in done]
    if work.rejected is not None:
        write_part(work.rejected, destination.child("rejected_listing.parquet"))
    log.info("score: %d units, %d already done, %d to score", len(work.units), len(work.units) - len(todo), len(todo))
    if todo:
        if not ray.is_initialized():
            ray.init()
        scored_now = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            ScoreUnits,
            batch_size=1,
            concurrency=actors,
            scheduling_strategy="SPREAD",  # the actors over the cluster's nodes
            fn_constructor_kwargs={
                "model_dir": Location.of(model_dir).uri,  # each actor loads its own node's copy
                "task": task,
                "labels": labels,
                "output": destination.uri,
                "batch_size": batch_size,
                "embeddings": embeddings,
                "draft": reports,
                "explain": explain,
                "unsigned": unsigned,
            },
        ).to_pandas()
    summary = _account(destination, work, by_record=source != "shards")
    summary["units_by_node"] = dict(Counter(scored_now["node"])) if todo else {}
    summary["elapsed_seconds"] = time.time() - started
    destination.child("summary.json").write_json(summary)
    if embeddings and summary["rows"]:
        indexing = time.time()
        index = build_index(destination.uri, Location.of(model_dir).uri)
        log.info(
            "score: indexed %d embeddings (%s) in %.1f s → %s",
            index.count,
            index.record["kind"],
            time.time() - indexing,
            destination.child(INDEX_DIR),
        )
    return summary


def _account(output: Location, work: WorkList, by_record: bool) -> dict:
    """Every record in is scored or rejected, counted from the parts written: `scored` is the number of
    distinct records among the score rows (of distinct `ecg_id`s for shards, whose rows are the records
    in). RuntimeError when an id is scored twice or the counts do not add up: parts of different runs.
    The parts are read as one pyarrow dataset (their ecg_id column, threaded; the rejections' footers)."""
    parts = [part_of(output, SCORES_DIR, unit["unit"]).path for unit in work.units]
    ids = _parts(parts, output).to_table(columns=["ecg_id"])["ecg_id"] if parts else pa.chunked_array([], pa.string())
    counts = pc.value_counts(ids)
    if len(counts) != len(ids):
        twice = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise RuntimeError(
            f"{output.child(SCORES_DIR)}: {len(ids) - len(counts)} ecg_id(s) are scored more than once (first: "
            f"{twice}); the parts come from different runs. Rerun with --overwrite"
        )
    scored = pc.count_distinct(pc.list_element(pc.split_pattern(ids, WINDOW_MARK), 0)).as_py() if by_record else len(ids)
    with_rejections = part_names(output, REJECTED_DIR)
    rejected_parts = [part_of(output, REJECTED_DIR, u["unit"]).path for u in work.units if u["unit"] in with_rejections]
    rejected = _parts(rejected_parts, output).count_rows() if rejected_parts else 0
    rejected += 0 if work.rejected is None else work.rejected.num_rows
    if scored + rejected != work.records_in:
        raise RuntimeError(
            f"{output}: {scored} scored + {rejected} rejected != {work.records_in} records in; the parts do not "
            "match the input. Rerun with --overwrite"
        )
    return {
        "records_in": work.records_in,
        "scored": scored,
        "rejected": rejected,
        "rows": len(ids),
        "units": len(work.units),
    }


def _parts(paths: list[str], output: Location) -> pyarrow.dataset.Dataset:
    """Parquet parts of `output` (paths in its filesystem) as one dataset."""
    return pyarrow.dataset.dataset(paths, format="parquet", filesystem=output.filesystem)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export folder, or its URI (s3://…)")
    parser.add_argument(
        "--input", required=True, help="prepared shards (a folder or URI), or an archive (a folder or URI) with --source"
    )
    parser.add_argument("--output", required=True, help="output folder or URI (rerun with it to continue)")
    parser.add_argument("--source", default="shards", choices=SOURCES, help="input layout (default: shards)")
    parser.add_argument(
        "--unsigned", action="store_true", help="read an s3:// input without credentials (a public bucket)"
    )
    parser.add_argument("--task", help="label set when --labels is not given (default: the export's validation task)")
    parser.add_argument("--labels", help="JSON list of class codes or prompts to score")
    parser.add_argument("--batch-size", type=int, default=64, help="ECGs per forward")
    parser.add_argument("--part-size", type=int, default=1000, help="archive records per output part")
    parser.add_argument("--actors", type=int, default=1, help="scoring actors (one model each)")
    parser.add_argument("--embeddings", action="store_true", help="also write each ECG's embedding")
    parser.add_argument(
        "--reports", action="store_true", help="also draft each ECG's report (a MELP export's caption decoder)"
    )
    parser.add_argument("--num-beams", type=int, help="with --reports: 1 greedy (default), more: beam search")
    parser.add_argument(
        "--max-tokens", type=int, help="with --reports: tokens a draft may hold (default: the model's limit)"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also write each ECG's evidence (leads and time segments, by integrated gradients; ~47 forwards per "
        f"label) for every label of --labels, or for its --top-k best; at most {MAX_EXPLAIN_LABELS} labels",
    )
    parser.add_argument(
        "--top-k", type=int, help=f"with --explain and no --labels: the best labels explained per ECG (default {TOP_K})"
    )
    parser.add_argument("--address", help="Ray cluster address (default: a local one)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output this command made before (one made differently is refused without it)",
    )
    add_shared_mount_argument(parser)
    args = parser.parse_args(argv)
    try:
        for flag, path, unsigned in (("--model", args.model, False), ("--input", args.input, args.unsigned)):
            if not Location.of(path, unsigned=unsigned).exists():
                parser.error(f"{flag} {path} does not exist")
        if not Location.of(args.input, unsigned=args.unsigned).is_dir():
            parser.error(f"--input {args.input} is not a directory")
    except (OSError, ValueError) as error:  # a URI pyarrow cannot resolve, a store that cannot be reached
        parser.error(f"--model / --input: {error}")
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
    reports = _draft_options(parser, args)
    explain = _explain_options(parser, args, labels)
    setup_logging()
    init_ray(args.address)
    try:
        refuse_node_local(args.output, shared_mount=args.shared_mount)
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
            reports=reports,
            explain=explain,
            actors=args.actors,
            overwrite=args.overwrite,
            log_file="score.log",
            unsigned=args.unsigned,
        )
    except ValueError as error:  # the export, the input or the output is not what it must be
        parser.error(str(error))
    print(
        f"scored {summary['scored']:,} ECGs, rejected {summary['rejected']:,}, of {summary['records_in']:,} in "
        f"{summary['elapsed_seconds']:.0f} s → {args.output}"
    )
    return 0


def _draft_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> DraftOptions | None:
    """The drafting options of --reports (None without it), checked against the export before Ray starts; a
    usage error for --num-beams / --max-tokens without --reports or out of range, and for an export that
    cannot draft."""
    given = {"num_beams": args.num_beams, "max_tokens": args.max_tokens}
    if not args.reports:
        stray = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
        if stray:
            parser.error(f"{', '.join(stray)} only go with --reports")
        return None
    for name, value in given.items():
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    options = DraftOptions(**{name: value for name, value in given.items() if value is not None})
    try:
        check_export_drafts(cached_copy(args.model), options)
    except DraftRefused as refused:
        flag = "--max-tokens" if refused.field == "max_tokens" else f"--reports with --model {args.model}"
        parser.error(f"{flag}: {refused.message}")
    except (OSError, ValueError) as error:
        parser.error(f"--model {args.model}: {error}")
    return options


def _explain_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, labels: list[str] | None
) -> ExplainedLabels | None:
    """The options of --explain (None without it): every label of --labels, or each ECG's --top-k best; a
    usage error before Ray starts for --top-k without --explain or beside --labels, and for more than
    MAX_EXPLAIN_LABELS labels per ECG."""
    if not args.explain:
        if args.top_k is not None:
            parser.error("--top-k only goes with --explain")
        return None
    if labels is not None:
        if args.top_k is not None:
            parser.error("--top-k goes with --explain without --labels (every label of --labels is explained)")
        options = ExplainedLabels()
    else:
        options = ExplainedLabels(top_k=TOP_K if args.top_k is None else args.top_k)
    if problem := options.problem(len(labels or ())):
        parser.error(f"--explain with {'--labels' if labels is not None else '--top-k'}: {problem}")
    return options


if __name__ == "__main__":
    sys.exit(main())
