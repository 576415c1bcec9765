"""Prepare: ECG archives → model-ready parquet shards, on Ray Data.

    python -m pipelines.prepare --source synthetic --input 2000 --output data/synthetic
    python -m pipelines.prepare --source ptbxl --input /data/ptb-xl --output data/ptbxl
    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m pipelines.prepare --source mimic --input s3://bucket/mimic-iv-ecg --output s3://bucket/shards
    python -m pipelines.prepare --source mimic --input s3://physionet-open/mimic-iv-ecg/1.0 --unsigned --output …

The archive is listed on the driver (metadata only), the list becomes a Ray dataset, reading and
preprocessing run in `map_batches` tasks across the cluster, and a `ShardSink` writes bounded-size
shards as rows stream out. The output holds `part-*.parquet` (the data contract in
`pipelines/data/schema.py`), `rejected.parquet` (ecg_id, source, record_path, reason),
`manifest.json` (counts per split and source, rejection reasons, preprocessing, schema, timing) and
`made_by.json` (`pipelines.outputs`: this command made the folder). Records in = records kept + records
rejected, always. An output that is not new or empty is refused unless prepare made it and `--overwrite`
is given (never another folder). A local output is written into a sibling folder and swapped in when
complete, so the old dataset stays whole until the new one is. A bucket output (s3://…) has no rename: on
`--overwrite` the earlier dataset's own files (its manifest first, then the shards it lists and its
rejections; nothing else under the prefix) are deleted and the new one is written in place; readers take
the shards the manifest lists, and until the new manifest is written they refuse the prefix as unfinished.
The archive is a folder every node mounts at the same path, or a prefix in an object store: there its
index (PTB-XL's database CSV, MIMIC's record_list.csv) plans the work without listing keys, a WFDB tree is
listed by prefix, and each read task reads its records' files one request each, several at once.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.preprocess import PreprocessConfig
from pipelines.data.records import RecordOptions, prepare_batch
from pipelines.data.rejection_hint import dominant_rejection_hint
from pipelines.data.shard_files import MANIFEST_FILE, REJECTED_FILE
from pipelines.data.shard_sink import ShardSink
from pipelines.data.sources import SourceOptions, list_source
from pipelines.labels.concept_reports import statements_of
from pipelines.logs import init_ray, setup_logging
from pipelines.outputs import (
    OutputRefused,
    add_shared_mount_argument,
    check_output,
    mark,
    refuse_node_local,
    written_beside,
)
from pipelines.progress import ProgressLine
from pipelines.storage import Location
from pipelines.synthetic import SyntheticConfig, generate_ptbxl_layout
from pipelines.synthetic.read_task import chunk_table, generate_and_prepare

log = logging.getLogger("pipelines.prepare")

SOURCES = ("ptbxl", "mimic", "wfdb", "synthetic")


def prepare(
    source: str,
    options: SourceOptions,
    output: str,
    preprocess: PreprocessConfig = PreprocessConfig(),
    records: RecordOptions = RecordOptions(),
    batch_size: int = 64,
    rows_per_shard: int = 512,
    progress_interval_s: float = 5.0,
    generate: SyntheticConfig | None = None,
) -> dict:
    """Run the prepare stage on the current Ray cluster (started locally if none); returns the manifest.
    With `generate` (source synthetic), no archive is read: each read task generates its chunks of those
    ECGs on its own node and prepares them there (`pipelines.synthetic.read_task`)."""
    started = time.time()
    if source == "synthetic":
        # The generator writes its machine-style report; "raw" takes it as written.
        options = replace(options, source_name=options.source_name or "synthetic", report=options.report or "raw")
    if options.report == "labels" and options.label_statements is not None:
        records = replace(records, label_statements=options.label_statements)
    if generate is not None:
        work, records_in, listing_rejected = chunk_table(generate), generate.n, []
        rows_per_task, read_task = 1, partial(generate_and_prepare, config=generate, options=options)
        log.info("prepare: %s synthetic ECGs, generated in the read tasks", f"{records_in:,}")
    else:
        listing = list_source("ptbxl" if source == "synthetic" else source, options)
        work = pa.Table.from_pandas(listing.records, preserve_index=False)
        records_in, listing_rejected = listing.records_in, listing.rejected
        rows_per_task, read_task = batch_size, _read_task
        log.info(
            "prepare: listed %s records from %s (%s rejected while listing)",
            f"{records_in:,}",
            options.input,
            f"{len(listing_rejected):,}",
        )
    if not ray.is_initialized():
        ray.init()
    sink = ShardSink(
        output=output,
        n_samples=preprocess.n_samples,
        fs=preprocess.fs,
        rows_per_shard=rows_per_shard,
        listing_rejected=listing_rejected,
        records_in=records_in,
        manifest_fields={
            "source": source,
            "input": str(options.input) if generate is None else f"generated: {generate.n} ECGs, seed {generate.seed}",
            "report": options.report,
            "preprocessing": {**preprocess.to_dict(), "leads": list(STANDARD_LEADS)},
            "record_rules": {k: v for k, v in asdict(records).items() if k != "label_statements"},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        started=started,
    )
    with ProgressLine("prepare", total=records_in - len(listing_rejected), interval_s=progress_interval_s) as progress:
        dataset = _blocks(work, rows_per_task * 4).map_batches(
            _counted,
            batch_size=rows_per_task,
            batch_format="pyarrow",
            fn_kwargs={"read": read_task, "preprocess": preprocess, "records": records, "counter": progress.counter},
        )
        dataset.write_datasink(sink)
    return sink.manifest


def _blocks(table: pa.Table, rows: int) -> ray.data.Dataset:
    """The work list as a dataset of blocks of `rows` rows, so reading spreads over tasks."""
    return ray.data.from_arrow([table.slice(start, rows) for start in range(0, max(table.num_rows, 1), rows)])


def _read_task(batch: pa.Table, preprocess: PreprocessConfig, records: RecordOptions) -> pa.Table:
    return prepare_batch(batch, preprocess, records)


def _counted(batch: pa.Table, read, preprocess: PreprocessConfig, records: RecordOptions, counter) -> pa.Table:
    """`read(batch)`, plus a progress report of the records it read to the driver's counter."""
    table = read(batch, preprocess=preprocess, records=records)
    records_read = pc.count_distinct(table["record_path"]).as_py()  # a long record's windows share its path
    counter.add.remote(records_read, table.num_rows - table["reject_reason"].null_count)
    return table


