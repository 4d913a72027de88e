"""OOD detection metrics from scikit-learn's ROC: AUROC and FPR at 95% TPR. Higher score = more in-distribution."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from priorkit.core.errors import PriorkitError


def _labels_scores(score_in: torch.Tensor, score_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    if len(score_in) == 0 or len(score_out) == 0:
        raise PriorkitError("score_in and score_out must both be non-empty")
    s = torch.cat([score_in.flatten(), score_out.flatten()]).double().numpy()
    lab = np.r_[np.ones(len(score_in.flatten())), np.zeros(len(score_out.flatten()))]
    return lab, s


def auroc(score_in: torch.Tensor, score_out: torch.Tensor) -> float:
    """Area under the ROC of separating in-distribution (positive) from OOD by the score."""
    lab, s = _labels_scores(score_in, score_out)
    return float(roc_auc_score(lab, s))


def fpr_at_95_tpr(score_in: torch.Tensor, score_out: torch.Tensor) -> float:
    """Fraction of OOD samples accepted at the threshold that keeps 95% of in-distribution samples."""
    lab, s = _labels_scores(score_in, score_out)
    fpr, tpr, _ = roc_curve(lab, s)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])
