"""Bags of instances for multiple-instance learning (MIL), built from digits, mnist1d or Gaussian mixtures.

A bag is positive iff it holds at least one instance of a positive class (the standard MIL assumption).
Instance labels are kept for evaluation only (instance AUC); methods see the bag labels. Bags are stored
flat: the instances of bag ``b`` are rows ``offsets[b]:offsets[b + 1]``, so instance-level methods iterate
over ``x`` with a global instance index and bag-level methods slice by ``offsets``.

Bag sizes (``bag_size``) and the number of positives per positive bag (``positives_per_bag`` or the witness
rate ``witness_rate``) are an integer or an inclusive ``(low, high)`` range drawn per bag. Everything is
deterministic from ``seed``. When a pool of source instances is smaller than what the bags need, instances
are reused: the pool is walked in a fresh permutation each time it is exhausted, so every instance is used
about equally often (``reuse=False`` refuses instead).

Example::

    data = mil_digits(num_bags=(100, 100), bag_size=20, positives_per_bag=(2, 4), seed=0)
    train = data.train
    train.x.shape, train.num_bags, train.bag_y.float().mean()   # ([2000, 64], 100, 0.5)

A user's own data, as ``(x, y)`` tensors or numpy arrays alike: :func:`make_bags` for one set of bags, or
:func:`mil_split` for disjoint train/test bags (test pool: ``test_data`` or a stratified ``test`` fraction)::

    data = mil_split((x, y), positive_classes=(3,), num_bags=(50, 50), bag_size=10, positives_per_bag=(1, 2))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range
from priorkit.data.datasets import IndexedTensorDataset, Splits, gaussian_mixture, load_digits, load_mnist1d
from priorkit.data.ood import UserData, check_xy, user_splits

MIL_DATASETS = ("digits", "digits_image", "mnist1d", "mnist1d_channel")

IntRange = int | tuple[int, int]
FloatRange = float | tuple[float, float]


@dataclass
class MILBags:
    """Instances ``x`` grouped into bags.

    ``instance_y``: 0/1 true instance label (evaluation only); ``source_y``: the original class;
    ``bag_index``: the bag of each instance; ``offsets``: ``[num_bags + 1]`` bag boundaries;
    ``bag_y``: 0/1 bag label (1 iff the bag holds a positive instance).
    """

    x: torch.Tensor
    instance_y: torch.Tensor
    source_y: torch.Tensor
    bag_index: torch.Tensor
    offsets: torch.Tensor
    bag_y: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.x)
        for name in ("instance_y", "source_y", "bag_index"):
            if getattr(self, name).shape != (n,):
                raise PriorkitError(
                    f"{name} must have shape [{n}] (one per instance), got {list(getattr(self, name).shape)}"
                )
        if self.offsets.dim() != 1 or len(self.offsets) != len(self.bag_y) + 1:
            raise PriorkitError(f"offsets must have shape [num_bags + 1] = [{len(self.bag_y) + 1}]")
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != n or bool((self.offsets.diff() <= 0).any()):
            raise PriorkitError("offsets must start at 0, end at the number of instances and grow (no empty bag)")
        derived = torch.zeros(len(self.bag_y), dtype=torch.long).scatter_reduce(
            0, self.bag_index, self.instance_y.long(), "amax"
        )
        if not torch.equal(derived, self.bag_y.long()):
            raise PriorkitError("bag_y must be 1 exactly for the bags that hold a positive instance")

    @property
    def num_bags(self) -> int:
        return len(self.bag_y)

    @property
    def bag_sizes(self) -> torch.Tensor:
        return self.offsets.diff()

    @property
    def instance_bag_y(self) -> torch.Tensor:
        """The bag label copied to each of its instances (what an instance-level MIL learner may see)."""
        return self.bag_y[self.bag_index]

    def bag(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Instances and instance labels of bag ``b``."""
        if not 0 <= b < self.num_bags:
            raise PriorkitError(f"bag must be in [0, {self.num_bags - 1}], got {b}")
        s, e = int(self.offsets[b]), int(self.offsets[b + 1])
        return self.x[s:e], self.instance_y[s:e]

    def bags(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(self.num_bags):
            yield self.bag(b)

    def instance_dataset(self) -> IndexedTensorDataset:
        """Items ``(x_i, bag label of i, i)``: the instance view with the only labels MIL allows."""
        return IndexedTensorDataset(self.x, self.instance_bag_y.long(), clean_y=self.instance_y.long())

    def witness_rate(self) -> torch.Tensor:
        """Fraction of positive instances in each bag."""
        pos = torch.zeros(self.num_bags).index_add_(0, self.bag_index, self.instance_y.float())
        return pos / self.bag_sizes.float()


@dataclass
class MILSplits:
    train: MILBags
    test: MILBags
    input_shape: tuple[int, ...]


def _draw(rng: np.random.Generator, value: IntRange | FloatRange, name: str, integer: bool) -> float:
    if isinstance(value, tuple | list):
        if len(value) != 2 or value[0] > value[1]:
            raise PriorkitError(f"{name} must be a number or a (low, high) pair with low <= high, got {value!r}")
        lo, hi = value
        return int(rng.integers(lo, hi + 1)) if integer else float(rng.uniform(lo, hi))
    return value


def _check_range_arg(name: str, value: IntRange | FloatRange, integer: bool, low: float, high: float | None) -> None:
    vals = list(value) if isinstance(value, tuple | list) else [value]
    for v in vals:
        if integer:
            check_positive_int(name, v, int(low))
        else:
            check_range(name, v, low, high)


class _Pool:
    """Walks a pool of source indices in fresh permutations (reuse) or refuses when it runs out."""

    def __init__(self, idx: np.ndarray, rng: np.random.Generator, reuse: bool, name: str) -> None:
        if len(idx) == 0:
            raise PriorkitError(f"no source instances of the {name} classes")
        self.idx, self.rng, self.reuse, self.name = idx, rng, reuse, name
        self.order, self.pos, self.rounds = rng.permutation(idx), 0, 0

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.pos == len(self.order):
                if not self.reuse:
                    raise PriorkitError(
                        f"not enough {self.name} instances ({len(self.idx)}) for these bags; lower num_bags or "
                        "bag_size, or pass reuse=True"
                    )
                self.order, self.pos = self.rng.permutation(self.idx), 0
            step = min(k, len(self.order) - self.pos)
            out.append(self.order[self.pos : self.pos + step])
            self.pos, k = self.pos + step, k - step
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def make_bags(
    x: torch.Tensor | Any,
    y: torch.Tensor | Any,
    *,
    positive_classes: Sequence[int],
    num_bags: int,
    bag_size: IntRange = 20,
    positives_per_bag: IntRange | None = (2, 4),
    witness_rate: FloatRange | None = None,
    pos_bag_ratio: float = 0.5,
    reuse: bool = True,
    seed: int = 0,
) -> MILBags:
    """Group the samples ``(x, y)`` into ``num_bags`` bags; positive bags hold positive-class instances.

    The first ``round(pos_bag_ratio * num_bags)`` bags are positive (the order of bags is then shuffled).
    A positive bag's positives count is ``positives_per_bag`` or ``round(witness_rate * size)`` (at least
    1, at most the bag size); give exactly one of the two.

    ``x`` and ``y`` are tensors or numpy arrays alike (features become float32, labels int64); NaN features,
    non-integer or negative labels and a length mismatch are refused (:func:`priorkit.data.ood.check_xy`).
    """
    x, y = check_xy(x, y)
    check_positive_int("num_bags", num_bags)
    check_range("pos_bag_ratio", pos_bag_ratio, 0.0, 1.0)
    _check_range_arg("bag_size", bag_size, True, 1, None)
    if (positives_per_bag is None) == (witness_rate is None):
        raise PriorkitError("give exactly one of positives_per_bag and witness_rate")
    if positives_per_bag is not None:
        _check_range_arg("positives_per_bag", positives_per_bag, True, 1, None)
    else:
        _check_range_arg("witness_rate", witness_rate, False, 0.0, 1.0)  # type: ignore[arg-type]
    pos_classes = sorted({int(c) for c in positive_classes})
    if not pos_classes:
        raise PriorkitError("positive_classes must name at least one class")
    y_np = y.numpy()
    present = set(np.unique(y_np).tolist())
    missing = [c for c in pos_classes if c not in present]
    if missing:
        raise PriorkitError(f"positive_classes {missing} do not occur in y; classes present: {sorted(present)}")
    is_pos = np.isin(y_np, pos_classes)
    if is_pos.all():
        raise PriorkitError(
            f"positive_classes {pos_classes} cover every class in y ({sorted(present)}); negatives are needed"
        )
    rng = np.random.default_rng(seed)
    pos_pool = _Pool(np.flatnonzero(is_pos), rng, reuse, "positive")
    neg_pool = _Pool(np.flatnonzero(~is_pos), rng, reuse, "negative")
    n_pos_bags = int(round(pos_bag_ratio * num_bags))
    labels = np.r_[np.ones(n_pos_bags, dtype=np.int64), np.zeros(num_bags - n_pos_bags, dtype=np.int64)]
    labels = labels[rng.permutation(num_bags)]
    rows, sizes = [], []
    for lab in labels:
        size = int(_draw(rng, bag_size, "bag_size", True))
        n_p = 0
        if lab:
            if positives_per_bag is not None:
                n_p = int(_draw(rng, positives_per_bag, "positives_per_bag", True))
            else:
                n_p = int(round(_draw(rng, witness_rate, "witness_rate", False) * size))  # type: ignore[arg-type]
            n_p = min(max(n_p, 1), size)
        members = np.r_[pos_pool.take(n_p), neg_pool.take(size - n_p)]
        rows.append(members[rng.permutation(size)])
        sizes.append(size)
    src = torch.as_tensor(np.concatenate(rows), dtype=torch.long)
    sizes_t = torch.as_tensor(sizes, dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes_t.cumsum(0)])
    return MILBags(
        x=x[src],
        instance_y=torch.as_tensor(is_pos[src.numpy()], dtype=torch.long),
        source_y=y[src].long(),
        bag_index=torch.repeat_interleave(torch.arange(num_bags), sizes_t),
        offsets=offsets,
        bag_y=torch.as_tensor(labels, dtype=torch.long),
    )