def _synthetic_config(spec: str, limit: int | None) -> SyntheticConfig:
    """`--input` of `--source synthetic`: a number of ECGs or a SyntheticConfig JSON file; `--limit` caps it."""
    config = SyntheticConfig.from_json(Path(spec)) if not spec.isdigit() else SyntheticConfig(n=int(spec))
    return replace(config, n=min(config.n, limit)) if limit else config


def generate_synthetic(config: SyntheticConfig, raw_dir: Path) -> Path:
    """Write the synthetic PTB-XL-layout archive that `--source synthetic --raw-dir` prepares, in Ray tasks."""
    started = time.time()
    generate_ptbxl_layout(raw_dir, config, map_fn=_ray_map)
    elapsed = time.time() - started
    log.info("prepare: generated %s synthetic ECGs in %.1f s → %s", f"{config.n:,}", elapsed, raw_dir)
    return raw_dir


def _ray_map(fn, items):
    remote = ray.remote(fn)
    return ray.get([remote.remote(item) for item in items])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.prepare",
        description="Turn an ECG archive into parquet shards (one row per ECG) on Ray Data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--source", required=True, choices=SOURCES,
                        help="archive layout: PTB-XL folder, MIMIC-IV-ECG folder, any WFDB folder tree, "
                             "or synthetic (generate the default data, then prepare it)")
    parser.add_argument("--input", required=True,
                        help="archive folder: a path every node mounts, or an object-store URI (s3://…); for "
                             "synthetic, the number of ECGs or a SyntheticConfig JSON file")
    parser.add_argument("--unsigned", action="store_true",
                        help="read an s3:// archive without credentials (unsigned requests: a public bucket)")
    parser.add_argument("--output", required=True, help="folder (or pyarrow URI, e.g. s3://…) for the shards")
    parser.add_argument("--fs", type=int, default=500, help="output sampling rate in Hz")
    parser.add_argument("--seconds", type=float, default=10.0, help="output length; longer records cropped, shorter zero-padded")
    parser.add_argument("--normalize", choices=("minmax", "zscore", "none"), default="minmax",
                        help="per-record min-max (MERL), per-lead z-score, or raw mV")
    parser.add_argument("--bandpass", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="zero-phase band-pass in Hz, e.g. 0.5 40")
    parser.add_argument("--report", choices=("raw", "labels"), default=None,
                        help="report text: the archive's own, or English from label descriptions (wfdb: the concept "
                             "table's names of the #Dx SNOMED codes) (default: labels for ptbxl, raw otherwise)")
    parser.add_argument("--min-report-words", type=int, default=4,
                        help="reject records whose cleaned report has fewer words; 0 keeps report-less records")
    parser.add_argument("--long-records", choices=("crop", "windows"), default="crop",
                        help="crop long records to --seconds, or cut them into full windows (one row each)")
    parser.add_argument("--min-leads", type=int, default=1, help="reject records with fewer usable standard leads")
    parser.add_argument("--limit", type=int, default=None, help="prepare only the first N records of the archive's index")
    parser.add_argument("--seed", type=int, default=0, help="seed of hashed patient splits (mimic, wfdb)")
    parser.add_argument("--batch-size", type=int, default=64, help="records per read task batch")
    parser.add_argument("--rows-per-shard", type=int, default=512, help="upper bound of rows in one part-*.parquet")
    parser.add_argument("--raw-dir", default=None,
                        help="synthetic only: also keep the generated ECGs as a WFDB archive in PTB-XL's layout here "
                             "(on a cluster, a folder every node mounts) and prepare from it; by default each read "
                             "task generates its ECGs on its own node and nothing but the shards is kept")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset prepare made in --output (written beside it, swapped in when complete; "
                             "any other folder is refused)")
    add_shared_mount_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        preprocess = PreprocessConfig(
            fs=args.fs,
            seconds=args.seconds,
            normalize=args.normalize,
            bandpass=tuple(args.bandpass) if args.bandpass else None,
            long_records=args.long_records,
            min_leads=args.min_leads,
        )
    except ValueError as error:
        parser.error(str(error))
    for name in ("limit", "batch_size", "rows_per_shard"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.min_report_words < 0:
        parser.error(f"--min-report-words must be 0 or more, got {args.min_report_words}")
    if args.source == "synthetic":
        if not (args.input.isdigit() and int(args.input) > 0) and not Path(args.input).is_file():
            parser.error(f"--input for synthetic must be a positive number of ECGs or a config file, got {args.input!r}")
    else:
        try:
            archive = Location.of(args.input, unsigned=args.unsigned)
            if not archive.is_dir():
                parser.error(f"--input {args.input} is not a directory")
        except (OSError, ValueError) as error:  # a URI pyarrow cannot resolve, a store that cannot be reached
            parser.error(f"--input {args.input}: {error}")
    output = _output_location(args.output, args.overwrite, parser)
    init_ray()
    try:
        refuse_node_local(output, shared_mount=args.shared_mount)
    except OutputRefused as error:
        parser.error(str(error))
    made_with = {"source": args.source, "input": args.input, "preprocessing": preprocess.to_dict()}
    with _written_in_full(output, made_with) as written:
        setup_logging(Path(written) / "logs" / "prepare.log" if Location.of(written).is_local else None)
        generated = None  # the ECGs each read task generates, for synthetic data without --raw-dir
        if args.source != "synthetic":
            input_dir = archive
        elif args.raw_dir:
            input_dir = generate_synthetic(_synthetic_config(args.input, args.limit), Path(args.raw_dir).absolute())
        else:
            input_dir, generated = Path.cwd(), _synthetic_config(args.input, args.limit)  # no archive to list
        options = SourceOptions(
            input=input_dir, report=args.report, fs=args.fs, limit=args.limit, seed=args.seed,
            label_statements=statements_of("snomed") if args.source == "wfdb" and args.report == "labels" else None,
            unsigned=args.unsigned,
        )
        try:
            manifest = prepare(
                args.source,
                options,
                written,
                preprocess=preprocess,
                records=RecordOptions(min_report_words=args.min_report_words, seed=args.seed, unsigned=args.unsigned),
                batch_size=args.batch_size,
                rows_per_shard=args.rows_per_shard,
                generate=generated,
            )
        except ValueError as error:  # a layout that is not what --source says
            parser.error(str(error))
    print(summary_line(manifest, output))
    if hint := dominant_rejection_hint(manifest):
        log.warning(hint)
    return manifest


def _output_location(output: str, overwrite: bool, parser: argparse.ArgumentParser) -> str:
    """`output` as an absolute path or a URI, once checked: new, empty or (with --overwrite) a dataset prepare
    made. Nothing is written or deleted here."""
    location = Location.of(output)
    try:
        check_output(location, "prepare", {}, overwrite=overwrite, resume=False, legacy=prepared_before_markers)
    except OutputRefused as error:
        parser.error(str(error))
    return location.uri


@contextmanager
def _written_in_full(output: str, made_with: dict) -> Iterator[str]:
    """Where to write the dataset: for a local path a marked sibling folder that replaces `output` only once
    the block completes (a failed run leaves the old dataset whole); for a URI the URI itself, marked, once
    the dataset an earlier prepare wrote there is deleted (`_delete_dataset`)."""
    location = Location.of(output)
    if location.is_local:
        with written_beside(output) as new:
            mark(new, "prepare", made_with)
            yield str(new)
        return
    _delete_dataset(location)
    mark(location, "prepare", made_with)
    yield output


def _delete_dataset(location: Location) -> None:
    """Delete the dataset a finished prepare wrote into `location`: its manifest first (from then on readers
    refuse the folder as unfinished), then the shards it lists and its rejections; nothing else."""
    try:
        manifest = location.child(MANIFEST_FILE).read_json()
    except (OSError, ValueError):
        return  # new, or a prepare that did not finish: readers ignore shards that no manifest lists
    location.child(MANIFEST_FILE).delete()
    for name in [entry["file"] for entry in manifest.get("shards", [])] + [REJECTED_FILE]:
        location.child(name).delete()


def prepared_before_markers(location: Location) -> dict | None:
    """A dataset prepared before outputs carried a marker: its manifest lists shards and counts records."""
    try:
        manifest = location.child(MANIFEST_FILE).read_json()
    except (OSError, ValueError):
        return None
    return {} if isinstance(manifest, dict) and {"shards", "records_in"} <= manifest.keys() else None


def summary_line(manifest: dict, output: str) -> str:
    splits = ", ".join(f"{split} {count:,}" for split, count in manifest["rows_by_split"].items())
    return (
        f"prepared {manifest['records_in']:,} records in {manifest['elapsed_seconds']:.1f} s "
        f"({manifest['records_per_second']:,.0f}/s): {manifest['records_kept']:,} kept → "
        f"{manifest['rows']:,} rows ({splits or 'none'}), {manifest['records_rejected']:,} rejected "
        f"(see rejected.parquet) → {output}"
    )


if __name__ == "__main__":
    main()
