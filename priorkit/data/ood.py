"""In-distribution / out-of-distribution splits, deterministic from a seed (for PALM, ProtoGCD's OOD scores, ...).

The CPU stand-in for "train on CIFAR, test against SVHN / Textures": the in-distribution (ID) set is a subset of
the classes of digits or mnist1d (or Fashion-MNIST / MNIST-5k), relabelled ``0..C_in-1``; *near-OOD* are the test
samples of the held-out classes (same sensor, unseen semantics) and *far-OOD* are generated outliers of the same
shape (uniform noise, Gaussian noise clipped to the data range, or pixel-shuffled ID test images) or, for gray
images, real ones: ``natural`` (random crops of scikit-image's bundled photographs and textures, resized to the
dataset's side; the CPU stand-in for Textures / Places) and ``mnist`` (MNIST-5k digits). Only the ID classes'
training samples are ever used for training; near-OOD comes from the test split, so no OOD image was seen in
training.

>>> d = ood_split("digits", id_classes=(0, 1, 2, 3, 4), seed=0)
>>> d.num_classes, d.id_classes, d.ood_classes
(5, (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
>>> sorted(d.ood) == ["far", "near"], int(d.train.y.max())
(True, 4)

A user's own data goes in the same way, as ``(x, y)`` tensors or numpy arrays (a held-out ``test_data`` pair, or a
stratified ``test`` fraction split off from ``seed``); features become float32, labels int64:

>>> import numpy as np
>>> x, y = np.random.default_rng(0).random((120, 6)), np.arange(120) % 4
>>> u = ood_split((x, y), id_classes=(0, 2), seed=0)
>>> u.id_classes, u.ood_classes, u.input_shape, len(u.test), len(u.ood["near"])
((0, 2), (1, 3), (6,), 18, 18)

:func:`shift_noise_views` makes the light augmented views (random shift + Gaussian noise) that the small-scale
checks of PALM and ProtoGCD use instead of crops and colour jitter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_choice,
    check_finite,
    check_labels,
    check_positive_int,
    check_range,
)
from priorkit.data.datasets import REAL_DATASETS, IndexedTensorDataset, Splits, load_digits, load_mnist1d, split_arrays
from priorkit.data.real import _mnist5k, load_real

OOD_DATASETS = ("digits", "digits_image", "mnist1d", "mnist1d_channel", *REAL_DATASETS)
#: far-OOD sets made from noise or the ID images themselves (any input shape)
GENERATED_FAR_KINDS = ("uniform", "gaussian", "shuffled")
#: far-OOD sets of real images (gray image inputs only): crops of natural photographs / textures, MNIST-5k digits
REAL_FAR_KINDS = ("natural", "mnist")
FAR_KINDS = (*GENERATED_FAR_KINDS, *REAL_FAR_KINDS)
#: the photographs and textures bundled with scikit-image (no download) that ``natural`` crops come from
NATURAL_IMAGES = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "rocket", "text",
)  # fmt: skip
_NATURAL_CACHE: list[torch.Tensor] = []

#: A user's own labelled data: an ``(x, y)`` pair of tensors or numpy arrays, or an :class:`IndexedTensorDataset`.
UserData = tuple[Any, Any] | list[Any] | IndexedTensorDataset


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
    if name in REAL_DATASETS:  # Fashion-MNIST keeps its official test split; MNIST-5k holds out 30%
        return load_real(name, val=0.0, test=0.3, seed=seed)
    if name.startswith("digits"):
        return load_digits(image=name == "digits_image", val=0.0, test=0.3, seed=seed)
    return load_mnist1d(val=0.0, seed=seed, channel=name == "mnist1d_channel")


def check_xy(
    x: Any, y: Any, *, x_name: str = "x", y_name: str = "y", num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a user's features and labels (tensors or numpy arrays alike) and return ``(x float32, y int64)``.

    Refused, naming the argument: anything that is not an array of numbers, an empty ``x``, NaN/inf features,
    ``y`` not 1-D or not one label per row of ``x``, non-integer labels, negative labels and (with
    ``num_classes``) labels ``>= num_classes``. Integer-valued float labels (e.g. read from a CSV) are accepted.
    """
    x_t, y_t = as_tensor(x_name, x), as_tensor(y_name, y)
    if x_t.dim() == 0 or len(x_t) == 0:
        raise PriorkitError(f"{x_name} must be a non-empty array with one row per sample, got {list(x_t.shape)}")
    if x_t.is_complex() or x_t.dtype == torch.bool:
        raise PriorkitError(f"{x_name} must hold real-valued features, got dtype {x_t.dtype}")
    x_t = check_finite(x_name, x_t.float())
    if y_t.dim() != 1 or len(y_t) != len(x_t):
        raise PriorkitError(
            f"{y_name} must have shape [{len(x_t)}] (one label per row of {x_name}), got {list(y_t.shape)}"
        )
    if y_t.is_complex() or y_t.dtype == torch.bool:
        raise PriorkitError(f"{y_name} must hold integer class labels, got dtype {y_t.dtype}")
    if y_t.is_floating_point():
        if not bool(torch.isfinite(y_t).all()) or not torch.equal(y_t, y_t.round()):
            raise PriorkitError(f"{y_name} must hold integer class labels, got non-integer values")
    y_t = y_t.long()
    if int(y_t.min()) < 0:
        raise PriorkitError(f"{y_name} must hold class labels >= 0, got minimum {int(y_t.min())}")
    if num_classes is not None:
        check_positive_int("num_classes", num_classes)
        check_labels(y_name, y_t, num_classes)
    return x_t, y_t