def _split(train_x, train_y, test_x, test_y, num_bags, seed, **kw) -> MILSplits:  # noqa: ANN001
    if isinstance(num_bags, int):
        num_bags = (num_bags, num_bags)
    tr = make_bags(train_x, train_y, num_bags=num_bags[0], seed=seed, **kw)
    te = make_bags(test_x, test_y, num_bags=num_bags[1], seed=seed + 7919, **kw)
    return MILSplits(tr, te, input_shape=tuple(train_x.shape[1:]))


def mil_digits(
    *,
    positive_classes: Sequence[int] = (9,),
    num_bags: int | tuple[int, int] = (100, 100),
    bag_size: IntRange = 20,
    positives_per_bag: IntRange | None = (2, 4),
    witness_rate: FloatRange | None = None,
    pos_bag_ratio: float = 0.5,
    test: float = 0.5,
    image: bool = False,
    reuse: bool = True,
    seed: int = 0,
) -> MILSplits:
    """digits as MIL (the card's setup: digit 9 positive, bags of 20 with 2-4 positives, 100 + 100 bags).

    The digits are first split into disjoint train/test pools (stratified, ``test`` fraction) so that no
    test-bag instance occurs in a training bag.
    """
    d = load_digits(image=image, val=0.0, test=test, seed=seed)
    return _split(
        d.train.x, d.train.y, d.test.x, d.test.y, num_bags, seed,
        positive_classes=positive_classes, bag_size=bag_size, positives_per_bag=positives_per_bag,
        witness_rate=witness_rate, pos_bag_ratio=pos_bag_ratio, reuse=reuse,
    )  # fmt: skip


