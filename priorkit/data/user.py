"""Loaders for a user's own data: in-memory arrays, or an image folder laid out as ``root/<class>/<image>``.

This is the user's-own-data path into every method: the result is an :class:`IndexedTensorDataset` whose
items are ``(x, y, index)`` (the sample index that per-sample methods such as ELR and PS-KD key their
memories by), accepted by :class:`priorkit.train.Trainer` and by the split and noise builders::

    from priorkit.data import from_arrays, symmetric_noise
    train = from_arrays(x_train, y_train)                     # NumPy arrays or tensors
    train = train.with_labels(symmetric_noise(train.y, 0.4, num_classes=10, seed=0))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, as_tensor, check_finite
from priorkit.data.datasets import IndexedTensorDataset

__all__ = ["from_arrays", "image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def from_arrays(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> IndexedTensorDataset:
    """Wrap arrays (features of any shape, integer labels) as an indexed dataset.

    ``x`` (NumPy array, tensor or nested list of numbers) becomes float32 and must be finite; ``y`` holds
    integer class labels ``>= 0`` (integer-valued floats are accepted), one per row of ``x``.
    """
    x_t = as_tensor("x", x, dtype=torch.float32)
    y_t = as_tensor("y", y)
    if x_t.dim() == 0 or len(x_t) == 0:
        raise PriorkitError(f"x must hold at least one sample, got shape {list(x_t.shape)}")
    check_finite("x", x_t)
    if y_t.dim() != 1:
        raise PriorkitError(f"y must be a 1-D vector of class labels, got shape {list(y_t.shape)}")
    if y_t.is_complex() or y_t.dtype == torch.bool:
        raise PriorkitError(f"y must hold integer class labels, got dtype {y_t.dtype}")
    if y_t.is_floating_point():
        if not bool(torch.isfinite(y_t).all()) or not torch.equal(y_t, y_t.round()):
            raise PriorkitError("y must hold integer class labels, got non-integer values")
    y_t = y_t.long()
    if len(y_t) and int(y_t.min()) < 0:
        raise PriorkitError(f"y must hold labels >= 0, got minimum {int(y_t.min())}")
    return IndexedTensorDataset(x_t, y_t)


def image_folder(root: str | Path, *, size: int | None = None) -> tuple[IndexedTensorDataset, list[str]]:
    """Read ``root/<class name>/<image file>`` into memory as ``[N, 3, H, W]`` in [0, 1]; classes sorted.

    All images must share one size unless ``size`` is given (then each is resized to ``size x size``).
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected root/<class>/<image>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise PriorkitError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = Image.open(f).convert("RGB")
            if size is not None:
                img = img.resize((size, size), Image.BILINEAR)
            xs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
            ys.append(c)
    if not xs:
        raise PriorkitError(f"no images with suffix {IMAGE_SUFFIXES} under {root}")
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise PriorkitError(f"images under {root} differ in size {sorted(shapes)}; pass size=")
    return IndexedTensorDataset(torch.stack(xs), torch.tensor(ys)), classes
