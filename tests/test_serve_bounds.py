"""The Serve app's bounds, tried as a hostile and a careless client would, over real HTTP through Serve's
proxy on 127.0.0.1: long ECGs, chunked and trickled bodies, label floods, values that once gave 500s,
loose types, the binary body, /healthz's identity, and schemathesis against the served OpenAPI."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import statistics
import threading
import time

import numpy as np
import pytest
import requests
import torch
from scipy.signal import resample_poly

from models.factory import create_model
from models.model import export_fingerprint
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.preprocess import PreprocessConfig, preprocess
from pipelines.data.wfdb_io import Recording
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.served import served

TOKEN = "bounds-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 4 * 2**20
BODY_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bounds-export")
    create_model("tiny", objective="melp")[0].save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def port(serve_port, export):
    from pipelines.serve import ScoringService

    with served(ScoringService.bind(str(export), "synthetic", TOKEN, LIMIT, BODY_TIMEOUT_S), "ecg-fm-bounds"):
        yield serve_port


@pytest.fixture(scope="module")
def url(port):
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def ecg():
    """One synthetic 12-lead ECG in mV at 500 Hz: float32 [12, 5000]."""
    signals, _ = generate_batch(1, np.random.default_rng(5), SyntheticConfig(n=1))
    return signals[0].astype(np.float32)


def b64(array: np.ndarray, dtype: str = "float32") -> dict:
    little = {"float32": "<f4", "int16": "<i2"}[dtype]
    return {
        "b64": base64.b64encode(array.astype(little).tobytes()).decode(),
        "shape": list(array.shape),
        "dtype": dtype,
    }


def post(url: str, body, route: str = "/v1/score", headers=AUTH, **kwargs) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    content = {"Content-Type": "application/json", **headers}
    return requests.post(f"{url}{route}", data=data, headers=content, timeout=60, **kwargs)


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


# Length -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_million_sample_ecg_is_refused_naming_the_bound(url):
    million = np.zeros((1, 1_000_000), dtype=np.int16)
    response = post(url, {"ecg": b64(million, "int16"), "fs": 50, "leads": ["II"]})
    assert response.status_code == 413, response.text
    assert "60 s" in response.json()["detail"] and response.json()["field"] == "ecg"


def test_cropping_before_resampling_keeps_the_first_window_exact(ecg):
    """A 60 s record at 250 Hz: the window prepare, serve and score take equals the first 10 s of the
    whole record resampled (the old path), and only the present leads are resampled."""
    long = np.tile(ecg[:3, ::2], (1, 6))  # 250 Hz, [3, 15000]
    cropped = preprocess(Recording("x", long, 250, ["I", "II", "III"]), PreprocessConfig(normalize="none"))
    whole = resample_poly(long, 2, 1, axis=1)[:, :5000]
    np.testing.assert_allclose(cropped.signal[:3].astype(np.float32), whole, rtol=1e-3, atol=1e-3)
    assert cropped.lead_mask.sum() == 3 and not cropped.signal[3:].any()


@pytest.mark.slow
def test_a_good_request_stays_fast_while_a_maximal_bad_one_is_processed(url, ecg):
    """Good-request latency (median of 8), each sent while the million-sample ECG of issue 13 is in
    flight from another client: within 2x of the quiet median."""
    good = json.dumps({"ecg": b64(ecg), "fs": 500})
    bad = json.dumps({"ecg": b64(np.zeros((1, 1_000_000)), "int16"), "fs": 50, "leads": ["II"]})
    statuses: list[int] = []

    def timed_good() -> float:
        started = time.perf_counter()
        assert post(url, good).status_code == 200
        return time.perf_counter() - started

    def beside_bad() -> float:
        sender = threading.Thread(target=lambda: statuses.append(post(url, bad).status_code))
        sender.start()
        time.sleep(0.01)
        elapsed = timed_good()
        sender.join()
        return elapsed

    quiet = statistics.median(timed_good() for _ in range(8))
    loaded = statistics.median(beside_bad() for _ in range(8))
    assert statuses == [413] * 8
    assert loaded <= 2 * quiet, f"good request: {quiet * 1000:.0f} ms quiet, {loaded * 1000:.0f} ms beside a bad one"


# Size and time of bodies --------------------------------------------------------------------------------


def raw_request(port: int, head: str, chunks, read_timeout: float = 10.0) -> bytes:
    """Send a request's head and then its body chunks over one socket; return all the server sent back
    before it closed the connection (or `read_timeout` passed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as connection:
        connection.sendall(head.encode())
        try:
            for chunk in chunks:
                connection.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(connection, read_timeout)


def read_until_closed(connection: socket.socket, timeout: float) -> bytes:
    received, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = connection.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    raise AssertionError(f"connection still open after {timeout} s; received {received[:200]!r}")


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(port):
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    block = b"0.0," * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(block), block)] * (2 * LIMIT // len(block))
    answer = raw_request(port, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413") and b"limit" in answer


@pytest.mark.slow
def test_trickled_bodies_are_closed_and_do_not_stop_good_requests(port, url, ecg):
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    slow = []
    try:
        for _ in range(50):
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(head.encode() + b'{"ecg": [' + b"0," * 50)
            slow.append(connection)
        started = time.perf_counter()
        response = post(url, {"ecg": b64(ecg)})
        assert response.status_code == 200, response.text
        assert time.perf_counter() - started < 10
        answers = [read_until_closed(connection, BODY_TIMEOUT_S + 10) for connection in slow]
    finally:
        for connection in slow:
            connection.close()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {a[:40] for a in answers}
    assert post(url, {"ecg": b64(ecg)}).status_code == 200


# Labels, 500s that were, and strict types ---------------------------------------------------------------


BAD = [
    ("labels: []", lambda e: {"ecg": b64(e), "labels": []}, 422, "labels"),
    ("257 labels", lambda e: {"ecg": b64(e), "labels": [f"l{i}" for i in range(257)]}, 422, "labels"),
    ("a 100 KB label", lambda e: {"ecg": b64(e), "labels": ["x" * 100_000]}, 422, "labels.0"),
    (
        "ECGs × labels",
        lambda e: {
            "ecg": b64(np.ones((65, 1, 250))),
            "fs": 50,
            "leads": ["I"],
            "labels": [f"l{i}" for i in range(256)],
        },
        413,
        "labels",
    ),
    ("10**400 in ecg", lambda e: '{"ecg": [[1' + "0" * 400 + ']], "leads": ["I"]}', 422, "ecg"),
    ("negative shape", lambda e: {"ecg": {"b64": "", "shape": [-12, -5000]}}, 422, "ecg"),
    ("absurd shape", lambda e: {"ecg": {"b64": "", "shape": [2**64, 0]}}, 422, "ecg"),
    ("fs as a string", lambda e: {"ecg": b64(e), "fs": "500"}, 422, "fs"),
    ("fs as a boolean", lambda e: {"ecg": b64(e), "fs": True}, 422, "fs"),
    ("numbers as strings", lambda e: {"ecg": [["1.0", "2.0"] * 1500], "leads": ["I"]}, 422, "ecg"),
    ("top_k as a string", lambda e: {"ecg": b64(e), "top_k": "3"}, 422, "top_k"),
    ("an unknown field", lambda e: {"ecg": b64(e), "lables": ["AFIB"]}, 422, "lables"),
    ("query beside JSON", lambda e: ({"ecg": b64(e)}, {"fs": "500"}), 422, "query"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "make", "status", "field"), BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_a_small_4xx_naming_the_field(url, ecg, case, make, status, field):
    body = make(ecg)
    body, params = body if isinstance(body, tuple) else (body, None)
    response = post(url, body, params=params)
    assert response.status_code == status, response.text
    assert response.json()["field"].startswith(field), response.text
    assert len(response.content) < 2048 and "xxxx" not in response.text


@pytest.mark.slow
def test_validation_errors_do_not_echo_the_input(url, ecg):
    response = post(url, {"ecg": ecg.tolist(), "fs": "500", "ids": ["marker-0123"]})
    assert response.status_code == 422 and len(response.content) < 1024 and "marker" not in response.text


@pytest.mark.slow
def test_a_token_without_bearer_is_refused(url, ecg):
    assert post(url, {"ecg": b64(ecg)}, headers={"Authorization": TOKEN}).status_code == 401
    assert post(url, {"ecg": b64(ecg)}, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


# The binary body and /healthz ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_npy_body_scores_as_its_json_twin(url, ecg):
    leads = ["I", "II", "V2"]
    rows = ecg[[STANDARD_LEADS.index(name) for name in leads]]
    labels = ["AFIB", "sinus rhythm"]
    expected = post(url, {"ecg": b64(rows), "leads": leads, "labels": labels, "ids": ["a"]}).json()
    binary = requests.post(
        f"{url}/v1/score",
        data=npy(rows),
        params={"leads": leads, "labels": labels, "ids": ["a"], "fs": "500"},
        headers={**AUTH, "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert binary.status_code == 200, binary.text
    assert binary.json() == expected
    embedded = requests.post(
        f"{url}/v1/embed",
        data=npy(rows[None]),
        params={"leads": leads},
        headers={**AUTH, "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert embedded.status_code == 200 and len(embedded.json()["results"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "params", "field"),
    [
        (b"not a npy file", {}, "body"),
        (npy(np.full((12, 10), {"a": 1}, dtype=object), allow_pickle=True), {}, "body"),
        (npy(np.zeros((12, 5000), dtype=np.float32))[:-4], {}, "body"),
        (npy(np.zeros((12, 5000), dtype=np.float32)), {"fs": "fast"}, "fs"),
        (npy(np.zeros((12, 5000), dtype=np.float32)), {"colour": "red"}, "colour"),
    ],
    ids=["garbage", "a pickle", "truncated", "fs not a number", "unknown parameter"],
)
def test_bad_npy_bodies_get_a_422(url, body, params, field):
    response = requests.post(
        f"{url}/v1/score", data=body, params=params, headers={**AUTH, "Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 422 and response.json()["field"] == field, response.text


@pytest.mark.slow
def test_healthz_reports_readiness_and_identity(url, export):
    body = requests.get(f"{url}/healthz", timeout=10).json()
    assert body["status"] == "ok" and body["ready"] is True and body["task"] == "synthetic"
    assert body["model"] == {
        "name": export.name,
        "fingerprint": export_fingerprint(export),
        "objective": "melp",
        "task": "synthetic",
    }


# Fuzzing the served OpenAPI -----------------------------------------------------------------------------

LEAKS = re.compile(r"Traceback|File \"|/(?:home|root|tmp|usr|work)/|site-packages|\.py\b")


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_leak(url):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH, timeout=30)
    problems = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/score", "/v1/embed", "/healthz"}
    for operation in operations:

        @settings(
            max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def fuzz(case):
            response = case.call(base_url=url, headers=AUTH, timeout=30)
            if response.status_code >= 500 or LEAKS.search(response.text):
                problems.append(f"{case.method} {case.path} → {response.status_code}: {response.text[:300]}")

        fuzz()
    assert not problems, "\n".join(problems[:10])