def mil_mnist1d(
    *,
    positive_classes: Sequence[int] = (9,),
    num_bags: int | tuple[int, int] = (100, 100),
    bag_size: IntRange = 20,
    positives_per_bag: IntRange | None = (2, 4),
    witness_rate: FloatRange | None = None,
    pos_bag_ratio: float = 0.5,
    channel: bool = False,
    reuse: bool = True,
    seed: int = 0,
) -> MILSplits:
    """mnist1d as MIL: training bags from its 4,000 training signals, test bags from its 1,000 test signals."""
    d = load_mnist1d(val=0.0, seed=seed, channel=channel)
    return _split(
        d.train.x, d.train.y, d.test.x, d.test.y, num_bags, seed,
        positive_classes=positive_classes, bag_size=bag_size, positives_per_bag=positives_per_bag,
        witness_rate=witness_rate, pos_bag_ratio=pos_bag_ratio, reuse=reuse,
    )  # fmt: skip


def mil_gaussian(
    *,
    n: int = 4000,
    num_classes: int = 4,
    dim: int = 8,
    separation: float = 3.0,
    positive_classes: Sequence[int] = (0,),
    num_bags: int | tuple[int, int] = (100, 100),
    bag_size: IntRange = 20,
    positives_per_bag: IntRange | None = (2, 4),
    witness_rate: FloatRange | None = None,
    pos_bag_ratio: float = 0.5,
    reuse: bool = True,
    seed: int = 0,
) -> MILSplits:
    """A generated Gaussian mixture as MIL (class ``positive_classes`` positive), deterministic from ``seed``."""
    d = gaussian_mixture(n, num_classes=num_classes, dim=dim, separation=separation, val=0.0, test=0.5, seed=seed)
    return _split(
        d.train.x, d.train.y, d.test.x, d.test.y, num_bags, seed,
        positive_classes=positive_classes, bag_size=bag_size, positives_per_bag=positives_per_bag,
        witness_rate=witness_rate, pos_bag_ratio=pos_bag_ratio, reuse=reuse,
    )  # fmt: skip


