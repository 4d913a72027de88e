"""Light data augmentations as pure functions on batches (``priorkit.train.Augment`` runs one inside a run,
on the global torch RNG, so a seeded or resumed run sees the same augmentations)."""

from __future__ import annotations

import torch

from priorkit.core.errors import check_positive_int


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
