"""Shared set-up of the adapter experiments (card adapters-lowrank.md, "Small-scale check on CPU").

The cards' small checks start from a *pretrained* network and adapt it to a shifted task:

- :func:`pretrained_digits_mlp` -- MLP 64-256-256-10 trained on scikit-learn digits (train split, all ten
  classes; the sara, sorsa and glad checks), with the target-domain shifts :func:`invert` (the card's
  ``x -> 16 - x``; pixels here are in [0, 1], so ``1 - x``) and :func:`add_noise` (sigma on the 0-16 scale).
- :func:`pretrained_mnist1d_mlp` -- MLP 40-256-256-10 trained on a *source* mnist1d variant (another data seed,
  templates rolled by ``shift`` samples; the sora, said and pela checks); the target is standard mnist1d.
- :func:`few_shot` -- a seeded stratified subset (``shots`` per class).

Pretraining goes through the engine (SGD with momentum, cosine schedule) and is cached per process by its
arguments, so the method, its baselines and its ablations of one seed adapt the same network (a deep copy each).
"""

from __future__ import annotations

import copy
import functools
import os

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, check_positive_int
from priorkit.data.datasets import IndexedTensorDataset, Splits, cache_dir, load_digits, split_arrays
from priorkit.metrics import accuracy
from priorkit.models import MLP
from priorkit.train import TrainConfig, fit, predict

__all__ = ["add_noise", "few_shot", "invert", "mnist1d_source", "pretrained_digits_mlp", "pretrained_mnist1d_mlp"]


def invert(data: IndexedTensorDataset) -> IndexedTensorDataset:
    """Intensity inversion, the card's ``x -> 16 - x`` on the 0-16 scale (``1 - x`` on priorkit's [0, 1])."""
    return IndexedTensorDataset(1.0 - data.x, data.y)


def add_noise(data: IndexedTensorDataset, sigma16: float, seed: int) -> IndexedTensorDataset:
    """Additive Gaussian noise of standard deviation ``sigma16`` on the 0-16 scale (fixed draw from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    return IndexedTensorDataset(data.x + (sigma16 / 16.0) * torch.randn(data.x.shape, generator=g), data.y)


def few_shot(data: IndexedTensorDataset, shots: int, seed: int) -> IndexedTensorDataset:
    """``shots`` examples of every class, drawn without replacement from ``seed`` (sorted by index)."""
    check_positive_int("shots", shots)
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(data.y).tolist():
        idx = torch.nonzero(data.y == c).squeeze(1)
        if len(idx) < shots:
            raise PriorkitError(f"shots={shots} but class {c} has only {len(idx)} examples")
        keep.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    keep_t = torch.cat(keep).sort().values
    return IndexedTensorDataset(data.x[keep_t], data.y[keep_t])


def _pretrain(model: MLP, train: IndexedTensorDataset, epochs: int, seed: int) -> MLP:
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="cosine",
        seed=seed,
        progress=False,
    )
    fit(model, train, config=cfg)
    return model.eval()


@functools.lru_cache(maxsize=8)
def _digits_mlp(seed: int, epochs: int) -> tuple[MLP, Splits, float]:
    sp = load_digits(seed=seed)
    torch.manual_seed(seed)
    model = _pretrain(MLP(64, (256, 256), 10), sp.train, epochs, seed)
    return model, sp, accuracy(predict(model, sp.test), sp.test.y)


def pretrained_digits_mlp(seed: int, epochs: int = 40) -> tuple[MLP, Splits, float]:
    """``(model, splits, test accuracy)``: a fresh copy of MLP 64-256-256-10 pretrained on digits' train split
    (split and weights from ``seed``)."""
    model, sp, acc = _digits_mlp(seed, epochs)
    return copy.deepcopy(model), sp, acc


def mnist1d_source(shift: int = 6, data_seed: int = 7) -> Splits:
    """The source task: mnist1d generated with ``data_seed`` and every class template rolled by ``shift``
    samples (cached as ``.npz``); 4,000 train / 1,000 test, 10% of train held out."""
    path = cache_dir() / f"mnist1d_source_shift{shift}_seed{data_seed}.npz"
    if not path.is_file():
        from mnist1d.data import get_dataset_args, get_templates, make_dataset

        args = get_dataset_args()
        args.seed = data_seed
        tpl = get_templates()
        tpl = {**tpl, "x": np.roll(tpl["x"], shift, axis=1)}
        d = make_dataset(args, template=tpl)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        os.replace(tmp, path)
    d = np.load(path)
    x, y = torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"], dtype=torch.long)
    xt, yt = torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"], dtype=torch.long)
    tv = split_arrays(x, y, val=0.1, test=0.0, seed=0)
    return Splits(tv.train, tv.val, IndexedTensorDataset(xt, yt), num_classes=10, input_shape=(40,))


@functools.lru_cache(maxsize=8)
def _mnist1d_mlp(seed: int, epochs: int) -> tuple[MLP, float]:
    src = mnist1d_source()
    torch.manual_seed(seed)
    model = _pretrain(MLP(40, (256, 256), 10), src.train, epochs, seed)
    return model, accuracy(predict(model, src.test), src.test.y)


def pretrained_mnist1d_mlp(seed: int, epochs: int = 30) -> tuple[MLP, float]:
    """``(model, source test accuracy)``: a fresh copy of MLP 40-256-256-10 pretrained on :func:`mnist1d_source`
    (weights from ``seed``). The target task is :func:`priorkit.data.load_mnist1d`."""
    model, acc = _mnist1d_mlp(seed, epochs)
    return copy.deepcopy(model), acc