def mil_split(
    dataset: str | UserData | Splits = "digits",
    *,
    positive_classes: Sequence[int] = (9,),
    num_bags: int | tuple[int, int] = (100, 100),
    bag_size: IntRange = 20,
    positives_per_bag: IntRange | None = (2, 4),
    witness_rate: FloatRange | None = None,
    pos_bag_ratio: float = 0.5,
    test_data: UserData | None = None,
    test: float | None = None,
    reuse: bool = True,
    seed: int = 0,
) -> MILSplits:
    """Train/test MIL bags from a built-in name of :data:`MIL_DATASETS` (as :func:`mil_digits` /
    :func:`mil_mnist1d`) or from the user's own data: an ``(x, y)`` pair of tensors or numpy arrays (alike), an
    :class:`IndexedTensorDataset` or a :class:`Splits`. The test pool is ``test_data`` or a stratified ``test``
    fraction (default 0.5) of ``dataset``, disjoint from the training pool; the bags follow :func:`make_bags`."""
    kw = dict(
        positive_classes=positive_classes, num_bags=num_bags, bag_size=bag_size, positives_per_bag=positives_per_bag,
        witness_rate=witness_rate, pos_bag_ratio=pos_bag_ratio, reuse=reuse, seed=seed,
    )  # fmt: skip
    if isinstance(dataset, str):
        check_choice("dataset", dataset, MIL_DATASETS)
        if test_data is not None:
            raise PriorkitError(f"test_data is only for a user's own data, not the built-in dataset {dataset!r}")
        if dataset.startswith("digits"):
            return mil_digits(image=dataset == "digits_image", test=0.5 if test is None else test, **kw)
        if test is not None:
            raise PriorkitError(f"test is only for a user's own data or digits; {dataset!r} has a fixed test split")
        return mil_mnist1d(channel=dataset == "mnist1d_channel", **kw)
    s = user_splits(dataset, test_data=test_data, test=0.5 if test is None else test, seed=seed)
    nb = kw.pop("num_bags")
    return _split(s.train.x, s.train.y, s.test.x, s.test.y, nb, kw.pop("seed"), **kw)
