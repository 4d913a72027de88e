"""Shared pieces of the experiments: fit a classifier (method or baseline) through the engine and measure it.

Every experiment trains its method *and* its baseline through :class:`priorkit.train.Trainer` (no private
loops), starting from the same initial weights, and measures both the same way:

- :func:`train_and_test` -- seed, build, fit under hooks (or a recipe), and return ``(model, test metrics,
  curves)``; the metrics are :func:`priorkit.metrics.classification_metrics` (``acc``, ``nll``, ``ece``).
- :func:`accuracy_on` -- top-1 accuracy of a model on a dataset of ``(x, y[, index])`` items, i.e.
  ``priorkit.metrics.accuracy(priorkit.train.predict(model, data), labels)`` (use it instead of a local
  ``_acc``).
- :func:`mean_curve` -- the mean over seeds of equally long curves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from priorkit.core.errors import PriorkitError
from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.metrics import accuracy, classification_metrics
from priorkit.train import Hook, Recipe, RunState, TrainConfig, Trainer, predict

__all__ = ["accuracy_on", "labels_of", "mean_curve", "train_and_test"]


def labels_of(data: Dataset) -> torch.Tensor:
    """The integer labels of a dataset of ``(x, y[, index])`` items (read directly for in-memory datasets)."""
    if isinstance(data, IndexedTensorDataset):
        return data.y
    if isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise PriorkitError("data must hold (x, y) tensors to be evaluated")
        return data.tensors[1]
    return torch.as_tensor([int(data[i][1]) for i in range(len(data))])


def accuracy_on(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``data``."""
    return accuracy(predict(model, data), labels_of(data))


def train_and_test(
    make_model: Callable[[], nn.Module],
    train: Dataset,
    test: Dataset,
    config: TrainConfig,
    make_hooks: Callable[[nn.Module], Sequence[Hook]] = lambda m: (),
    *,
    curve_every: int = 0,
    recipe: Callable[[nn.Module], Recipe] | None = None,
) -> tuple[nn.Module, dict[str, float], dict[str, Any]]:
    """Seed, build, train through the engine, and return ``(model, test metrics, curves)``.

    The model is built right after seeding with ``config.seed``, so method and baseline start from the same
    initial weights. ``make_hooks(model)`` gives the method's hooks (none for the baseline); ``recipe(model)``
    optionally replaces the one-phase fit. With ``curve_every`` > 0 the test accuracy is recorded every that
    many epochs (and at the last), under ``curves["epoch"]`` / ``curves["test_acc"]``; ``curves["history"]``
    is the engine's history (one record per epoch, one key per named loss term).
    """
    config = dataclasses.replace(config, progress=False)
    seed_everything(config.seed)
    model = make_model()
    test_y = labels_of(test)
    plan = recipe(model) if recipe is not None else None
    last = (plan.epochs if plan is not None else config.epochs) - 1

    def eval_fn(state: RunState) -> dict[str, float]:
        if state.epoch % curve_every == 0 or state.epoch == last:
            return {"test_acc": accuracy(predict(state.model, test), test_y)}
        return {}

    trainer = Trainer(
        model,
        train,
        recipe=plan,
        hooks=list(make_hooks(model)),
        config=config,
        eval_fn=eval_fn if curve_every else None,
    )
    history = trainer.fit()
    metrics = classification_metrics(predict(model, test), test_y)
    curves = {
        "epoch": [h["epoch"] for h in history if "test_acc" in h],
        "test_acc": [h["test_acc"] for h in history if "test_acc" in h],
        "history": history,
    }
    return model, metrics, curves


def mean_curve(curves: list[list[float]]) -> torch.Tensor:
    """Mean over seeds of equally long curves (``[seeds, points]`` -> ``[points]``)."""
    return torch.tensor(curves, dtype=torch.float64).mean(dim=0)
