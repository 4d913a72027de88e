"""Offline datasets. Every item is ``(x, y, index)``: per-sample methods (PS-KD, ELR, ...) need the index.

Nothing here downloads: digits come with scikit-learn, mnist1d is generated locally by the ``mnist1d``
package from its templates (and cached), Gaussian mixtures are sampled from a seed. The real image sets
(Fashion-MNIST, MNIST-5k) are read by :mod:`priorkit.data.real`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range


class IndexedTensorDataset(Dataset):
    """Inputs ``x`` and integer labels ``y`` in memory; item ``i`` is ``(x[i], y[i], i)``.

    ``x`` and ``y`` may be torch tensors or NumPy arrays (integer labels of any integer dtype are stored as
    int64). ``clean_y`` keeps the labels before any noise was injected (for memorization analysis).
    """

    def __init__(self, x: Any, y: Any, clean_y: Any | None = None) -> None:
        x, y = _as_data("x", x), _as_label_vector("y", y)
        if len(x) != len(y):
            raise PriorkitError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        self.x, self.y = x, y
        self.clean_y = _as_label_vector("clean_y", clean_y) if clean_y is not None else y
        if len(self.clean_y) != len(y):
            raise PriorkitError(f"clean_y must have the same length as y, got {len(self.clean_y)} and {len(y)}")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], i

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx], idx

    @property
    def num_classes(self) -> int:
        return int(self.clean_y.max()) + 1

    def with_labels(self, y: Any) -> IndexedTensorDataset:
        """The same inputs with new (e.g. noisy) labels (tensor or NumPy array); the clean labels are kept."""
        return IndexedTensorDataset(self.x, y, clean_y=self.clean_y)


def _as_data(name: str, value: Any) -> torch.Tensor:
    """A tensor or NumPy array of inputs as a tensor (anything else is refused, naming ``name``)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise PriorkitError(f"{name} must be a numeric array, got dtype object")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise PriorkitError(f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}")


def _as_label_vector(name: str, value: Any) -> torch.Tensor:
    """Integer class labels (tensor or NumPy array) as a 1-D int64 tensor."""
    y = _as_data(name, value)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise PriorkitError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.dim() != 1:
        raise PriorkitError(f"{name} must be a 1-D vector of class labels, got shape {list(y.shape)}")
    return y.long()


@dataclass
class Splits:
    train: IndexedTensorDataset
    val: IndexedTensorDataset
    test: IndexedTensorDataset
    num_classes: int
    input_shape: tuple[int, ...]


def split_arrays(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    stratify: bool = True,
) -> Splits:
    """Split arrays into train/val/test (stratified by class, deterministic from ``seed``)."""
    check_range("val", val, 0.0, 1.0, high_inclusive=False)
    check_range("test", test, 0.0, 1.0, high_inclusive=False)
    if val + test >= 1.0:
        raise PriorkitError(f"val + test must be < 1, got {val} + {test}")
    rng = np.random.default_rng(seed)
    y_np = y.numpy()
    parts: list[list[int]] = [[], [], []]
    groups = [np.flatnonzero(y_np == c) for c in np.unique(y_np)] if stratify else [np.arange(len(y_np))]
    for g in groups:
        g = rng.permutation(g)
        n_test, n_val = int(round(test * len(g))), int(round(val * len(g)))
        parts[2] += g[:n_test].tolist()
        parts[1] += g[n_test : n_test + n_val].tolist()
        parts[0] += g[n_test + n_val :].tolist()
    sets = [IndexedTensorDataset(x[np.sort(p)], y[np.sort(p)]) for p in parts]
    return Splits(*sets, num_classes=int(y.max()) + 1, input_shape=tuple(x.shape[1:]))


def load_digits(*, image: bool = False, val: float = 0.1, test: float = 0.3, seed: int = 0) -> Splits:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), scaled to [0, 1].

    ``image=False`` gives 64-d vectors (MLP), ``image=True`` gives ``[1, 8, 8]`` images (CNN).
    """
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    if image:
        x = x.view(-1, 1, 8, 8)
    return split_arrays(x, torch.tensor(d.target, dtype=torch.long), val=val, test=test, seed=seed)


def cache_dir() -> Path:
    """priorkit's cache: ``$PRIORKIT_CACHE``, else ``$XDG_CACHE_HOME/priorkit``, else ``~/.cache/priorkit``."""
    root = os.environ.get("PRIORKIT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "priorkit"


def load_mnist1d(*, val: float = 0.1, seed: int = 0, channel: bool = False) -> Splits:
    """mnist1d (Greydanus, 2020): 4,000 train / 1,000 test 1-D signals of length 40, 10 classes.

    Generated locally from the package's templates with its default arguments (data seed 42) and cached as
    a ``.npz``; ``val`` of the 4,000 training signals are held out (stratified, from ``seed``). With
    ``channel=True`` inputs are ``[1, 40]`` (1-D CNN), else ``[40]`` (MLP).
    """
    path = cache_dir() / "mnist1d_default.npz"
    if not path.is_file():
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        os.replace(tmp, path)
    d = np.load(path)
    x, y = torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"], dtype=torch.long)
    xt, yt = torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"], dtype=torch.long)
    if channel:
        x, xt = x.unsqueeze(1), xt.unsqueeze(1)
    tv = split_arrays(x, y, val=val, test=0.0, seed=seed)
    return Splits(tv.train, tv.val, IndexedTensorDataset(xt, yt), num_classes=10, input_shape=tuple(x.shape[1:]))


def gaussian_mixture(
    n: int = 3000,
    *,
    num_classes: int = 4,
    dim: int = 2,
    separation: float = 3.0,
    std: float = 1.0,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
) -> Splits:
    """Isotropic Gaussian classes with means on a scaled random simplex-like set, deterministic from ``seed``."""
    check_positive_int("n", n)
    check_positive_int("num_classes", num_classes, 2)
    check_positive_int("dim", dim)
    check_range("std", std, 0.0, low_inclusive=False)
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=g)
    means = separation * means / means.norm(dim=1, keepdim=True).clamp_min(1e-8)
    y = torch.arange(n) % num_classes
    x = means[y] + std * torch.randn(n, dim, generator=g)
    return split_arrays(x, y, val=val, test=test, seed=seed)


#: The real image sets of :mod:`priorkit.data.real` (``*_image``: ``[N, 1, 28, 28]``, else ``[N, 784]``).
REAL_DATASETS = ("fashion_mnist", "fashion_mnist_image", "mnist", "mnist_image")
DATASETS = ("digits", "digits_image", "mnist1d", "mnist1d_channel", "gaussian_mixture", *REAL_DATASETS)


def load_dataset(name: str, *, seed: int = 0) -> Splits:
    """Load one of :data:`DATASETS` by name (the real image sets through :func:`priorkit.data.real.load_real`)."""
    check_choice("dataset", name, DATASETS)
    if name in REAL_DATASETS:
        from priorkit.data.real import load_real

        return load_real(name, seed=seed)
    if name.startswith("digits"):
        return load_digits(image=name == "digits_image", seed=seed)
    if name.startswith("mnist1d"):
        return load_mnist1d(seed=seed, channel=name == "mnist1d_channel")
    return gaussian_mixture(seed=seed)


def fingerprint(t: torch.Tensor) -> str:
    """A short content hash of a tensor (to check two runs saw the same data)."""
    return hashlib.sha1(t.detach().cpu().numpy().tobytes()).hexdigest()[:12]
