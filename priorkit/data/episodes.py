"""N-way K-shot episodes with query sets, and base/novel class splits, deterministic from a seed.

The standard few-shot protocol (Vinyals et al., 2016; easyfsl's ``TaskSampler``): a backbone is trained on
the *base* classes; each test *episode* draws ``n_way`` of the *novel* classes, ``n_shot`` labelled support
examples and ``n_query`` unlabelled query examples per class, all distinct. Episode labels are ``0..n_way-1``
in the order the classes were drawn; supports and queries are class-major (class 0's items first).

The sampler works on labels only, so the same episodes index raw inputs or a precomputed feature bank:
``episode.support(x)`` / ``episode.query(x)`` take rows of any tensor aligned with the labels. Episode ``i`` of
a sampler depends only on ``(seed, i)``: re-iterating, or reading one episode alone, gives the same draw.

A class with fewer than ``n_shot + n_query`` items is refused when the sampler is built, naming the class
(easyfsl issue #148: "Sample larger than population" was unclear); ``separate_pools`` draws supports and
queries from two different labelled sets (e.g. supports from a train split, queries from a test split).

>>> fs = load_fewshot("digits", base_classes=5, seed=0)
>>> fs.novel_classes, fs.base_train.num_classes
((5, 6, 7, 8, 9), 5)
>>> sampler = EpisodeSampler(fs.novel.y, n_way=5, n_shot=1, n_query=15, n_episodes=3, seed=0)
>>> ep = sampler[0]
>>> ep.support(fs.novel.x).shape, ep.query_y.shape
(torch.Size([5, 64]), torch.Size([75]))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, as_tensor, check_choice, check_positive_int, check_range
from priorkit.data.datasets import REAL_DATASETS, IndexedTensorDataset, gaussian_mixture, load_digits, load_mnist1d
from priorkit.data.real import load_real

FEWSHOT_DATASETS = ("digits", "digits_image", "mnist1d", "mnist1d_channel", "gaussian_mixture", *REAL_DATASETS)


def _labels_of(labels: torch.Tensor | IndexedTensorDataset | Sequence[int], name: str = "labels") -> torch.Tensor:
    if isinstance(labels, IndexedTensorDataset):
        labels = labels.y
    elif hasattr(labels, "get_labels"):  # easyfsl-style datasets
        labels = torch.as_tensor(list(labels.get_labels()))
    elif isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    elif not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(list(labels))
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise PriorkitError(
            f"{name} must be a 1-D integer tensor of class labels, got {labels.dtype} {list(labels.shape)}"
        )
    return labels.long()


@dataclass(frozen=True)
class Episode:
    """Indices and episode labels of one N-way K-shot task.

    ``support_idx``/``query_idx`` index the labelled set(s) the sampler was built on; ``support_y``/``query_y``
    are the episode labels ``0..n_way-1``; ``classes[j]`` is the original label of episode class ``j``.
    """

    support_idx: torch.Tensor
    support_y: torch.Tensor
    query_idx: torch.Tensor
    query_y: torch.Tensor
    classes: tuple[int, ...]

    @property
    def n_way(self) -> int:
        return len(self.classes)

    def support(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` (inputs or features aligned with the support pool) for the supports."""
        return x[self.support_idx]

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` (aligned with the query pool) for the queries."""
        return x[self.query_idx]


class EpisodeSampler:
    """Sample ``n_episodes`` N-way K-shot episodes with ``n_query`` queries per class from ``labels``.

    ``labels`` is a 1-D label tensor, an :class:`IndexedTensorDataset`, or anything with ``get_labels()``.
    With ``query_labels`` given, queries come from that second pool (its indices), supports from the first;
    otherwise supports and queries are disjoint draws from the same pool. Only classes present in both pools
    with enough items are eligible; ``classes`` restricts the choice further.
    """

    def __init__(
        self,
        labels: torch.Tensor | IndexedTensorDataset | Sequence[int],
        *,
        n_way: int = 5,
        n_shot: int = 1,
        n_query: int = 15,
        n_episodes: int = 600,
        seed: int = 0,
        query_labels: torch.Tensor | IndexedTensorDataset | Sequence[int] | None = None,
        classes: Sequence[int] | None = None,
    ) -> None:
        check_positive_int("n_way", n_way, 2)
        check_positive_int("n_shot", n_shot)
        check_positive_int("n_query", n_query)
        check_positive_int("n_episodes", n_episodes)
        self.n_way, self.n_shot, self.n_query, self.n_episodes, self.seed = n_way, n_shot, n_query, n_episodes, seed
        self.labels = _labels_of(labels)
        self.separate = query_labels is not None
        self.query_labels = _labels_of(query_labels, "query_labels") if self.separate else self.labels
        present = sorted(int(c) for c in torch.unique(self.labels))
        if classes is not None:
            classes = sorted(int(c) for c in classes)
            missing = [c for c in classes if c not in present]
            if missing:
                raise PriorkitError(f"classes {missing} have no items; labels hold {present}")
            present = classes
        need_s = n_shot if self.separate else n_shot + n_query
        self._members: dict[int, np.ndarray] = {}
        self._qmembers: dict[int, np.ndarray] = {}
        for c in present:
            m = np.flatnonzero(self.labels.numpy() == c)
            if len(m) < need_s:
                what = "n_shot" if self.separate else "n_shot + n_query"
                raise PriorkitError(f"class {c} has {len(m)} items, fewer than {what} = {need_s}")
            self._members[c] = m
            if self.separate:
                q = np.flatnonzero(self.query_labels.numpy() == c)
                if len(q) < n_query:
                    raise PriorkitError(f"class {c} has {len(q)} query-pool items, fewer than n_query = {n_query}")
                self._qmembers[c] = q
        self.classes = tuple(present)
        if len(self.classes) < n_way:
            raise PriorkitError(f"n_way={n_way} exceeds the {len(self.classes)} eligible classes {list(self.classes)}")

    def __len__(self) -> int:
        return self.n_episodes

    def __getitem__(self, i: int) -> Episode:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_episodes:
            raise PriorkitError(f"episode index must be an integer in [0, {self.n_episodes - 1}], got {i!r}")
        rng = np.random.default_rng([self.seed, i])
        chosen = [self.classes[j] for j in rng.choice(len(self.classes), size=self.n_way, replace=False)]
        s_idx, q_idx = [], []
        for c in chosen:
            if self.separate:
                s_idx.append(rng.choice(self._members[c], size=self.n_shot, replace=False))
                q_idx.append(rng.choice(self._qmembers[c], size=self.n_query, replace=False))
            else:
                pick = rng.choice(self._members[c], size=self.n_shot + self.n_query, replace=False)
                s_idx.append(pick[: self.n_shot])
                q_idx.append(pick[self.n_shot :])
        ways = torch.arange(self.n_way)
        return Episode(
            support_idx=torch.as_tensor(np.concatenate(s_idx), dtype=torch.long),
            support_y=ways.repeat_interleave(self.n_shot),
            query_idx=torch.as_tensor(np.concatenate(q_idx), dtype=torch.long),
            query_y=ways.repeat_interleave(self.n_query),
            classes=tuple(chosen),
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.n_episodes):
            yield self[i]


def iter_episodes(
    x: torch.Tensor, y: torch.Tensor, **sampler_kwargs
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(support_x, support_y, query_x, query_y)`` for each episode drawn from ``(x, y)``.

    ``x`` may be raw inputs or a feature bank; ``sampler_kwargs`` go to :class:`EpisodeSampler`.
    """
    x = as_tensor("x", x)
    if len(x) != len(y):
        raise PriorkitError(f"x must be a tensor with one row per label ({len(y)}), got {getattr(x, 'shape', x)}")
    for ep in EpisodeSampler(y, **sampler_kwargs):
        yield ep.support(x), ep.support_y, ep.query(x), ep.query_y


@dataclass(frozen=True)
class FewShotSplit:
    """Base classes (training and held-out images) and novel classes (all their images).

    Labels are remapped: base classes to ``0..B-1`` (order of ``base_classes``), novel classes to
    ``0..V-1`` (order of ``novel_classes``); both tuples hold the original labels.
    """

    base_train: IndexedTensorDataset
    base_val: IndexedTensorDataset
    novel: IndexedTensorDataset
    base_classes: tuple[int, ...]
    novel_classes: tuple[int, ...]
    input_shape: tuple[int, ...]


def make_fewshot(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    base_classes: int | Sequence[int],
    val: float = 0.2,
    seed: int = 0,
) -> FewShotSplit:
    """Split labelled arrays into base classes (train / held-out ``val`` fraction, stratified) and novel classes.

    ``base_classes`` is a count (the first that many sorted labels) or an explicit list of labels.
    """
    numpy_x = not isinstance(x, torch.Tensor)
    x, y = as_tensor("x", x), _labels_of(as_tensor("y", y) if not isinstance(y, torch.Tensor) else y, "y")
    if numpy_x and x.dtype == torch.float64:
        x = x.float()  # numpy's default float64 -> torch's float32
    if len(x) != len(y):
        raise PriorkitError(f"x must be a tensor with one row per label ({len(y)})")
    check_range("val", val, 0.0, 1.0, high_inclusive=False)
    labels = sorted(int(c) for c in torch.unique(y))
    if isinstance(base_classes, int) and not isinstance(base_classes, bool):
        if not 1 <= base_classes < len(labels):
            raise PriorkitError(f"base_classes must be in [1, {len(labels) - 1}], got {base_classes}")
        base = labels[:base_classes]
    else:
        base = [int(c) for c in base_classes]
        bad = [c for c in base if c not in labels]
        if bad or not base or len(set(base)) != len(base) or len(base) >= len(labels):
            raise PriorkitError(f"base_classes must be distinct labels from {labels}, leaving some novel; got {base}")
    novel = [c for c in labels if c not in base]
    rng = np.random.default_rng(seed)
    y_np = y.numpy()
    tr, va = [], []
    for c in base:
        m = rng.permutation(np.flatnonzero(y_np == c))
        n_val = int(round(val * len(m)))
        va += m[:n_val].tolist()
        tr += m[n_val:].tolist()
    remap_b = {c: i for i, c in enumerate(base)}
    remap_n = {c: i for i, c in enumerate(novel)}

    def take(idx: list[int], remap: dict[int, int]) -> IndexedTensorDataset:
        t = torch.as_tensor(sorted(idx), dtype=torch.long)
        return IndexedTensorDataset(x[t], torch.as_tensor([remap[int(v)] for v in y[t]], dtype=torch.long))

    nov_idx = np.flatnonzero(np.isin(y_np, novel)).tolist()
    return FewShotSplit(
        base_train=take(tr, remap_b),
        base_val=take(va, remap_b),
        novel=take(nov_idx, remap_n),
        base_classes=tuple(base),
        novel_classes=tuple(novel),
        input_shape=tuple(x.shape[1:]),
    )


def load_fewshot(
    dataset: str = "digits",
    *,
    base_classes: int | Sequence[int] = 5,
    val: float = 0.2,
    num_classes: int = 20,
    seed: int = 0,
) -> FewShotSplit:
    """A base/novel split of an offline dataset, pooling its train, validation and test splits first.

    On digits with ``base_classes=5``: base 0-4 (about 720 training / 180 held-out images), novel 5-9 (about
    900 images). ``num_classes`` is used only by ``gaussian_mixture`` (16-d classes, 100 items each). On
    ``fashion_mnist`` / ``mnist`` (:mod:`priorkit.data.real`) all 70,000 / 5,000 images are pooled the same way.
    """
    check_choice("dataset", dataset, FEWSHOT_DATASETS)
    if dataset.startswith("digits"):
        sp = load_digits(image=dataset == "digits_image", seed=0)
    elif dataset.startswith("mnist1d"):
        sp = load_mnist1d(seed=0, channel=dataset == "mnist1d_channel")
    elif dataset in REAL_DATASETS:
        sp = load_real(dataset, seed=0)
    else:
        check_positive_int("num_classes", num_classes, 3)
        sp = gaussian_mixture(100 * num_classes, num_classes=num_classes, dim=16, separation=3.0, seed=seed)
    x = torch.cat([sp.train.x, sp.val.x, sp.test.x])
    y = torch.cat([sp.train.y, sp.val.y, sp.test.y])
    return make_fewshot(x, y, base_classes=base_classes, val=val, seed=seed)
