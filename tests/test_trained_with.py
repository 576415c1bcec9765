"""One truth from shards to serving: an export carries its shards' preprocessing and label task, and the
Serve app, batch scoring and the shards give one raw record the same embedding.

Shards at 100 Hz, z-scored and band-passed (nothing like the 500 Hz min-max defaults) → a short
pretraining (the session's `zero3_run_at_100hz`, also test_pretrain's killed-worker run) → the same raw WFDB
record sent over HTTP, scored from the archive, and read from its shard row: equal embeddings within float16
rounding.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from models.factory import create_model, resolve_config
from models.model import FORMAT_VERSION, ECGTextModel
from pipelines.data.preprocess import PreprocessConfig
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.data.sources import SourceOptions, list_source
from pipelines.data.trained_with import TrainedWith
from pipelines.data.wfdb_io import read_record
from pipelines.score import score
from pipelines.serving.scorer import Scorer
from pipelines.training.launch import check_run
from tests.served import served


@pytest.fixture(scope="module")
def run(zero3_run_at_100hz) -> Path:
    return zero3_run_at_100hz.run_dir


@pytest.fixture(scope="module")
def shards(zero3_run_at_100hz) -> Path:
    return zero3_run_at_100hz.shards


@pytest.mark.slow
def test_the_export_and_every_checkpoint_record_preprocessing_and_task(run, zero3_run_at_100hz):
    preprocessing = zero3_run_at_100hz.preprocessing
    saved = json.loads((run / "export" / "config.json").read_text())
    assert saved["format_version"] == FORMAT_VERSION
    recorded = saved["trained_with"]
    assert recorded["preprocessing"]["fs"] == 100 and recorded["preprocessing"]["normalize"] == "zscore"
    assert recorded["preprocessing"]["bandpass"] == [0.5, 40.0] and recorded["preprocessing"]["leads"][0] == "I"
    assert recorded["task"] == "ptbxl-rhythm"
    trained_with = TrainedWith.of_model(ECGTextModel.from_pretrained(run / "export"))
    assert trained_with.preprocessing == preprocessing and trained_with.task == "ptbxl-rhythm"
    checkpoints = sorted((run / "train").glob("checkpoint-step*"))
    assert checkpoints and all(
        json.loads((c / "config.json").read_text())["trained_with"] == recorded for c in checkpoints
    )


@pytest.mark.slow
def test_http_archive_scoring_and_the_shard_give_one_embedding(serve_port, run, shards, zero3_run_at_100hz, tmp_path):
    from pipelines.serve import ScoringService

    archive, preprocessing = zero3_run_at_100hz.archive, zero3_run_at_100hz.preprocessing
    export = run / "export"
    scorer = Scorer(export)
    assert scorer.preprocess_config == preprocessing and scorer.task.name == "ptbxl-rhythm"

    shard = pq.read_table(sorted(shards.glob("part-*.parquet"))[0], columns=["ecg_id", "signal", "lead_mask"])
    ecg_id = shard["ecg_id"][0].as_py()  # "synthetic/00001": the archive's record 1
    from_shard = scorer.embed(signals_of(shard)[:1], lead_masks_of(shard)[:1])[0]

    listed = list_source("ptbxl", SourceOptions(input=archive, fs=preprocessing.fs)).records
    record = read_record(listed.loc[listed["ecg_id"].str.endswith(ecg_id.split("/")[1]), "record_path"].iloc[0])
    with served(ScoringService.bind(str(export)), "trained-with"):
        body = {
            "ecg": {
                "b64": base64.b64encode(record.signal.astype("<f4").tobytes()).decode(),
                "shape": list(record.signal.shape),
            },
            "fs": record.fs,
            "leads": record.lead_names,
        }
        response = requests.post(f"http://127.0.0.1:{serve_port}/v1/embed", json=body, timeout=60)
        assert response.status_code == 200, response.text
        over_http = np.array(response.json()["results"][0]["embedding"])
        health = requests.get(f"http://127.0.0.1:{serve_port}/healthz", timeout=30).json()
        assert health["task"] == "ptbxl-rhythm"  # the served label set is the export's

    summary = score(str(export), str(archive), str(tmp_path / "scores"), source="ptbxl", embeddings=True, part_size=80)
    assert summary["records_in"] == summary["scored"] + summary["rejected"] == 160
    scored = pq.read_table(tmp_path / "scores" / "scores").to_pylist()
    number = ecg_id.split("/")[1]  # the archive is listed as ptbxl/NNNNN, the shards were named synthetic/NNNNN
    from_archive = np.array(next(row["embedding"] for row in scored if row["ecg_id"].endswith(f"/{number}")))

    np.testing.assert_allclose(over_http, from_shard, atol=2e-3)
    np.testing.assert_allclose(from_archive, from_shard, atol=2e-3)
    assert set(next(iter(scored)).keys()) >= {f"score_{code}" for code in scorer.task.codes}


@pytest.mark.slow
def test_scoring_shards_prepared_otherwise_is_refused(ray_cluster, run, synthetic_shards, tmp_path):
    with pytest.raises(ValueError, match=r"preprocessing\.fs 500, but the model was trained on 100"):
        score(str(run / "export"), str(synthetic_shards), str(tmp_path / "scores"))
    assert not (tmp_path / "scores").exists()


def test_shard_folders_prepared_differently_are_refused_before_ray(shards, synthetic_shards):
    config = resolve_config("tiny", "melp")
    with pytest.raises(ValueError, match=r"prepared differently: preprocessing\.fs is 100 in one and 500"):
        check_run([str(shards), str(synthetic_shards)], config, "synthetic")
    with pytest.raises(ValueError, match=r"ecg\.n_samples=5000.*set ecg\.n_samples=1000"):
        check_run([str(shards)], config, "synthetic")


def test_an_export_from_before_the_record_loads_with_the_old_defaults_and_a_warning(tmp_path, caplog):
    model, _ = create_model("tiny", objective="mets")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["format_version"] = 1
    del saved["trained_with"]
    saved["model"]["objective"].update({"ecg_mask_ratio": 0.75, "n3s_bank_size": 4096})  # format 1 listed all
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING):
        trained_with = TrainedWith.of_model(ECGTextModel.from_pretrained(tmp_path))
    assert trained_with.preprocessing == PreprocessConfig(fs=500, seconds=10.0) and trained_with.task == "synthetic"
    assert "predates format 2" in caplog.text
