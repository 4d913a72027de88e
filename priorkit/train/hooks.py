"""The hook protocol: how a method acts inside the engine (DESIGN.md, "The hook protocol").

A hook overrides any subset of the methods below; all are no-ops by default, and all receive the
:class:`~priorkit.train.engine.RunState` (model, phase, epoch, step, optimizer, world size), never the
engine itself. One step runs, in order: ``transform_batch`` (every hook) -> the phase's forward -> its loss
terms + every hook's ``extra_loss`` terms -> backward -> ``on_after_backward`` -> optimizer step ->
``on_step_end``. Each named loss term is logged on its own.

A hook that holds state (a per-sample memory, masks, an EMA, queues) returns it from ``state_dict`` under
its ``state_key``, so a resumed run ends where an uninterrupted one would. A hook lists the resources it
takes over in ``claims`` (``"weight_parametrization"``, ``"batch.target"``, ``"batch.x"``, ...): two hooks
that claim one resource are refused before the run starts, unless both name it in ``shares``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from priorkit.core.errors import CheckpointMismatchError

if TYPE_CHECKING:
    from priorkit.train.engine import RunState


@dataclass
class Batch:
    """One (rank-local) batch as hooks see it.

    ``target`` starts as the integer labels ``y``; a hook may replace it with soft targets (rows of
    probabilities) that the base cross-entropy then uses. ``output`` holds the forward's result (logits for a
    classifier, whatever the phase's forward returns otherwise). ``extras`` carries anything else a recipe or
    hook puts there (a second view, a bag structure, pseudo-labels).
    """

    x: Any
    y: torch.Tensor
    index: torch.Tensor
    target: Any = None
    output: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target is None:
            self.target = self.y

    def __len__(self) -> int:
        return int(self.index.shape[0])


class Hook:
    """Base class for training-time methods. Override what the method needs."""

    #: resources this hook takes over; a second hook claiming one of them is refused
    claims: tuple[str, ...] = ()
    #: claimed resources that may be shared with other hooks that also list them here
    shares: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def state_key(self) -> str:
        """Key of this hook's state in a checkpoint (stable across runs; override for two of one kind)."""
        return self.name

    def on_fit_start(self, state: RunState) -> None: ...

    def on_phase_start(self, state: RunState) -> None: ...

    def on_epoch_start(self, state: RunState) -> None: ...

    def transform_batch(self, state: RunState, batch: Batch) -> Batch:
        return batch

    def extra_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    def on_after_backward(self, state: RunState) -> None: ...

    def on_step_end(self, state: RunState, batch: Batch) -> None: ...

    def on_epoch_end(self, state: RunState) -> None: ...

    def on_phase_end(self, state: RunState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise CheckpointMismatchError(f"{self.name} holds no state but the checkpoint has {sorted(state)}")


class Augment(Hook):
    """Apply ``fn`` to the inputs of every training batch (claims ``batch.x``, shared with other augmentations)."""

    claims = ("batch.x",)
    shares = ("batch.x",)

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = "Augment") -> None:
        self.fn, self._name = fn, name

    @property
    def name(self) -> str:
        return self._name

    def transform_batch(self, state: RunState, batch: Batch) -> Batch:
        batch.x = self.fn(batch.x)
        return batch
