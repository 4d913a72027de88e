"""Collapse detectors for self-supervised embeddings (shared by the joint-embedding methods: MSBReg, T-JEPA, GEDI).

A joint-embedding method can "collapse": every input maps to (nearly) the same point (complete collapse), or the
embeddings fill only a few directions of the space (dimensional collapse). Two numbers detect it:

- :func:`effective_rank` -- ``exp(H(p))`` with ``p_k = s_k^2 / sum_j s_j^2`` over the singular values ``s_k`` of
  the ``[N, d]`` embedding matrix (the entropy-based effective rank of Roy & Vetterli, 2007, on the spectrum of
  ``Z^T Z``, the form the MSBReg card logs). It lies in ``[1, min(N, d)]``: 1 when every row is a multiple of one
  vector (complete collapse, uncentred default), ``d`` when the spectrum is flat. ``center=True`` measures the
  spread around the mean instead (dimensional collapse; undefined, ``nan``, when every row is equal).
- :func:`embedding_std` -- the mean over dimensions of the per-dimension standard deviation of the L2-normalised
  embeddings (SimSiam, Chen & He 2021, Sec. 4.1): 0 under complete collapse, about ``1/sqrt(d)`` when the
  embeddings are spread over the sphere. :func:`collapse_metrics` returns both (and ``std * sqrt(d)``, which is
  about 1 for spread embeddings, whatever ``d``).

These are evaluation metrics on tensors (no training, no gradient): scikit-learn and torchmetrics have no
effective rank of an embedding matrix, so the few lines are written here. The linear probe that goes with them
trains through the engine, which this layer may not import (``priorkit.metrics`` sits below ``priorkit.train``);
it lives with the experiments.
"""

from __future__ import annotations

import math

import torch

from priorkit.core.errors import PriorkitError, check_batch

__all__ = ["collapse_metrics", "effective_rank", "embedding_std"]


def _matrix(name: str, z: torch.Tensor) -> torch.Tensor:
    check_batch(name, z, dim=2)
    if z.shape[1] == 0:
        raise PriorkitError(f"{name} must have at least one dimension, got shape {list(z.shape)}")
    return z.detach().double()


def effective_rank(z: torch.Tensor, *, center: bool = False) -> float:
    """``exp(entropy(s^2 / sum s^2))`` of the singular values ``s`` of embeddings ``z`` ``[N, d]``.

    In ``[1, min(N, d)]``; 1 for a rank-one matrix (complete collapse), ``d`` for an isotropic one. With
    ``center=True`` the batch mean is removed first (``nan`` when every row is the same). An all-zero ``z``
    (uncentred) also gives ``nan``: it has no spectrum to measure.
    """
    m = _matrix("z", z)
    if center:
        m = m - m.mean(dim=0, keepdim=True)
    s2 = torch.linalg.svdvals(m).pow(2)
    total = s2.sum()
    if not total > 0:
        return math.nan
    p = s2 / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_std(z: torch.Tensor, *, normalize: bool = True) -> float:
    """Mean over dimensions of the per-dimension std of ``z`` ``[N, d]`` (rows L2-normalised first by default).

    0 under complete collapse; about ``1/sqrt(d)`` for normalised embeddings spread over the sphere.
    """
    m = _matrix("z", z)
    if m.shape[0] < 2:
        raise PriorkitError(f"z must have at least 2 rows for a standard deviation, got shape {list(m.shape)}")
    if normalize:
        m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float(m.std(dim=0).mean())


def collapse_metrics(z: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """The collapse detectors of ``z`` ``[N, d]`` in one dict: ``eff_rank`` (uncentred), ``eff_rank_centered``,
    ``emb_std`` (normalised rows) and ``emb_std_scaled`` (``emb_std * sqrt(d)``, about 1 when spread, 0 when
    collapsed); keys carry ``prefix``."""
    std = embedding_std(z)
    return {
        f"{prefix}eff_rank": effective_rank(z),
        f"{prefix}eff_rank_centered": effective_rank(z, center=True),
        f"{prefix}emb_std": std,
        f"{prefix}emb_std_scaled": std * math.sqrt(z.shape[1]),
    }
