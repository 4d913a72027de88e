"""``anomaly``: generated texture images for anomaly detection, with injected defects and their pixel masks.

The CPU-sized stand-in for MVTec-AD's texture categories (the INP-Former card asks for crops of scikit-image's
brick / grass / gravel; scikit-image is not a dependency, so the three textures are synthesised here):

- ``brick``: a running-bond wall, bricks of jittered red-brown with light mortar joints;
- ``grass``: vertically streaked green noise (anisotropically blurred);
- ``gravel``: Voronoi cells of grey stones with darker borders.

Training images are normal only. Test images are half normal, half anomalous; an anomaly is either a
square ``patch`` (side ``size/8``..``size/4``, 8-16 px at 64 px as in the card) cut from an image of *another*
texture and pasted in, or a drawn ``line`` of random colour (width 1-2 px). Every anomalous test image
carries its exact pixel mask. Everything is deterministic from ``seed`` (``numpy.random.Generator``). No
library offers such a generator (torchvision's ``FakeData`` is noise), so it is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range

__all__ = ["ANOMALY_KINDS", "TEXTURES", "AnomalyData", "inject_anomaly", "make_anomaly", "make_texture"]

TEXTURES = ("brick", "grass", "gravel")
ANOMALY_KINDS = ("patch", "line")


def _brick(rng: np.random.Generator, size: int) -> np.ndarray:
    bh = max(3, size // 8)  # brick height
    bw = 2 * bh
    ox, oy = rng.integers(0, bw), rng.integers(0, bh)
    yy, xx = np.mgrid[0:size, 0:size]
    row = (yy + oy) // bh
    shift = (row % 2) * (bw // 2)
    col = (xx + ox + shift) // bw
    mortar = ((yy + oy) % bh == 0) | ((xx + ox + shift) % bw == 0)
    ids = row * 1000 + col
    uniq, inv = np.unique(ids, return_inverse=True)
    tone = rng.uniform(-0.08, 0.08, size=len(uniq))[inv].reshape(size, size)
    img = np.empty((3, size, size))
    base = np.array([0.62, 0.28, 0.18])
    for c in range(3):
        img[c] = base[c] + tone
    img[:, mortar] = np.array([0.80, 0.78, 0.72])[:, None]
    return img + rng.normal(0, 0.03, size=img.shape)


def _grass(rng: np.random.Generator, size: int) -> np.ndarray:
    n = rng.normal(0, 1, size=(size, size))
    n = ndimage.gaussian_filter(n, sigma=(max(1.0, size / 12), 0.6), mode="wrap")
    n = n / (n.std() + 1e-8)
    img = np.stack([0.25 + 0.06 * n, 0.55 + 0.12 * n, 0.18 + 0.05 * n])
    return img + rng.normal(0, 0.02, size=img.shape)


def _gravel(rng: np.random.Generator, size: int) -> np.ndarray:
    k = max(8, (size * size) // 24)
    pts = rng.uniform(0, size, size=(k, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy.reshape(-1, 1) - pts[:, 0]) ** 2 + (xx.reshape(-1, 1) - pts[:, 1]) ** 2
    order = np.argsort(d, axis=1)[:, :2]
    d1 = np.take_along_axis(d, order[:, :1], 1)[:, 0]
    d2 = np.take_along_axis(d, order[:, 1:2], 1)[:, 0]
    cell = order[:, 0]
    grey = rng.uniform(0.35, 0.75, size=k)[cell]
    edge = (np.sqrt(d2) - np.sqrt(d1)) < 0.9
    g = np.where(edge, grey * 0.45, grey).reshape(size, size)
    img = np.stack([g * 1.02, g, g * 0.95])
    return img + rng.normal(0, 0.03, size=img.shape)


_MAKERS = {"brick": _brick, "grass": _grass, "gravel": _gravel}


def make_texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``[3, size, size]`` float image in [0, 1] of texture ``name`` (see :data:`TEXTURES`)."""
    check_choice("texture", name, TEXTURES)
    check_positive_int("size", size, 8)
    return np.clip(_MAKERS[name](rng, size), 0.0, 1.0)


