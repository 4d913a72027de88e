"""Webly-supervised data: many noisy "web" samples with a domain shift plus K clean "real-world" shots per class.

The CPU stand-in for WebFG-496 / WebVision (FoPro, Qin et al. 2023): the web set is drawn from the source data,
pushed through a domain shift (for images: a random 1-px translation, inversion of half of the samples and
Gaussian noise; for 1-D signals and vectors: a random shift along the last axis, sign flip of half of the
samples and Gaussian noise) and given label noise; the few-shot set and the test set are clean samples of the
same source that the web set never contains. Every draw is deterministic from ``seed``.

Items of :attr:`WeblyData.train` are ``(x, y, index)`` with the few-shot samples appended after the web
samples; :attr:`WeblyData.domain` says which is which (0 web, 1 real) and ``train.clean_y`` holds the labels
before noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, as_tensor, check_choice, check_finite, check_positive_int, check_range
from priorkit.data.datasets import IndexedTensorDataset

SOURCES = ("digits", "digits_image", "mnist1d", "gaussian")
NOISE_KINDS = ("asymmetric", "symmetric", "none")


@dataclass
class WeblyData:
    """A web-noisy training set with few real shots appended, and a clean real-world test set."""

    train: IndexedTensorDataset
    domain: torch.Tensor  # [N_train] int64: 0 web, 1 real (few-shot)
    test: IndexedTensorDataset
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    def fewshot_index(self) -> torch.Tensor:
        return torch.nonzero(self.domain == 1).flatten()

    @property
    def web_index(self) -> torch.Tensor:
        return torch.nonzero(self.domain == 0).flatten()

    @property
    def noise_rate(self) -> float:
        web = self.web_index
        return float((self.train.y[web] != self.train.clean_y[web]).float().mean()) if len(web) else 0.0


def _source(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    if name.startswith("digits"):
        from sklearn.datasets import load_digits as _ld

        d = _ld()
        x = torch.tensor(d.data, dtype=torch.float32) / 16.0
        return (x.view(-1, 1, 8, 8) if name == "digits_image" else x), torch.tensor(d.target, dtype=torch.long), 10
    if name == "mnist1d":
        from priorkit.data.datasets import load_mnist1d

        s = load_mnist1d(val=0.0, seed=0)
        x = torch.cat([s.train.x, s.test.x])
        y = torch.cat([s.train.y, s.test.y])
        return x, y, 10
    g = torch.Generator().manual_seed(10_000 + seed)
    means = 2.5 * torch.randn(10, 16, generator=g) / 4.0
    y = torch.arange(3000) % 10
    return means[y] + 0.5 * torch.randn(3000, 16, generator=g), y, 10


def web_shift(x: torch.Tensor, *, image: bool, noise_std: float = 0.2, seed: int = 0) -> torch.Tensor:
    """The web-domain shift, deterministic from ``seed`` (see the module docstring)."""
    check_range("noise_std", noise_std, 0.0)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    out = x.clone()
    if image:
        if x.dim() != 4:
            raise PriorkitError(f"web_shift(image=True) expects [N, C, H, W], got {list(x.shape)}")
        dy = torch.randint(-1, 2, (n,), generator=g)
        dx = torch.randint(-1, 2, (n,), generator=g)
        for i in range(n):
            out[i] = torch.roll(x[i], shifts=(int(dy[i]), int(dx[i])), dims=(1, 2))
        lo, hi = x.amin(), x.amax()
        inv = torch.rand(n, generator=g) < 0.5
        out[inv] = lo + hi - out[inv]
    else:
        flat = out.view(n, -1)
        s = torch.randint(-1, 2, (n,), generator=g)
        for i in range(n):
            flat[i] = torch.roll(flat[i], int(s[i]))
        inv = torch.rand(n, generator=g) < 0.5
        flat[inv] = -flat[inv] if x.amin() < 0 else (flat.amax() - flat[inv])
    return out + noise_std * torch.randn(out.shape, generator=g)


def make_webly(
    source: str | tuple[Any, Any] = "digits",
    *,
    shots: int = 5,
    web_size: int = 1200,
    test_size: int = 400,
    noise: str = "asymmetric",
    noise_rate: float = 0.4,
    noise_std: float = 0.2,
    seed: int = 0,
) -> WeblyData:
    """Split ``source`` into disjoint web / few-shot / test parts, then shift and corrupt the web part.

    ``shots`` (K) clean samples per class form the real few-shot set (K=0 allowed). ``noise='asymmetric'`` flips
    each web label to ``(y+1) mod C`` with probability ``noise_rate``; ``'symmetric'`` to a random other class.
    ``source`` is a built-in name or the user's own ``(x, y)`` (tensors or numpy arrays, labels ``0..C-1``;
    4-D inputs are treated as images).
    """
    if isinstance(source, tuple | list):
        if len(source) != 2:
            raise PriorkitError(f"source must be a dataset name or an (x, y) pair, got {len(source)} items")
        x, y = as_tensor("source x", source[0]), as_tensor("source y", source[1])
        if not x.is_floating_point() or x.dim() < 2:
            raise PriorkitError(f"source x must be a floating-point [N, ...] array, got {x.dtype} {list(x.shape)}")
        check_finite("source x", x)
        x = x.float()
        if y.is_floating_point() or y.dim() != 1 or len(y) != len(x) or len(y) == 0 or int(y.min()) < 0:
            raise PriorkitError(f"source y must be 1-D integer labels 0..C-1, one per row of x, got {list(y.shape)}")
        y = y.long()
        c = int(y.max()) + 1
        name = "the given (x, y)"
    else:
        check_choice("source", source, SOURCES)
        name = repr(source)
    check_choice("noise", noise, NOISE_KINDS)
    check_choice("noise", noise, NOISE_KINDS)
    check_positive_int("shots", shots, 0)
    check_positive_int("web_size", web_size)
    check_positive_int("test_size", test_size)
    check_range("noise_rate", noise_rate, 0.0, 1.0)
    if not isinstance(source, tuple | list):
        x, y, c = _source(source, seed)
    if web_size + test_size + shots * c > len(y):
        raise PriorkitError(
            f"web_size + test_size + shots * num_classes must be <= {len(y)} (size of {name}), "
            f"got {web_size} + {test_size} + {shots}*{c}"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    yp = y[perm].numpy()
    few: list[int] = []
    for k in range(c):  # first K of each class in the permutation
        few += perm[np.flatnonzero(yp == k)[:shots]].tolist()
        if len(np.flatnonzero(yp == k)) < shots:
            raise PriorkitError(f"class {k} of {name} has fewer than shots={shots} samples")
    rest = np.setdiff1d(perm, np.asarray(few, dtype=np.int64), assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    test_idx, web_idx = np.sort(rest[:test_size]), np.sort(rest[test_size : test_size + web_size])
    few_idx = np.asarray(sorted(few), dtype=np.int64)

    x_web = web_shift(x[web_idx], image=x.dim() == 4, noise_std=noise_std, seed=seed + 1)
    y_web = y[web_idx]
    g = torch.Generator().manual_seed(seed + 2)
    u = torch.rand(len(y_web), generator=g)
    if noise == "asymmetric":
        y_noisy = torch.where(u < noise_rate, (y_web + 1) % c, y_web)
    elif noise == "symmetric":
        off = torch.randint(1, c, (len(y_web),), generator=g)
        y_noisy = torch.where(u < noise_rate, (y_web + off) % c, y_web)
    else:
        y_noisy = y_web.clone()
    x_train = torch.cat([x_web, x[few_idx]])
    train = IndexedTensorDataset(x_train, torch.cat([y_noisy, y[few_idx]]), clean_y=torch.cat([y_web, y[few_idx]]))
    domain = torch.cat([torch.zeros(len(web_idx), dtype=torch.long), torch.ones(len(few_idx), dtype=torch.long)])
    test = IndexedTensorDataset(x[test_idx], y[test_idx])
    return WeblyData(train, domain, test, c, tuple(x.shape[1:]))
