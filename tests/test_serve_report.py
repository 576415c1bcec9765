"""`POST /v1/report` over real HTTP on 127.0.0.1: drafts equal `Scorer.draft`'s (the one path, shared with
`pipelines.score --reports`), also when concurrent requests with different options are batched together;
`.npy` bodies; the draft options' bounds; an export without a caption decoder answers 422 naming the model,
and /healthz says whether the served model drafts."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from models.report_generation import DraftOptions
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.wfdb_io import Recording
from pipelines.serving.requests import MAX_BEAMS
from pipelines.serving.scorer import Scorer
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.served import served

pytestmark = pytest.mark.slow  # every test talks to a Serve app over HTTP

TOKEN = "report-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HALF_A_CPU = {"num_cpus": 0.5}
"""Two replicas (a MELP and a C-MELT export) on the 2-CPU test cluster."""


@pytest.fixture(scope="module")
def exports(tiny_export) -> dict:
    return {objective: tiny_export(objective) for objective in ("melp", "cmelt")}


@pytest.fixture(scope="module")
def url(serve_port, exports):
    """The MELP export served at /, the C-MELT export at /cmelt."""
    from ray import serve

    from pipelines.serve import ScoringService

    melp = ScoringService.options(ray_actor_options=HALF_A_CPU).bind(str(exports["melp"]), "synthetic", TOKEN)
    with served(melp, "ecg-fm-report"):
        cmelt = ScoringService.options(ray_actor_options=HALF_A_CPU).bind(str(exports["cmelt"]), "synthetic", TOKEN)
        serve.run(cmelt, name="ecg-fm-cmelt", route_prefix="/cmelt")
        yield f"http://127.0.0.1:{serve_port}"


@pytest.fixture(scope="module")
def scorer(exports) -> Scorer:
    return Scorer(exports["melp"], "synthetic")


@pytest.fixture(scope="module")
def ecgs() -> np.ndarray:
    """Three synthetic 12-lead ECGs in mV at 500 Hz: float32 [3, 12, 5000]."""
    signals, _ = generate_batch(3, np.random.default_rng(4), SyntheticConfig(n=3))
    return signals.astype(np.float32)


def direct_draft(scorer: Scorer, signal: np.ndarray, options: DraftOptions) -> dict:
    """The path without Serve: prepare's preprocessing, then `Scorer.draft` of this ECG alone."""
    prepared = scorer.prepare(Recording("x", signal, 500, list(STANDARD_LEADS)))
    draft = scorer.draft(prepared.signal[None], prepared.lead_mask[None], options)[0]
    return {"report": draft.text, "logprob": draft.logprob, "tokens": draft.tokens}


def post(
    url: str, body, route: str = "/v1/report", auth=AUTH, content_type: str = "application/json", **kwargs
) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {**auth, "Content-Type": content_type}
    return requests.post(f"{url}{route}", data=data, headers=headers, timeout=120, **kwargs)


def assert_same_draft(result: dict, expected: dict) -> None:
    assert result["report"] == expected["report"] and result["tokens"] == expected["tokens"]
    assert result["logprob"] == pytest.approx(expected["logprob"], abs=1e-3)


def test_drafts_over_http_equal_the_scorers(url, scorer, ecgs):
    response = post(url, {"ecg": ecgs.tolist(), "ids": ["a", "b", "c"]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["a", "b", "c"]
    for signal, result in zip(ecgs, results):
        assert set(result) == {"id", "report", "logprob", "tokens", "flags"}
        assert_same_draft(result, direct_draft(scorer, signal, DraftOptions()))
        assert result["report"] and 1 <= result["tokens"] <= 31 and result["logprob"] < 0


def test_options_and_a_npy_body(url, scorer, ecgs):
    response = post(url, {"ecg": ecgs[0].tolist(), "max_tokens": 4, "num_beams": 3})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["tokens"] <= 4
    assert_same_draft(result, direct_draft(scorer, ecgs[0], DraftOptions(max_tokens=4, num_beams=3)))

    buffer = io.BytesIO()
    np.save(buffer, ecgs[0])
    binary = post(
        url, buffer.getvalue(), content_type="application/octet-stream", params={"max_tokens": "4", "num_beams": "3"}
    )
    assert binary.status_code == 200, binary.text
    assert_same_draft(binary.json()["results"][0], result)


def test_concurrent_requests_with_different_options_each_get_their_own(url, scorer, ecgs):
    """Requests batched together by `@serve.batch` are drafted per distinct options."""
    asked = [(ecg, DraftOptions(max_tokens=n, num_beams=beams)) for ecg in ecgs for n, beams in ((5, 1), (6, 2))]

    def ask(item):
        ecg, options = item
        return post(url, {"ecg": ecg.tolist(), "max_tokens": options.max_tokens, "num_beams": options.num_beams})

    with ThreadPoolExecutor(len(asked)) as pool:
        responses = list(pool.map(ask, asked))
    for (ecg, options), response in zip(asked, responses):
        assert response.status_code == 200, response.text
        assert_same_draft(response.json()["results"][0], direct_draft(scorer, ecg, options))


BAD_REQUESTS = [
    ("no beams", {"num_beams": 0}, "num_beams"),
    ("too many beams", {"num_beams": MAX_BEAMS + 1}, "num_beams"),
    ("beams as a string", {"num_beams": "2"}, "num_beams"),
    ("no tokens", {"max_tokens": 0}, "max_tokens"),
    ("over the model's limit", {"max_tokens": 32}, "max_tokens"),  # the tiny text tower's length is 32
    ("unknown field", {"beams": 2}, "beams"),
]


@pytest.mark.parametrize(("case", "fields", "named"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_options_get_a_422_naming_the_field(url, ecgs, case, fields, named):
    response = post(url, {"ecg": ecgs[0].tolist(), **fields})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == named and named in response.json()["detail"]


def test_the_ecg_checks_are_those_of_score(url, ecgs):
    assert post(url, {"max_tokens": 3}).json()["field"] == "ecg"
    assert post(url, {"ecg": ecgs[0, :6].tolist()}).json()["field"] == "leads"
    assert post(url, {"ecg": ecgs[0].tolist()}, auth={}).status_code == 401


def test_an_export_without_a_caption_decoder_says_so(url, ecgs):
    response = post(url, {"ecg": ecgs[0].tolist()}, route="/cmelt/v1/report")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "model" and "cmelt" in body["detail"] and "MELP" in body["detail"]
    assert post(url, {"ecg": ecgs[0].tolist(), "labels": ["AFIB"]}, route="/cmelt/v1/score").status_code == 200
    assert requests.get(f"{url}/cmelt/healthz", headers=AUTH, timeout=10).json()["drafts_reports"] is False
    assert requests.get(f"{url}/healthz", timeout=10).json()["drafts_reports"] is True


def test_the_route_is_documented_with_its_bounds(url):
    spec = requests.get(f"{url}/openapi.json", headers=AUTH, timeout=10).json()
    body = spec["paths"]["/v1/report"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["num_beams"]["maximum"] == MAX_BEAMS and "max_tokens" in body["properties"]
    assert "beams" in spec["info"]["description"]
