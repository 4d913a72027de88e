"""Few-shot evaluation: per-episode accuracy (optionally up to a cluster relabelling) and the 95% CI.

The reported number of a few-shot method is the mean accuracy over episodes with the half-width of its 95%
confidence interval, ``1.96 * std / sqrt(n)`` (population std over episodes, as the SimpleShot/LaplacianShot/
SLK evaluation code computes it). The Hungarian matching uses scipy's ``linear_sum_assignment``.

>>> mean, ci = mean_ci95([0.6, 0.8, 0.7, 0.9])
>>> round(mean, 3), round(ci, 3)
(0.75, 0.11)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from priorkit.core.errors import PriorkitError


def mean_ci95(values: Sequence[float] | torch.Tensor | np.ndarray) -> tuple[float, float]:
    """Mean over episodes and the 95% CI half-width ``1.96 * std / sqrt(n)`` (std with ddof=0)."""
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    if v.size == 0:
        raise PriorkitError("values must hold at least one episode result, got none")
    if not np.isfinite(v).all():
        raise PriorkitError("values must be finite")
    return float(v.mean()), float(1.96 * v.std() / math.sqrt(v.size))


def episode_accuracy(pred: torch.Tensor, y: torch.Tensor, *, hungarian: bool = False) -> float:
    """Fraction of queries whose predicted label equals ``y``.

    With ``hungarian=True`` predictions are cluster ids and are first mapped one-to-one onto labels to
    maximise the matches (what SLK's code does when clusters may drift from classes).
    """
    if not isinstance(pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise PriorkitError("pred and y must be torch tensors")
    if pred.dim() != 1 or pred.shape != y.shape:
        raise PriorkitError(f"pred and y must be 1-D of equal length, got {list(pred.shape)} and {list(y.shape)}")
    if len(y) == 0:
        raise PriorkitError("pred and y must not be empty")
    pred, y = pred.long().cpu(), y.long().cpu()
    if hungarian:
        from scipy.optimize import linear_sum_assignment

        p_ids, p_inv = torch.unique(pred, return_inverse=True)
        y_ids, y_inv = torch.unique(y, return_inverse=True)
        n = max(len(p_ids), len(y_ids))
        counts = torch.zeros(n, n, dtype=torch.long)
        counts.index_put_((p_inv, y_inv), torch.ones_like(p_inv), accumulate=True)
        rows, cols = linear_sum_assignment(-counts.numpy())
        return float(counts[rows, cols].sum()) / len(y)
    return float((pred == y).double().mean())


def fewshot_summary(accs: Sequence[float] | torch.Tensor | np.ndarray, prefix: str = "acc") -> dict[str, float]:
    """``{prefix: mean, prefix + '_ci95': half-width}`` for a list of per-episode accuracies."""
    mean, ci = mean_ci95(accs)
    return {prefix: mean, f"{prefix}_ci95": ci}
