"""GPU readiness: tests marked `gpu` run a bf16 ZeRO-2 step with nccl and a scoring batch on CUDA, and skip
without a GPU (`tests/benchmarks/gpu_check.sh` runs them on one). On the CPU: a model in DeepSpeed's bf16
(parameters cast, buffers not) trains, and the ECG tower's FLOPs counter, which the GPU benchmark's
model-FLOPs utilisation rests on, matches PyTorch's own count."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models.config import load_config
from models.ecg_tower import ECGTower
from models.factory import create_model, resolve_config
from models.model import ECGTextModel
from pipelines.serving.scorer import Scorer
from pipelines.training.data import collate_batch
from tests.benchmarks.flops import bf16_peak_tflops, ecg_tower_flops

REPO = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"needs a CUDA GPU: torch {torch.__version__} sees none (tests/benchmarks/gpu_check.sh runs these on one)",
)


@pytest.mark.gpu
@needs_cuda
def test_a_bf16_zero2_step_runs_on_cuda_with_nccl_and_its_checkpoint_resumes(tmp_path):
    checkpoint = str(tmp_path / "checkpoint")
    command = [sys.executable, str(REPO / "tests" / "single_rank_deepspeed.py"), "--zero-stage", "2", "--cuda"]
    run = subprocess.run(
        [*command, "--save", checkpoint, "--resume", checkpoint], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    step = next(line for line in lines if "loss" in line)
    assert (step["step"], step["device"], step["dtype"], step["backend"]) == (1, "cuda:0", "torch.bfloat16", "nccl")
    assert math.isfinite(step["loss"]), step
    resumed = next(line["state"] for line in lines if line.get("folder") == checkpoint)
    assert (resumed["step"], resumed["epoch"]) == (1, 0), lines


@pytest.mark.gpu
@needs_cuda
def test_a_scoring_batch_on_cuda_matches_the_cpu(shard_batch, tmp_path):
    torch.manual_seed(0)
    create_model("tiny", objective="melp")[0].save_pretrained(tmp_path)
    signals, masks, _ = shard_batch
    scorer = Scorer(tmp_path)
    assert scorer.device.type == "cuda"
    on_gpu = scorer.embed(signals, masks)  # [8, D]
    with torch.no_grad():
        on_cpu = (
            ECGTextModel.from_pretrained(tmp_path)
            .eval()
            .encode_ecg(torch.from_numpy(signals.astype(np.float32)), torch.from_numpy(masks))
        )
    np.testing.assert_allclose(on_gpu, on_cpu.numpy(), atol=1e-3)
    scores = scorer.scores(on_gpu, scorer.default_labels)
    assert scores.shape == (len(signals), len(scorer.default_labels)) and np.isfinite(scores).all()


@pytest.mark.parametrize("objective", ["melp", "cmelt"])
def test_a_model_with_bf16_parameters_and_fp32_buffers_trains_as_deepspeed_leaves_it(objective, shard_batch):
    """DeepSpeed's bf16 casts a model's parameters, not its buffers (the sin-cos positions): Ray Train +
    DeepSpeed in bf16 failed on its first step with "mixed dtype" until the towers cast them."""
    torch.manual_seed(0)
    model = ECGTextModel(resolve_config("tiny", objective)).train()
    for parameter in model.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    assert {buffer.dtype for buffer in model.buffers() if buffer.is_floating_point()} == {torch.float32}
    signals, masks, reports = shard_batch
    batch = collate_batch(model, {"signal": signals, "lead_mask": masks, "report": reports}, torch.bfloat16, "cpu")
    loss = model(batch)["loss"]
    loss.backward()
    assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"ecg.patch_size": 25, "ecg.depth": 3, "ecg.mlp_ratio": 2.0, "ecg.n_beat_queries": 6}],
    ids=["tiny", "tiny-reshaped"],
)
def test_the_tower_flops_counted_from_the_config_match_pytorchs_count(overrides):
    config = load_config("tiny", overrides)
    tower = ECGTower(config.ecg).train()  # training mode: no fused fast path that the counter cannot see
    signal = torch.randn(2, config.ecg.n_leads, config.ecg.n_samples)
    counted = ecg_tower_flops(config)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:  # attention as counted matmuls
        pooled = tower(signal).pooled
    assert forward.get_total_flops() == 2 * counted.forward
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as backward:
        pooled.square().mean().backward()
    # 3 × forward is the convention; the real backward skips the gradient into the input signal
    assert 0.9 * 2 * counted.train < forward.get_total_flops() + backward.get_total_flops() <= 2 * counted.train


def test_the_bf16_peak_is_looked_up_by_device_name():
    assert bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA A10G") == 125.0
    assert bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert bf16_peak_tflops("NVIDIA L4") == 121.0
    assert bf16_peak_tflops("Some Future GPU") is None
