"""`POST /v1/search` over real HTTP on 127.0.0.1 against an index the replica loads at start: an indexed ECG
finds itself first, a text query's hits equal brute-force cosine over the indexed embeddings, `.npy`
queries; bad queries (empty or over-long text, k of 0 or 10,000, both or neither of text and ecg) get a 422
naming the field, a server without an index a 409, and an index built with another model stops the
deployment, naming both fingerprints."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
import requests

from models.model import export_fingerprint
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.wfdb_io import Recording
from pipelines.retrieval import MAX_K, MAX_QUERY_CHARS, EmbeddingIndex
from pipelines.serving.scorer import Scorer
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.served import served

TOKEN = "search-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HALF_A_CPU = {"num_cpus": 0.5}
"""Two replicas (with and without an index) on the 2-CPU test cluster."""
N_INDEXED = 40


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export("melp")


@pytest.fixture(scope="module")
def ecgs() -> np.ndarray:
    """40 synthetic 12-lead ECGs in mV at 500 Hz: float32 [40, 12, 5000]."""
    signals, _ = generate_batch(N_INDEXED, np.random.default_rng(6), SyntheticConfig(n=N_INDEXED))
    return signals.astype(np.float32)


@pytest.fixture(scope="module")
def scorer(export) -> Scorer:
    return Scorer(export, "synthetic")


@pytest.fixture(scope="module")
def indexed(scorer, ecgs) -> tuple[list[str], np.ndarray]:
    """The ECGs' ids and embeddings [40, D], as `pipelines.score --embeddings` writes them."""
    prepared = [scorer.prepare(Recording(f"syn-{i}", e, 500, list(STANDARD_LEADS))) for i, e in enumerate(ecgs)]
    embeddings = scorer.embed(np.stack([p.signal for p in prepared]), np.stack([p.lead_mask for p in prepared]))
    return [f"syn-{i}" for i in range(len(ecgs))], embeddings


def saved_index(indexed, fingerprint: str, model: str, where) -> str:
    ids, embeddings = indexed
    part = pa.table(
        {
            "ecg_id": ids,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), embeddings.shape[1]),
        }
    )
    EmbeddingIndex.build([part], model_fingerprint=fingerprint, model=model).save(str(where))
    return str(where)


@pytest.fixture(scope="module")
def url(serve_port, export, indexed, tmp_path_factory):
    """The export with its index at /, without an index at /plain."""
    from ray import serve

    from pipelines.serve import ScoringService

    index = saved_index(indexed, export_fingerprint(export), str(export), tmp_path_factory.mktemp("search-index"))
    with_index = ScoringService.options(ray_actor_options=HALF_A_CPU).bind(str(export), "synthetic", TOKEN, index=index)
    with served(with_index, "ecg-fm-search"):
        plain = ScoringService.options(ray_actor_options=HALF_A_CPU).bind(str(export), "synthetic", TOKEN)
        serve.run(plain, name="ecg-fm-plain", route_prefix="/plain")
        yield f"http://127.0.0.1:{serve_port}"


def post(url: str, body, route: str = "/v1/search", content_type: str = "application/json", **kwargs):
    data = body if isinstance(body, bytes) else json.dumps(body)
    headers = {**AUTH, "Content-Type": content_type}
    return requests.post(f"{url}{route}", data=data, headers=headers, timeout=60, **kwargs)


@pytest.mark.slow
def test_an_indexed_ecg_finds_itself_first(url, ecgs):
    response = post(url, {"ecg": ecgs[[3, 17]].tolist(), "ids": ["q3", "q17"], "k": 5})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["q3", "q17"]
    for own, result in zip(("syn-3", "syn-17"), results):
        hits = result["hits"]
        assert len(hits) == 5 and hits[0]["ecg_id"] == own and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


@pytest.mark.slow
def test_a_text_query_equals_brute_force_cosine(url, scorer, indexed):
    text = "atrial fibrillation with a rapid ventricular response"
    response = post(url, {"text": text, "k": 7, "ids": ["af"]})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    ids, embeddings = indexed
    cosine = embeddings @ scorer.embed_text([text])[0]  # [40]
    best = np.argsort(-cosine)[:7]
    assert result["id"] == "af" and [h["ecg_id"] for h in result["hits"]] == [ids[i] for i in best]
    np.testing.assert_allclose([h["score"] for h in result["hits"]], cosine[best], atol=1e-5)
    assert post(url, {"text": text}).json()["results"][0]["id"] == "text-0"


