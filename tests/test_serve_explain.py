"""`POST /v1/score` with `explain` and `POST /v1/explain` over real HTTP on 127.0.0.1: evidence per explained
label equal to `explain_score` on the same preprocessed ECG (the one path, through `Scorer.explain`), missing
leads ranked last without segments, the bound on explained labels, responses without `explain` unchanged,
`.npy` bodies; /v1/explain's PNG of one ECG on paper, its JSON form, its one-ECG, one-label bounds."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests

from models.evidence import explain_score
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.wfdb_io import Recording
from pipelines.explaining.evidence_body import ATTENDED_PATCHES
from pipelines.serving.requests import MAX_EXPLAIN_LABELS
from pipelines.serving.scorer import Scorer
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.served import served

pytestmark = pytest.mark.slow  # every test talks to a Serve app over HTTP

TOKEN = "explain-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABELS = ["AFIB", "SR", "sinus rhythm with a long pr interval"]


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export("melp")


@pytest.fixture(scope="module")
def url(serve_port, export):
    from pipelines.serve import scoring_app

    with served(scoring_app(str(export), "synthetic", TOKEN), "ecg-fm-explain"):
        yield f"http://127.0.0.1:{serve_port}"


@pytest.fixture(scope="module")
def scorer(export) -> Scorer:
    return Scorer(export, "synthetic")


@pytest.fixture(scope="module")
def ecgs() -> np.ndarray:
    """Two synthetic 12-lead ECGs in mV at 500 Hz: float32 [2, 12, 5000]."""
    signals, _ = generate_batch(2, np.random.default_rng(5), SyntheticConfig(n=2))
    return signals.astype(np.float32)


def post(url: str, body, content_type: str = "application/json", **kwargs) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    headers = {**AUTH, "Content-Type": content_type}
    return requests.post(f"{url}/v1/score", data=data, headers=headers, timeout=300, **kwargs)


def direct_evidence(scorer: Scorer, signal: np.ndarray, leads: list[str], labels: list[str]) -> list[dict]:
    """The path without Serve: prepare's preprocessing, then `explain_score` against the labels' classifier."""
    prepared = scorer.prepare(Recording("x", signal, 500, leads))
    evidence = explain_score(
        scorer.model,
        prepared.signal[None].astype(np.float32),
        prepared.lead_mask[None],
        scorer.classifier(tuple(labels)).T,
        seconds_per_sample=1 / scorer.preprocess_config.fs,
    )
    return [
        {
            "label": label,
            "score": item.score,
            "leads": [STANDARD_LEADS[lead] for lead in item.lead_ranking],
            "segments": [(STANDARD_LEADS[s.lead], s.start_s, s.end_s, s.weight) for s in item.top_segments],
            "attended_s": round(float(np.argmax(item.pooler_attention)) * item.patch_s, 6),
            "beat_attended_s": [round(float(np.argmax(row)) * item.patch_s, 6) for row in item.beat_attention],
        }
        for label, item in zip(labels, evidence)
    ]


def assert_same_evidence(served_evidence: list[dict], expected: list[dict]) -> None:
    assert [e["label"] for e in served_evidence] == [e["label"] for e in expected]
    for got, want in zip(served_evidence, expected):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["leads"] == want["leads"]
        segments = [(s["lead"], s["start_s"], s["end_s"], s["weight"]) for s in got["segments"]]
        assert [s[:3] for s in segments] == [s[:3] for s in want["segments"]]
        assert [s[3] for s in segments] == pytest.approx([s[3] for s in want["segments"]], rel=1e-4, abs=1e-7)
        assert len(got["attention"]) == ATTENDED_PATCHES and got["attention"][0]["start_s"] == want["attended_s"]
        assert [beat["start_s"] for beat in got["beat_attention"]] == want["beat_attended_s"]  # a MELP export


def test_evidence_per_label_equals_explain_score(url, scorer, ecgs):
    response = post(url, {"ecg": ecgs.tolist(), "labels": LABELS, "explain": True})
    assert response.status_code == 200, response.text
    seconds = scorer.preprocess_config.seconds
    for signal, result in zip(ecgs, response.json()["results"]):
        evidence = result["evidence"]
        assert [e["label"] for e in evidence] == LABELS
        for item in evidence:
            assert item["score"] == pytest.approx(result["scores"][item["label"]], abs=1e-5)
            assert sorted(item["leads"]) == sorted(STANDARD_LEADS)
            assert 1 <= len(item["segments"]) <= 5
            for segment in item["segments"]:
                assert segment["lead"] in STANDARD_LEADS and segment["weight"] > 0
                assert 0 <= segment["start_s"] < segment["end_s"] <= seconds
        assert_same_evidence(evidence, direct_evidence(scorer, signal, list(STANDARD_LEADS), LABELS))


def test_without_labels_the_top_k_are_explained_and_without_explain_nothing_changes(url, scorer, ecgs):
    plain = post(url, {"ecg": ecgs[0].tolist(), "top_k": 2})
    assert plain.status_code == 200, plain.text
    assert "evidence" not in plain.json()["results"][0]
    explained = post(url, {"ecg": ecgs[0].tolist(), "top_k": 2, "explain": True})
    assert explained.status_code == 200, explained.text
    result = explained.json()["results"][0]
    evidence = result.pop("evidence")
    assert result == plain.json()["results"][0]
    top = [entry["label"] for entry in result["top"]]
    assert_same_evidence(evidence, direct_evidence(scorer, ecgs[0], list(STANDARD_LEADS), top))


def test_missing_leads_rank_last_without_segments(url, ecgs):
    leads = ["I", "II", "V1"]
    rows = [STANDARD_LEADS.index(lead) for lead in leads]
    response = post(url, {"ecg": ecgs[0, rows].tolist(), "leads": leads, "labels": ["AFIB"], "explain": True})
    assert response.status_code == 200, response.text
    (evidence,) = response.json()["results"][0]["evidence"]
    assert sorted(evidence["leads"][:3]) == sorted(leads)
    assert set(evidence["leads"][3:]) == set(STANDARD_LEADS) - set(leads)
    assert evidence["segments"] and {s["lead"] for s in evidence["segments"]} <= set(leads)


def test_a_npy_body_with_explain_in_the_query(url, ecgs):
    buffer = io.BytesIO()
    np.save(buffer, ecgs[0])
    query = {"labels": LABELS[:2], "explain": "true"}
    binary = post(url, buffer.getvalue(), content_type="application/octet-stream", params=query)
    assert binary.status_code == 200, binary.text
    as_json = post(url, {"ecg": ecgs[0].tolist(), "labels": LABELS[:2], "explain": True})
    assert binary.json()["results"][0]["evidence"] == as_json.json()["results"][0]["evidence"]


def test_explaining_more_than_the_bound_is_refused(url, ecgs):
    labels = ["SR", "SBRAD", "STACH", "AFIB", "1AVB", "CLBBB"]
    assert len(labels) == MAX_EXPLAIN_LABELS + 1
    response = post(url, {"ecg": ecgs[0].tolist(), "labels": labels, "explain": True})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "labels" and str(MAX_EXPLAIN_LABELS) in body["detail"]
    top = post(url, {"ecg": ecgs[0].tolist(), "top_k": MAX_EXPLAIN_LABELS + 1, "explain": True})
    assert top.status_code == 422 and top.json()["field"] == "top_k"
    assert post(url, {"ecg": ecgs[0].tolist(), "labels": labels}).status_code == 200
    assert post(url, {"ecg": ecgs[0].tolist(), "explain": "true"}).json()["field"] == "explain"


def test_explaining_more_ecgs_than_the_bound_is_413_naming_it(url, ecgs):
    """Each explanation costs ~50 forwards: a request explains at most MAX_EXPLAINED_ECGS ECGs."""
    from pipelines.serving.requests import MAX_EXPLAINED_ECGS

    many = np.repeat(ecgs[:1], MAX_EXPLAINED_ECGS + 1, axis=0)
    body = {"ecg": many.tolist(), "fs": 500, "labels": ["AFIB"], "explain": True}
    response = requests.post(f"{url}/v1/score", json=body, headers=AUTH, timeout=120)
    assert response.status_code == 413
    assert response.json()["field"] == "ecg" and str(MAX_EXPLAINED_ECGS) in response.json()["detail"]


def test_explain_draws_one_ecg_on_paper_or_answers_its_evidence_as_json(url, scorer, ecgs):
    """/v1/explain: a PNG of the preprocessed ECG with the evidence (270 × 160 mm at 100 dpi: 3 × 4, rhythm strip,
    attention strip), or with format=json the evidence `explain_score` gives, from a JSON or a `.npy` body."""
    from matplotlib.image import imread

    body = {"ecg": ecgs[0].tolist(), "labels": ["AFIB"], "ids": ["patient-7"]}
    response = requests.post(f"{url}/v1/explain", json=body, headers=AUTH, timeout=300)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert imread(io.BytesIO(response.content), format="png").shape[:2] == (630, 1063)

    buffer = io.BytesIO()
    np.save(buffer, ecgs[0])
    query = {"labels": "AFIB", "format": "json"}
    headers = {**AUTH, "Content-Type": "application/octet-stream"}
    as_json = requests.post(f"{url}/v1/explain", data=buffer.getvalue(), params=query, headers=headers, timeout=300)
    assert as_json.status_code == 200, as_json.text
    result = as_json.json()
    assert (result["id"], result["name"], result["flags"]) == ("ecg-0", "atrial fibrillation", [])
    assert_same_evidence([result], direct_evidence(scorer, ecgs[0], list(STANDARD_LEADS), ["AFIB"]))


def test_explain_takes_one_ecg_and_one_label(url, ecgs):
    def explain(body: dict) -> requests.Response:
        return requests.post(f"{url}/v1/explain", json=body, headers=AUTH, timeout=60)

    two_ecgs = explain({"ecg": ecgs.tolist(), "labels": ["AFIB"]})
    assert two_ecgs.status_code == 413 and two_ecgs.json()["field"] == "ecg"
    assert "the limit is 1" in two_ecgs.json()["detail"]
    two_labels = explain({"ecg": ecgs[0].tolist(), "labels": ["AFIB", "SR"]})
    assert two_labels.status_code == 422 and two_labels.json()["field"] == "labels"
    assert "at most 1 item" in two_labels.json()["detail"]
    assert explain({"ecg": ecgs[0].tolist()}).json()["field"] == "labels"
    assert explain({"ecg": ecgs[0].tolist(), "labels": ["AFIB"], "format": "svg"}).json()["field"] == "format"
    assert explain({"ecg": ecgs[0].tolist(), "labels": ["AFIB"], "top_k": 2}).json()["field"] == "top_k"
