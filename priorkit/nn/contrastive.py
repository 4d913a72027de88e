"""Contrastive losses shared by priorkit's methods (one copy each): SupCon, SimCLR's InfoNCE and MoCo's InfoNCE.

Under DDP the callers gather the features of the global batch with
:func:`priorkit.nn.distributed.gather_with_grad` first, so the negatives are those of the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError, check_positive_int, check_shape

__all__ = ["info_nce", "moco_info_nce", "supcon_loss", "supcon_views"]


def supcon_loss(
    features: torch.Tensor,
    mask: torch.Tensor,
    num_anchors: int | None = None,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020) of the first ``num_anchors`` rows against all rows.

    ``features`` [N, d] are unit-norm; ``mask[i, j] = 1`` when row ``j`` is a positive of anchor ``i`` (self,
    column ``i``, is excluded). The row maximum is subtracted first (as the official SupConLoss); every anchor
    needs at least one positive besides itself.
    """
    check_shape("features", features, [None, None])
    a = features.shape[0] if num_anchors is None else num_anchors
    check_positive_int("num_anchors", a)
    check_shape("mask", mask, [a, features.shape[0]])
    logits = features[:a] @ features.t() / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = torch.ones_like(logits)
    not_self[torch.arange(a), torch.arange(a)] = 0.0
    pos = mask.float().detach() * not_self
    npos = pos.sum(1)
    if bool((npos == 0).any()):
        raise PriorkitError("every anchor needs at least one positive besides itself (check the mask)")
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True) + 1e-12)
    return -(temperature / base_temperature) * ((pos * log_prob).sum(1) / npos).mean()


def supcon_views(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07, base_temperature: float = 0.07
) -> torch.Tensor:
    """SupCon on ``features`` [B, V, d] (normalised inside) with ``labels`` [B]: every row of every view is an
    anchor, positives are the rows with its label (its other views included)."""
    if features.dim() != 3:
        raise PriorkitError(f"features must be [B, n_views, d], got {list(features.shape)}")
    check_shape("labels", labels, [features.shape[0]])
    v = features.shape[1]
    f = F.normalize(torch.cat(features.unbind(1)), dim=1)
    lab = labels.repeat(v)
    return supcon_loss(f, (lab[:, None] == lab[None, :]).float(), None, temperature, base_temperature)


def info_nce(features: torch.Tensor, n_views: int = 2, temperature: float = 1.0) -> torch.Tensor:
    """SimCLR's InfoNCE on L2-normalised features (view-major): each row's positive is the same sample in the
    other view(s), negatives every other row (self excluded); cross-entropy, mean over rows."""
    check_positive_int("n_views", n_views, 2)
    n = len(features)
    if n % n_views:
        raise PriorkitError(f"features has {n} rows, not a multiple of n_views ({n_views})")
    f = F.normalize(features, dim=1)
    ids = torch.arange(n // n_views, device=f.device).repeat(n_views)
    sim = f @ f.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    pos = (ids[:, None] == ids[None, :]) & ~eye
    logsm = sim.masked_fill(eye, float("-inf")).log_softmax(dim=1)
    # one positive per row when n_views == 2 (SimCLR's layout); otherwise each positive is a CE term
    return -(logsm.masked_fill(~pos, 0.0).sum(1) / pos.sum(1)).mean()


def moco_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """MoCo's InfoNCE: the key of the same sample is the positive, the queue rows the negatives."""
    check_shape("k", k, list(q.shape))
    check_shape("queue", queue, [None, q.shape[1]])
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