def inject_anomaly(
    image: np.ndarray, kind: str, texture: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(anomalous image, mask [H, W] of 0/1)`` for a normal ``image`` of ``texture``.

    ``patch``: a square of side ``size/8..size/4`` from a fresh image of another texture; ``line``: a straight
    stroke of random colour, width 1-2 px, length ``size/4..size/2``.
    """
    check_choice("kind", kind, ANOMALY_KINDS)
    size = image.shape[-1]
    out = image.copy()
    mask = np.zeros((size, size), dtype=bool)
    if kind == "patch":
        side = int(rng.integers(max(2, size // 8), max(3, size // 4) + 1))
        other = [t for t in TEXTURES if t != texture][int(rng.integers(0, len(TEXTURES) - 1))]
        src = make_texture(other, size, rng)
        sy, sx = rng.integers(0, size - side + 1, size=2)
        ty, tx = rng.integers(0, size - side + 1, size=2)
        out[:, ty : ty + side, tx : tx + side] = src[:, sy : sy + side, sx : sx + side]
        mask[ty : ty + side, tx : tx + side] = True
    else:
        length = rng.uniform(size / 4, size / 2)
        ang = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(size * 0.25, size * 0.75, size=2)
        width = float(rng.integers(1, 3))
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        dy, dx = np.sin(ang), np.cos(ang)
        t = (yy - cy) * dy + (xx - cx) * dx
        perp = np.abs(-(yy - cy) * dx + (xx - cx) * dy)
        mask = (np.abs(t) <= length / 2) & (perp <= width / 2)
        if not mask.any():  # degenerate stroke: mark the centre pixel
            mask[int(cy), int(cx)] = True
        colour = rng.uniform(0, 1, size=3)
        out[:, mask] = colour[:, None]
    return out, mask.astype(np.float32)


@dataclass
class AnomalyData:
    """Normal-only training images and a labelled test set with pixel masks (all ``[N, 3, H, W]`` in [0, 1])."""

    train: torch.Tensor  # float32 [N_train, 3, H, W], normal only
    train_texture: torch.Tensor  # int64 [N_train], index into ``textures``
    test: torch.Tensor  # float32 [N_test, 3, H, W]
    test_texture: torch.Tensor  # int64 [N_test]
    test_labels: torch.Tensor  # int64 [N_test], 1 = anomalous
    test_masks: torch.Tensor  # float32 [N_test, 1, H, W], 0/1; all zero for normal images
    textures: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(self.train.shape[-1])

    def few_shot(self, k: int, seed: int = 0) -> torch.Tensor:
        """``k`` random normal training images per texture (the few-shot setting), ``[k * T, 3, H, W]``."""
        check_positive_int("k", k)
        g = torch.Generator().manual_seed(seed)
        keep = []
        for t in range(len(self.textures)):
            idx = torch.nonzero(self.train_texture == t).flatten()
            if len(idx) < k:
                raise PriorkitError(f"k must be <= {len(idx)} (training images of texture {t}), got {k}")
            keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
        return self.train[torch.cat(keep)]


def make_anomaly(
    n_train: int = 200,
    n_test: int = 120,
    *,
    size: int = 32,
    textures: tuple[str, ...] | list[str] = TEXTURES,
    anomaly_fraction: float = 0.5,
    kinds: tuple[str, ...] | list[str] = ANOMALY_KINDS,
    seed: int = 0,
) -> AnomalyData:
    """Generate an :class:`AnomalyData` set: textures cycle over images; the first ``round(fraction * n_test)``
    positions of a seeded permutation of the test set are made anomalous, with ``kinds`` alternating."""
    check_positive_int("n_train", n_train)
    check_positive_int("n_test", n_test, 2)
    check_positive_int("size", size, 8)
    check_range("anomaly_fraction", anomaly_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    textures = tuple(textures)
    if not textures:
        raise PriorkitError(f"textures must be a non-empty subset of {list(TEXTURES)}")
    for t in textures:
        check_choice("textures", t, TEXTURES)
    kinds = tuple(kinds)
    if not kinds:
        raise PriorkitError(f"kinds must be a non-empty subset of {list(ANOMALY_KINDS)}")
    for k in kinds:
        check_choice("kinds", k, ANOMALY_KINDS)
    rng = np.random.default_rng(seed)
    tr_tex = np.arange(n_train) % len(textures)
    train = np.stack([make_texture(textures[t], size, rng) for t in tr_tex])
    te_tex = np.arange(n_test) % len(textures)
    test = np.stack([make_texture(textures[t], size, rng) for t in te_tex])
    n_anom = min(n_test - 1, max(1, int(round(anomaly_fraction * n_test))))
    anom = rng.permutation(n_test)[:n_anom]
    labels = np.zeros(n_test, dtype=np.int64)
    masks = np.zeros((n_test, 1, size, size), dtype=np.float32)
    for j, i in enumerate(np.sort(anom)):
        test[i], masks[i, 0] = inject_anomaly(test[i], kinds[j % len(kinds)], textures[te_tex[i]], rng)
        labels[i] = 1
    return AnomalyData(
        train=torch.tensor(train, dtype=torch.float32),
        train_texture=torch.tensor(tr_tex, dtype=torch.long),
        test=torch.tensor(test, dtype=torch.float32),
        test_texture=torch.tensor(te_tex, dtype=torch.long),
        test_labels=torch.tensor(labels),
        test_masks=torch.tensor(masks),
        textures=textures,
    )