def _xy(name: str, data: Any, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, IndexedTensorDataset):
        return check_xy(data.x, data.y, x_name=f"{name}.x", y_name=f"{name}.y", num_classes=num_classes)
    if isinstance(data, tuple | list) and len(data) == 2:
        return check_xy(data[0], data[1], x_name=f"{name}[0] (x)", y_name=f"{name}[1] (y)", num_classes=num_classes)
    raise PriorkitError(
        f"{name} must be a built-in dataset name, an (x, y) pair of tensors or numpy arrays, or an "
        f"IndexedTensorDataset, got {type(data).__name__}"
        + (f" of length {len(data)}" if isinstance(data, tuple | list) else "")
    )


def user_splits(
    dataset: UserData | Splits,
    *,
    test_data: UserData | None = None,
    test: float = 0.3,
    seed: int = 0,
    num_classes: int | None = None,
) -> Splits:
    """A user's own data as a train/test :class:`Splits` (no validation part), checked by :func:`check_xy`.

    ``dataset`` is the training pool (or a whole :class:`Splits`, whose ``train`` and ``test`` are used). Without
    ``test_data`` a stratified ``test`` fraction of ``dataset`` is held out (deterministic from ``seed``).
    ``num_classes`` defaults to the largest label in train or test plus one. Features must share one shape.
    """
    if isinstance(dataset, Splits):
        if test_data is not None:
            raise PriorkitError("test_data must be None when dataset is a Splits (its test part is used)")
        dataset, test_data = dataset.train, dataset.test
    x, y = _xy("dataset", dataset, num_classes)
    if test_data is None:
        check_range("test", test, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        s = split_arrays(x, y, val=0.0, test=test, seed=seed)
        train, held = s.train, s.test
        if len(held) == 0 or len(train) == 0:
            raise PriorkitError(f"test={test} of {len(x)} samples leaves an empty train or test part")
    else:
        xt, yt = _xy("test_data", test_data, num_classes)
        if xt.shape[1:] != x.shape[1:]:
            raise PriorkitError(
                f"test_data features must have the shape of dataset's, {list(x.shape[1:])}, got {list(xt.shape[1:])}"
            )
        train, held = IndexedTensorDataset(x, y), IndexedTensorDataset(xt, yt)
    c = num_classes if num_classes is not None else int(max(int(train.y.max()), int(held.y.max()))) + 1
    empty = IndexedTensorDataset(x[:0], y[:0])
    return Splits(train, empty, held, num_classes=c, input_shape=tuple(x.shape[1:]))


def resolve_splits(
    dataset: str | UserData | Splits,
    names: Sequence[str],
    *,
    test_data: UserData | None,
    test: float | None,
    num_classes: int | None,
    seed: int,
) -> tuple[Splits, str]:
    """A built-in ``dataset`` name (loaded with its fixed test split, 10 classes) or a user's own data
    (:func:`user_splits`, default ``test`` fraction 0.3); returns the splits and a name for ``meta``."""
    if isinstance(dataset, str):
        check_choice("dataset", dataset, names)
        for arg, value in (("test_data", test_data), ("test", test), ("num_classes", num_classes)):
            if value is not None:
                raise PriorkitError(
                    f"{arg} is only for a user's own data; the built-in dataset {dataset!r} has a fixed test "
                    f"split and 10 classes, got {arg}={value!r}"
                )
        return _load(dataset, seed), dataset
    test = 0.3 if test is None else test
    return user_splits(dataset, test_data=test_data, test=test, seed=seed, num_classes=num_classes), "user"


def select_classes(data: IndexedTensorDataset, classes: Sequence[int], relabel: bool = True) -> IndexedTensorDataset:
    """The samples of ``classes`` (in dataset order); with ``relabel`` class ``classes[i]`` becomes ``i``."""
    classes = [int(c) for c in classes]
    keep = torch.isin(data.y, torch.tensor(classes, dtype=torch.long))
    x, y = data.x[keep], data.y[keep]
    if relabel:
        size = max([int(data.y.max()) if len(data.y) else -1, *classes]) + 1
        lut = torch.full((size,), -1, dtype=torch.long)
        lut[torch.tensor(classes)] = torch.arange(len(classes))
        y = lut[y]
    return IndexedTensorDataset(x, y)


def _image_side(shape: tuple[int, ...], kind: str) -> tuple[int, int]:
    """``(H, W)`` of a gray image input: ``(H, W)``, ``(1, H, W)`` or a flat square ``(H*W,)``."""
    if len(shape) == 2 or (len(shape) == 3 and shape[0] == 1):
        return shape[-2], shape[-1]
    if len(shape) == 1 and round(shape[0] ** 0.5) ** 2 == shape[0]:
        side = round(shape[0] ** 0.5)
        return side, side
    raise PriorkitError(
        f"far kind {kind!r} makes gray images: shape must be (H, W), (1, H, W) or a flat square (H*W,), got {shape}"
    )


def _natural_images() -> list[torch.Tensor]:
    """The :data:`NATURAL_IMAGES` as gray float ``[H, W]`` tensors in [0, 1] (read once per process)."""
    if not _NATURAL_CACHE:
        try:
            import skimage.data as skdata
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise PriorkitError(
                "far kind 'natural' needs scikit-image (its bundled images): pip install 'priorkit[data]'"
            ) from None
        luma = torch.tensor([0.2125, 0.7154, 0.0721])  # ITU-R 709, as skimage.color.rgb2gray
        for name in NATURAL_IMAGES:
            img = torch.from_numpy(getattr(skdata, name)()).float().div(255.0)
            _NATURAL_CACHE.append(img[..., :3] @ luma if img.dim() == 3 else img)
    return _NATURAL_CACHE


def natural_crops(n: int, side: Sequence[int] = (28, 28), *, seed: int = 0, scale: tuple[float, float] = (2.0, 6.0)
                  ) -> torch.Tensor:  # fmt: skip
    """``n`` gray ``[n, H, W]`` images in [0, 1]: square crops of a random :data:`NATURAL_IMAGES` photograph or
    texture at a random position, ``scale`` times the target side (capped by the image), resized to ``side`` with
    antialiasing. Deterministic from ``seed``; needs scikit-image (extra ``priorkit[data]``), no download."""
    check_positive_int("n", n)
    h, w = (int(s) for s in side)
    check_positive_int("side", min(h, w))
    lo, hi = scale
    if not 0 < lo <= hi:
        raise PriorkitError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    images = _natural_images()
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(images), (n,), generator=g)
    frac = torch.rand(n, 3, generator=g)
    out = torch.empty(n, h, w)
    for i in range(n):
        img = images[int(which[i])]
        cap = min(img.shape)
        s = max(1, min(cap, round((lo + (hi - lo) * float(frac[i, 0])) * max(h, w))))
        top = int(float(frac[i, 1]) * (img.shape[0] - s + 1))
        left = int(float(frac[i, 2]) * (img.shape[1] - s + 1))
        crop = img[top : top + s, left : left + s][None, None]
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    return out.clamp_(0.0, 1.0)


