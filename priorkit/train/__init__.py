"""The reference training loop, its hook protocol, checkpoints and distributed helpers."""

from priorkit.train.checkpoint import load_checkpoint, save_checkpoint
from priorkit.train.hooks import Batch, Hook
from priorkit.train.loop import TrainConfig, Trainer, predict, soft_cross_entropy

__all__ = [
    "Batch",
    "Hook",
    "TrainConfig",
    "Trainer",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
    "soft_cross_entropy",
]
