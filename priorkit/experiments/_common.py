"""Shared pieces of the experiments: train one classifier under hooks and measure it on the test split."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.metrics import classification_metrics
from priorkit.train import Hook, RunState, TrainConfig, Trainer, predict


def train_and_test(
    make_model: Callable[[], nn.Module],
    train: IndexedTensorDataset,
    test: IndexedTensorDataset,
    config: TrainConfig,
    make_hooks: Callable[[nn.Module], Sequence[Hook]] = lambda m: (),
    *,
    curve_every: int = 0,
) -> tuple[nn.Module, dict[str, float], dict[str, Any]]:
    """Seed, build, train, and return ``(model, test metrics, curves)``.

    The model is built right after seeding with ``config.seed``, so method and baseline start from the same
    initial weights. With ``curve_every`` > 0 the test accuracy is recorded every that many epochs (and at the last).
    """
    config = dataclasses.replace(config, progress=False)
    seed_everything(config.seed)
    model = make_model()

    def eval_fn(state: RunState) -> dict[str, float]:
        if state.epoch % curve_every == 0 or state.epoch == config.epochs - 1:
            return {"test_acc": classification_metrics(predict(state.model, test), test.y)["acc"]}
        return {}

    trainer = Trainer(
        model, train, hooks=list(make_hooks(model)), config=config, eval_fn=eval_fn if curve_every else None
    )
    history = trainer.fit()
    metrics = classification_metrics(predict(model, test), test.y)
    curves = {
        "epoch": [h["epoch"] for h in history if "test_acc" in h],
        "test_acc": [h["test_acc"] for h in history if "test_acc" in h],
        "history": history,
    }
    return model, metrics, curves


def mean_curve(curves: list[list[float]]) -> torch.Tensor:
    return torch.tensor(curves, dtype=torch.float64).mean(dim=0)
