"""A nearest-neighbour index over ECG embeddings (faiss), built streaming from scoring parts, saved beside them.

    index = EmbeddingIndex.build(parts, model_fingerprint="1f0c…", model="runs/sweep/best")  # tables: ecg_id, embedding
    index.save("runs/scores/index")                 # or s3://bucket/scores/index
    index = EmbeddingIndex.load("runs/scores/index")
    index.check_model(export_fingerprint(export))   # IndexModelMismatch names both fingerprints
    index.search(queries, k=10)                     # queries [q, D] float32, L2-normalised → [[(ecg_id, cosine)]]

Scores are inner products of L2-normalised vectors, i.e. cosine similarities. Up to `exact_limit` vectors
the index is exact (`IndexFlatIP`); above it, approximate (`IndexHNSWFlat`, inner product). A folder holds
`vectors.faiss` (faiss's serialized index), `ids.parquet` (the ecg_id of each vector, in index order) and
`index.json`, written last: the model it came from (export fingerprint and path or URI), dim, count,
kind and parameters, the format version, and each file's SHA-256, so a damaged or half-written folder is
refused on load instead of answering wrong neighbours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cached_property

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.storage import Location

FORMAT_VERSION = 1
RECORD_FILE, VECTORS_FILE, IDS_FILE = "index.json", "vectors.faiss", "ids.parquet"
NORM_TOLERANCE = 1e-3
"""How far from 1 an embedding's L2 norm may be (scoring writes float32 unit vectors)."""
EXACT_LIMIT = 100_000
"""Most vectors an index searches exactly. Measured at 100,000 unit vectors, one faiss thread on a shared
2-core machine (tests/benchmarks/bench_index.py): exact search builds in < 1 s, answers a batch of 1,000
queries at 270-1,300 q/s (BLAS: faster than HNSW's 210-1,250 q/s at D=256) and a single query in 2-19 ms,
with recall 1 on any data; HNSW takes 36-75 s to build and answers single queries only 1.3-9× faster
(its recall@10: 0.994-0.996 on structured vectors, 0.33 on uniform random ones at D=256). Up to 100,000
ECGs exact search is fast enough for interactive queries and batch evaluation alike, and needs no
trade-off; its cost grows linearly with the count (~10× at 1,000,000, extrapolated) while HNSW's
grows about logarithmically, so larger archives get HNSW."""


@dataclass(frozen=True)
class HNSWParameters:
    """faiss HNSW settings: `m` links per node, `ef_construction` candidates while building, `ef_search`
    candidates while searching (raised to k for a larger k). Chosen by recall@10 against exact search on
    100,000 unit vectors: M=16, efConstruction=100 gives, at efSearch 64 / 128 / 256, 0.87 / 0.96 / 0.99
    at D=32 (uniform random) and 0.86 / 0.96 / 0.99 at D=256 (32 latent dims + noise, like trained
    embeddings); efConstruction=200 doubled the build for +0.005. efSearch=256 keeps ≥ 0.95 with room for
    archives 10× larger. Uniform random vectors at D=256 are out of any graph index's reach (0.71 at
    efSearch 1,024, slower than exact): there is no neighbourhood structure to follow."""

    m: int = 16
    ef_construction: int = 100
    ef_search: int = 256

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"HNSWParameters.{name} must be at least 1, got {value}")


class IndexModelMismatch(ValueError):
    """The index was built from another model's embeddings; the message names both fingerprints."""


