"""Domain-generalisation data: labelled source domains with a controlled shift and one held-out target domain.

DomainBed's protocol (Gulrajani & Lopez-Paz, 2021) at CPU scale. A :class:`DomainData` holds, per source domain, a
training part and a *training-domain validation* part (DomainBed's default model-selection rule: pick the model or
hyperparameter with the best mean accuracy on the held-out parts of the source domains, never on the target), and
the target domain's test set. Builders, all deterministic from ``seed`` and offline:

- :func:`rotated_domains` -- one base image set under rotations (the DRM card: digits at 0, 30, 60, 90 degrees,
  leave-one-domain-out via ``target``);
- :func:`colored_digits` -- the IRM / ColoredMNIST construction on scikit-learn digits (the Hessian-alignment card):
  ``y = 1[digit >= 5]`` flipped with probability ``label_noise``, the image written in channel ``c`` of a
  2-channel input, ``c = y`` flipped with probability ``e`` per domain, so colour is spuriously predictive in the
  source domains and reversed in the target;
- :func:`noise_domains` -- additive Gaussian noise of growing strength (a covariate shift of one parameter).

Training draws one minibatch from *every* source domain per step (DomainBed's ``update(minibatches)``). In the
engine that is :func:`priorkit.train.domain_phase_parts`: a ``batches`` plan and a ``make_batch`` for a
:class:`~priorkit.train.Phase` whose batches concatenate the domains' minibatches, with ``batch.extras["domain"]``
giving each row's domain, laid out so that under DDP every rank receives an equal share of every domain.
:func:`split_by_domain` undoes the concatenation inside a loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, check_range
from priorkit.data.datasets import IndexedTensorDataset, load_digits, split_arrays

__all__ = [
    "DomainData",
    "colored_digits",
    "noise_domains",
    "rotated_domains",
    "split_by_domain",
]


@dataclass
class DomainData:
    """Source domains (``train[k]``, ``val[k]``: the training-domain validation split) and the target ``test``."""

    train: list[IndexedTensorDataset]
    val: list[IndexedTensorDataset]
    test: IndexedTensorDataset
    names: list[str]  # the source domains' names, in head / minibatch order
    target: str
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    def num_domains(self) -> int:
        return len(self.train)

    def pooled(self) -> IndexedTensorDataset:
        """Every source training example in one set (what ERM on pooled data sees)."""
        return IndexedTensorDataset(torch.cat([d.x for d in self.train]), torch.cat([d.y for d in self.train]))


def _split(
    x: torch.Tensor, y: torch.Tensor, val: float, seed: int
) -> tuple[IndexedTensorDataset, IndexedTensorDataset]:
    sp = split_arrays(x, y, val=val, test=0.0, seed=seed)
    return sp.train, sp.val


def _base_images(base: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``base`` as ``[N, 1, H, W]`` in [0, 1] with their labels."""
    if base == "digits":
        sp = load_digits(image=True, val=0.0, test=0.0, seed=seed)
        return sp.train.x, sp.train.y
    from priorkit.data.real import load_real

    names = {"fashion_mnist": "fashion_mnist_image", "mnist": "mnist_image"}
    if base not in names:
        raise PriorkitError(f"base must be one of ['digits', 'fashion_mnist', 'mnist'], got {base!r}")
    sp = load_real(names[base], val=0.0, test=0.0, seed=seed) if base == "mnist" else load_real(names[base], val=0.0)
    return torch.cat([sp.train.x, sp.test.x]), torch.cat([sp.train.y, sp.test.y])


