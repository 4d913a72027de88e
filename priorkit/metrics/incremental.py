"""Metrics of few-shot class-incremental learning.

After each session the model is tested on every class seen so far. Reported per session: overall accuracy,
base-class accuracy, new-class accuracy (all incremental classes seen so far), their harmonic mean
``HM = 2 * base * new / (base + new)`` (the base/new balance measure of the FSCIL literature), and the
new->base confusion rate (share of new-class test examples predicted as some base class, TEEN's Fig. 1).
Over a run: the performance drop ``PD = acc(session 0) - acc(last session)`` (TEEN, Tab. 1) and the mean
accuracy over sessions. Labels follow :mod:`priorkit.data.incremental`: base classes are ``0..num_base-1``.

>>> import torch
>>> m = session_metrics(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 2]), num_base=2)
>>> m["base_acc"], m["new_acc"], m["new_to_base"]
(1.0, 0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from priorkit.core.errors import PriorkitError, check_positive_int


def harmonic_mean(base_acc: float, new_acc: float) -> float:
    """``2ab / (a + b)``; 0 when both are 0."""
    for name, v in (("base_acc", base_acc), ("new_acc", new_acc)):
        if not 0.0 <= float(v) <= 1.0:
            raise PriorkitError(f"{name} must be in [0, 1], got {v!r}")
    s = base_acc + new_acc
    return 0.0 if s == 0 else 2.0 * base_acc * new_acc / s


def session_metrics(pred: torch.Tensor, y: torch.Tensor, num_base: int) -> dict[str, float]:
    """Accuracy of one session's test set: ``acc``, ``base_acc``, ``new_acc``, ``hm``, ``new_to_base``.

    ``pred`` holds predicted labels ``[N]`` (or logits ``[N, C]``, reduced by argmax). With no new-class
    examples (the base session) ``new_acc``, ``hm`` and ``new_to_base`` are NaN.
    """
    check_positive_int("num_base", num_base)
    if not isinstance(pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise PriorkitError("pred and y must be torch tensors")
    if pred.dim() == 2:
        pred = pred.argmax(dim=1)
    if pred.dim() != 1 or y.dim() != 1 or len(pred) != len(y) or len(y) == 0:
        raise PriorkitError(
            f"pred must be [N] labels or [N, C] logits and y [N] labels (N > 0), got {list(pred.shape)} "
            f"and {list(y.shape)}"
        )
    correct = (pred == y).double()
    base = y < num_base
    nan = float("nan")
    out = {"acc": float(correct.mean())}
    out["base_acc"] = float(correct[base].mean()) if bool(base.any()) else nan
    if bool((~base).any()):
        out["new_acc"] = float(correct[~base].mean())
        out["new_to_base"] = float((pred[~base] < num_base).double().mean())
        out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"]) if bool(base.any()) else nan
    else:
        out["new_acc"] = out["hm"] = out["new_to_base"] = nan
    return out


def performance_drop(session_accs: Sequence[float]) -> float:
    """PD = accuracy after the base session minus accuracy after the last session."""
    if len(session_accs) < 1:
        raise PriorkitError("session_accs must hold at least one accuracy")
    return float(session_accs[0]) - float(session_accs[-1])


def average_accuracy(session_accs: Sequence[float]) -> float:
    """Mean accuracy over all sessions (the 'Avg' column of FSCIL tables)."""
    if len(session_accs) < 1:
        raise PriorkitError("session_accs must hold at least one accuracy")
    return float(sum(session_accs)) / len(session_accs)
