"""Sparsity and parameter counts (parametrized weights are read through their parametrization)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def weight_modules(
    model: nn.Module, types: tuple[type, ...] = (nn.Linear, nn.Conv2d, nn.Conv1d)
) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, types)}


def sparsity(tensors: Iterable[torch.Tensor]) -> float:
    """Fraction of exact zeros over all given tensors."""
    zeros = total = 0
    for t in tensors:
        zeros += int((t == 0).sum())
        total += t.numel()
    return zeros / max(total, 1)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Per-layer fraction of zero weights (the effective weight, after any mask parametrization)."""
    return {n: sparsity([m.weight.detach()]) for n, m in weight_modules(model).items()}


def model_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all Linear/Conv weights (biases excluded)."""
    return sparsity(m.weight.detach() for m in weight_modules(model).values())
