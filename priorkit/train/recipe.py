"""Recipes and phases: what a run trains, in which order, with which optimizer and loss.

A :class:`Recipe` is a list of :class:`Phase`s. A plain fit is one phase; ProtoPNet is warm-up, joint,
push and last-layer phases; a GAN phase alternates two optimizers inside its step. The engine
(:mod:`priorkit.train.engine`) runs any recipe the same way on one CPU process, under ``torchrun`` or on
several GPUs, with checkpoints at every epoch boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int
from priorkit.train.config import soft_cross_entropy

if TYPE_CHECKING:
    from priorkit.train.engine import RunState
    from priorkit.train.hooks import Batch

LossTerms = Mapping[str, torch.Tensor]
StepFn = Callable[["RunState", "Batch"], LossTerms]
ForwardFn = Callable[[nn.Module, "Batch"], Any]
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], Any]
BatchPlan = Callable[["RunState"], Iterable[Sequence[int]]]
BatchMaker = Callable[["RunState", torch.Tensor], "Batch"]
Action = Callable[["RunState"], Mapping[str, Any] | None]

INTERVALS = ("epoch", "step")


def default_forward(net: nn.Module, batch: Batch) -> Any:
    return net(batch.x)


@dataclass
class Phase:
    """One stage of a recipe.

    - ``epochs``: passes over the data (0 for an action-only phase such as ProtoPNet's push).
    - ``trainable``: names of ``model.parameter_groups()`` (or parameter-name prefixes) that train in this
      phase; the rest are frozen. ``None`` trains every parameter except those already frozen when the
      :class:`~priorkit.train.Trainer` was built (a PEFT model's base weights stay frozen).
    - ``optimizer``: ``factory(model) -> Optimizer`` over the trainable parameters (default: the run
      config's optimizer). Phases with the same ``optimizer_key`` share one optimizer and scheduler, with
      their state, as ProtoPNet keeps one Adam per stage across pushes.
    - ``scheduler``: ``factory(optimizer, steps_per_epoch) -> LRScheduler``, stepped every ``interval``
      (``steps_per_epoch`` is 0 for a phase with its own ``batches`` plan: size such schedules from the plan).
    - ``loss``: ``loss(state, batch) -> {name: term}`` after the forward (default: the recipe's
      ``loss_fn(batch.output, batch.target)`` as ``"ce"``); hooks' ``extra_loss`` terms are added to it.
    - ``forward``: ``forward(net, batch) -> output`` (default ``net(batch.x)``); ``net`` is the wrapped
      (DDP/FSDP) module, so call it, not ``net.module``.
    - ``data``, ``batch_size``: this phase's training set and global batch (default: the run's).
    - ``batches``: ``plan(state) -> global index batches`` for the epoch (default: a seeded shuffle whose
      global batches are the same whatever the world size); each rank takes its contiguous slice.
    - ``make_batch``: ``make(state, local_indices) -> Batch`` for data that is not ``(x, y[, index])``.
    - ``train_mode``: module mode during the phase (``False`` keeps BatchNorm statistics fixed).
    - ``manual``: the ``loss`` function does its own ``state.backward`` and optimizer steps (GANs); it
      returns the terms to log, detached.
    - ``rescale``: under DDP multiply each rank's loss by ``local / (global / world)`` so that unequal
      shards still give the global-batch mean (turn off for terms already computed on the global batch).
    - ``on_start`` / ``on_end``: actions run once before / after the phase's epochs (e.g. ProtoPNet's
      push); what they return is logged in the phase's history entry.
    """

    name: str = "fit"
    epochs: int = 1
    trainable: Sequence[str] | None = None
    optimizer: OptimizerFactory | None = None
    optimizer_key: str | None = None
    scheduler: SchedulerFactory | None = None
    interval: str = "epoch"
    loss: StepFn | None = None
    forward: ForwardFn | None = None
    data: Dataset | None = None
    batch_size: int | None = None
    batches: BatchPlan | None = None
    make_batch: BatchMaker | None = None
    train_mode: bool = True
    manual: bool = False
    rescale: bool = True
    grad_clip: float | None = None
    on_start: Action | None = None
    on_end: Action | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PriorkitError(f"Phase name must be a non-empty string, got {self.name!r}")
        check_positive_int(f"Phase({self.name!r}).epochs", self.epochs, 0)
        check_choice(f"Phase({self.name!r}).interval", self.interval, INTERVALS)
        if self.batch_size is not None:
            check_positive_int(f"Phase({self.name!r}).batch_size", self.batch_size)
        if self.manual and self.loss is None:
            raise PriorkitError(f"Phase({self.name!r}): manual=True needs a loss(state, batch) that steps itself")

    @property
    def key(self) -> str:
        return self.optimizer_key or self.name


@dataclass
class Recipe:
    """An ordered list of phases and the base loss the default step uses (``None``: hooks define the loss)."""

    phases: list[Phase]
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = soft_cross_entropy

    def __post_init__(self) -> None:
        if not self.phases:
            raise PriorkitError("a Recipe needs at least one Phase")
        for p in self.phases:
            if not isinstance(p, Phase):
                raise PriorkitError(f"Recipe.phases must hold Phase objects, got {type(p).__name__}")

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


def freeze_except(model: nn.Module, trainable: Sequence[str] | None, *, keep_frozen: Iterable[int] = ()) -> None:
    """Set ``requires_grad`` so that only ``trainable`` groups train (all when ``None``, except the parameters
    whose ``id`` is in ``keep_frozen``: the engine passes those the user froze before the run, such as a PEFT
    model's base weights, so that a phase never unfreezes them).

    Names are keys of ``model.parameter_groups()`` when the model has that method, else parameter-name
    prefixes (``"head"`` matches ``head.weight``). An unknown name is refused with the known ones.
    """
    if trainable is None:
        frozen = set(keep_frozen)
        for p in model.parameters():
            p.requires_grad_(id(p) not in frozen)
        return
    if hasattr(model, "parameter_groups"):
        groups = {k: list(v) for k, v in dict(model.parameter_groups()).items()}
        for name in trainable:
            check_choice("trainable group", name, sorted(groups))
        chosen = {id(p) for name in trainable for p in groups[name]}
    else:
        named = dict(model.named_parameters())
        chosen = set()
        for name in trainable:
            hits = [p for n, p in named.items() if n == name or n.startswith(name + ".")]
            if not hits:
                prefixes = sorted({n.split(".")[0] for n in named})
                raise PriorkitError(f"trainable name {name!r} matches no parameter; top-level names: {prefixes}")
            chosen.update(id(p) for p in hits)
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
