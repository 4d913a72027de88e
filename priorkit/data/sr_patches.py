"""Super-resolution patches from the photographs that ship with scikit-image and scikit-learn (no download).

Training patches are cut at seeded random positions from ``astronaut``, ``chelsea``, ``rocket`` and ``camera``
(grey, repeated to RGB) of ``skimage.data`` and ``china.jpg`` / ``flower.jpg`` of ``sklearn.datasets``; test patches
come from a held-out image (``coffee`` by default: the most textured, where bicubic upsampling is weakest), so no
test pixel was seen in training. The low-resolution input
is the bicubic downscale of the high-resolution patch by ``scale`` (antialiased, clipped to [0, 1]), the usual
synthetic degradation of SR benchmarks. ``x`` is the LR patch, ``y`` the HR patch, both ``[N, 3, h, w]`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int

__all__ = ["SR_IMAGES", "SRPatches", "load_image", "sr_patches"]

SR_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "china", "flower")


def load_image(name: str) -> torch.Tensor:
    """One bundled photograph as a float ``[3, H, W]`` tensor in [0, 1]."""
    check_choice("name", name, SR_IMAGES)
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        arr = getattr(skimage.data, name)()
    arr = np.asarray(arr, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).contiguous()


def _crops(img: torch.Tensor, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    _, h, w = img.shape
    ys = torch.randint(0, h - size + 1, (n,), generator=g)
    xs = torch.randint(0, w - size + 1, (n,), generator=g)
    return torch.stack([img[:, y : y + size, x : x + size] for y, x in zip(ys.tolist(), xs.tolist())])


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic (antialiased) downscale by ``scale``, clipped to [0, 1]."""
    h, w = hr.shape[-2] // scale, hr.shape[-1] // scale
    return F.interpolate(hr, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


@dataclass
class SRPatches:
    train: TensorDataset  # (LR, HR): the engine's default batch gives batch.x = LR, batch.y = HR
    test: TensorDataset
    scale: int


def sr_patches(
    *,
    hr_size: int = 32,
    scale: int = 2,
    n_train: int = 4000,
    n_test: int = 500,
    test_image: str = "coffee",
    train_images: tuple[str, ...] = ("astronaut", "chelsea", "rocket", "camera", "china", "flower"),
    seed: int = 0,
) -> SRPatches:
    """LR/HR patch pairs: ``n_train`` spread evenly over ``train_images``, ``n_test`` from ``test_image``."""
    check_positive_int("hr_size", hr_size, 2)
    check_positive_int("scale", scale, 2)
    check_positive_int("n_train", n_train)
    check_positive_int("n_test", n_test)
    if hr_size % scale:
        raise PriorkitError(f"hr_size ({hr_size}) must be divisible by scale ({scale})")
    for name in (*train_images, test_image):
        check_choice("image", name, SR_IMAGES)
    if test_image in train_images:
        raise PriorkitError(f"test_image {test_image!r} must not be one of the train_images")
    g = torch.Generator().manual_seed(seed)
    per = [n_train // len(train_images) + (i < n_train % len(train_images)) for i in range(len(train_images))]
    hr = torch.cat([_crops(load_image(name), k, hr_size, g) for name, k in zip(train_images, per)])
    hr = hr[torch.randperm(len(hr), generator=g)]
    hr_test = _crops(load_image(test_image), n_test, hr_size, g)
    return SRPatches(TensorDataset(downscale(hr, scale), hr), TensorDataset(downscale(hr_test, scale), hr_test), scale)
