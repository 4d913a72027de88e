"""Anomaly-detection metrics from scikit-learn's ROC: image-level and pixel-level AUROC (higher score = more
anomalous, label/mask 1 = anomalous), as MVTec-AD style benchmarks report them."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from priorkit.core.errors import PriorkitError

__all__ = ["image_auroc", "pixel_auroc"]


def _auroc(labels: np.ndarray, scores: np.ndarray, what: str) -> float:
    if labels.shape != scores.shape:
        raise PriorkitError(f"{what}: scores and labels must have the same shape, got {scores.shape} vs {labels.shape}")
    u = np.unique(labels)
    if not np.isin(u, (0, 1)).all():
        raise PriorkitError(f"{what}: labels must be 0/1, got values {u.tolist()[:5]}")
    if len(u) < 2:
        raise PriorkitError(f"{what}: needs both normal (0) and anomalous (1) items, got only {u.tolist()}")
    if not np.isfinite(scores).all():
        raise PriorkitError(f"{what}: scores contain NaN or inf")
    return float(roc_auc_score(labels, scores))


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of image scores ``[N]`` against image labels ``[N]`` (1 = anomalous)."""
    s = torch.as_tensor(scores).detach().double().flatten().numpy()
    y = torch.as_tensor(labels).detach().flatten().numpy().astype(np.int64)
    return _auroc(y, s, "image_auroc")


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """AUROC over all pixels of anomaly maps ``[N, (1,) H, W]`` against 0/1 masks of the same shape (masks are
    binarised at 0.5 as the MVTec evaluation does)."""
    m = torch.as_tensor(maps).detach().double()
    g = torch.as_tensor(masks).detach().double()
    if m.numel() != g.numel():
        raise PriorkitError(
            f"pixel_auroc: maps and masks must have the same size, got {list(m.shape)} vs {list(g.shape)}"
        )
    return _auroc((g.flatten() > 0.5).long().numpy(), m.flatten().numpy(), "pixel_auroc")
