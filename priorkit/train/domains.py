"""The DomainBed step in the engine: one minibatch from every source domain of a
:class:`priorkit.data.domains.DomainData` per step, as a :class:`~priorkit.train.Phase`'s ``batches`` and
``make_batch``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from priorkit.core.errors import PriorkitError, check_positive_int
from priorkit.data.domains import DomainData
from priorkit.train.hooks import Batch
from priorkit.train.recipe import BatchMaker, BatchPlan

if TYPE_CHECKING:
    from priorkit.train.engine import RunState

__all__ = ["domain_phase_parts"]


def domain_phase_parts(data: DomainData, per_domain: int, steps: int) -> tuple[BatchPlan, BatchMaker]:
    """``(batches, make_batch)`` for a :class:`priorkit.train.Phase` of ``steps`` steps per epoch, each drawing
    ``per_domain`` examples from every source domain (with replacement across steps, as DomainBed's infinite
    loaders; without replacement within a step), seeded by the run's seed and epoch.

    A global index encodes ``(domain, row)`` as ``domain * stride + row``. The global batch is laid out rank by
    rank (each rank's contiguous slice holds ``per_domain / world`` rows of every domain, in domain order), so
    ``per_domain`` must be divisible by the world size. The batch has ``extras["domain"]`` (long, one per row).
    """
    check_positive_int("per_domain", per_domain)
    check_positive_int("steps", steps)
    sizes = [len(d) for d in data.train]
    if min(sizes) < per_domain:
        raise PriorkitError(f"per_domain ({per_domain}) exceeds the smallest source domain ({min(sizes)} examples)")
    stride = max(sizes)

    def batches(state: RunState) -> list[list[int]]:
        world = state.world_size
        if per_domain % world:
            raise PriorkitError(f"per_domain ({per_domain}) must be divisible by the world size ({world})")
        g = torch.Generator().manual_seed(state.config.seed * 100003 + state.epoch)
        out = []
        for _ in range(steps):
            picks = torch.stack([torch.randperm(n, generator=g)[:per_domain] + k * stride for k, n in enumerate(sizes)])
            # rank-major layout: rank r's contiguous slice holds its share of every domain, in domain order
            out.append(picks.view(len(sizes), world, per_domain // world).transpose(0, 1).reshape(-1).tolist())
        return out

    def make_batch(state: RunState, idx: torch.Tensor) -> Batch:
        dom, row = idx // stride, idx % stride
        order = torch.argsort(dom, stable=True)
        dom, row = dom[order], row[order]
        xs = torch.cat([data.train[k].x[row[dom == k]] for k in range(len(sizes))])
        ys = torch.cat([data.train[k].y[row[dom == k]] for k in range(len(sizes))])
        dev = state.device
        return Batch(x=xs.to(dev), y=ys.to(dev), index=idx[order], extras={"domain": dom.to(dev)})

    return batches, make_batch
