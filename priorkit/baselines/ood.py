"""Out-of-distribution scores of other papers, used as PALM's test-time score and as baselines.

- SSD+ (Sehwag et al., ICLR 2021): class-agnostic Mahalanobis distance of L2-normalised features
  (:func:`ssd_fit`, :func:`ssd_score`; the negative *squared* distance, as PALM's ``eval_maha`` computes).
- Class-conditional Mahalanobis with a tied covariance (Lee et al., NeurIPS 2018): :func:`class_mahalanobis_fit`,
  :func:`class_mahalanobis_score`.
- KNN+ (Sun et al., ICML 2022): minus the distance to the ``k``-th nearest normalised training feature
  (:func:`knn_score`).
- Energy (Liu et al., NeurIPS 2020): ``T * logsumexp(logits / T)`` (:func:`energy_score`).

All scores follow priorkit.metrics' convention: higher = more in-distribution. pytorch-ood (0.4.0) has
Mahalanobis, KNN and energy detectors, but it requires ``torchvision`` (``Requires-Dist: torchvision>=0.12``),
which would pull a second torch build beside priorkit's pinned torch; the ~80 lines are written here instead.
Inputs are validated at the boundary (shape, dtype, emptiness, NaN/inf) with :class:`PriorkitError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from priorkit.core.errors import PriorkitError, as_tensor, check_finite, check_positive_int, check_range

__all__ = [
    "ClassMahalanobis",
    "SSDPlus",
    "class_mahalanobis_fit",
    "class_mahalanobis_score",
    "energy_score",
    "knn_score",
    "ssd_fit",
    "ssd_score",
]


def _features(name: str, f: Any, *, min_rows: int = 1, dim: int | None = None) -> torch.Tensor:
    f = as_tensor(name, f)
    if not f.is_floating_point():
        raise PriorkitError(f"{name} must hold floating-point features, got {f.dtype}")
    if f.dim() != 2 or len(f) < min_rows or (dim is not None and f.shape[1] != dim):
        want = f"[N >= {min_rows}, {dim if dim is not None else 'd'}]"
        raise PriorkitError(f"{name} must be {want}, got {list(f.shape)}")
    return check_finite(name, f)


def _l2(f: torch.Tensor) -> torch.Tensor:
    f = f.detach().double()
    return f / (f.norm(dim=-1, keepdim=True) + 1e-10)


@dataclass
class SSDPlus:
    """Fitted SSD+ statistics of L2-normalised training features (mean, std, pseudo-inverse covariance)."""

    mean: torch.Tensor
    std: torch.Tensor
    precision: torch.Tensor


def ssd_fit(train_features: torch.Tensor) -> SSDPlus:
    """SSD+ (class-agnostic Mahalanobis): L2-normalise, standardise with the train mean and std, and take the
    pseudo-inverse of the (biased) covariance of the standardised train features."""
    f = _l2(_features("train_features", train_features, min_rows=2))
    mean, std = f.mean(0), f.std(0, unbiased=False)
    fs = (f - mean) / (std + 1e-10)
    fc = fs - fs.mean(0)
    cov = fc.T @ fc / len(fs)
    return SSDPlus(mean, std, torch.linalg.pinv(cov, hermitian=True))


def ssd_score(fit: SSDPlus, features: torch.Tensor, *, official_centering: bool = False) -> torch.Tensor:
    """Negative squared Mahalanobis distance to the train distribution (higher = more in-distribution).

    ``official_centering=True`` reproduces PALM's ``eval_maha``: the raw (unstandardised) train mean is
    subtracted from the already standardised features. The default subtracts the standardised train mean (zero).
    """
    if not isinstance(fit, SSDPlus):
        raise PriorkitError(f"fit must be the SSDPlus of ssd_fit, got {type(fit).__name__}")
    f = _l2(_features("features", features, dim=fit.mean.shape[0]))
    fs = (f - fit.mean) / (fit.std + 1e-10)
    z = fs - fit.mean if official_centering else fs
    return -(z * (z @ fit.precision)).sum(1)


@dataclass
class ClassMahalanobis:
    means: torch.Tensor
    precision: torch.Tensor


def class_mahalanobis_fit(train_features: torch.Tensor, labels: torch.Tensor) -> ClassMahalanobis:
    """Class-conditional Gaussians with a tied covariance (Lee et al., 2018) on L2-normalised features."""
    tf = _features("train_features", train_features, min_rows=2)
    labels = as_tensor("labels", labels)
    if labels.dtype not in (torch.int64, torch.int32) or labels.shape != (len(tf),):
        raise PriorkitError(f"labels must be integer class labels of shape [{len(tf)}], got {labels.dtype} "
                            f"{list(labels.shape)}")  # fmt: skip
    labels = labels.long()
    f = _l2(tf)
    classes = labels.unique()
    means = torch.stack([f[labels == c].mean(0) for c in classes])
    cen = f - means[torch.searchsorted(classes, labels)]
    return ClassMahalanobis(means, torch.linalg.pinv(cen.T @ cen / len(f), hermitian=True))


def class_mahalanobis_score(fit: ClassMahalanobis, features: torch.Tensor) -> torch.Tensor:
    """``-min_c (x - mu_c)^T Sigma^+ (x - mu_c)``."""
    if not isinstance(fit, ClassMahalanobis):
        raise PriorkitError(f"fit must be the ClassMahalanobis of class_mahalanobis_fit, got {type(fit).__name__}")
    d = _l2(_features("features", features, dim=fit.means.shape[1])).unsqueeze(1) - fit.means.unsqueeze(0)
    return -torch.einsum("ncd,de,nce->nc", d, fit.precision, d).min(1).values


def knn_score(train_features: torch.Tensor, features: torch.Tensor, k: int = 50) -> torch.Tensor:
    """KNN+ (Sun et al., 2022): minus the distance to the ``k``-th nearest L2-normalised training feature."""
    check_positive_int("k", k)
    tf = _features("train_features", train_features)
    if k > len(tf):
        raise PriorkitError(f"k must be <= the number of training features ({len(tf)}), got {k}")
    d = torch.cdist(_l2(_features("features", features, dim=tf.shape[1])), _l2(tf))
    return -d.topk(k, dim=1, largest=False).values[:, -1]


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al., 2020): higher = more in-distribution."""
    check_range("temperature", temperature, 0.0, low_inclusive=False)
    lg = _features("logits", logits)
    return temperature * torch.logsumexp(lg / temperature, dim=1)
