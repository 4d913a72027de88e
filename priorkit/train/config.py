"""Run settings and the default optimizer / scheduler factories of the engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from priorkit.core.errors import ConfigKeyError, check_choice, check_positive_int, check_range

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step")
ACCELERATORS = ("cpu", "cuda", "gpu", "mps", "auto")
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true")


@dataclass
class TrainConfig:
    """Settings of a run. ``batch_size`` is the global batch (split across ranks under DDP).

    ``accelerator``, ``devices``, ``strategy``, ``num_nodes`` and ``precision`` go to Lightning Fabric
    unchanged (e.g. ``strategy="fsdp"``, ``precision="bf16-mixed"``). Under ``torchrun`` the world size comes
    from the launcher and ``devices``/``num_nodes`` are read from its environment.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    scheduler: str = "none"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    drop_last: bool = False
    grad_clip: float | None = None
    ckpt_dir: str | None = None
    ckpt_every: int = 1
    progress: bool = True  # a bar on rank 0 when stderr is a terminal
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    stop_after_epoch: int | None = None  # end the run early after this (global) epoch (used to test resume)

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("accelerator", self.accelerator, ACCELERATORS)
        check_choice("precision", self.precision, PRECISIONS)
        check_positive_int("ckpt_every", self.ckpt_every)
        check_positive_int("num_nodes", self.num_nodes)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0.0, low_inclusive=False)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer labels ``[B]`` or probability rows ``[B, C]`` (batch mean)."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, epochs: int) -> Any:
    """Per-epoch schedules: cosine to zero over ``epochs``, or step decay at ``milestones``."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return None


LAUNCH_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "precision")
_LAUNCH: dict[str, Any] = {}


@contextmanager
def launch_options(**options: Any) -> Iterator[None]:
    """Run every Trainer built inside the block with these Fabric settings (``accelerator``, ``devices``,
    ``strategy``, ``num_nodes``, ``precision``), whatever the experiment's own config says. The command
    line's ``--devices/--strategy/--num-nodes/--precision`` use it; ``None`` values are ignored."""
    bad = sorted(set(options) - set(LAUNCH_KEYS))
    if bad:
        raise ConfigKeyError(f"launch_options has no key(s) {bad}; valid keys: {', '.join(LAUNCH_KEYS)}")
    given = {k: v for k, v in options.items() if v is not None}
    TrainConfig(**given)  # validate the values with the config's own checks
    old = dict(_LAUNCH)
    _LAUNCH.update(given)
    try:
        yield
    finally:
        _LAUNCH.clear()
        _LAUNCH.update(old)


def with_launch_options(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the active :func:`launch_options` applied."""
    return replace(cfg, **_LAUNCH) if _LAUNCH else cfg
