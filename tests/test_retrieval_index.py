"""The embedding index (`pipelines.retrieval`): exact search equals brute force, HNSW above the exact limit
keeps recall@10 ≥ 0.9, a round trip through a folder and through a real S3 server (moto's) answers alike,
damaged or missing files and another model's fingerprint are refused by name, bad parts and queries too."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.retrieval import (
    MAX_K,
    MAX_QUERY_CHARS,
    EmbeddingIndex,
    IndexModelMismatch,
    QueryProblem,
    check_k,
    check_text,
)

FINGERPRINT = "0123456789abcdef"


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def part(ids: list[str], vectors: np.ndarray) -> pa.Table:
    """A score part as `pipelines.score --embeddings` writes it (ecg_id, fixed-size list embedding)."""
    flat = pa.array(vectors.reshape(-1).astype(np.float32))
    return pa.table({"ecg_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def parts_of(vectors: np.ndarray, size: int) -> list[pa.Table]:
    return [
        part([f"ecg-{i}" for i in range(start, min(start + size, len(vectors)))], vectors[start : start + size])
        for start in range(0, len(vectors), size)
    ]


def build(vectors: np.ndarray, size: int = 100, **options) -> EmbeddingIndex:
    return EmbeddingIndex.build(parts_of(vectors, size), model_fingerprint=FINGERPRINT, model="runs/x/export", **options)


def test_exact_search_equals_brute_force_top_k():
    vectors, queries = unit_vectors(500, 16, 0), unit_vectors(20, 16, 1)
    index = build(vectors)
    assert index.record["kind"] == "exact" and index.count == 500 and index.dim == 16
    hits = index.search(queries, k=10)
    similarity = queries @ vectors.T  # [20, 500]
    for q, query_hits in enumerate(hits):
        best = np.argsort(-similarity[q])[:10]
        assert [ecg_id for ecg_id, _ in query_hits] == [f"ecg-{i}" for i in best]
        np.testing.assert_allclose([score for _, score in query_hits], similarity[q, best], atol=1e-5)
    assert len(index.search(queries[:1], k=MAX_K)[0]) == 500  # k beyond the count: every ECG once
    assert index.search(vectors[7:8], k=1)[0][0][0] == "ecg-7"


def test_hnsw_above_the_exact_limit_keeps_recall_and_order():
    vectors, queries = unit_vectors(3000, 32, 2), unit_vectors(200, 32, 3)
    exact = build(vectors, size=500)
    approximate = build(vectors, size=500, exact_limit=1000)  # switches to HNSW at the third part
    assert approximate.record["kind"] == "hnsw" and approximate.record["parameters"]["m"] >= 8
    assert approximate.count == 3000 and approximate.ids == exact.ids
    np.testing.assert_allclose(approximate.vector("ecg-1234"), vectors[1234], atol=1e-6)
    truth = [{ecg_id for ecg_id, _ in hits} for hits in exact.search(queries, k=10)]
    found = [{ecg_id for ecg_id, _ in hits} for hits in approximate.search(queries, k=10)]
    recall = np.mean([len(t & f) / 10 for t, f in zip(truth, found)])
    assert recall >= 0.9, recall
    assert len(approximate.search(queries[:2], k=MAX_K)[0]) == MAX_K  # efSearch raised to k


@pytest.mark.parametrize("exact_limit", [10_000, 100])
def test_a_saved_index_loads_and_answers_alike(tmp_path, exact_limit):
    vectors, queries = unit_vectors(400, 8, 4), unit_vectors(5, 8, 5)
    index = build(vectors, exact_limit=exact_limit)
    index.save(tmp_path / "index")
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["ids.parquet", "index.json", "vectors.faiss"]
    loaded = EmbeddingIndex.load(tmp_path / "index")
    assert loaded.ids == index.ids
    assert {k: loaded.record[k] for k in ("model_fingerprint", "model", "dim", "count", "kind", "format_version")} == {
        "model_fingerprint": FINGERPRINT,
        "model": "runs/x/export",
        "dim": 8,
        "count": 400,
        "kind": "exact" if exact_limit > 400 else "hnsw",
        "format_version": 1,
    }
    assert loaded.search(queries, k=7) == index.search(queries, k=7)
    assert "ecg-399" in loaded and "ecg-400" not in loaded


def test_an_index_round_trips_through_an_object_store(object_store):
    vectors, queries = unit_vectors(300, 8, 6), unit_vectors(3, 8, 7)
    index = build(vectors, exact_limit=200)
    index.save(object_store.uri("scores/index"))
    assert object_store.keys("scores/index") == [f"scores/index/{n}" for n in ("ids.parquet", "index.json", "vectors.faiss")]
    loaded = EmbeddingIndex.load(object_store.uri("scores/index"))
    assert loaded.record["kind"] == "hnsw" and loaded.search(queries, k=5) == index.search(queries, k=5)
    with pytest.raises(ValueError, match="scores/elsewhere: no embedding index here"):
        EmbeddingIndex.load(object_store.uri("scores/elsewhere"))


def test_missing_or_damaged_files_are_refused_by_name(tmp_path):
    folder = tmp_path / "index"
    build(unit_vectors(50, 4, 8)).save(folder)
    with pytest.raises(ValueError, match=f"{tmp_path / 'nowhere'}: no embedding index here"):
        EmbeddingIndex.load(tmp_path / "nowhere")

    vectors = (folder / "vectors.faiss").read_bytes()
    (folder / "vectors.faiss").write_bytes(vectors[: len(vectors) // 2])
    with pytest.raises(ValueError, match="vectors.faiss: damaged"):
        EmbeddingIndex.load(folder)
    (folder / "vectors.faiss").write_bytes(vectors)

    (folder / "ids.parquet").unlink()
    with pytest.raises(ValueError, match="ids.parquet: missing or unreadable"):
        EmbeddingIndex.load(folder)

    (folder / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json: not a readable index record"):
        EmbeddingIndex.load(folder)


def test_another_models_index_is_refused_naming_both_fingerprints():
    index = build(unit_vectors(10, 4, 9))
    index.check_model(FINGERPRINT)
    with pytest.raises(IndexModelMismatch, match=f"fingerprint {FINGERPRINT}.*this model \\(fedcba9876543210\\)"):
        index.check_model("fedcba9876543210")


def test_bad_parts_are_refused_naming_the_part_and_the_ecg():
    vectors = unit_vectors(4, 4, 10)
    ids = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="score part 0 has no embedding column"):
        build_from([pa.table({"ecg_id": ids})])
    with pytest.raises(ValueError, match="score part 1: ecg_id 'a' is in the index twice"):
        build_from([part(ids, vectors), part(["a"], vectors[:1])])
    with pytest.raises(ValueError, match="ecg_id 'c' has an embedding of norm 2"):
        build_from([part(ids, vectors * np.array([[1], [1], [2], [1]], np.float32))])
    nulls = pa.table({"ecg_id": ids[:2], "embedding": pa.array([vectors[0].tolist(), None], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="ecg_id 'b' has an embedding of null, not 4"):
        build_from([nulls])
    with pytest.raises(ValueError, match="score part 1: ecg_id 'e' has an embedding of 3 values, not 4"):
        build_from([part(ids, vectors), part(["e"], unit_vectors(1, 3, 11))])
    with pytest.raises(ValueError, match="no embeddings to index"):
        build_from([part([], np.zeros((0, 4), np.float32))])


def build_from(parts: list[pa.Table]) -> EmbeddingIndex:
    return EmbeddingIndex.build(parts, model_fingerprint=FINGERPRINT, model=None)


def test_bad_queries_are_refused_naming_the_field():
    index = build(unit_vectors(10, 4, 12))
    with pytest.raises(ValueError, match="k: 0 neighbours"):
        index.search(unit_vectors(1, 4, 13), k=0)
    with pytest.raises(ValueError, match=r"queries: shape \[1, 5\]; expected \[q, 4\]"):
        index.search(unit_vectors(1, 5, 13), k=3)
    with pytest.raises(ValueError, match="ecg: 'nope' is not one of the index's 10 ECG ids"):
        index.vector("nope")
    for text, message in (("", "empty"), ("  \n", "empty"), ("x" * (MAX_QUERY_CHARS + 1), "the limit is 1,000")):
        with pytest.raises(QueryProblem, match=f"text: .*{message}") as problem:
            check_text(text)
        assert problem.value.field == "text"
    for k in (0, 10_000):
        with pytest.raises(QueryProblem, match=f"k: {k} neighbours; ask for 1 to {MAX_K}"):
            check_k(k)
    assert check_text("atrial fibrillation") == "atrial fibrillation" and check_k(MAX_K) == MAX_K