class EmbeddingIndex:
    """Vectors (a faiss index) and the ecg_id of each, in index order, with the `record` of how it was made."""

    def __init__(self, index: faiss.Index, ids: list[str], record: dict) -> None:
        self.index, self.ids, self.record = index, ids, record

    @classmethod
    def build(
        cls,
        parts: Iterable[pa.Table],
        *,
        model_fingerprint: str,
        model: str | None,
        exact_limit: int = EXACT_LIMIT,
        hnsw: HNSWParameters = HNSWParameters(),
    ) -> EmbeddingIndex:
        """An index of every row of `parts` (tables with `ecg_id` and `embedding`: fixed-size lists of unit
        float32 vectors), read one part at a time: exact while the count stays within `exact_limit`,
        moved into HNSW as soon as it passes it. ValueError naming the part and the ecg_id when a part
        lacks a column, an embedding is null, of another length, not of unit norm, or an id repeats."""
        index: faiss.Index | None = None
        ids: list[str] = []
        seen: set[str] = set()
        for number, part in enumerate(parts):
            part_ids, vectors = _rows_of(part, number, None if index is None else index.d)
            repeated = next((ecg_id for ecg_id in part_ids if ecg_id in seen), None)
            if repeated is not None or len(set(part_ids)) != len(part_ids):
                repeated = repeated or next(i for i in part_ids if part_ids.count(i) > 1)
                raise ValueError(f"score part {number}: ecg_id {repeated!r} is in the index twice")
            index = index if index is not None else faiss.IndexFlatIP(vectors.shape[1])
            if isinstance(index, faiss.IndexFlatIP) and index.ntotal + len(vectors) > exact_limit:
                index = _hnsw_holding(index, hnsw)
            index.add(vectors)
            ids += part_ids
            seen.update(part_ids)
        if not ids:
            raise ValueError("no embeddings to index: the score parts hold no rows")
        kind = "exact" if isinstance(index, faiss.IndexFlatIP) else "hnsw"
        record = {
            "format_version": FORMAT_VERSION,
            "model_fingerprint": model_fingerprint,
            "model": model,
            "dim": index.d,
            "count": index.ntotal,
            "kind": kind,
            "metric": "cosine (inner product of L2-normalised vectors)",
            "parameters": asdict(hnsw) if kind == "hnsw" else {},
        }
        return cls(index, ids, record)

    @property
    def dim(self) -> int:
        return self.record["dim"]

    @property
    def count(self) -> int:
        return self.record["count"]

    def check_model(self, fingerprint: str) -> None:
        """IndexModelMismatch unless the index was built from the export with this fingerprint."""
        if fingerprint != self.record["model_fingerprint"]:
            raise IndexModelMismatch(
                f"the index was built from the export with fingerprint {self.record['model_fingerprint']} "
                f"({self.record['model']}), not from this model ({fingerprint}); rebuild the index from this "
                "model's scores, or search with the model it records"
            )

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """queries [q, D] float32, L2-normalised → per query up to k (ecg_id, cosine score), best first."""
        if k < 1:
            raise ValueError(f"k: {k} neighbours; ask for at least 1")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries: shape {list(queries.shape)}; expected [q, {self.dim}]")
        if not np.isfinite(queries).all():
            raise ValueError("queries: contain NaN or Inf values")
        params = None
        if self.record["kind"] == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.record["parameters"]["ef_search"], k))
        scores, rows = self.index.search(queries, min(k, self.count), params=params)
        return [
            [(self.ids[row], float(score)) for row, score in zip(query_rows, query_scores) if row >= 0]
            for query_rows, query_scores in zip(rows, scores)
        ]

    def vector(self, ecg_id: str) -> np.ndarray:
        """The stored embedding [D] of an indexed ECG; ValueError when the id is not in the index."""
        row = self._rows.get(ecg_id)
        if row is None:
            raise ValueError(f"ecg: {ecg_id!r} is not one of the index's {self.count:,} ECG ids")
        return self.index.reconstruct(row)

    def __contains__(self, ecg_id: str) -> bool:
        return ecg_id in self._rows

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {ecg_id: row for row, ecg_id in enumerate(self.ids)}

    def save(self, where: str | Location) -> None:
        """Write the index into a folder or URI (`index.json` last: until it is there, no index is)."""
        folder = Location.of(where)
        folder.child(RECORD_FILE).delete()
        files = {VECTORS_FILE: faiss.serialize_index(self.index).tobytes(), IDS_FILE: _parquet_bytes(self.ids)}
        for name, data in files.items():
            folder.child(name).write_bytes(data)
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        folder.child(RECORD_FILE).write_json({**self.record, "sha256": digests})

    @classmethod
    def load(cls, where: str | Location) -> EmbeddingIndex:
        """The index saved in a folder or URI; ValueError naming the path or file when it is missing or
        damaged (unreadable, another format version, a checksum or a count that does not match)."""
        folder = Location.of(where)
        record_file = folder.child(RECORD_FILE)
        if not record_file.is_file():
            raise ValueError(
                f"{folder}: no embedding index here ({RECORD_FILE} is missing); build one with "
                "python -m pipelines.search --build SCORES_DIR, or score with --embeddings"
            )
        try:
            record = record_file.read_json()
            digests = dict(record.pop("sha256"))
            if record["format_version"] != FORMAT_VERSION:
                raise ValueError(f"format version {record['format_version']}; this code reads {FORMAT_VERSION}")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{record_file}: not a readable index record ({error})") from None
        data = {name: _checked_bytes(folder.child(name), digests.get(name)) for name in (VECTORS_FILE, IDS_FILE)}
        try:
            index = faiss.deserialize_index(np.frombuffer(data[VECTORS_FILE], dtype=np.uint8))
        except RuntimeError as error:
            raise ValueError(f"{folder.child(VECTORS_FILE)}: not a faiss index ({error})") from None
        ids = pq.read_table(pa.BufferReader(data[IDS_FILE]))["ecg_id"].to_pylist()
        if not index.ntotal == len(ids) == record.get("count") or index.d != record.get("dim"):
            raise ValueError(
                f"{folder}: {index.ntotal} vectors of {index.d} dims and {len(ids)} ids, but {RECORD_FILE} "
                f"records {record.get('count')} of {record.get('dim')}; the folder mixes two builds. Rebuild it"
            )
        return cls(index, ids, record)


