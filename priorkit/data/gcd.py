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

A user's own data, as ``(x, y)`` tensors or numpy arrays alike (test part: ``test_data`` or a ``test`` fraction):

>>> import numpy as np
>>> x, y = np.random.default_rng(0).random((90, 5)), np.arange(90) % 3
>>> u = gcd_split((x, y), old_classes=(2,), prop_labelled=0.5, seed=0)
>>> u.num_old, u.num_classes, u.class_order, len(u.labelled), len(u.test)
(1, 3, (2, 0, 1), 10, 27)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, check_range
from priorkit.data.datasets import REAL_DATASETS, IndexedTensorDataset, Splits
from priorkit.data.ood import UserData, resolve_splits

GCD_DATASETS = ("digits", "digits_image", "mnist1d", "mnist1d_channel", *REAL_DATASETS)


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


def gcd_split(
    dataset: str | UserData | Splits = "digits",
    *,
    old_classes: Sequence[int] = (0, 1, 2, 3, 4),
    prop_labelled: float = 0.5,
    seed: int = 0,
    test_data: UserData | None = None,
    test: float | None = None,
    num_classes: int | None = None,
) -> GCDSplits:
    """Build the GCD split of ``dataset``: ``prop_labelled`` of each old class's training samples are labelled
    (drawn per class from ``seed``); the rest, and every new-class sample, are unlabelled.

    ``dataset`` is a name of :data:`GCD_DATASETS` or the user's own data: an ``(x, y)`` pair of tensors or numpy
    arrays (alike), an :class:`IndexedTensorDataset` or a :class:`Splits`. For the user's data the test part is
    ``test_data`` or a stratified ``test`` fraction (default 0.3) of ``dataset``, and the classes are
    ``0..num_classes-1`` (default: the largest label plus one; see :func:`priorkit.data.ood.user_splits`)."""
    check_range("prop_labelled", prop_labelled, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    base, _ = resolve_splits(dataset, GCD_DATASETS, test_data=test_data, test=test, num_classes=num_classes, seed=seed)
    n_cls = base.num_classes
    if n_cls < 2:
        raise PriorkitError(f"dataset has {n_cls} class; a GCD split needs at least 2 (1 old + 1 new)")
    old = tuple(int(c) for c in old_classes)
    if len(set(old)) != len(old) or any(not 0 <= c < n_cls for c in old) or not 1 <= len(old) <= n_cls - 1:
        raise PriorkitError(
            f"old_classes must be 1 to {n_cls - 1} distinct classes in [0, {n_cls - 1}], got {tuple(old_classes)}"
        )
    order = old + tuple(c for c in range(n_cls) if c not in old)
    counts = torch.bincount(base.train.y, minlength=n_cls)
    few = [c for c in old if int(counts[c]) < 2]
    if few:
        raise PriorkitError(
            f"old_classes {few} have fewer than 2 training samples in dataset (need labelled and unlabelled ones)"
        )
    if int(counts[list(order[len(old) :])].sum()) == 0:
        raise PriorkitError(f"dataset has no training samples of the new classes {order[len(old) :]}")
    lut = torch.empty(n_cls, dtype=torch.long)
    lut[torch.tensor(order)] = torch.arange(n_cls)
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
        num_classes=n_cls,
        class_order=order,
        input_shape=base.input_shape,
    )
