"""Few-shot class-incremental learning (FSCIL) sessions, deterministic from a seed.

The protocol of TOPIC/CEC/TEEN (and PyCIL's session loop): a *base session* with many classes and all of
their training data, then ``S`` incremental sessions, each adding ``way`` new classes with only ``shot``
labelled examples per class (N-way K-shot). The backbone is trained on the base session only; after session
``s`` the model is tested on the test images of every class seen so far.

Labels are remapped to the session order: base classes are ``0..B-1`` and session ``s >= 1`` holds classes
``B + (s-1)*way .. B + s*way - 1`` (the layout the official FSCIL code assumes when it slices the classifier).
``class_order[i]`` is the original label of remapped class ``i``.

Use :func:`load_incremental` for ``digits``, ``mnist1d`` or generated Gaussian classes, or
:func:`make_incremental` on your own arrays. :meth:`FSCILData.redraw` draws new shots with another seed while
keeping the base session and the test set (the "20 random shot draws" of a few-shot evaluation).

>>> data = load_incremental("digits", base_classes=6, way=2, shot=5, seed=0)
>>> data.num_sessions, data.num_base, [len(s) for s in data.sessions]
(3, 6, [10, 10])
>>> data.test_upto(1).y.max().item()
7
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, as_tensor, check_choice, check_positive_int
from priorkit.data.datasets import REAL_DATASETS, IndexedTensorDataset, gaussian_mixture, load_digits, load_mnist1d
from priorkit.data.real import load_real

INCREMENTAL_DATASETS = ("digits", "digits_image", "mnist1d", "mnist1d_channel", "gaussian_mixture", *REAL_DATASETS)


@dataclass(frozen=True)
class FSCILData:
    """A base session, the K-shot support sets of the incremental sessions, and the test set.

    ``pool`` holds every training example of the incremental classes (the shots are drawn from it);
    ``sessions[s-1]`` is the support set of session ``s``; ``test`` holds the test examples of all classes.
    """

    base_train: IndexedTensorDataset
    pool: IndexedTensorDataset
    sessions: tuple[IndexedTensorDataset, ...]
    test: IndexedTensorDataset
    num_base: int
    way: int
    shot: int
    class_order: tuple[int, ...]
    input_shape: tuple[int, ...]
    seed: int

    @property
    def num_sessions(self) -> int:
        """Number of sessions, the base session included."""
        return 1 + len(self.sessions)

    @property
    def num_classes(self) -> int:
        return self.num_base + self.way * len(self.sessions)

    def seen_classes(self, session: int) -> int:
        """How many classes have been seen after ``session`` (0 = base session)."""
        self._check_session(session)
        return self.num_base + self.way * session

    def session_classes(self, session: int) -> list[int]:
        """The (remapped) classes introduced in ``session``."""
        self._check_session(session)
        if session == 0:
            return list(range(self.num_base))
        start = self.num_base + self.way * (session - 1)
        return list(range(start, start + self.way))

    def test_upto(self, session: int) -> IndexedTensorDataset:
        """Test examples of every class seen up to and including ``session``."""
        keep = self.test.y < self.seen_classes(session)
        return IndexedTensorDataset(self.test.x[keep], self.test.y[keep])

    def redraw(self, seed: int) -> FSCILData:
        """The same base session and test set with the shots drawn again from ``seed``."""
        sessions = _draw_sessions(self.pool, self.num_base, self.way, self.shot, len(self.sessions), seed)
        return replace(self, sessions=sessions, seed=seed)

    def _check_session(self, session: int) -> None:
        if isinstance(session, bool) or not isinstance(session, int) or not 0 <= session < self.num_sessions:
            raise PriorkitError(f"session must be an integer in [0, {self.num_sessions - 1}], got {session!r}")


def _draw_sessions(
    pool: IndexedTensorDataset, num_base: int, way: int, shot: int, num_incremental: int, seed: int
) -> tuple[IndexedTensorDataset, ...]:
    rng = np.random.default_rng(seed)
    y = pool.y.numpy()
    sessions = []
    for s in range(num_incremental):
        idx: list[int] = []
        for c in range(num_base + s * way, num_base + (s + 1) * way):
            members = np.flatnonzero(y == c)
            idx += np.sort(rng.choice(members, size=shot, replace=False)).tolist()
        t = torch.tensor(idx, dtype=torch.long)
        sessions.append(IndexedTensorDataset(pool.x[t], pool.y[t]))
    return tuple(sessions)


def make_incremental(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    base_classes: int,
    way: int,
    shot: int,
    class_order: list[int] | tuple[int, ...] | None = None,
    seed: int = 0,
) -> FSCILData:
    """FSCIL sessions from arrays: the first ``base_classes`` of ``class_order`` form the base session and the
    rest are split into sessions of ``way`` classes; each session's ``shot`` examples per class are drawn from
    ``seed``. ``class_order`` defaults to the sorted labels; the number of non-base classes must be a multiple
    of ``way``.
    """
    check_positive_int("base_classes", base_classes)
    check_positive_int("way", way)
    check_positive_int("shot", shot)
    x_train, x_test = as_tensor("x_train", x_train), as_tensor("x_test", x_test)
    y_train, y_test = as_tensor("y_train", y_train), as_tensor("y_test", y_test)
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise PriorkitError(f"{name} must be a 1-D integer tensor (or array) of class labels")
    y_train, y_test = y_train.long(), y_test.long()
    for name, x, y in (("x_train", x_train, y_train), ("x_test", x_test, y_test)):
        if len(x) != len(y):
            raise PriorkitError(f"{name} must have one row per label ({len(y)}), got {list(x.shape)}")
    labels = sorted(int(c) for c in torch.unique(y_train))
    order = list(labels) if class_order is None else [int(c) for c in class_order]
    if sorted(order) != labels:
        raise PriorkitError(f"class_order must be a permutation of the training labels {labels}, got {order}")
    n_new = len(order) - base_classes
    if n_new < way or n_new % way:
        raise PriorkitError(
            f"the {len(order)} classes minus base_classes={base_classes} must be a positive multiple of "
            f"way={way}, got {n_new} incremental classes"
        )
    remap = torch.full((max(labels) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(len(order))
    if int(y_test.max()) > max(labels) or bool((remap[y_test] < 0).any()):
        raise PriorkitError("y_test holds a class that y_train does not")
    ytr, yte = remap[y_train], remap[y_test]
    counts = torch.bincount(ytr, minlength=len(order))[base_classes:]
    if int(counts.min()) < shot:
        c = order[base_classes + int(counts.argmin())]
        raise PriorkitError(f"shot={shot} exceeds the {int(counts.min())} training examples of class {c}")
    base = ytr < base_classes
    pool = IndexedTensorDataset(x_train[~base], ytr[~base])
    sessions = _draw_sessions(pool, base_classes, way, shot, n_new // way, seed)
    return FSCILData(
        base_train=IndexedTensorDataset(x_train[base], ytr[base]),
        pool=pool,
        sessions=sessions,
        test=IndexedTensorDataset(x_test, yte),
        num_base=base_classes,
        way=way,
        shot=shot,
        class_order=tuple(order),
        input_shape=tuple(x_train.shape[1:]),
        seed=seed,
    )


def load_incremental(
    dataset: str = "digits",
    *,
    base_classes: int = 6,
    way: int = 2,
    shot: int = 5,
    shuffle_classes: bool = False,
    num_classes: int = 20,
    seed: int = 0,
) -> FSCILData:
    """FSCIL sessions on an offline dataset (train and validation splits form the training pool).

    ``shuffle_classes`` permutes the class order from ``seed`` (else classes keep their label order, so on
    digits with ``base_classes=6, way=2`` the sessions add 6-7 and 8-9). ``num_classes`` is used only by
    ``gaussian_mixture`` (16-d isotropic classes, 60 training examples per class).
    """
    check_choice("dataset", dataset, INCREMENTAL_DATASETS)
    if dataset.startswith("digits"):
        sp = load_digits(image=dataset == "digits_image", seed=seed)
    elif dataset.startswith("mnist1d"):
        sp = load_mnist1d(seed=seed, channel=dataset == "mnist1d_channel")
    elif dataset in REAL_DATASETS:
        sp = load_real(dataset, seed=seed)  # Fashion-MNIST: its official test images are the test set
    else:
        check_positive_int("num_classes", num_classes, 3)
        sp = gaussian_mixture(
            100 * num_classes, num_classes=num_classes, dim=16, separation=3.0, val=0.1, test=0.3, seed=seed
        )
    x = torch.cat([sp.train.x, sp.val.x])
    y = torch.cat([sp.train.y, sp.val.y])
    labels = sorted(int(c) for c in torch.unique(y))
    order = labels
    if shuffle_classes:
        order = [labels[i] for i in np.random.default_rng(seed).permutation(len(labels))]
    return make_incremental(
        x, y, sp.test.x, sp.test.y, base_classes=base_classes, way=way, shot=shot, class_order=order, seed=seed
    )