def _rows_of(part: pa.Table, number: int, dim: int | None) -> tuple[list[str], np.ndarray]:
    """A part's ids and embeddings [n, D] float32, checked."""
    missing = [name for name in ("ecg_id", "embedding") if name not in part.column_names]
    if missing:
        raise ValueError(f"score part {number} has no {' or '.join(missing)} column")
    ids = part["ecg_id"].to_pylist()
    column = part["embedding"].combine_chunks()
    if not pa.types.is_list(column.type) and not pa.types.is_fixed_size_list(column.type):
        raise ValueError(f"score part {number}: embedding is {column.type}, not a list of floats")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    expected = dim or (int(lengths[0]) if len(lengths) else 0)
    wrong = np.flatnonzero(~(lengths == expected))  # a null's length is NaN
    if len(wrong):
        found = "null" if column[int(wrong[0])].as_py() is None else f"{int(lengths[wrong[0]])} values"
        raise ValueError(f"score part {number}: ecg_id {ids[wrong[0]]!r} has an embedding of {found}, not {expected}")
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), expected)
    norms = np.linalg.norm(vectors, axis=1)
    off = np.flatnonzero(~(np.abs(norms - 1) <= NORM_TOLERANCE))
    if len(off):
        raise ValueError(
            f"score part {number}: ecg_id {ids[off[0]]!r} has an embedding of norm {norms[off[0]]:.4g}, not an "
            "L2-normalised one (or NaN/Inf values)"
        )
    return ids, np.ascontiguousarray(vectors)


def _hnsw_holding(flat: faiss.IndexFlatIP, hnsw: HNSWParameters) -> faiss.IndexHNSWFlat:
    """An HNSW index (inner product) holding the flat index's vectors, in the same order."""
    index = faiss.IndexHNSWFlat(flat.d, hnsw.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = hnsw.ef_construction
    index.hnsw.efSearch = hnsw.ef_search
    if flat.ntotal:
        index.add(flat.reconstruct_n(0, flat.ntotal))
    return index


def _parquet_bytes(ids: list[str]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"ecg_id": pa.array(ids, pa.string())}), sink)
    return sink.getvalue().to_pybytes()


def _checked_bytes(file: Location, digest: str | None) -> bytes:
    try:
        data = file.read_bytes()
    except (OSError, FileNotFoundError) as error:
        raise ValueError(f"{file}: missing or unreadable ({error}); rebuild the index") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{file}: damaged (its SHA-256 differs from the one index.json records); rebuild the index")
    return data
