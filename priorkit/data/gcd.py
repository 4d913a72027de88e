"""Generalized category discovery (GCD) splits, deterministic from a seed (Vaze et al., CVPR 2022 protocol).

The training set has a *labelled* part (a fraction ``prop_labelled`` of the samples of the *old* classes) and an
*unlabelled* part (the other old-class samples and every sample of the *new* classes). Methods train on both and
are scored transductively on the unlabelled part (all / old / new accuracy after one Hungarian match,
:func:`priorkit.metrics.clustering.split_cluster_acc`). Old classes are relabelled ``0..n_old-1`` and new ones
``n_old..C-1``, so a labelled ``y`` indexes the first prototypes directly.

>>> g = gcd_split("digits", old_classes=(0, 1, 2, 3, 4), prop_labelled=0.5, seed=0)
>>> g.num_old, g.num_classes, int(g.labelled.y.max())
(5, 10, 4)
>>> bool(g.unlabelled_old_mask.any()), bool((~g.unlabelled_old_mask).any())
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, check_choice, check_range
from priorkit.data.datasets import IndexedTensorDataset, Splits, load_digits, load_mnist1d

GCD_DATASETS = ("digits", "digits_image", "mnist1d", "mnist1d_channel")


@dataclass
class GCDSplits:
    """Labelled old-class samples, unlabelled old+new samples (true labels kept for scoring), a disjoint test set.

    ``train`` concatenates labelled then unlabelled samples; ``train_labelled_mask`` marks the labelled rows.
    ``*_old_mask`` mark the samples of old classes (labels ``< num_old``).
    """

    labelled: IndexedTensorDataset
    unlabelled: IndexedTensorDataset
    test: IndexedTensorDataset
    num_old: int
    num_classes: int
    class_order: tuple[int, ...]
    input_shape: tuple[int, ...]

    @property
    def num_new(self) -> int:
        return self.num_classes - self.num_old

    @property
    def train(self) -> IndexedTensorDataset:
        return IndexedTensorDataset(
            torch.cat([self.labelled.x, self.unlabelled.x]), torch.cat([self.labelled.y, self.unlabelled.y])
        )

    @property
    def train_labelled_mask(self) -> torch.Tensor:
        return torch.arange(len(self.labelled) + len(self.unlabelled)) < len(self.labelled)

    @property
    def unlabelled_old_mask(self) -> torch.Tensor:
        return self.unlabelled.y < self.num_old

    @property
    def test_old_mask(self) -> torch.Tensor:
        return self.test.y < self.num_old


def _load(name: str, seed: int) -> Splits:
    if name.startswith("digits"):
        return load_digits(image=name == "digits_image", val=0.0, test=0.3, seed=seed)
    return load_mnist1d(val=0.0, seed=seed, channel=name == "mnist1d_channel")


def gcd_split(
    dataset: str = "digits",
    *,
    old_classes: Sequence[int] = (0, 1, 2, 3, 4),
    prop_labelled: float = 0.5,
    seed: int = 0,
) -> GCDSplits:
    """Build the GCD split of ``dataset``: ``prop_labelled`` of each old class's training samples are labelled
    (drawn per class from ``seed``); the rest, and every new-class sample, are unlabelled."""
    check_choice("dataset", dataset, GCD_DATASETS)
    check_range("prop_labelled", prop_labelled, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    old = tuple(int(c) for c in old_classes)
    if len(set(old)) != len(old) or any(not 0 <= c < 10 for c in old) or not 1 <= len(old) <= 9:
        raise PriorkitError(f"old_classes must be 1 to 9 distinct classes in [0, 9], got {tuple(old_classes)}")
    base = _load(dataset, seed)
    order = old + tuple(c for c in range(10) if c not in old)
    lut = torch.empty(10, dtype=torch.long)
    lut[torch.tensor(order)] = torch.arange(10)
    x, y = base.train.x, lut[base.train.y]
    rng = np.random.default_rng(seed + 1000003)
    lab = np.zeros(len(y), dtype=bool)
    for c in range(len(old)):
        idx = np.flatnonzero(y.numpy() == c)
        n_lab = int(round(prop_labelled * len(idx)))
        if n_lab == 0 or n_lab == len(idx):
            raise PriorkitError(
                f"prop_labelled={prop_labelled} leaves class {order[c]} with no labelled or unlabelled samples"
            )
        lab[rng.choice(idx, n_lab, replace=False)] = True
    m = torch.from_numpy(lab)
    return GCDSplits(
        IndexedTensorDataset(x[m], y[m]),
        IndexedTensorDataset(x[~m], y[~m]),
        IndexedTensorDataset(base.test.x, lut[base.test.y]),
        num_old=len(old),
        num_classes=10,
        class_order=order,
        input_shape=base.input_shape,
    )
