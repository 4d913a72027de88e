"""Accuracy, NLL and calibration (ECE with equal-width confidence bins, and its reliability diagram)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError, check_positive_int


def _check(logits: torch.Tensor, y: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise PriorkitError(f"logits must have shape [N, C], got {list(logits.shape)}")
    if y.dim() != 1 or len(y) != len(logits):
        raise PriorkitError(f"labels must have shape [{len(logits)}], got {list(y.shape)}")


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    _check(logits, y)
    return float((logits.argmax(1) == y).float().mean())


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    _check(logits, y)
    return float(F.cross_entropy(logits.double(), y))


@dataclass
class Reliability:
    """Per-bin confidence, accuracy and count; ``ece`` is the count-weighted mean |acc - conf|."""

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor
    ece: float


def reliability(logits: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> Reliability:
    """Equal-width bins over the top-class confidence (Guo et al., 2017); bins are (lo, hi]."""
    _check(logits, y)
    check_positive_int("n_bins", n_bins)
    p = logits.double().softmax(1)
    conf, pred = p.max(1)
    correct = (pred == y).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    b = torch.bucketize(conf, edges[1:-1], right=False)  # bin i holds conf in (edges[i], edges[i+1]]
    count = torch.bincount(b, minlength=n_bins).double()
    s_conf = torch.bincount(b, weights=conf, minlength=n_bins)
    s_acc = torch.bincount(b, weights=correct, minlength=n_bins)
    safe = count.clamp_min(1)
    ece = float((s_acc - s_conf).abs().sum() / len(y))
    return Reliability(edges, s_conf / safe, s_acc / safe, count, ece)


def ece(logits: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins."""
    return reliability(logits, y, n_bins).ece


def plot_reliability(rel: Reliability, ax=None, label: str | None = None):
    """Draw a reliability diagram (accuracy per confidence bin against the diagonal)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    centers = (rel.edges[1:] + rel.edges[:-1]) / 2
    keep = rel.count > 0
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax.plot(centers[keep], rel.accuracy[keep], marker="o", label=f"{label or ''} ECE={rel.ece:.3f}".strip())
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return ax


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    return {"acc": accuracy(logits, y), "nll": nll(logits, y), "ece": ece(logits, y, n_bins)}
