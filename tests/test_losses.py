"""Contrastive losses equal direct reference computations (SigLIP with C-MELT's unaligned pairs too), also
split across two gloo ranks; the logit scale is kept as open_clip keeps it, under real ZeRO."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from models.losses import ClipLoss, LogitScale, SigLipLoss

REPO = Path(__file__).resolve().parents[1]


def pairs(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ecg = F.normalize(torch.randn(n, d, generator=generator), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=generator), dim=-1)
    return ecg, text


def reference_infonce(ecg, text, scale):
    """CLIP's loss written out: -log softmax of the matching pair, both directions, averaged."""
    logits = scale * ecg @ text.T
    n = len(ecg)
    ecg_to_text = -sum(logits[i, i] - torch.logsumexp(logits[i], 0) for i in range(n)) / n
    text_to_ecg = -sum(logits[i, i] - torch.logsumexp(logits[:, i], 0) for i in range(n)) / n
    return (ecg_to_text + text_to_ecg) / 2


ALIGNED = torch.tensor([True, False, True, True, False, True, True, True])
"""Which of `pairs()`'s texts are their ECG's own report (C-MELT's N3S replaces some)."""


def reference_sigmoid(ecg, text, scale, bias, aligned=None):
    """SigLIP's loss written out: -sum over all pairs of log sigmoid(±logit), over n; + for an aligned pair."""
    n = len(ecg)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = scale * ecg[i] @ text[j] + bias
            positive = i == j and (aligned is None or bool(aligned[i]))
            total = total - torch.log(torch.sigmoid(z if positive else -z))
    return total / n


def test_clip_loss_equals_reference():
    ecg, text = pairs()
    scale = torch.tensor(1 / 0.07)
    torch.testing.assert_close(ClipLoss()(ecg, text, scale), reference_infonce(ecg, text, scale))


def test_siglip_loss_equals_reference():
    ecg, text = pairs()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    torch.testing.assert_close(SigLipLoss()(ecg, text, scale, bias), reference_sigmoid(ecg, text, scale, bias))
    torch.testing.assert_close(
        SigLipLoss()(ecg, text, scale, bias, ALIGNED), reference_sigmoid(ecg, text, scale, bias, ALIGNED)
    )


def test_the_logit_scale_reads_unclamped_and_clamps_in_place_after_a_step():
    scale = LogitScale(0.07, max_scale=100.0)
    assert math.isclose(scale().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    value = scale()
    value.backward()
    assert math.isclose(value.item(), math.exp(10.0), rel_tol=1e-5) and scale.log_scale.grad.item() > 0
    scale.clamp_()
    assert math.isclose(scale().item(), 100.0, rel_tol=1e-5)
    with torch.no_grad():
        scale.log_scale.fill_(-3.0)
    scale.clamp_()
    assert scale.log_scale.item() == 0.0  # open_clip's lower bound: a scale of at least 1
    assert not LogitScale(0.07, 100.0, learnable=False).log_scale.requires_grad


def test_under_every_zero_stage_the_scale_stays_at_the_cap_then_comes_back_down():
    """Real DeepSpeed steps (tests/logit_scale_under_zero.py): pushed up from the cap for 3 steps, the scale
    and DeepSpeed's fp32 master copy stay at log 100; pushed down, it leaves the cap once Adam's momentum
    turns. Clamped in the forward instead, it went above the cap and stayed there, its gradient 0."""
    script = REPO / "tests" / "logit_scale_under_zero.py"
    run = subprocess.run(
        [sys.executable, str(script), "0", "2", "3"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    cap = math.log(100.0)
    for stage in (0, 2, 3):
        trace = [step for step in steps if step["stage"] == stage]
        assert len(trace) == 6, steps
        for step in trace[:3]:
            assert math.isclose(step["module"], cap, rel_tol=1e-6), step
            assert step["master"] is None if stage == 0 else math.isclose(step["master"], cap, rel_tol=1e-6), step
        assert trace[-1]["module"] < cap - 1e-3, trace
        assert stage == 0 or math.isclose(trace[-1]["master"], trace[-1]["module"], rel_tol=1e-6), trace


def _rank_worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    ecg, text = pairs()
    half = len(ecg) // world_size
    rows = slice(rank * half, (rank + 1) * half)
    local_ecg = ecg[rows].clone().requires_grad_()
    local_text = text[rows].clone().requires_grad_()
    clip = ClipLoss()(local_ecg, local_text, torch.tensor(1 / 0.07))
    clip.backward()
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    siglip = SigLipLoss()(local_ecg.detach(), local_text.detach(), scale, bias, ALIGNED[rows])
    results[rank] = (clip.item(), local_ecg.grad.clone(), local_text.grad.clone(), siglip.item())
    dist.destroy_process_group()


def test_gather_across_two_gloo_ranks_matches_the_global_batch():
    world_size = 2
    port = 29500 + os.getpid() % 1000
    # A spawned manager, not a forked one: forking this process after earlier tests started its Ray
    # driver left the driver deaf to actor updates (the next Ray Train controller came up ALIVE in the
    # GCS, and the driver waited on it forever).
    with mp.get_context("spawn").Manager() as manager:
        shared = manager.dict()
        mp.spawn(_rank_worker, args=(world_size, port, shared), nprocs=world_size, join=True)
        results = dict(shared)

    ecg, text = pairs()
    ecg.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor(1 / 0.07)
    full = ClipLoss()(ecg, text, scale)
    full.backward()
    # The mean of the ranks' local losses is the global-batch loss ...
    assert math.isclose(sum(results[r][0] for r in range(world_size)) / world_size, full.item(), rel_tol=1e-5)
    # ... and each rank's features get world_size x their share of the global gradient (the data-
    # parallel gradient average then divides by world_size).
    half = len(ecg) // world_size
    for r in range(world_size):
        torch.testing.assert_close(results[r][1] / world_size, ecg.grad[r * half : (r + 1) * half])
        torch.testing.assert_close(results[r][2] / world_size, text.grad[r * half : (r + 1) * half])
    # SigLIP, with pairs that are not aligned (another rank's texts are never a row's pair).
    siglip_full = SigLipLoss()(ecg.detach(), text.detach(), torch.tensor(10.0), torch.tensor(-10.0), ALIGNED)
    assert math.isclose(sum(results[r][3] for r in range(world_size)) / world_size, siglip_full.item(), rel_tol=1e-5)
