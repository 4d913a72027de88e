"""Gradual magnitude pruning (GMP) and one-shot magnitude pruning: the pruning baselines of other papers.

GMP follows Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression" (ICLR Workshop 2018): the sparsity ramps up with the cubic schedule
``s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(t_1 - t_0))^3`` (their Eq. 1) and the smallest-magnitude weights are
masked, per layer or by one global ranking. PDP's and GraNet's experiments compare against it. One-shot
magnitude pruning masks the smallest ``|w|`` once (the fixed mask stays attached for fine-tuning).

Both attach fixed masks with ``torch.nn.utils.parametrize`` (``priorkit.sparsity._common.FixedMask``).
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
from priorkit.sparsity._common import (
    apply_masks,
    cubic_sparsity,
    global_magnitude_masks,
    magnitude_keep_mask,
    prunable_layers,
    raw_weight,
)
from priorkit.train.engine import RunState
from priorkit.train.hooks import Hook

__all__ = ["GMP", "one_shot_magnitude"]

SCOPES = ("layer", "global")


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _magnitude_masks(layers: dict[str, nn.Module], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    weights = {n: check_finite(f"weight of layer {n!r}", raw_weight(m).detach()) for n, m in layers.items()}
    if scope == "global":
        return global_magnitude_masks(weights, sparsity)
    return {n: magnitude_keep_mask(w, sparsity) for n, w in weights.items()}


class GMP(Hook):
    """Gradual magnitude pruning: at the start of each epoch ``e`` the sparsity is the cubic ramp
    ``cubic(e + 1, start_epoch, end_epoch)`` (reaching ``sparsity`` at ``end_epoch - 1``), and masks are the
    smallest-magnitude weights per layer (``scope='layer'``) or over all layers (``scope='global'``).

    The masks are buffers of the model (its checkpoint carries them); the hook's own state is the current
    sparsity. Under DDP every rank computes the same masks from the same (synchronised) weights.
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
        include: Callable[[str, nn.Module], bool] | None = None,
    ) -> None:
        _check_model(model)
        check_sparsity("sparsity", sparsity)
        check_choice("scope", scope, SCOPES)
        check_positive_int("start_epoch", start_epoch, 0)
        check_positive_int("end_epoch", end_epoch, 1)
        if end_epoch <= start_epoch:
            raise PriorkitError(f"end_epoch must be > start_epoch, got {start_epoch=}, {end_epoch=}")
        self.sparsity, self.start, self.end, self.scope = sparsity, start_epoch, end_epoch, scope
        self.layers = prunable_layers(model, include)
        self.current = 0.0

    def on_fit_start(self, state: RunState) -> None:
        apply_masks(
            self.layers,
            {n: raw_weight(m).new_ones(raw_weight(m).shape, dtype=torch.bool) for n, m in self.layers.items()},
        )

    def on_epoch_start(self, state: RunState) -> None:
        epoch = state.epoch
        if epoch < self.start:
            return
        current = cubic_sparsity(epoch + 1, self.start, self.end, self.sparsity)
        masks = _magnitude_masks(self.layers, current, self.scope)  # raises on non-finite weights: nothing changed
        apply_masks(self.layers, masks)
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
    include: Callable[[str, nn.Module], bool] | None = None,
) -> dict[str, nn.Module]:
    """Prune once by magnitude (fixed masks stay attached for fine-tuning); returns the pruned layers."""
    _check_model(model)
    check_sparsity("sparsity", sparsity)
    check_choice("scope", scope, SCOPES)
    layers = prunable_layers(model, include)
    apply_masks(layers, _magnitude_masks(layers, sparsity, scope))
    return layers
