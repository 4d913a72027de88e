"""In-distribution / out-of-distribution splits, deterministic from a seed (for PALM, ProtoGCD's OOD scores, ...).

The CPU stand-in for "train on CIFAR, test against SVHN / Textures": the in-distribution (ID) set is a subset of
the classes of digits or mnist1d, relabelled ``0..C_in-1``; *near-OOD* are the test samples of the held-out
classes (same sensor, unseen semantics) and *far-OOD* are generated outliers of the same shape (uniform noise,
Gaussian noise clipped to the data range, or pixel-shuffled ID test images). Only the ID classes' training
samples are ever used for training; near-OOD comes from the test split, so no OOD image was seen in training.

>>> d = ood_split("digits", id_classes=(0, 1, 2, 3, 4), seed=0)
>>> d.num_classes, d.id_classes, d.ood_classes
(5, (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
>>> sorted(d.ood) == ["far", "near"], int(d.train.y.max())
(True, 4)

:func:`shift_noise_views` makes the light augmented views (random shift + Gaussian noise) that the small-scale
checks of PALM and ProtoGCD use instead of crops and colour jitter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range
from priorkit.data.datasets import IndexedTensorDataset, Splits, load_digits, load_mnist1d

OOD_DATASETS = ("digits", "digits_image", "mnist1d", "mnist1d_channel")
FAR_KINDS = ("uniform", "gaussian", "shuffled")


@dataclass
class OODSplits:
    """ID train/test (labels ``0..C_in-1``) and named OOD test sets (their ``y`` is the original class, or -1)."""

    train: IndexedTensorDataset
    test: IndexedTensorDataset
    ood: dict[str, IndexedTensorDataset]
    id_classes: tuple[int, ...]
    ood_classes: tuple[int, ...]
    input_shape: tuple[int, ...]
    value_range: tuple[float, float] = (0.0, 1.0)
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.id_classes)


def _load(name: str, seed: int) -> Splits:
    if name.startswith("digits"):
        return load_digits(image=name == "digits_image", val=0.0, test=0.3, seed=seed)
    return load_mnist1d(val=0.0, seed=seed, channel=name == "mnist1d_channel")


def select_classes(data: IndexedTensorDataset, classes: Sequence[int], relabel: bool = True) -> IndexedTensorDataset:
    """The samples of ``classes`` (in dataset order); with ``relabel`` class ``classes[i]`` becomes ``i``."""
    classes = [int(c) for c in classes]
    keep = torch.isin(data.y, torch.tensor(classes, dtype=torch.long))
    x, y = data.x[keep], data.y[keep]
    if relabel:
        lut = torch.full((int(data.y.max()) + 1,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        y = lut[y]
    return IndexedTensorDataset(x, y)


def far_outliers(
    n: int,
    shape: Sequence[int],
    kind: str = "uniform",
    *,
    seed: int = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """``n`` generated outliers of ``shape``: ``uniform`` in ``value_range``, ``gaussian`` (mean/std of the range,
    clipped to it), or ``shuffled`` (each ``reference`` row with its features permuted: ID statistics, no shape)."""
    check_positive_int("n", n)
    check_choice("kind", kind, FAR_KINDS)
    lo, hi = value_range
    if not hi > lo:
        raise PriorkitError(f"value_range must be (low, high) with high > low, got {value_range}")
    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(s) for s in shape)
    if kind == "uniform":
        return lo + (hi - lo) * torch.rand((n, *shape), generator=g)
    if kind == "gaussian":
        x = (lo + hi) / 2 + (hi - lo) / 4 * torch.randn((n, *shape), generator=g)
        return x.clamp(lo, hi)
    if reference is None or len(reference) == 0:
        raise PriorkitError("kind='shuffled' needs a non-empty reference tensor of ID samples")
    ref = reference[torch.randint(len(reference), (n,), generator=g)].flatten(1)
    perm = torch.argsort(torch.rand(ref.shape, generator=g), dim=1)
    return torch.gather(ref, 1, perm).view(n, *shape)


def ood_split(
    dataset: str = "digits",
    *,
    id_classes: Sequence[int] = (0, 1, 2, 3, 4),
    far: Sequence[str] = ("uniform",),
    n_far: int | None = None,
    seed: int = 0,
) -> OODSplits:
    """ID = ``id_classes`` of ``dataset``; OOD sets ``near`` (test samples of the other classes) and one far set
    per entry of ``far`` (``far`` alone when there is one kind, else ``far_<kind>``), of ``n_far`` samples (default:
    as many as the ID test set). Deterministic from ``seed`` (the dataset split and the outliers)."""
    check_choice("dataset", dataset, OOD_DATASETS)
    ids = tuple(int(c) for c in id_classes)
    if len(set(ids)) != len(ids) or not ids or any(not 0 <= c < 10 for c in ids):
        raise PriorkitError(f"id_classes must be distinct classes in [0, 9], got {tuple(id_classes)}")
    if len(ids) < 2 or len(ids) == 10:
        raise PriorkitError(f"id_classes must hold between 2 and 9 classes (the rest are near-OOD), got {len(ids)}")
    for k in far:
        check_choice("far", k, FAR_KINDS)
    base = _load(dataset, seed)
    oods = tuple(c for c in range(10) if c not in ids)
    train, test = select_classes(base.train, ids), select_classes(base.test, ids)
    near = select_classes(base.test, oods, relabel=False)
    lo, hi = float(base.train.x.min()), float(base.train.x.max())
    n = n_far if n_far is not None else len(test)
    check_positive_int("n_far", n)
    sets = {"near": near}
    for i, kind in enumerate(far):
        x = far_outliers(n, base.input_shape, kind, seed=seed * 7919 + i + 1, value_range=(lo, hi), reference=test.x)
        sets["far" if len(far) == 1 else f"far_{kind}"] = IndexedTensorDataset(x, torch.full((n,), -1))
    return OODSplits(train, test, sets, ids, oods, base.input_shape, (lo, hi), {"dataset": dataset, "seed": seed})


def shift_noise_views(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    max_shift: int = 1,
    sigma: float = 0.1,
    image_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """One augmented view per row: a random integer shift of up to ``max_shift`` along each spatial axis
    (zero-filled) plus Gaussian noise of std ``sigma``, drawn from ``generator`` (reproducible per batch).

    Flat inputs are viewed as ``image_shape`` (e.g. ``(8, 8)`` for flat digits) for the shift; 1-D signals shift
    along their last axis. The output has the input's shape.
    """
    check_positive_int("max_shift", max_shift, 0)
    check_range("sigma", sigma, 0.0)
    shape = x.shape
    img = x.reshape(len(x), *image_shape) if image_shape is not None else x
    spatial = 2 if (image_shape is not None and len(image_shape) >= 2) or (img.dim() >= 4) else 1
    out = img
    if max_shift > 0:
        for axis in range(img.dim() - spatial, img.dim()):
            s = torch.randint(-max_shift, max_shift + 1, (len(x),), generator=generator)
            length = img.shape[axis]
            pos = torch.arange(length).view(1, length) - s.view(-1, 1)  # source position per sample
            valid = (pos >= 0) & (pos < length)
            view = [len(x)] + [1] * (img.dim() - 1)
            view[axis] = length
            idx = pos.clamp(0, length - 1).view(view).expand_as(out)
            out = torch.gather(out, axis, idx) * valid.view(view)
    out = out.reshape(shape)
    if sigma > 0:
        out = out + sigma * torch.randn(out.shape, generator=generator)
    return out
