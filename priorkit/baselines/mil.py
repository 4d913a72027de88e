"""Multiple-instance-learning baselines of other papers, trained through the engine (INS's comparisons).

- Gated attention MIL (ABMIL, Ilse et al., ICML 2018): ``a = softmax(w^T (tanh(V h) * sigmoid(U h)))`` over a
  bag's instances, bag logit from ``sum a h``; BCE on the bag label, one bag per step (:class:`GatedABMIL`,
  :func:`abmil_recipe`, :func:`eval_abmil`: instance scores = attention weights, bag score = bag probability).
- Naive instance MIL: an instance classifier trained with cross-entropy on the bag label copied to each
  instance (:func:`naive_recipe`, on ``bags.instance_dataset()``).

Both are recipes for :func:`priorkit.train.fit` (no private loop): ``fit(model, None, abmil_recipe(bags, 40))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_positive_int, check_range
from priorkit.data.mil import MILBags
from priorkit.metrics.mil import mil_metrics
from priorkit.nn.views import global_views
from priorkit.train.engine import RunState, shuffled_batches
from priorkit.train.hooks import Batch
from priorkit.train.recipe import Phase, Recipe

__all__ = ["GatedABMIL", "abmil_recipe", "eval_abmil", "naive_recipe"]


class GatedABMIL(nn.Module):
    """Gated attention MIL on one bag ``[n, ...]``: ``forward(bag) -> (bag logit, attention weights [n])``."""

    def __init__(self, encoder: nn.Module, feature_dim: int = 128, attn_dim: int = 64) -> None:
        super().__init__()
        check_positive_int("feature_dim", feature_dim)
        check_positive_int("attn_dim", attn_dim)
        self.encoder = encoder
        self.v, self.u = nn.Linear(feature_dim, attn_dim), nn.Linear(feature_dim, attn_dim)
        self.w = nn.Linear(attn_dim, 1)
        self.cls = nn.Linear(feature_dim, 1)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(bag, torch.Tensor) or not bag.is_floating_point() or len(bag) == 0:
            raise PriorkitError(f"bag must be a non-empty floating-point tensor, got {getattr(bag, 'shape', bag)}")
        h = self.encoder(bag)
        a = torch.softmax(self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(1), dim=0)
        return self.cls((a.unsqueeze(1) * h).sum(0)).squeeze(0), a


def _check_bags(bags: Any) -> MILBags:
    if not isinstance(bags, MILBags):
        raise PriorkitError(f"bags must be a priorkit.data.mil.MILBags, got {type(bags).__name__}")
    return bags


def abmil_recipe(bags: MILBags, epochs: int, *, lr: float = 5e-4, weight_decay: float = 1e-4) -> Recipe:
    """ABMIL's training: one bag per step (a seeded shuffle of the bags each epoch), BCE on the bag label, Adam
    (the ABMIL paper's optimizer: lr 5e-4, betas (0.9, 0.999), weight decay 1e-4). Runs on one process."""
    _check_bags(bags)
    check_positive_int("epochs", epochs)
    check_range("lr", lr, 0.0, low_inclusive=False)

    def plan(state: RunState) -> list[list[int]]:
        if state.world_size != 1:
            raise PriorkitError("abmil_recipe trains one bag per step: run it on one process")
        return shuffled_batches(bags.num_bags, 1, seed=state.config.seed + 1, epoch=state.epoch)

    def make(state: RunState, local: torch.Tensor) -> Batch:
        b = int(local[0])
        x, _ = bags.bag(b)
        return Batch(x=x.to(state.device), y=bags.bag_y[local].to(state.device), index=local)

    def loss(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        logit, _ = batch.output
        return {"bce": F.binary_cross_entropy_with_logits(logit, batch.y[0].float())}

    def opt(model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)

    return Recipe([Phase("abmil", epochs=epochs, optimizer=opt, loss=loss, batches=plan, make_batch=make,
                         data=bags.instance_dataset())], loss_fn=None)  # fmt: skip


@torch.no_grad()
def eval_abmil(model: GatedABMIL, bags: MILBags) -> dict[str, float]:
    """Instance AUC of the attention weights and bag AUC of the bag probabilities."""
    _check_bags(bags)
    model.eval()
    att, bag = [], []
    for x, _ in bags.bags():
        logit, a = model(x)
        att.append(a)
        bag.append(torch.sigmoid(logit))
    return mil_metrics(torch.cat(att), bags.instance_y, bags.offsets, bags.bag_y, bag_score=torch.stack(bag))


def naive_recipe(
    epochs: int,
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    views: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Recipe:
    """Naive instance MIL on ``bags.instance_dataset()`` (the bag label copied to each instance): CE on the weak
    view of ``views(x, generator)`` (seeded by ``(seed, step)`` on the global batch), SGD; drop the last batch
    with ``TrainConfig(drop_last=True)``."""
    check_positive_int("epochs", epochs)
    check_range("lr", lr, 0.0, low_inclusive=False)

    def make(state: RunState, local: torch.Tensor) -> Batch:
        vs, y, index = global_views(state, views, 2, pair=views is not None)
        return Batch(x=vs[0], y=y, index=index)

    def opt(model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    return Recipe([Phase("naive", epochs=epochs, optimizer=opt, make_batch=make)])
