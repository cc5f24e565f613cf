"""Evaluation under torchrun: each rank scores its share of the validation set, then the ranks
pool what they predicted so that the metric is computed once, over every sample, exactly as one
process would compute it. Without a process group every helper is the identity."""

from __future__ import annotations

from typing import Any

import torch

from frozenrep.training import distributed


def shard(count: int) -> list[int]:
    """The sample indices this rank evaluates: every ``world``-th, starting at its rank."""
    rank, world = distributed()
    return list(range(rank, count, world))


def gather(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
    _, world = distributed()
    if world == 1:
        return list(items)
    import torch.distributed as dist

    pooled: list[list[Any] | None] = [None] * world
    dist.all_gather_object(pooled, list(items))
    return [item for part in pooled for item in part]


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks (integer tensors stay exact)."""
    _, world = distributed()
    if world == 1:
        return tensor
    import torch.distributed as dist

    # NCCL reduces device tensors only; gloo takes host tensors
    total = tensor.to("cuda", copy=True) if dist.get_backend() == "nccl" else tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)
