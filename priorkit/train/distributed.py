"""Distributed helpers on PyTorch's own engine (``torchrun``; gloo on CPU, NCCL on GPU).

Methods with global or per-sample state use :func:`all_gather_cat` so that every rank holds the same state,
which is what makes a 2-process run equal a 1-process run with the same global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); returns whether it did."""
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend)
    return True


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order (identity on one process).

    Ranks may hold different first-dimension sizes; they are padded for the collective and trimmed after.
    """
    if not is_dist():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    big = max(sizes_i)
    padded = torch.zeros((big, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    out = [torch.zeros_like(padded) for _ in sizes_i]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes_i)], dim=0)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world_size()


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches from a seeded per-epoch permutation; each rank takes its contiguous slice.

    Global batch ``k`` is the same set of sample indices whatever the world size, so a ``W``-process run with
    per-rank batch ``B/W`` sees exactly the batches of a 1-process run with batch ``B``.
    """

    def __init__(
        self,
        n: int,
        global_batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.world = world_size if world_size is not None else globals()["world_size"]()
        self.rank = rank if rank is not None else globals()["rank"]()
        if global_batch_size % self.world:
            raise ValueError(
                f"global_batch_size ({global_batch_size}) must be divisible by the world size ({self.world})"
            )
        self.n, self.batch, self.shuffle, self.drop_last, self.seed = (
            n,
            global_batch_size,
            shuffle,
            drop_last,
            seed,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for start in range(0, self.n, self.batch):
            glob = order[start : start + self.batch]
            if len(glob) < self.batch and self.drop_last:
                return
            per = -(-len(glob) // self.world)
            yield glob[self.rank * per : (self.rank + 1) * per].tolist()

    def __len__(self) -> int:
        return self.n // self.batch if self.drop_last else -(-self.n // self.batch)


def _gloo_entry(rank: int, world: int, port: int, fn, args: tuple) -> None:  # noqa: ANN001
    import torch.distributed as _dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    _dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        _dist.destroy_process_group()


def run_gloo(fn, world_size: int, *args) -> None:  # noqa: ANN001
    """Run ``fn(rank, *args)`` in ``world_size`` local processes joined by a gloo process group.

    For tests and CPU checks of DDP equivalence; ``fn`` must be importable (a module-level function).
    """
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_entry, args=(world_size, port, fn, args), nprocs=world_size, join=True)
