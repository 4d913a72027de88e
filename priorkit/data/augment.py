"""Light data augmentation as a training hook (it runs in ``transform_batch``, on the global torch RNG,
so a seeded or resumed run sees the same augmentations)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from priorkit.core.errors import check_positive_int
from priorkit.train.hooks import Batch, Hook


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each sample along its last axis by an integer in [-max_shift, max_shift], zero-filled."""
    check_positive_int("max_shift", max_shift, 0)
    if max_shift == 0:
        return x
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0],))
    length = x.shape[-1]
    pos = torch.arange(length).unsqueeze(0) - shifts.unsqueeze(1)  # [B, L] source positions
    valid = (pos >= 0) & (pos < length)
    idx = pos.clamp(0, length - 1).view(x.shape[0], *([1] * (x.dim() - 2)), length).expand_as(x)
    return torch.gather(x, -1, idx) * valid.view(x.shape[0], *([1] * (x.dim() - 2)), length)


class Augment(Hook):
    """Apply ``fn`` to the inputs of every training batch."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = "Augment") -> None:
        self.fn, self._name = fn, name

    @property
    def name(self) -> str:
        return self._name

    def transform_batch(self, trainer: Any, batch: Batch) -> Batch:
        batch.x = self.fn(batch.x)
        return batch
