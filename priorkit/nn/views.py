"""Augmented views of the GLOBAL batch, so that a W-process run sees the views of a 1-process run.

Methods that train on several augmented views of each sample (PALM, ProtoGCD, INS) draw the views for the
whole global batch from a generator seeded by ``(seed, step)`` and then keep this rank's rows: the random
numbers do not depend on the world size, and a resumed run draws what the uninterrupted one drew.
:func:`global_views` does this for any dataset of ``(x, y[, index])`` inside a ``Phase.make_batch``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import TensorDataset
from torch.utils.data import default_collate as _collate

from priorkit.core.errors import PriorkitError, check_positive_int
from priorkit.data.datasets import IndexedTensorDataset

ViewFn = Callable[[torch.Tensor, torch.Generator], Any]

__all__ = ["dataset_rows", "global_views", "rank_rows", "view_generator"]


def view_generator(seed: int, step: int) -> torch.Generator:
    """The generator of global step ``step`` (the same on every rank and after a resume)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63))


def dataset_rows(data: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of the items ``idx`` of a dataset of ``(x, y[, index])`` items (tensor datasets fast)."""
    if isinstance(data, IndexedTensorDataset):
        x, y, _ = data.batch(idx)
        return x, y
    if isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise PriorkitError("a TensorDataset for training needs at least (x, y) tensors")
        return data.tensors[0][idx], data.tensors[1][idx]
    items = [data[int(i)] for i in idx]
    if not items or not isinstance(items[0], tuple | list) or len(items[0]) < 2:
        raise PriorkitError("training items must be (x, y) or (x, y, index) tuples")
    cols = _collate(items)
    return cols[0], torch.as_tensor(cols[1])


def rank_rows(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous rows of a global batch of ``n`` (the engine's ``rank_slice``)."""
    per = -(-n // world)
    return slice(rank * per, min(n, (rank + 1) * per))


def global_views(
    state: Any, augment: ViewFn | None, n_views: int = 2, *, pair: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``(views, y, index)`` of this rank's rows of the current global batch (``state`` is the engine's RunState).

    ``augment(x, generator)`` returns one view (``pair=False``: called ``n_views`` times with one generator
    seeded by ``(config.seed, state.step)``) or a tuple of views (``pair=True``: called once, e.g. INS's weak /
    strong pair). The views are drawn for the whole global batch, then this rank keeps its rows. A
    ``Phase.make_batch`` wraps the result into a ``Batch``.
    """
    check_positive_int("n_views", n_views)
    glob = torch.as_tensor(state.global_indices, dtype=torch.long)
    data = state.phase.data if state.phase.data is not None else state.data
    x, y = dataset_rows(data, glob)
    g = view_generator(state.config.seed, state.step)
    if augment is None:
        views = [x] * n_views
    elif pair:
        views = list(augment(x, g))
    else:
        views = [augment(x, g) for _ in range(n_views)]
    mine = rank_rows(len(glob), state.rank, state.world_size)
    dev = state.device
    return [v[mine].to(dev) for v in views], torch.as_tensor(y)[mine].to(dev), glob[mine]
