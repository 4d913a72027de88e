"""Pruning baselines that several experiments compare against: gradual magnitude pruning (GMP) with the
Zhu & Gupta cubic ramp, and one-shot magnitude pruning. Both use fixed masks from ``_common``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from priorkit.core.errors import check_choice, check_sparsity
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


class GMP(Hook):
    """Gradual magnitude pruning: at the start of each epoch ``e`` the sparsity is the cubic ramp
    ``cubic(e + 1, start_epoch, end_epoch)`` (reaching ``sparsity`` at ``end_epoch - 1``), and masks are the
    smallest-magnitude weights per layer (``scope='layer'``) or over all layers (``scope='global'``)."""

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
        check_sparsity("sparsity", sparsity)
        check_choice("scope", scope, ("layer", "global"))
        if end_epoch <= start_epoch:
            raise ValueError(f"end_epoch must be > start_epoch, got {start_epoch}, {end_epoch}")
        self.sparsity, self.start, self.end, self.scope = sparsity, start_epoch, end_epoch, scope
        self.layers = prunable_layers(model, include)
        self.current = 0.0

    def on_fit_start(self, state: RunState) -> None:
        apply_masks(
            self.layers,
            {n: raw_weight(m).new_ones(raw_weight(m).shape, dtype=bool) for n, m in self.layers.items()},
        )

    def on_epoch_start(self, state: RunState) -> None:
        epoch = state.epoch
        if epoch < self.start:
            return
        self.current = cubic_sparsity(epoch + 1, self.start, self.end, self.sparsity)
        weights = {n: raw_weight(m) for n, m in self.layers.items()}
        if self.scope == "global":
            masks = global_magnitude_masks(weights, self.current)
        else:
            masks = {n: magnitude_keep_mask(w, self.current) for n, w in weights.items()}
        apply_masks(self.layers, masks)

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
    check_choice("scope", scope, ("layer", "global"))
    layers = prunable_layers(model, include)
    weights = {n: raw_weight(m) for n, m in layers.items()}
    if scope == "global":
        masks = global_magnitude_masks(weights, sparsity)
    else:
        masks = {n: magnitude_keep_mask(w, sparsity) for n, w in weights.items()}
    apply_masks(layers, masks)
    return layers
