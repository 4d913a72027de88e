"""Metrics: classification and calibration, OOD detection, sparsity, restoration (PSNR)."""

from priorkit.metrics.classification import (
    Reliability,
    accuracy,
    classification_metrics,
    ece,
    nll,
    plot_reliability,
    reliability,
)
from priorkit.metrics.ood import auroc, fpr_at_95_tpr
from priorkit.metrics.restoration import psnr, rgb_to_y
from priorkit.metrics.sparsity import layer_sparsity, model_sparsity, param_count, sparsity

__all__ = [
    "psnr",
    "rgb_to_y",
    "Reliability",
    "accuracy",
    "auroc",
    "classification_metrics",
    "ece",
    "fpr_at_95_tpr",
    "layer_sparsity",
    "model_sparsity",
    "nll",
    "param_count",
    "plot_reliability",
    "reliability",
    "sparsity",
]
