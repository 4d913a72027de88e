"""Label noise for noisy-label experiments, applied to training labels only, deterministic from a seed."""

from __future__ import annotations

import torch

from priorkit.core.errors import PriorkitError, check_range


def symmetric_noise(y: torch.Tensor, rate: float, num_classes: int, *, seed: int = 0) -> torch.Tensor:
    """Flip a ``rate`` fraction of labels (exactly ``round(rate*N)``) to a uniformly random *other* class."""
    check_range("rate", rate, 0.0, 1.0)
    _check_labels(y, num_classes)
    g = torch.Generator().manual_seed(seed)
    n_flip = int(round(rate * len(y)))
    flip = torch.randperm(len(y), generator=g)[:n_flip]
    offset = torch.randint(1, num_classes, (n_flip,), generator=g)
    out = y.clone()
    out[flip] = (y[flip] + offset) % num_classes
    return out


def asymmetric_noise(y: torch.Tensor, rate: float, mapping: dict[int, int], *, seed: int = 0) -> torch.Tensor:
    """Class-pair flips: each sample of a class in ``mapping`` goes to ``mapping[c]`` with probability ``rate``.

    CIFAR-10 style pairs (truck->automobile, ...) are the user's choice; ``pair_mapping`` gives the usual
    cyclic ``c -> c+1`` default.
    """
    check_range("rate", rate, 0.0, 1.0)
    g = torch.Generator().manual_seed(seed)
    out = y.clone()
    u = torch.rand(len(y), generator=g)
    for src, dst in mapping.items():
        sel = (y == src) & (u < rate)
        out[sel] = dst
    return out


def pair_mapping(num_classes: int) -> dict[int, int]:
    """The cyclic asymmetric-noise map ``c -> (c + 1) mod C``."""
    return {c: (c + 1) % num_classes for c in range(num_classes)}


def _check_labels(y: torch.Tensor, num_classes: int) -> None:
    if y.dim() != 1 or y.dtype != torch.long:
        raise PriorkitError(f"y must be a 1-D int64 label tensor, got {y.dtype} {list(y.shape)}")
    if num_classes < 2:
        raise PriorkitError(f"num_classes must be >= 2, got {num_classes}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise PriorkitError(f"labels must lie in [0, {num_classes - 1}], got [{int(y.min())}, {int(y.max())}]")
