"""Clustering accuracy with the Hungarian match (scipy's ``linear_sum_assignment``), and the GCD All/Old/New split.

``cluster_acc`` finds the one-to-one map from predicted cluster ids to classes that maximises the number of
matches and reports the matched accuracy (it is invariant to renaming the clusters). ``split_cluster_acc`` is the
GCD "v2" protocol (Vaze et al., 2022; used by SimGCD and ProtoGCD): one Hungarian match over *all* evaluated
samples, then the accuracy of that same map on the old-class and on the new-class samples.

>>> import torch
>>> cluster_acc(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0]))
1.0
>>> split_cluster_acc(torch.tensor([0, 0, 1, 2]), torch.tensor([2, 2, 0, 1]), torch.tensor([1, 1, 0, 0]).bool())
{'all': 1.0, 'old': 1.0, 'new': 1.0}
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from priorkit.core.errors import PriorkitError


def _as_int_array(name: str, v: torch.Tensor | np.ndarray) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise PriorkitError(f"{name} must be a 1-D integer array, got {a.dtype} {list(a.shape)}")
    if len(a) and a.min() < 0:
        raise PriorkitError(f"{name} must be non-negative ids, got min {int(a.min())}")
    return a.astype(np.int64)


def hungarian_map(y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray) -> dict[int, int]:
    """The cluster -> class map that maximises the matches (clusters without a partner are left out)."""
    t, p = _as_int_array("y_true", y_true), _as_int_array("y_pred", y_pred)
    if len(t) != len(p):
        raise PriorkitError(f"y_true and y_pred must have the same length, got {len(t)} and {len(p)}")
    if len(t) == 0:
        raise PriorkitError("y_true and y_pred must be non-empty")
    d = int(max(t.max(), p.max())) + 1
    w = np.zeros((d, d), dtype=np.int64)
    np.add.at(w, (p, t), 1)
    rows, cols = linear_sum_assignment(w, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols)}


def _matched(t: np.ndarray, p: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(int(max(p.max(), max(mapping))) + 1, -1, dtype=np.int64)
    for r, c in mapping.items():
        lut[r] = c
    return lut[p] == t


def cluster_acc(y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray) -> float:
    """Accuracy after the best one-to-one renaming of the predicted clusters (Hungarian match)."""
    t, p = _as_int_array("y_true", y_true), _as_int_array("y_pred", y_pred)
    return float(_matched(t, p, hungarian_map(t, p)).mean())


def split_cluster_acc(
    y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray, old_mask: torch.Tensor | np.ndarray
) -> dict[str, float]:
    """GCD All/Old/New accuracy ("v2"): one Hungarian match on all samples, scored on each subset.

    ``old_mask[i]`` is True when sample ``i`` belongs to an old (labelled) class. A subset that is empty gets NaN.
    """
    t, p = _as_int_array("y_true", y_true), _as_int_array("y_pred", y_pred)
    m = old_mask.detach().cpu().numpy() if isinstance(old_mask, torch.Tensor) else np.asarray(old_mask)
    if m.dtype != bool or m.shape != t.shape:
        raise PriorkitError(f"old_mask must be a boolean array of shape {list(t.shape)}, got {m.dtype} {list(m.shape)}")
    hit = _matched(t, p, hungarian_map(t, p))
    return {
        "all": float(hit.mean()),
        "old": float(hit[m].mean()) if m.any() else float("nan"),
        "new": float(hit[~m].mean()) if (~m).any() else float("nan"),
    }
