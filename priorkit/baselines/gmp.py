"""Gradual magnitude pruning (GMP) and one-shot magnitude pruning: the pruning baselines of other papers.

GMP follows Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression" (ICLR Workshop 2018): the sparsity ramps up with the cubic schedule
``s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(t_1 - t_0))^3`` (their Eq. 1) and the smallest-magnitude weights are
masked, per layer or by one global ranking. PDP's and GraNet's experiments compare against it. One-shot
magnitude pruning masks the smallest ``|w|`` once (the fixed mask stays attached for fine-tuning).

Both hold their masks in the family's one mechanism, :class:`priorkit.sparsity.masks.MaskSet` (boolean
``WeightMask`` parametrizations saved in the model's checkpoint, broadcast from rank 0 under DDP).
``torch.ao.pruning`` (``WeightNormSparsifier`` + ``CubicSL``) was considered: its sparsifiers only discover
``nn.Linear`` and have no exact-count global ranking, so the schedule is driven by the hook below.

Public: :class:`GMP` (a hook; claims ``weight_parametrization``) and :func:`one_shot_magnitude`. Masks are
computed only from finite weights: a non-finite weight raises before any mask changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_finite, check_positive_int, check_sparsity
from priorkit.sparsity._common import cubic_sparsity
from priorkit.sparsity.masks import GRANULARITIES, MaskSet
from priorkit.train.engine import RunState
from priorkit.train.hooks import Hook

__all__ = ["GMP", "one_shot_magnitude"]

SCOPES = ("layer", "global")


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _magnitude_scores(masks: MaskSet) -> dict[str, torch.Tensor]:
    return {n: check_finite(f"weight of layer {n!r}", w.detach()).abs() for n, w in masks.weights().items()}


class GMP(Hook):
    """Gradual magnitude pruning: at the start of each epoch ``e`` the sparsity is the cubic ramp
    ``cubic(e + 1, start_epoch, end_epoch)`` (reaching ``sparsity`` at ``end_epoch - 1``), and masks are the
    smallest-magnitude weights per layer (``scope='layer'``) or over all layers (``scope='global'``); with
    ``granularity='channel'`` whole output channels are pruned (the structured baseline).

    The masks are buffers of the model (its checkpoint carries them, :class:`~priorkit.sparsity.masks.MaskSet`);
    the hook's own state is the current sparsity. Under DDP the masks are broadcast from rank 0.
    """

    claims = ("weight_parametrization",)

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        *,
        start_epoch: int,
        end_epoch: int,
        scope: str = "layer",
        granularity: str = "unstructured",
        include: Callable[[str, nn.Module], bool] | None = None,
    ) -> None:
        _check_model(model)
        check_sparsity("sparsity", sparsity)
        check_choice("scope", scope, SCOPES)
        check_choice("granularity", granularity, tuple(g for g in GRANULARITIES if g != "nm"))
        check_positive_int("start_epoch", start_epoch, 0)
        check_positive_int("end_epoch", end_epoch, 1)
        if end_epoch <= start_epoch:
            raise PriorkitError(f"end_epoch must be > start_epoch, got {start_epoch=}, {end_epoch=}")
        self.sparsity, self.start, self.end, self.scope = sparsity, start_epoch, end_epoch, scope
        self.masks = MaskSet(model, owner="gmp", granularity=granularity, include=include)
        self.layers = self.masks.layers
        self.current = 0.0

    def on_fit_start(self, state: RunState) -> None:
        self.masks.attach()

    def on_epoch_start(self, state: RunState) -> None:
        epoch = state.epoch
        if epoch < self.start:
            return
        current = cubic_sparsity(epoch + 1, self.start, self.end, self.sparsity)
        # raises on non-finite weights before any mask changes
        self.masks.update(current, _magnitude_scores(self.masks), scope=self.scope)
        self.current = current

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state["current"])


def one_shot_magnitude(
    model: nn.Module,
    sparsity: float,
    *,
    scope: str = "layer",
    granularity: str = "unstructured",
    include: Callable[[str, nn.Module], bool] | None = None,
) -> dict[str, nn.Module]:
    """Prune once by magnitude (fixed masks stay attached for fine-tuning); returns the pruned layers."""
    _check_model(model)
    check_sparsity("sparsity", sparsity)
    check_choice("scope", scope, SCOPES)
    check_choice("granularity", granularity, tuple(g for g in GRANULARITIES if g != "nm"))
    masks = MaskSet(model, owner="one_shot_magnitude", granularity=granularity, include=include)
    scores = _magnitude_scores(masks)  # raises on non-finite weights before anything is attached
    masks.attach().update(sparsity, scores, scope=scope)
    return masks.layers
