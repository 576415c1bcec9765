"""Checkpoints are read as data only: a planted pickle in a checkpoint folder is refused before any of it
runs, on export and on resume (DeepSpeed itself unpickles with weights_only=False); genuine DeepSpeed
ZeRO-2 checkpoints pass the scan, export and resume."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.factory import resolve_config
from models.model import ECGTextModel
from pipelines.training.checkpoints import TAG, consolidated_state_dict, load_restricted, scan_checkpoint

REPO = Path(__file__).resolve().parents[1]
PLANTED_REFUSAL = (
    r"holds more than a checkpoint's data; refused before any of it ran: Unsupported global: GLOBAL \w+\.open"
)


class PlantedPickle:
    """Unpickling it calls `open(marker, "w")`, creating the marker: what a planted file could do with any call."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def zero2(tmp_path_factory) -> dict:
    """A genuine ZeRO-2 checkpoint written by a real single-rank DeepSpeed engine (`genuine`), a folder whose
    model states are a planted pickle (`planted`, `marker`), and what the engine reported when it then
    resumed from each with the training loop's `load_training_state` (`resumed`, by folder name)."""
    root = tmp_path_factory.mktemp("zero2")
    marker = root / "planted-code-ran"
    (root / "planted" / TAG).mkdir(parents=True)
    (root / "planted" / "latest").write_text(TAG)
    torch.save({"module": PlantedPickle(marker)}, root / "planted" / TAG / "mp_rank_00_model_states.pt")
    command = [sys.executable, str(REPO / "tests" / "single_rank_deepspeed.py"), "--zero-stage", "2"]
    command += ["--save", str(root / "genuine"), "--resume", str(root / "planted"), str(root / "genuine")]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"folder"')]
    return {
        "genuine": root / "genuine",
        "marker": marker,
        "resumed": {Path(line["folder"]).name: line for line in lines},
    }


def test_a_genuine_zero2_checkpoint_passes_the_scan_and_exports_its_weights(zero2):
    scan_checkpoint(zero2["genuine"])
    state = consolidated_state_dict(zero2["genuine"])
    assert state.keys() == ECGTextModel(resolve_config("tiny", "mets")).state_dict().keys()
    module = load_restricted(zero2["genuine"] / TAG / "mp_rank_00_model_states.pt")["module"]
    for name, tensor in module.items():
        torch.testing.assert_close(state[name], tensor.float(), rtol=0, atol=0)


def test_resume_loads_a_genuine_checkpoint_and_refuses_a_planted_pickle_unrun(zero2):
    assert zero2["resumed"]["genuine"] == {
        "folder": str(zero2["genuine"]),
        "state": {"step": 1, "epoch": 0, "world_size": 0, "resizes": [], "attempt": ""},
    }
    refusal = zero2["resumed"]["planted"]["error"]
    assert refusal.startswith(str(zero2["marker"].parent / "planted" / TAG / "mp_rank_00_model_states.pt"))
    assert re.search(PLANTED_REFUSAL, refusal), refusal
    assert not zero2["marker"].exists(), "the planted pickle ran"


@pytest.mark.parametrize("planted_file", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_export_refuses_a_planted_pickle_unrun(planted_file, zero2, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(zero2["genuine"], checkpoint)
    marker = tmp_path / "planted-code-ran"
    torch.save({"module": PlantedPickle(marker)}, checkpoint / TAG / planted_file)
    with pytest.raises(ValueError, match=rf"{planted_file} {PLANTED_REFUSAL}"):
        consolidated_state_dict(checkpoint)
    assert not marker.exists(), "the planted pickle ran"


def test_the_fp16_loss_scaler_that_gpu_runs_save_passes_the_restricted_loader(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    scaler = DynamicLossScaler(
        init_scale=2**16, scale_window=1000, min_scale=1, delayed_shift=2, consecutive_hysteresis=False
    )
    torch.save({"loss_scaler": scaler, "dynamic_loss_scale": True}, tmp_path / "optim_states.pt")
    loaded = load_restricted(tmp_path / "optim_states.pt")["loss_scaler"]
    assert isinstance(loaded, DynamicLossScaler) and loaded.cur_scale == 2**16 and loaded.dtype == torch.half
