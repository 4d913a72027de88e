"""Launch helpers around the engine: the world-size-invariant batch sampler and a local gloo launcher.

The collectives themselves (``all_gather_cat``, ``gather_with_grad``, ...) live in :mod:`priorkit.nn.distributed`
and are re-exported here. Fabric initialises the process group under ``torchrun``/SLURM; :func:`run_gloo`
starts W local CPU processes that look to Fabric like a ``torchrun`` launch (tests of DDP equivalence).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from priorkit.core.errors import PriorkitError
from priorkit.nn import distributed as _nd
from priorkit.nn.distributed import all_gather_cat, all_reduce_mean, all_reduce_sum, gather_with_grad, is_dist

rank, world_size = _nd.rank, _nd.world_size
__all__ = [
    "ShardedBatchSampler",
    "all_gather_cat",
    "all_reduce_mean",
    "all_reduce_sum",
    "gather_with_grad",
    "is_dist",
    "rank",
    "run_gloo",
    "world_size",
]


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
        self.world = world_size if world_size is not None else _nd.world_size()
        self.rank = rank if rank is not None else _nd.rank()
        if global_batch_size % self.world:
            raise PriorkitError(
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

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        GROUP_RANK="0",
        LOCAL_WORLD_SIZE=str(world),
    )
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