@pytest.mark.slow
def test_a_npy_ecg_query(url, ecgs):
    buffer = io.BytesIO()
    np.save(buffer, ecgs[5])
    response = post(url, buffer.getvalue(), content_type="application/octet-stream", params={"k": "2"})
    assert response.status_code == 200, response.text
    hits = response.json()["results"][0]["hits"]
    assert len(hits) == 2 and hits[0]["ecg_id"] == "syn-5"


@pytest.mark.slow
def test_k_beyond_the_index_gives_every_ecg(url):
    hits = post(url, {"text": "sinus rhythm", "k": N_INDEXED + 10}).json()["results"][0]["hits"]
    assert sorted(h["ecg_id"] for h in hits) == sorted(f"syn-{i}" for i in range(N_INDEXED))


BAD_QUERIES = [
    ("empty text", {"text": ""}, "text"),
    ("blank text", {"text": "   "}, "text"),
    ("over-long text", {"text": "a" * (MAX_QUERY_CHARS + 1)}, "text"),
    ("k of 0", {"text": "sinus rhythm", "k": 0}, "k"),
    ("k of 10,000", {"text": "sinus rhythm", "k": 10_000}, "k"),
    ("k as a string", {"text": "sinus rhythm", "k": "5"}, "k"),
    ("both text and ecg", {"text": "sinus rhythm", "ecg": [[0.0] * 5000] * 12}, "text"),
    ("neither text nor ecg", {"k": 5}, "text"),
    ("leads with a text", {"text": "sinus rhythm", "leads": ["I"]}, "leads"),
    ("two ids for a text", {"text": "sinus rhythm", "ids": ["a", "b"]}, "ids"),
    ("a bad ecg", {"ecg": [[0.0] * 5000] * 6}, "leads"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "body", "named"), BAD_QUERIES, ids=[c[0] for c in BAD_QUERIES])
def test_bad_queries_get_a_422_naming_the_field(url, case, body, named):
    response = post(url, body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == named, response.text
    assert len(response.content) < 2048, "the input is not echoed back"


@pytest.mark.slow
def test_k_bound_is_documented(url):
    spec = requests.get(f"{url}/openapi.json", headers=AUTH, timeout=10).json()
    body = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["k"]["maximum"] == MAX_K and "text" in body["properties"]


@pytest.mark.slow
def test_without_an_index_search_answers_409_and_health_says_so(url, export):
    response = post(url, {"text": "sinus rhythm"}, route="/plain/v1/search")
    assert response.status_code == 409 and response.json()["field"] == "index"
    assert "--index" in response.json()["detail"]
    assert requests.get(f"{url}/plain/healthz", headers=AUTH, timeout=10).json()["index"] is None
    health = requests.get(f"{url}/healthz", timeout=10).json()
    assert health["index"] == {"count": N_INDEXED, "kind": "exact"}
    assert health["model"]["fingerprint"] == export_fingerprint(export)


@pytest.mark.slow
def test_an_index_of_another_model_stops_the_deployment(url, export, indexed, tmp_path):
    """The replica refuses to start: `serve.run` fails, the deployment's status names both fingerprints."""
    from ray import serve

    from pipelines.serve import app_builder

    other = saved_index(indexed, "0123456789abcdef", "elsewhere/export", tmp_path / "other-index")
    app = app_builder(
        {"model": str(export), "index": other, "allow_no_token": True, "cpus_per_replica": 0.5, "explainers": 0}
    )
    try:
        with pytest.raises(RuntimeError, match="ecg-fm-mismatch"):
            serve.run(app, name="ecg-fm-mismatch", route_prefix="/mismatch")
        message = serve.status().applications["ecg-fm-mismatch"].deployments["ScoringService"].message
        assert "0123456789abcdef" in message and export_fingerprint(export) in message
    finally:
        serve.delete("ecg-fm-mismatch")


@pytest.mark.parametrize(("index", "named"), [("other", "0123456789abcdef"), ("missing", "no embedding index here")])
def test_the_cli_refuses_a_missing_or_foreign_index_before_serving(export, indexed, tmp_path, capsys, index, named):
    """No Ray here: `pipelines.serve --index` checks the index against the export before starting anything."""
    from pipelines.serve import main as serve_main

    folder = tmp_path / "index"
    if index == "other":
        saved_index(indexed, "0123456789abcdef", "elsewhere/export", folder)
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--model", str(export), "--index", str(folder)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"--index {folder}" in error and named in error
