"""Multiple-instance learning metrics: instance-level and bag-level AUC (scikit-learn's ``roc_auc_score``).

Instance scores become bag scores by an aggregator over each bag's instances (``mean``, ``max``); bags are
given by ``offsets`` (``[num_bags + 1]`` boundaries into the flat instance order, as in
:class:`priorkit.data.mil.MILBags`).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from priorkit.core.errors import PriorkitError, check_choice

AGGREGATORS = ("mean", "max")


def _auc(labels: torch.Tensor, scores: torch.Tensor, what: str) -> float:
    labels, scores = torch.as_tensor(labels).flatten(), torch.as_tensor(scores).flatten()
    if len(labels) != len(scores):
        raise PriorkitError(f"{what}: labels and scores must have the same length, got {len(labels)} and {len(scores)}")
    if len(labels) == 0:
        raise PriorkitError(f"{what}: labels and scores must be non-empty")
    lab = labels.long().numpy()
    if not set(np.unique(lab).tolist()) <= {0, 1}:
        raise PriorkitError(f"{what}: labels must be 0/1, got values {sorted(set(np.unique(lab).tolist()))}")
    if len(np.unique(lab)) < 2:
        raise PriorkitError(f"{what}: AUC needs both positive and negative labels, got only {int(lab[0])}")
    s = scores.detach().double().numpy()
    if not np.isfinite(s).all():
        raise PriorkitError(f"{what}: scores must be finite")
    return float(roc_auc_score(lab, s))


def instance_auc(scores: torch.Tensor, instance_y: torch.Tensor) -> float:
    """ROC AUC of the instance scores against the true 0/1 instance labels."""
    return _auc(instance_y, scores, "instance_auc")


def bag_scores(scores: torch.Tensor, offsets: torch.Tensor, aggregator: str = "mean") -> torch.Tensor:
    """One score per bag: the ``mean`` or ``max`` of its instances' scores."""
    check_choice("aggregator", aggregator, AGGREGATORS)
    scores = torch.as_tensor(scores).flatten()
    if offsets.dim() != 1 or len(offsets) < 2 or int(offsets[0]) != 0 or int(offsets[-1]) != len(scores):
        raise PriorkitError(f"offsets must be [num_bags + 1] boundaries from 0 to {len(scores)} (number of scores)")
    sizes = offsets.diff()
    if bool((sizes <= 0).any()):
        raise PriorkitError("every bag must hold at least one instance (offsets must strictly grow)")
    bag_of = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    if aggregator == "mean":
        return torch.zeros(len(sizes), dtype=scores.dtype).index_add_(0, bag_of, scores) / sizes.to(scores.dtype)
    return torch.full((len(sizes),), -torch.inf, dtype=scores.dtype).scatter_reduce(0, bag_of, scores, "amax")


def bag_auc(bag_score: torch.Tensor, bag_y: torch.Tensor) -> float:
    """ROC AUC of the bag scores against the 0/1 bag labels."""
    return _auc(bag_y, bag_score, "bag_auc")


def mil_metrics(
    scores: torch.Tensor,
    instance_y: torch.Tensor,
    offsets: torch.Tensor,
    bag_y: torch.Tensor,
    aggregator: str = "mean",
    bag_score: torch.Tensor | None = None,
) -> dict[str, float]:
    """``instance_auc`` and ``bag_auc``; the bag scores aggregate the instance scores unless ``bag_score`` is given
    (e.g. an attention-MIL bag head)."""
    if bag_score is None:
        bag_score = bag_scores(scores, offsets, aggregator)
    return {"instance_auc": instance_auc(scores, instance_y), "bag_auc": bag_auc(bag_score, bag_y)}
