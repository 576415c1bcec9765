"""Loading an export refuses broken weights and checks the config's shapes before allocating the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.factory import create_model
from models.model import ECGTextModel

REPO = Path(__file__).resolve().parents[1]

PEAK_GROWTH_OF_A_LOAD = """
import resource, sys
from models.model import ECGTextModel
before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    ECGTextModel.from_pretrained(sys.argv[1])
    print("loaded")
except ValueError as error:
    print(error)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) // 1024)
"""
"""Prints the error (or `loaded`), then how many MiB the process's peak memory grew while loading."""


@pytest.fixture
def export(tmp_path) -> Path:
    model, _ = create_model("tiny", objective="mets")
    model.save_pretrained(tmp_path / "export")
    return tmp_path / "export"


def test_weights_holding_nan_or_inf_are_refused_by_name(tmp_path):
    model, _ = create_model("tiny", objective="mets")
    with torch.no_grad():
        model.ecg_projection.weight[3, 1] = float("nan")
        model.text.word_embeddings.weight[7, 0] = float("inf")
    model.save_pretrained(tmp_path / "export")
    with pytest.raises(ValueError) as error:
        ECGTextModel.from_pretrained(tmp_path / "export")
    assert str(error.value) == (
        f"{tmp_path / 'export' / 'model.safetensors'} holds NaN or Inf weights in 2 tensor(s): "
        "ecg_projection.weight; text.transformer.embeddings.word_embeddings.weight"
    )


def test_a_config_declaring_a_huge_vocabulary_is_refused_before_the_model_is_allocated(export):
    config = json.loads((export / "config.json").read_text())
    saved_vocab, hidden = config["text_encoder"]["vocab_size"], config["text_encoder"]["hidden_size"]
    config["text_encoder"]["vocab_size"] = 3_000_000  # 3 M × 32 float32 = 366 MiB of word embeddings
    (export / "config.json").write_text(json.dumps(config))
    run = subprocess.run(
        [sys.executable, "-c", PEAK_GROWTH_OF_A_LOAD, str(export)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    *message, growth_mib = run.stdout.strip().splitlines()
    assert run.returncode == 0, run.stderr
    assert "does not match its config" in message[0]
    assert (
        f"text.transformer.embeddings.word_embeddings.weight has shape ({saved_vocab}, {hidden}), "
        f"the config builds (3000000, {hidden})" in message[0]
    )
    assert int(growth_mib) < 100, f"refusing the export grew the peak memory by {growth_mib} MiB"


def test_the_random_weights_baseline_is_refused_too_when_the_config_does_not_match_the_weights(export):
    config = json.loads((export / "config.json").read_text())
    config["model"]["ecg"]["width"] = 4096  # a config edited to build a far larger ECG tower
    (export / "config.json").write_text(json.dumps(config))
    mismatch = r"ecg.absent_lead_embedding has shape \(12, 128\), the config builds \(12, 4096\)"
    with pytest.raises(ValueError, match=mismatch):
        ECGTextModel.from_pretrained(export, load_weights=False)
