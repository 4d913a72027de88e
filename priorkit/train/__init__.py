"""The engine (Lightning Fabric under priorkit's recipes, phases and hooks), checkpoints and launch helpers."""

from priorkit.train.checkpoint import load_checkpoint, save_checkpoint
from priorkit.train.config import TrainConfig, launch_options, make_optimizer, soft_cross_entropy
from priorkit.train.domains import domain_phase_parts
from priorkit.train.engine import RunState, Trainer, fit, predict, rank_slice, shuffled_batches
from priorkit.train.hooks import Augment, Batch, Hook
from priorkit.train.recipe import Phase, Recipe, freeze_except

__all__ = [
    "Augment",
    "Batch",
    "Hook",
    "Phase",
    "Recipe",
    "RunState",
    "TrainConfig",
    "Trainer",
    "domain_phase_parts",
    "fit",
    "freeze_except",
    "launch_options",
    "load_checkpoint",
    "make_optimizer",
    "predict",
    "rank_slice",
    "save_checkpoint",
    "shuffled_batches",
    "soft_cross_entropy",
]
