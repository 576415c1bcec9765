"""Gathering tensors across data-parallel ranks: with gradients for contrastive losses, without for
C-MELT's report bank."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All ranks' [B, D] features concatenated in rank order: [world * B, D].

    Autograd-aware (open_clip's `gather_with_grad`): the backward pass returns to each rank the
    gradient that every rank's loss puts on its features, so a local loss per rank trains as the
    loss over the global batch does. Every rank must pass the same B.
    """
    _, world_size = world()
    if world_size == 1:
        return features
    return _GatherWithGrad.apply(features)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient on the gathered rows (all_reduce, which
    gloo and NCCL both have) and hands each rank the slice of its own rows."""

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:  # [B, D] → [world * B, D]
        parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, features.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # [world * B, D] → [B, D]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank, world_size = world()
        return grad.chunk(world_size, dim=0)[rank]


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' [B, ...] tensors, detached, concatenated in rank order: [world * B, ...]. Every rank
    must pass the same shape."""
    _, world_size = world()
    tensor = tensor.detach()
    if world_size == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)
