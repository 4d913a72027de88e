"""Collectives that methods with global state use: rank queries, gathers and the one ``gather_with_grad``.

They work on whatever process group is initialised (Lightning Fabric initialises it under ``torchrun``,
SLURM or its own launcher) and are the identity on one process. Methods call them so that per-sample
memories, queues and prototypes are identical on every rank, which is what makes a W-process run equal a
1-process run with the same global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def _sizes(n: int, device: torch.device) -> list[int]:
    mine = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(sizes, mine)
    return [int(s) for s in sizes]


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order (no gradient; identity on one process).

    Ranks may hold different first-dimension sizes; they are padded for the collective and trimmed after.
    """
    if not is_dist():
        return t
    sizes = _sizes(t.shape[0], t.device)
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes)], dim=0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(t) / world_size() if is_dist() else t


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        sizes = _sizes(t.shape[0], t.device)
        ctx.start, ctx.n = sum(sizes[: rank()]), t.shape[0]
        return all_gather_cat(t.contiguous())

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        g = g.contiguous().clone()
        dist.all_reduce(g)
        return g[ctx.start : ctx.start + ctx.n]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``t`` in rank order, differentiable with respect to this rank's rows.

    The backward sums, over ranks, the gradient that each rank's loss sends to this rank's rows (an
    all-reduce), as SupCon/SimCLR implementations do. So a batch-level term (contrastive negatives, ranking,
    the entropy of the mean prediction) computed on the gathered rows gives, after DDP's gradient average,
    the gradient of the single-process run on the global batch, whether each rank computes the whole term or
    only its own queries' share. Ranks may hold different numbers of rows. Identity on one process.
    """
    return _GatherWithGrad.apply(t) if is_dist() else t


def gather_offset(n: int, device: torch.device | str = "cpu") -> int:
    """Offset of this rank's ``n`` rows in a gathered tensor (0 on one process)."""
    return sum(_sizes(n, torch.device(device))[: rank()]) if is_dist() else 0
