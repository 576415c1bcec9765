"""The learnable logit scale after real DeepSpeed optimizer steps at ZeRO stages 0, 2 and 3, on two gloo
ranks in fp32 (no Ray): a subprocess, so that no process group or DeepSpeed state stays in pytest's.

    python tests/logit_scale_under_zero.py 0 2 3

For each stage, a model whose loss is ∓ its logit scale starts at the cap (log 100) and is pushed up for
3 steps, then down for 3, through the training loop's own `optimizer_step`. Rank 0 prints one JSON line per
step: `{"stage": …, "step": …, "push": "up" | "down", "module": log scale the forward reads, "master": the
optimizer's fp32 copy, or null where the module's parameter is that copy}`. Two ranks, because ZeRO-3 pads
a one-element parameter's partition on the second rank.
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch.multiprocessing as mp
from single_rank_deepspeed import free_port

WORLD_SIZE = 2


def run_rank(rank: int, port: int, stages: list[int]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK="0"
    )
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param
    from torch import nn

    from models.losses import LogitScale
    from pipelines.training.config import TrainConfig
    from pipelines.training.engine import initialize_engine, optimizer_step

    class ScaleOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logit_scale = LogitScale(init_temperature=0.01, max_scale=100.0)  # starts at the cap
            self.other = nn.Linear(4, 4)

        def forward(self, sign: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": sign * self.logit_scale() + 0.0 * self.other.weight.sum()}

    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    for stage in stages:
        torch.manual_seed(0)
        train = TrainConfig(workers=WORLD_SIZE, batch_size=2, zero_stage=stage, lr=0.05, warmup_steps=0)
        engine, _ = initialize_engine(ScaleOnly(), train, 100, "fp32")
        for step, push in enumerate(["up"] * 3 + ["down"] * 3, start=1):
            engine.backward(engine(torch.tensor(-1.0 if push == "up" else 1.0))["loss"])
            optimizer_step(engine)
            parameter = engine.module.logit_scale.log_scale
            with deepspeed.zero.GatheredParameters([parameter], enabled=stage == 3):
                module = parameter.detach().clone().item()
            master = safe_get_full_fp32_param(parameter)
            if rank == 0:
                line = {"stage": stage, "step": step, "push": push, "module": module}
                print(json.dumps(line | {"master": None if master is None else master.item()}), flush=True)
            assert math.isfinite(module)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run_rank, args=(free_port(), [int(stage) for stage in sys.argv[1:]]), nprocs=WORLD_SIZE)
