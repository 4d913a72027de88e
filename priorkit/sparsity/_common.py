"""Shared sparsity math: exact-count magnitude thresholds, N:M grouping, global budgets and the cubic schedule.

The masks themselves (parametrizations, granularities, DDP sync, checkpoints) are :mod:`priorkit.sparsity.masks`.
``torch.ao.pruning`` was considered: its sparsifiers only discover ``nn.Linear`` and carry no exact-count global
threshold, so the small pieces are written here (its cubic schedule is the reference a test compares against).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from priorkit.core.errors import PriorkitError, check_positive_int, check_sparsity

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def prunable_layers(model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None) -> dict[str, nn.Module]:
    """Linear/Conv layers of ``model`` by name, filtered by ``include(name, module)`` when given."""
    out = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    if include is not None:
        out = {n: m for n, m in out.items() if include(n, m)}
    if not out:
        raise PriorkitError("no prunable layers (nn.Linear / nn.Conv1d / nn.Conv2d) matched the filter")
    return out


def exclude_last_linear(model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """A filter that keeps every prunable layer but the classifier (the last ``nn.Linear``)."""
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    return lambda name, _m: name not in last


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly ``k`` entries of the 1-D ``scores`` with the smallest values.

    O(n) via ``kthvalue`` (no full sort); ties at the k-th value are broken by position (lowest index first).
    """
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k <= 0:
        return out
    v = torch.kthvalue(scores, k).values
    out = scores < v
    ties = torch.nonzero(scores == v).flatten()
    out[ties[: k - int(out.sum())]] = True
    return out


def magnitude_keep_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask with exactly ``floor(sparsity * n)`` zeros at the smallest ``|w|`` (ties by position)."""
    check_sparsity("sparsity", sparsity)
    k = math.floor(sparsity * w.numel())
    return (~smallest_k(w.detach().abs().flatten(), k)).view_as(w)


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One global ranking of ``|w|`` over all tensors; exactly ``floor(sparsity * N)`` zeros in total."""
    check_sparsity("sparsity", sparsity)
    if not weights:
        raise PriorkitError("weights must hold at least one tensor")
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = ~smallest_k(flat, math.floor(sparsity * flat.numel()))
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


def global_random_masks(weights: dict[str, torch.Tensor], sparsity: float, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random global pruning with exactly ``floor(sparsity * N)`` zeros (the essential-sparsity baseline)."""
    check_sparsity("sparsity", sparsity)
    n = sum(w.numel() for w in weights.values())
    keep = torch.ones(n, dtype=torch.bool)
    k = math.floor(sparsity * n)
    if k:
        keep[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]] = False
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


def global_layer_budgets(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Per-layer sparsities that one global magnitude ranking at ``sparsity`` assigns (PDP's allocation)."""
    masks = global_magnitude_masks(weights, sparsity)
    return {n: 1.0 - float(m.float().mean()) for n, m in masks.items()}


def nm_groups(w: torch.Tensor, m: int) -> torch.Tensor:
    """View a Linear ``[out, in]`` or Conv ``[out, in, *k]`` weight as groups of ``m`` consecutive input
    channels: ``[out * prod(k) * in / m, m]``. ``in`` must be divisible by ``m``."""
    check_positive_int("M", m)
    if w.dim() < 2:
        raise PriorkitError(f"N:M needs a weight with >= 2 dims, got shape {list(w.shape)}")
    if w.shape[1] % m:
        raise PriorkitError(f"N:M needs in_features ({w.shape[1]}) divisible by M ({m})")
    return w.movedim(1, -1).reshape(-1, m)


def nm_ungroup(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`nm_groups`."""
    shape = list(like.movedim(1, -1).shape)
    return g.reshape(shape).movedim(-1, 1)


def nm_keep_mask(w: torch.Tensor, n_keep: int, m: int) -> torch.Tensor:
    """Keep the ``n_keep`` largest ``|w|`` in every group of ``m`` consecutive input weights."""
    if not 0 < n_keep <= m:
        raise PriorkitError(f"N:M needs 0 < N <= M, got N={n_keep}, M={m}")
    g = nm_groups(w.detach().abs(), m)
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(1, g.topk(n_keep, dim=1).indices, True)
    return nm_ungroup(keep, w)


def cubic_sparsity(step: int, start: int, end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017) cubic ramp: ``s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3`` clipped to [t0, t1]."""
    check_sparsity("final", final)
    if end <= start:
        raise PriorkitError(f"cubic schedule needs end > start, got start={start}, end={end}")
    frac = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3