def _assemble(
    domains: Sequence[tuple[str, torch.Tensor, torch.Tensor]], target: int, val: float, seed: int, num_classes: int
) -> DomainData:
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(domains):
        raise PriorkitError(f"target must be a domain index in [0, {len(domains) - 1}], got {target!r}")
    if len(domains) < 3:
        raise PriorkitError(f"a DG split needs at least 2 source domains plus the target, got {len(domains)} domains")
    check_range("val", val, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    train, vals, names = [], [], []
    test = None
    for k, (name, x, y) in enumerate(domains):
        if k == target:
            test = IndexedTensorDataset(x, y)
            continue
        tr, va = _split(x, y, val, seed + 7919 * (k + 1))
        train.append(tr)
        vals.append(va)
        names.append(name)
    assert test is not None
    return DomainData(train, vals, test, names, domains[target][0], num_classes, tuple(domains[0][1].shape[1:]))


def _partition(n: int, parts: int, seed: int) -> list[torch.Tensor]:
    """A seeded split of ``range(n)`` into ``parts`` disjoint, nearly equal index sets (each domain sees other
    images, as DomainBed's rotated/colored MNIST do)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(perm.tensor_split(parts))


def rotated_domains(
    base: str = "digits",
    angles: Sequence[float] = (0.0, 30.0, 60.0, 90.0),
    *,
    target: int = 3,
    val: float = 0.3,
    seed: int = 0,
) -> DomainData:
    """One domain per rotation angle (degrees, ``scipy.ndimage.rotate`` with bilinear interpolation and zero
    padding, shape kept); the images are split disjointly between the domains; domain ``target`` is held out."""
    from scipy.ndimage import rotate

    if len(angles) != len(set(angles)):
        raise PriorkitError(f"angles must be distinct, got {tuple(angles)}")
    x, y = _base_images(base, seed)
    parts = _partition(len(x), len(angles), seed)
    domains = []
    for a, idx in zip(angles, parts):
        xi = x[idx].numpy()
        xr = rotate(xi, float(a), axes=(2, 3), reshape=False, order=1, mode="constant", cval=0.0) if a else xi
        domains.append((f"rot{a:g}", torch.from_numpy(np.ascontiguousarray(xr)).float().clamp(0, 1), y[idx]))
    return _assemble(domains, target, val, seed, int(y.max()) + 1)


def colored_digits(
    envs: Sequence[float] = (0.1, 0.2, 0.9),
    *,
    target: int = 2,
    label_noise: float = 0.25,
    val: float = 0.2,
    seed: int = 0,
) -> DomainData:
    """IRM's ColoredMNIST on scikit-learn digits: binary label ``1[digit >= 5]`` flipped with ``label_noise``;
    colour ``c = y`` flipped with probability ``envs[k]``; the 8x8 image goes into channel ``c`` of
    ``[2, 8, 8]``. With the defaults the label is 75% predictable from the shape in every domain, while colour
    predicts it 90% / 80% in the sources and 10% in the target."""
    for e in envs:
        check_range("envs entry", e, 0.0, 1.0)
    check_range("label_noise", label_noise, 0.0, 0.5)
    x, digit = _base_images("digits", seed)
    g = torch.Generator().manual_seed(seed + 1)
    parts = _partition(len(x), len(envs), seed)
    domains = []
    for e, idx in zip(envs, parts):
        y = (digit[idx] >= 5).long()
        y = torch.where(torch.rand(len(idx), generator=g) < label_noise, 1 - y, y)
        color = torch.where(torch.rand(len(idx), generator=g) < e, 1 - y, y)
        img = torch.zeros(len(idx), 2, 8, 8)
        img[torch.arange(len(idx)), color] = x[idx, 0]
        domains.append((f"e{e:g}", img, y))
    return _assemble(domains, target, val, seed, 2)


def noise_domains(
    base: str = "digits",
    sigmas: Sequence[float] = (0.0, 0.1, 0.2, 0.4),
    *,
    target: int = 3,
    val: float = 0.3,
    seed: int = 0,
) -> DomainData:
    """One domain per additive Gaussian-noise level (std ``sigmas[k]`` on [0, 1] pixels, a fixed draw)."""
    for s in sigmas:
        check_range("sigmas entry", s, 0.0)
    x, y = _base_images(base, seed)
    g = torch.Generator().manual_seed(seed + 2)
    parts = _partition(len(x), len(sigmas), seed)
    domains = [(f"noise{s:g}", x[i] + s * torch.randn(x[i].shape, generator=g), y[i]) for s, i in zip(sigmas, parts)]
    return _assemble(domains, target, val, seed, int(y.max()) + 1)


def split_by_domain(values: torch.Tensor, domain: torch.Tensor, num_domains: int) -> list[torch.Tensor]:
    """Rows of ``values`` grouped by ``domain`` (0..num_domains-1, in that order); a domain without rows is an
    error, since per-domain penalties need every domain in every step."""
    if domain.shape[0] != values.shape[0]:
        raise PriorkitError(f"domain must have one entry per row ({values.shape[0]}), got {domain.shape[0]}")
    out = [values[domain == k] for k in range(num_domains)]
    empty = [k for k, v in enumerate(out) if len(v) == 0]
    if empty:
        raise PriorkitError(f"domains {empty} have no rows in this batch (each step needs every source domain)")
    return out