def mnist_digits(n: int, side: Sequence[int] = (28, 28), *, seed: int = 0) -> torch.Tensor:
    """``n`` distinct MNIST-5k digits (extra ``priorkit[data]``) as gray ``[n, H, W]`` images in [0, 1], drawn from
    ``seed`` and resized to ``side`` (antialiased) when it is not 28 x 28."""
    check_positive_int("n", n)
    xu, _ = _mnist5k()
    if n > len(xu):
        raise PriorkitError(f"far kind 'mnist' has {len(xu)} MNIST-5k digits; n (n_far) must be <= {len(xu)}, got {n}")
    idx = torch.randperm(len(xu), generator=torch.Generator().manual_seed(seed))[:n]
    x = torch.from_numpy(xu[idx.numpy()].copy()).float().div_(255.0).view(n, 1, 28, 28)
    h, w = (int(s) for s in side)
    if (h, w) != (28, 28):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    return x[:, 0]


def far_outliers(
    n: int,
    shape: Sequence[int],
    kind: str = "uniform",
    *,
    seed: int = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """``n`` far outliers of ``shape``: ``uniform`` in ``value_range``, ``gaussian`` (mean/std of the range,
    clipped to it), ``shuffled`` (each ``reference`` row with its features permuted: ID statistics, no shape), or
    real gray images mapped from [0, 1] onto ``value_range``: ``natural`` (:func:`natural_crops`) and ``mnist``
    (:func:`mnist_digits`); those two need an image ``shape`` (``(H, W)``, ``(1, H, W)`` or flat ``(H*W,)``)."""
    check_positive_int("n", n)
    check_choice("kind", kind, FAR_KINDS)
    lo, hi = value_range
    if not hi > lo:
        raise PriorkitError(f"value_range must be (low, high) with high > low, got {value_range}")
    g = torch.Generator().manual_seed(seed)
    shape = tuple(int(s) for s in shape)
    if kind in REAL_FAR_KINDS:
        hw = _image_side(shape, kind)
        img = natural_crops(n, hw, seed=seed) if kind == "natural" else mnist_digits(n, hw, seed=seed)
        return (lo + (hi - lo) * img).reshape(n, *shape)
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
    dataset: str | UserData | Splits = "digits",
    *,
    id_classes: Sequence[int] = (0, 1, 2, 3, 4),
    far: Sequence[str] = ("uniform",),
    n_far: int | None = None,
    seed: int = 0,
    test_data: UserData | None = None,
    test: float | None = None,
    num_classes: int | None = None,
) -> OODSplits:
    """ID = ``id_classes`` of ``dataset``; OOD sets ``near`` (test samples of the other classes) and one far set
    per entry of ``far`` (``far`` alone when there is one kind, else ``far_<kind>``), of ``n_far`` samples (default:
    as many as the ID test set). Deterministic from ``seed`` (the dataset split and the outliers).

    ``dataset`` is a name of :data:`OOD_DATASETS` or the user's own data: an ``(x, y)`` pair of tensors or numpy
    arrays (alike), an :class:`IndexedTensorDataset` or a :class:`Splits`. For the user's data the test part is
    ``test_data`` or a stratified ``test`` fraction (default 0.3) of ``dataset``, and the classes are
    ``0..num_classes-1`` (default: the largest label plus one); see :func:`user_splits`."""
    if "mnist" in far and isinstance(dataset, str) and dataset.startswith("mnist"):
        raise PriorkitError(f"far kind 'mnist' is the ID dataset {dataset!r} itself; pick other far kinds")
    base, name = resolve_splits(
        dataset, OOD_DATASETS, test_data=test_data, test=test, num_classes=num_classes, seed=seed
    )
    n_cls = base.num_classes
    if n_cls < 3:
        raise PriorkitError(
            f"dataset has {n_cls} classes; an OOD split needs at least 3 (2 ID classes + 1 near-OOD class)"
        )
    ids = tuple(int(c) for c in id_classes)
    if len(set(ids)) != len(ids) or not ids or any(not 0 <= c < n_cls for c in ids):
        raise PriorkitError(f"id_classes must be distinct classes in [0, {n_cls - 1}], got {tuple(id_classes)}")
    if len(ids) < 2 or len(ids) == n_cls:
        raise PriorkitError(
            f"id_classes must hold between 2 and {n_cls - 1} classes (the rest are near-OOD), got {len(ids)}"
        )
    for k in far:
        check_choice("far", k, FAR_KINDS)
    absent = [c for c in ids if not bool((base.train.y == c).any())]
    if absent:
        raise PriorkitError(f"id_classes {absent} have no training samples in dataset")
    oods = tuple(c for c in range(n_cls) if c not in ids)
    train, test_set = select_classes(base.train, ids), select_classes(base.test, ids)
    near = select_classes(base.test, oods, relabel=False)
    if len(test_set) == 0 or len(near) == 0:
        raise PriorkitError(
            f"the test part holds {len(test_set)} ID and {len(near)} near-OOD samples (classes {oods}); "
            "both must be non-empty: pass other id_classes, a larger test fraction or test_data"
        )
    lo, hi = float(base.train.x.min()), float(base.train.x.max())
    if not hi > lo:
        raise PriorkitError(f"dataset features are constant ({lo}); far outliers need a value range")
    n = n_far if n_far is not None else len(test_set)
    check_positive_int("n_far", n)
    sets = {"near": near}
    for i, kind in enumerate(far):
        x = far_outliers(
            n, base.input_shape, kind, seed=seed * 7919 + i + 1, value_range=(lo, hi), reference=test_set.x
        )
        sets["far" if len(far) == 1 else f"far_{kind}"] = IndexedTensorDataset(x, torch.full((n,), -1))
    return OODSplits(train, test_set, sets, ids, oods, base.input_shape, (lo, hi), {"dataset": name, "seed": seed})


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
