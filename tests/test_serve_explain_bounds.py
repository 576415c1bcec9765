"""Explanations are bounded (issue 28 item 9), over real HTTP on 127.0.0.1: explaining clients beside scoring
ones leave scoring's p99 within 2× of scoring alone; a full explain queue is refused at once with 503 and
`Retry-After`; a request past its deadline is answered 503 by then, and its explainer is free soon after."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from pipelines.serving.explainer import ExplainBounds
from pipelines.serving.requests import MAX_EXPLAIN_LABELS, MAX_EXPLAINED_ECGS
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.serve_load import Traffic, run_load
from tests.served import served

pytestmark = pytest.mark.slow  # a Serve app under load

TOKEN = "bounds-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BOUNDS = ExplainBounds(queue=2, deadline_s=4.0, retry_after_s=1.0)
LABELS = ["AFIB", "SR", "NORM", "sinus rhythm", "a long pr interval"][:MAX_EXPLAIN_LABELS]
LOAD_S = 10.0


@pytest.fixture(scope="module")
def url(serve_port, tiny_export):
    from pipelines.serve import scoring_app

    with served(scoring_app(str(tiny_export("melp")), "synthetic", TOKEN, explain=BOUNDS), "ecg-fm-explain-bounds"):
        yield f"http://127.0.0.1:{serve_port}"


@pytest.fixture(scope="module")
def ecgs() -> np.ndarray:
    """Sixteen synthetic 12-lead ECGs in mV at 500 Hz: float32 [16, 12, 5000]."""
    signals, _ = generate_batch(MAX_EXPLAINED_ECGS, np.random.default_rng(7), SyntheticConfig(n=MAX_EXPLAINED_ECGS))
    return signals.astype(np.float32)


def body(signals: np.ndarray, **options) -> bytes:
    """A /v1/score JSON body: ECGs [n, 12, T] as base64 float32, with `options` (labels, explain, ...)."""
    ecg = {"b64": base64.b64encode(signals.astype("<f4").tobytes()).decode(), "shape": list(signals.shape)}
    return json.dumps({"ecg": ecg, **options}).encode()


def post(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/v1/score", data=data, headers={**AUTH, "Content-Type": "application/json"}, timeout=60)


def test_explaining_clients_leave_scoring_within_twice_its_p99_alone(url, ecgs):
    scoring = Traffic(
        "score", f"{url}/v1/score", [body(ecgs[k : k + 4]) for k in range(0, 16, 4)], "application/json", 8, AUTH
    )
    explaining = Traffic(
        "explain",
        f"{url}/v1/score",
        [body(ecgs[k : k + 1], labels=LABELS[:2], explain=True) for k in range(4)],
        "application/json",
        4,
        AUTH,
    )
    run_load([scoring], 2.0)  # warm-up
    (alone,) = run_load([scoring], LOAD_S)
    beside, explained = run_load([scoring, explaining], LOAD_S)
    print(
        f"scoring alone: {len(alone.statuses)} requests, p50 {alone.percentile_s(50):.3f} s, p99 "
        f"{alone.percentile_s(99):.3f} s; beside 4 explaining clients: {len(beside.statuses)} requests, p50 "
        f"{beside.percentile_s(50):.3f} s, p99 {beside.percentile_s(99):.3f} s; explanations: "
        f"{explained.count(200)} answered, {explained.count(503)} refused (503), slowest "
        f"{max(explained.latencies):.2f} s"
    )
    assert set(alone.statuses) == set(beside.statuses) == {200}
    assert beside.percentile_s(99) <= 2 * alone.percentile_s(99)
    assert explained.count(200) > 0 and set(explained.statuses) <= {200, 503}
    refused = [(r, f) for r, f, s in zip(explained.retry_after, explained.fields, explained.statuses) if s == 503]
    assert all(field == "explain" and retry == "1" for retry, field in refused)
    assert max(explained.latencies) < BOUNDS.deadline_s + 2.0


def test_a_full_explain_queue_is_refused_at_once_with_retry_after(url, ecgs):
    """One explanation runs, `queue` wait, the rest are refused without waiting for either."""
    data = body(ecgs[:4], labels=LABELS[:1], explain=True)  # 4 ECGs × 1 label: ~2 s of explaining
    sent = 1 + BOUNDS.queue + 3

    def timed(_: int) -> tuple[float, requests.Response]:
        started = time.perf_counter()
        response = post(url, data)
        return time.perf_counter() - started, response

    with ThreadPoolExecutor(sent) as pool:
        answers = list(pool.map(timed, range(sent)))
    refused = [(seconds, r) for seconds, r in answers if r.status_code == 503]
    assert len(refused) >= sent - 1 - BOUNDS.queue
    assert {r.status_code for _, r in answers} <= {200, 503}
    for seconds, response in refused:
        assert seconds < 1.0 and response.headers["Retry-After"] == "1"
        assert response.json()["field"] == "explain" and "busy" in response.json()["detail"]


def test_a_request_past_its_deadline_is_answered_503_and_frees_the_explainer(url, ecgs):
    """16 ECGs × 5 labels take longer than the deadline: 503 by then, and the explainer stops before its
    next ECG, so a small explanation right after is answered well within the deadline."""
    started = time.perf_counter()
    late = post(url, body(ecgs, labels=LABELS, explain=True))
    waited = time.perf_counter() - started
    assert late.status_code == 503 and late.headers["Retry-After"] == "1"
    assert late.json()["field"] == "explain" and "deadline of 4 s" in late.json()["detail"]
    assert BOUNDS.deadline_s <= waited < BOUNDS.deadline_s + 1.0
    started = time.perf_counter()
    small = post(url, body(ecgs[:1], labels=LABELS[:1], explain=True))
    assert small.status_code == 200 and len(small.json()["results"][0]["evidence"]) == 1
    assert time.perf_counter() - started < BOUNDS.deadline_s / 2
