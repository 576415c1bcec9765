"""Evaluate, score and serve an export that lies only in a bucket (moto's S3 server on 127.0.0.1): evaluation
from bucket shards into a bucket report, equal to the local run; scoring from bucket shards into bucket
parts, a rerun that rewrites nothing and one that rewrites only a missing part; a Serve replica loading
`s3://…/export`; an archive URI that holds nothing refused at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import torch

from models.factory import create_model
from models.model import export_fingerprint
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.data.wfdb_io import Recording
from pipelines.evaluate import main as evaluate_main
from pipelines.prepare import main as prepare_main
from pipelines.score import main as score_main
from pipelines.score import score
from pipelines.serving.scorer import Scorer
from pipelines.storage import Location
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.served import served

TOKEN = "test-token"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny untrained export on the local disk (the reference the bucket's copy is checked against)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bucket-export") / "export"
    create_model("tiny", objective="melp")[0].save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bucket_export(object_store, export) -> str:
    uri = object_store.uri("runs/x/export")
    Location.of(uri).upload_from(export)
    return uri


@pytest.fixture(scope="module")
def bucket_shards(object_store, synthetic_shards) -> str:
    """The session's 240 synthetic ECGs, prepared shards copied into the bucket."""
    uri = object_store.uri("shards")
    Location.of(uri).upload_from(synthetic_shards)
    return uri


def test_an_archive_uri_that_holds_nothing_is_a_usage_error_and_nothing_is_made(object_store, bucket_export, tmp_path, capsys):
    missing = object_store.uri("no-archive")
    output = tmp_path / "out"
    for main, argv, message in (
        (score_main, ["--model", bucket_export, "--input", missing, "--source", "wfdb"], f"--input {missing} does not exist"),
        (prepare_main, ["--source", "ptbxl", "--input", missing], f"--input {missing} is not a directory"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--output", str(output)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.slow
def test_evaluation_reads_the_export_and_shards_from_the_bucket_and_writes_its_report_there(
    object_store,
    export,
    bucket_export,
    bucket_shards,
    synthetic_shards,
    tmp_path,
    restore_logging,
    cache,
):
    local = tmp_path / "eval"
    assert evaluate_main(["--model", str(export), "--data", str(synthetic_shards), "--output", str(local)]) == 0
    output = object_store.uri("runs/x/eval")
    assert evaluate_main(["--model", bucket_export, "--data", bucket_shards, "--output", output]) == 0
    keys = object_store.keys("runs/x/eval/")
    assert {"runs/x/eval/metrics.json", "runs/x/eval/report.md", "runs/x/eval/logs/evaluate.log"} <= set(keys)
    assert [k.removeprefix("runs/x/eval/") for k in keys] == sorted(
        p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
    )
    metrics = Location.of(output).child("metrics.json").read_json()
    assert metrics == json.loads((local / "metrics.json").read_text())


@pytest.mark.slow
def test_scoring_from_bucket_shards_into_the_bucket_resumes_there(
    ray_cluster,
    object_store,
    export,
    bucket_export,
    bucket_shards,
    synthetic_shards,
    restore_logging,
    cache,
):
    output = object_store.uri("scores")
    summary = score(bucket_export, bucket_shards, output, batch_size=32)
    assert summary["records_in"] == summary["scored"] == summary["rows"] == 240 and summary["rejected"] == 0
    parts = object_store.keys("scores/scores/")
    assert len(parts) == summary["units"] >= 2
    assert {"scores/made_by.json", "scores/summary.json"} <= set(object_store.keys("scores/"))
    made_by = Location.of(output).child("made_by.json").read_json()
    assert made_by["command"] == "score" and made_by["made_with"]["model"] == export_fingerprint(export)

    table = pq.read_table(Location.of(output).child("scores").uri).to_pandas().set_index("ecg_id")
    shard = next(p for p in sorted(synthetic_shards.rglob("*.parquet")) if p.name != "rejected.parquet")
    rows = pq.read_table(shard).slice(0, 2)
    scorer = Scorer(export, "synthetic")
    direct = scorer.scores(scorer.embed(signals_of(rows), lead_masks_of(rows)), scorer.default_labels)  # [2, C]
    ids = rows["ecg_id"].to_pylist()
    labels = [f"score_{code}" for code in scorer.default_labels]
    np.testing.assert_allclose(table.loc[ids, labels].to_numpy(float), direct, atol=1e-5)

    written = _last_modified(object_store, "scores/scores/")
    argv = ["--model", bucket_export, "--input", bucket_shards, "--output", output, "--batch-size", "32"]
    assert score_main(argv) == 0  # everything done: nothing rewritten
    assert _last_modified(object_store, "scores/scores/") == written
    object_store.client().delete_object(Bucket=object_store.bucket, Key=parts[-1])  # a part a killed run never wrote
    assert score_main(argv) == 0
    again = _last_modified(object_store, "scores/scores/")
    assert again.keys() == written.keys() and [k for k in written if again[k] != written[k]] == [parts[-1]]
    summary = Location.of(output).child("summary.json").read_json()
    assert summary["records_in"] == summary["scored"] == 240 and summary["rejected"] == 0


@pytest.mark.slow
def test_a_serve_replica_loads_the_export_from_the_bucket(serve_port, object_store, export, bucket_export):
    from pipelines.serve import ScoringService

    with served(ScoringService.bind(bucket_export, "synthetic", TOKEN), "ecg-fm-bucket"):
        url = f"http://127.0.0.1:{serve_port}"
        health = requests.get(f"{url}/healthz", timeout=60).json()
        assert health["ready"] and health["model"]["name"] == "export"
        assert health["model"]["fingerprint"] == export_fingerprint(export)
        signal = generate_batch(1, np.random.default_rng(3), SyntheticConfig(n=1))[0][0].astype(np.float32)
        response = requests.post(
            f"{url}/v1/score",
            data=json.dumps({"ecg": signal.tolist(), "fs": 500}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=60,
        )
    assert response.status_code == 200, response.text
    scorer = Scorer(export, "synthetic")
    prepared = scorer.prepare(Recording("ecg-0", signal, 500, list(STANDARD_LEADS)))
    direct = scorer.scores(scorer.embed(prepared.signal[None], prepared.lead_mask[None]), scorer.default_labels)[0]
    scores = response.json()["results"][0]["scores"]
    np.testing.assert_allclose([scores[code] for code in scorer.default_labels], direct, atol=1e-5)


def _last_modified(store, prefix: str) -> dict:
    """Key → its LastModified, for the objects under `prefix`."""
    pages = store.client().get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix)
    items = (item for page in pages for item in page.get("Contents", []))
    return {item["Key"]: item["LastModified"] for item in items if not item["Key"].endswith("/")}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """This test's own copy cache (for the driver; Ray workers use their default)."""
    monkeypatch.setenv("ECG_FM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
