"""The hook protocol: how a method acts inside the reference loop (DESIGN.md, "The hook protocol").

A hook overrides any subset of the methods below; all are no-ops by default. One step runs, in order:
``transform_batch`` (every hook) -> forward -> base loss on ``batch.target`` + every hook's ``extra_loss``
terms -> backward -> ``on_after_backward`` -> optimizer step -> ``on_step_end``. Each named loss term is
logged on its own. A hook that holds state (a per-sample memory, masks, an EMA) returns it from
``state_dict`` so a resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from priorkit.train.loop import Trainer


@dataclass
class Batch:
    """One (rank-local) batch as hooks see it.

    ``target`` starts as the integer labels ``y``; a hook may replace it with soft targets (rows of
    probabilities) that the base cross-entropy then uses. ``output`` holds the logits after the forward.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    target: torch.Tensor
    output: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Hook:
    """Base class for training-time methods. Override what the method needs."""

    #: names of other hooks this one cannot be combined with (the run refuses with a clear error)
    conflicts: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def transform_batch(self, trainer: Trainer, batch: Batch) -> Batch:
        return batch

    def extra_loss(self, trainer: Trainer, batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    def on_after_backward(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, batch: Batch) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} holds no state but the checkpoint has {sorted(state)}")
