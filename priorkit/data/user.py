"""Loaders for a user's own data: in-memory arrays, or an image folder laid out as ``root/<class>/<image>``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def from_arrays(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> IndexedTensorDataset:
    """Wrap arrays (features of any shape, integer labels) as an indexed dataset."""
    x_t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if y_t.is_floating_point():
        if not torch.equal(y_t, y_t.round()):
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
