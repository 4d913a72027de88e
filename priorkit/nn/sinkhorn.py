"""Sinkhorn-Knopp soft assignments of samples to prototypes, in the log domain (SwAV, PALM)."""

from __future__ import annotations

import math

import torch

from priorkit.core.errors import PriorkitError, check_positive_int, check_range

__all__ = ["sinkhorn"]


def sinkhorn(z: torch.Tensor, prototypes: torch.Tensor, epsilon: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft assignments ``Q`` [N, K] of samples to prototypes by Sinkhorn-Knopp on ``exp(z c^T / epsilon)``.

    Alternately each prototype's total is set to ``1/K`` and each sample's to ``1/N``; the result is scaled by
    ``N`` so every sample's weights sum to 1 (SwAV / PALM). No gradient flows (the inputs are detached).
    Computed in the log domain in float32: the same numbers as the exp-then-normalise loop where that does
    not overflow, and finite where it would.
    """
    check_range("epsilon", epsilon, 0.0, low_inclusive=False)
    check_positive_int("iters", iters, 0)
    if z.dim() != 2 or prototypes.dim() != 2 or z.shape[1] != prototypes.shape[1]:
        raise PriorkitError(
            f"z [N, d] and prototypes [K, d] must share d, got {list(z.shape)}, {list(prototypes.shape)}"
        )
    with torch.no_grad():
        logq = (z.detach().float() @ prototypes.detach().float().T / epsilon).T  # [K, N], in the log domain
        k, n = logq.shape
        logq = logq - torch.logsumexp(logq.flatten(), dim=0)
        for _ in range(iters):
            logq = logq - torch.logsumexp(logq, dim=1, keepdim=True) - math.log(k)
            logq = logq - torch.logsumexp(logq, dim=0, keepdim=True) - math.log(n)
        return (torch.exp(logq) * n).T.contiguous()
