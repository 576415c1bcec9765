"""The Serve app over real HTTP on 127.0.0.1: scores equal the evaluation path's, lead subsets are scored,
and every bad request gets a 4xx naming what is wrong."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
import torch

from models.factory import create_model
from models.model import ECGTextModel
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.preprocess import PreprocessConfig, preprocess
from pipelines.data.wfdb_io import Recording
from pipelines.labels.tasks import load_task
from pipelines.labels.zero_shot import task_scores
from pipelines.serving.explainer import ExplainBounds
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.served import served

pytestmark = pytest.mark.slow  # every test talks to a Serve app over HTTP

TOKEN = "test-token"
LIMIT = 6 * 2**20
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("serve-export")
    create_model("tiny", objective="melp")[0].save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def url(serve_port, export):
    from pipelines.serve import scoring_app

    app = scoring_app(str(export), "synthetic", TOKEN, max_body_bytes=LIMIT, explain=ExplainBounds(replicas=0))
    with served(app, "ecg-fm-test"):
        yield f"http://127.0.0.1:{serve_port}"


@pytest.fixture(scope="module")
def ecgs():
    """Three synthetic 12-lead ECGs in mV at 500 Hz: float32 [3, 12, 5000]."""
    signals, _ = generate_batch(3, np.random.default_rng(3), SyntheticConfig(n=3))
    return signals.astype(np.float32)


def direct_scores(export, signal: np.ndarray, leads: list[str]) -> np.ndarray:
    """The evaluation path, without Serve: prepare's preprocessing, encode_ecg, task_scores."""
    model = ECGTextModel.from_pretrained(export).eval()
    prepared = preprocess(Recording("x", signal, 500, leads), PreprocessConfig())
    with torch.no_grad():
        embedding = model.encode_ecg(
            torch.from_numpy(prepared.signal[None].astype(np.float32)), torch.from_numpy(prepared.lead_mask[None])
        )
        task = load_task("synthetic")
        return task_scores(model, task, task.codes, embedding.numpy())[0]


def post(url: str, route: str, body, headers=AUTH, raw: bool = False):
    data = body if raw else json.dumps(body)
    return requests.post(
        f"{url}{route}", data=data, headers={**headers, "Content-Type": "application/json"}, timeout=60
    )


def test_scores_over_http_equal_the_evaluation_path(url, export, ecgs):
    response = post(url, "/v1/score", {"ecg": ecgs.tolist(), "fs": 500, "ids": ["a", "b", "c"]})
    assert response.status_code == 200, response.text
    body = response.json()
    codes = load_task("synthetic").codes
    assert body["labels"] == codes and [r["id"] for r in body["results"]] == ["a", "b", "c"]
    for signal, result in zip(ecgs, body["results"]):
        expected = direct_scores(export, signal, list(STANDARD_LEADS))
        np.testing.assert_allclose([result["scores"][c] for c in codes], expected, atol=1e-5)
        assert result["top"][0]["label"] == codes[int(np.argmax(expected))] and len(result["top"]) == 3


def test_encoded_array_and_custom_prompts(url, export, ecgs):
    encoded = {"b64": base64.b64encode(ecgs[:1].astype("<f4").tobytes()).decode(), "shape": [1, 12, 5000]}
    labels = ["AFIB", "sinus rhythm with a very long pr interval"]
    response = post(url, "/v1/score", {"ecg": encoded, "labels": labels, "top_k": 1})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert set(result["scores"]) == set(labels) and response.json()["names"][0] == "atrial fibrillation"
    listed = post(url, "/v1/score", {"ecg": ecgs[0].tolist(), "labels": labels}).json()["results"][0]
    assert result["scores"] == pytest.approx(listed["scores"], abs=1e-6)


@pytest.mark.parametrize("leads", [["II"], ["I", "II", "III", "aVR", "aVL", "aVF"]])
def test_lead_subsets_are_scored_with_the_missing_leads_masked(url, export, ecgs, leads):
    rows = [STANDARD_LEADS.index(name) for name in leads]
    signal = ecgs[0][rows]
    response = post(url, "/v1/score", {"ecg": signal.tolist(), "leads": leads})
    assert response.status_code == 200, response.text
    codes = load_task("synthetic").codes
    scores = response.json()["results"][0]["scores"]
    np.testing.assert_allclose([scores[c] for c in codes], direct_scores(export, signal, leads), atol=1e-5)
    embedding = post(url, "/v1/embed", {"ecg": signal.tolist(), "leads": leads}).json()["results"][0]["embedding"]
    assert np.isclose(np.linalg.norm(embedding), 1.0, atol=1e-5)


def _b64(array: np.ndarray) -> dict:
    return {"b64": base64.b64encode(array.astype("<f4").tobytes()).decode(), "shape": list(array.shape)}


BAD_REQUESTS = [
    ("a flat list", lambda e: {"ecg": e[0, 0].tolist()}, 422, "ecg"),
    (
        "ragged rows",
        lambda e: {"ecg": [e[0, 0, :100].tolist(), e[0, 1, :90].tolist()], "leads": ["I", "II"]},
        422,
        "ecg",
    ),
    ("unknown lead", lambda e: {"ecg": e[0, :2].tolist(), "leads": ["I", "V7"]}, 422, "V7"),
    ("lead count", lambda e: {"ecg": e[0, :2].tolist(), "leads": ["I"]}, 422, "leads"),
    ("no lead names", lambda e: {"ecg": e[0, :6].tolist()}, 422, "leads"),
    ("rate too low", lambda e: {"ecg": e[0].tolist(), "fs": 10}, 422, "fs"),
    ("NaN", lambda e: {"ecg": _b64(np.where(np.arange(5000) == 7, np.nan, e[0]))}, 422, "NaN"),
    ("wrong byte count", lambda e: {"ecg": {**_b64(e[0]), "shape": [12, 4000]}}, 422, "ecg.b64"),
    ("too short", lambda e: {"ecg": e[0, :, :1000].tolist()}, 422, "ecg[0]"),
    ("no ecg", lambda e: {"fs": 500}, 422, "ecg"),
    ("empty label", lambda e: {"ecg": e[0].tolist(), "labels": [" "]}, 422, "labels"),
    ("oversize body", lambda e: b'{"ecg": [' + b"0.0," * 2_000_000 + b"0.0]}", 413, "limit"),
    ("explain, no explainers", lambda e: {"ecg": e[0].tolist(), "explain": True}, 422, "without explainers"),
]


@pytest.mark.parametrize(("case", "make", "status", "named"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_naming_the_problem(url, ecgs, case, make, status, named):
    body = make(ecgs)
    response = post(url, "/v1/score", body, raw=isinstance(body, bytes))
    assert response.status_code == status, response.text
    assert named in response.text


def test_malformed_json_missing_token_and_open_healthz(url, ecgs):
    assert post(url, "/v1/score", "{not json", raw=True).status_code == 422
    assert post(url, "/v1/score", {"ecg": ecgs[0].tolist()}, headers={}).status_code == 401
    assert (
        post(url, "/v1/score", {"ecg": ecgs[0].tolist()}, headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    assert requests.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
    assert requests.get(f"{url}/docs", headers=AUTH, timeout=10).status_code == 200
    assert "/v1/score" in requests.get(f"{url}/openapi.json", headers=AUTH, timeout=10).json()["paths"]
