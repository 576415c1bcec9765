"""Search: the ECGs nearest a sentence or an ECG, in an index built from scoring output.

    python -m pipelines.score --model runs/sweep/best --input data/synthetic --output runs/scores --embeddings
    python -m pipelines.search --index runs/scores/index --text "atrial fibrillation" --k 10
    python -m pipelines.search --index s3://bucket/scores/index --ecg synthetic/00042      # an indexed ecg_id
    python -m pipelines.search --index runs/scores/index --ecg /mnt/ptb-xl/records500/00000/00001_hr   # a WFDB record
    python -m pipelines.search --build runs/scores [--model runs/sweep/best]     # (re)build runs/scores/index

Prints one line per neighbour, best first: rank, ecg_id, cosine score (tab-separated, after a header).
`pipelines.score --embeddings` builds OUTPUT/index itself; `--build` rebuilds it from the parts of a
finished scoring output. The index records the export its embeddings came from (fingerprint, path or URI):
queries are embedded by that export unless `--model` names another copy of it, and an export with
another fingerprint is refused. A text query goes through the text tower (`encode_reports`); an ECG is
either an id in the index (its stored embedding) or a WFDB record read and preprocessed as serving and
scoring do (`Scorer.prepare` / `Scorer.embed`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.model import export_fingerprint
from pipelines.data.rejection import RecordRejected
from pipelines.data.wfdb_io import read_record
from pipelines.logs import setup_logging
from pipelines.outputs import recorded
from pipelines.retrieval import EmbeddingIndex, QueryProblem, check_k, check_text
from pipelines.retrieval.index import EXACT_LIMIT
from pipelines.serving.batch_scoring import SCORES_DIR, part_names, part_of
from pipelines.serving.scorer import Scorer
from pipelines.storage import Location, cached_copy

log = logging.getLogger("pipelines.search")

INDEX_DIR = "index"
"""Where a scoring output keeps its index."""


def score_parts(scores_output: Location) -> Iterator[pa.Table]:
    """Each `scores/<unit>.parquet` part of a scoring output (ecg_id, embedding), one at a time, in unit
    order; ValueError naming the part when it has no `embedding` column."""
    for unit in sorted(part_names(scores_output, SCORES_DIR)):
        part = part_of(scores_output, SCORES_DIR, unit)
        if "embedding" not in pq.read_schema(part.path, filesystem=part.filesystem).names:
            raise ValueError(
                f"{part} has no embedding column: rerun pipelines.score with --embeddings (and --overwrite)"
            )
        yield pq.read_table(part.path, filesystem=part.filesystem, columns=["ecg_id", "embedding"])


def build_index(scores_output: str, model: str | None = None, exact_limit: int = EXACT_LIMIT) -> EmbeddingIndex:
    """Build the index of a finished scoring output's embeddings into SCORES_OUTPUT/index and return it.
    `model` (path or URI) is recorded for search to load; when given, its fingerprint must be the one the
    output records. ValueError when the folder is not a finished scoring output with embeddings."""
    output = Location.of(scores_output)
    made_with = recorded(output, "score")
    if made_with is None:
        raise ValueError(f"{output} is not a pipelines.score output (no made_by.json of score)")
    if not output.child("summary.json").is_file():
        raise ValueError(f"{output}: scoring has not finished (no summary.json); rerun pipelines.score into it")
    if not made_with.get("embeddings"):
        raise ValueError(f"{output} was scored without --embeddings: rerun pipelines.score with --embeddings")
    if model is not None:
        model = Location.of(model).uri
        _check_same_export(model, made_with["model"], f"the scores in {output}")
    index = EmbeddingIndex.build(
        score_parts(output), model_fingerprint=made_with["model"], model=model, exact_limit=exact_limit
    )
    index.save(output.child(INDEX_DIR))
    return index


def _check_same_export(model: str, fingerprint: str, what: str) -> None:
    found = export_fingerprint(cached_copy(model))
    if found != fingerprint:
        raise ValueError(f"--model {model} has fingerprint {found}, but {what} came from the export {fingerprint}")


def query_vector(index: EmbeddingIndex, model: str | None, text: str | None, ecg: str | None) -> np.ndarray:
    """The query's embedding [1, D]: an indexed ECG's stored vector, or the export's embedding of the text
    or of the WFDB record at `ecg`. `model` defaults to the export the index records; QueryProblem
    naming the field when the query cannot be embedded, IndexModelMismatch for another export."""
    if ecg is not None and ecg in index:
        if model is not None:
            index.check_model(export_fingerprint(cached_copy(model)))
        return index.vector(ecg)[None]
    if ecg is not None and not Path(f"{ecg}.hea").is_file():
        raise QueryProblem("ecg", f"{ecg!r} is neither an ecg_id in the index nor a WFDB record (no {ecg}.hea)")
    model = model or index.record["model"]
    if model is None:
        raise QueryProblem("model", "the index records no export (built by --build without --model); pass --model")
    if not Location.of(model).exists():
        raise QueryProblem("model", f"{model} does not exist; pass --model with a copy of the export the index records")
    scorer = Scorer(model)
    index.check_model(export_fingerprint(scorer.export_dir))
    if text is not None:
        return scorer.embed_text([text])
    try:
        prepared = scorer.prepare(read_record(ecg))
    except RecordRejected as error:
        raise QueryProblem("ecg", f"{ecg}: {error}") from None
    return scorer.embed(prepared.signal[None], prepared.lead_mask[None])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--index", help="an index folder or URI (SCORES_OUTPUT/index)")
    action.add_argument("--build", metavar="SCORES_DIR", help="build SCORES_DIR/index from a scoring output")
    query = parser.add_mutually_exclusive_group()
    query.add_argument("--text", help="a sentence: the ECGs whose embedding is nearest it")
    query.add_argument("--ecg", help="an ecg_id in the index, or a WFDB record path (without extension)")
    parser.add_argument("--k", type=int, default=10, help="neighbours to print (default 10)")
    parser.add_argument("--model", help="the export (path or URI; default: the one the index records)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.build:
        if args.text is not None or args.ecg is not None:
            parser.error("--build takes no query (--text / --ecg)")
        started = time.time()
        try:
            index = build_index(args.build, args.model)
        except (OSError, ValueError) as error:
            parser.error(str(error))
        print(f"indexed {index.count:,} ECGs ({index.record['kind']}) in {time.time() - started:.1f} s "
              f"→ {Location.of(args.build).child(INDEX_DIR)}")
        return 0
    if args.text is None and args.ecg is None:
        parser.error("give a query: --text or --ecg")
    try:
        check_k(args.k)
        if args.text is not None:
            check_text(args.text)
        index = EmbeddingIndex.load(args.index)
        hits = index.search(query_vector(index, args.model, args.text, args.ecg), args.k)[0]
    except QueryProblem as error:
        parser.error(f"--{error}")
    except (OSError, ValueError) as error:  # a missing or damaged index, another model's index
        parser.error(str(error))
    print("rank\tecg_id\tscore")
    for rank, (ecg_id, score) in enumerate(hits, 1):
        print(f"{rank}\t{ecg_id}\t{score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
