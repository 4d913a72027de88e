"""Label noise for noisy-label experiments, applied to training labels only, deterministic from a seed.

The public functions take labels as a torch tensor, a NumPy array or a list of integers alike (as
:func:`priorkit.data.from_arrays` does) and return an int64 tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from priorkit.core.errors import PriorkitError, as_tensor, check_positive_int, check_range

__all__ = ["asymmetric_noise", "pair_mapping", "symmetric_noise"]


def symmetric_noise(y: Any, rate: float, num_classes: int, *, seed: int = 0) -> torch.Tensor:
    """Flip a ``rate`` fraction of labels (exactly ``round(rate*N)``) to a uniformly random *other* class."""
    check_range("rate", rate, 0.0, 1.0)
    check_positive_int("num_classes", num_classes, 2)
    y = _labels(y, num_classes)
    g = torch.Generator().manual_seed(_seed(seed))
    n_flip = int(round(rate * len(y)))
    flip = torch.randperm(len(y), generator=g)[:n_flip]
    offset = torch.randint(1, num_classes, (n_flip,), generator=g)
    out = y.clone()
    out[flip] = (y[flip] + offset) % num_classes
    return out


def asymmetric_noise(y: Any, rate: float, mapping: Mapping[int, int], *, seed: int = 0) -> torch.Tensor:
    """Class-pair flips: each sample of a class in ``mapping`` goes to ``mapping[c]`` with probability ``rate``.

    CIFAR-10 style pairs (truck->automobile, ...) are the user's choice; ``pair_mapping`` gives the usual
    cyclic ``c -> c+1`` default.
    """
    check_range("rate", rate, 0.0, 1.0)
    if not isinstance(mapping, Mapping) or not mapping:
        raise PriorkitError(f"mapping must be a non-empty dict of class -> class, got {mapping!r}")
    for src, dst in mapping.items():
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in (src, dst)):
            raise PriorkitError(f"mapping must map class indices >= 0 to class indices >= 0, got {src!r}: {dst!r}")
    y = _labels(y, None)
    g = torch.Generator().manual_seed(_seed(seed))
    out = y.clone()
    u = torch.rand(len(y), generator=g)
    for src, dst in mapping.items():
        sel = (y == src) & (u < rate)
        out[sel] = dst
    return out


def pair_mapping(num_classes: int) -> dict[int, int]:
    """The cyclic asymmetric-noise map ``c -> (c + 1) mod C``."""
    check_positive_int("num_classes", num_classes, 2)
    return {c: (c + 1) % num_classes for c in range(num_classes)}


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PriorkitError(f"seed must be an integer, got {seed!r}")
    return seed


def _labels(y: Any, num_classes: int | None) -> torch.Tensor:
    """Integer labels (tensor, NumPy array or list) as a 1-D int64 tensor in ``[0, num_classes)``."""
    y = as_tensor("y", y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise PriorkitError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.dim() != 1:
        raise PriorkitError(f"y must be a 1-D label vector, got shape {list(y.shape)}")
    y = y.long()
    if len(y) and int(y.min()) < 0:
        raise PriorkitError(f"labels (y) must be >= 0, got minimum {int(y.min())}")
    if num_classes is not None and len(y) and int(y.max()) >= num_classes:
        raise PriorkitError(
            f"labels (y) must lie in [0, {num_classes - 1}] (num_classes={num_classes}), "
            f"got [{int(y.min())}, {int(y.max())}]"
        )
    return y
