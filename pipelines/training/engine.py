"""DeepSpeed inside a Ray Train worker: the config dict from a `TrainConfig`, and the engine.

Ray Train has already created the process group (gloo on CPU, NCCL on GPU), so DeepSpeed is
initialised on top of it; its shared-memory comm op, which compiles C++ on first use, is switched off.
The optimiser is a torch AdamW passed as the client optimiser, so no DeepSpeed op is compiled either.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from models.losses import LogitScale
from pipelines.training.config import TrainConfig
from pipelines.training.optimization import build_optimizer, build_scheduler

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Tensor dtype of each precision a run trains in."""


def resolve_precision(precision: str, use_gpu: bool) -> str:
    """auto → bf16 on a GPU that has it, fp16 on one that does not, fp32 on CPU."""
    if precision != "auto":
        return precision
    if use_gpu and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def deepspeed_config(config: TrainConfig, precision: str, world_size: int) -> dict:
    """The DeepSpeed JSON config at `world_size` ranks: ZeRO stage, precision, micro-batch, accumulation
    (`config.grad_accum_at(world_size)`, so that the global batch is `config.batch_size` at any size), clipping."""
    return {
        "train_batch_size": config.batch_size,
        "train_micro_batch_size_per_gpu": config.micro_batch,
        "gradient_accumulation_steps": config.grad_accum_at(world_size),
        "gradient_clipping": config.grad_clip,
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def initialize_engine(
    model: nn.Module,
    config: TrainConfig,
    total_steps: int,
    precision: str,
    external_parameters: Iterable[tuple[nn.Module, nn.Parameter]] = (),
):
    """(engine, scheduler): DeepSpeed wraps the model, the AdamW and the warm-up + cosine schedule, at the
    world size of the process group that exists. `external_parameters`: (module, parameter) pairs where a
    module reads a parameter it does not own (`ECGTextModel.parameters_used_outside_their_module`),
    registered with ZeRO-3 so it gathers them."""
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(config, precision, dist.get_world_size()),
        dist_init_required=False,
    )
    if config.zero_stage == 3:
        for module, parameter in external_parameters:
            deepspeed.zero.register_external_parameter(module, parameter)
    return engine, scheduler


def optimizer_step(engine) -> bool:
    """`engine.step()`; whether it was an optimizer step (not an accumulation micro-step). Where it was, every learnable
    `LogitScale` clamped in place as open_clip does: in DeepSpeed's fp32 master copy (ZeRO 1-3 keep one
    apart from the module's parameter, and the next step would restore the unclamped value from it) and in
    the parameter the forward reads (gathered under ZeRO-3). Every rank calls it: both are partitioned."""
    import deepspeed
    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_local_fp32_param,
        safe_set_full_fp32_param,
        safe_set_local_fp32_param,
    )

    steps_before = engine.global_steps
    engine.step()
    if engine.global_steps == steps_before:
        return False
    for scale in engine.module.modules():
        if not isinstance(scale, LogitScale) or not scale.log_scale.requires_grad:
            continue
        parameter, bounds = scale.log_scale, (0.0, scale.max_log_scale)
        partitioned = hasattr(parameter, "ds_id")  # ZeRO-3
        if partitioned:  # clamping is elementwise: each rank clamps its own partition of the master copy
            safe_set_local_fp32_param(parameter, safe_get_local_fp32_param(parameter).clamp(*bounds))
        elif (master := safe_get_full_fp32_param(parameter)) is not None:  # ZeRO 1-2
            safe_set_full_fp32_param(parameter, master.clamp(*bounds))
        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0, enabled=partitioned):
            scale.clamp_()
    return True
