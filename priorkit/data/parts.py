"""``parts``: small RGB images whose class is decided by which distinctive parts appear in them.

The CPU-sized stand-in for CUB-200-2011. Every image shows the ``parts_per_class`` *diagnostic* parts of
its class at random, non-overlapping places, plus a few *distractor* parts, on a smooth random colour
gradient with low-amplitude noise. A part type is a shape (disc, square, triangle, cross, ring, diamond)
with a characteristic colour and, for some types, a texture (stripes, checker), so that the prototype
explanations of ``explaining_prototypes`` (hue / shape / texture importance) have a known answer.
The distractor vocabulary recombines the diagnostic shapes, colours and textures (a *blue disc*, where the
diagnostic types hold a red disc and a blue square), so neither colour nor shape alone identifies a part.
Every part's box, type id and pixel mask are returned: the ground truth that the interpretability scores
of ``eval_protopnet`` (consistency, stability) need, exactly like CUB's part keypoints.

Everything is deterministic from ``seed`` (a ``numpy.random.Generator``); generation is vectorised over
images (2,000 images at 32x32 take well under a second on one core). No library offers such a generator
(torchvision's ``FakeData`` is pure noise), so it is written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError, check_positive_int, check_range

__all__ = [
    "PART_TYPES",
    "PartType",
    "PartsData",
    "make_parts",
    "part_masks",
    "part_size_for",
    "parts_splits",
    "perturb",
]


@dataclass(frozen=True)
class PartType:
    """One kind of part: a shape, a base colour (RGB in [0, 1]) and a texture."""

    name: str
    shape: str  # disc | square | triangle | cross | ring | diamond
    rgb: tuple[float, float, float]
    texture: str  # solid | stripes | checker
    diagnostic: bool  # True: used to define classes; False: distractor only


_RED, _BLUE, _GREEN = (0.92, 0.12, 0.10), (0.15, 0.30, 0.95), (0.10, 0.72, 0.15)
_YELLOW, _MAGENTA, _CYAN = (0.96, 0.88, 0.10), (0.88, 0.15, 0.85), (0.10, 0.85, 0.90)
_ORANGE, _PURPLE = (1.00, 0.52, 0.05), (0.50, 0.15, 0.80)

#: The part vocabulary. Ids 0..7 are diagnostic (classes are sets of them), ids 8.. are distractors.
PART_TYPES: tuple[PartType, ...] = (
    PartType("red disc", "disc", _RED, "solid", True),
    PartType("blue square", "square", _BLUE, "solid", True),
    PartType("green triangle", "triangle", _GREEN, "solid", True),
    PartType("yellow cross", "cross", _YELLOW, "solid", True),
    PartType("magenta ring", "ring", _MAGENTA, "solid", True),
    PartType("cyan diamond", "diamond", _CYAN, "solid", True),
    PartType("orange striped square", "square", _ORANGE, "stripes", True),
    PartType("purple checkered disc", "disc", _PURPLE, "checker", True),
    PartType("blue disc", "disc", _BLUE, "solid", False),
    PartType("red square", "square", _RED, "solid", False),
    PartType("green cross", "cross", _GREEN, "solid", False),
    PartType("yellow triangle", "triangle", _YELLOW, "solid", False),
    PartType("cyan striped square", "square", _CYAN, "stripes", False),
)
_DIAGNOSTIC_IDS = np.array([i for i, t in enumerate(PART_TYPES) if t.diagnostic])
_DISTRACTOR_IDS = np.array([i for i, t in enumerate(PART_TYPES) if not t.diagnostic])
_SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")
_TEXTURE_DARK = 0.38  # brightness factor of the dark stripes / checks
_GAP = 1  # at least this many background pixels between two parts
_MAX_FILL = 0.4  # at most this fraction of the image covered by (part + gap) squares


def part_size_for(size: int) -> int:
    """The side (pixels) of every part's box in an image of side ``size``: a quarter of it, at least 4."""
    return max(4, int(round(size / 4)))


@dataclass
class PartsData:
    """A generated ``parts`` dataset. ``P`` = most parts in one image, ``T`` = number of part types."""

    images: torch.Tensor  # float32 [N, 3, H, W] in [0, 1]
    labels: torch.Tensor  # int64 [N]
    part_boxes: torch.Tensor  # float32 [N, P, 4] (x0, y0, x1, y1) pixel edges (x1, y1 exclusive); -1 if absent
    part_ids: torch.Tensor  # int64 [N, P], part type id (index into part_names) or -1
    diagnostic: torch.Tensor  # bool [N, P], True for the class-deciding parts
    class_parts: torch.Tensor  # int64 [C, k], the diagnostic part types of each class
    part_names: list[str]  # [T], names of all part types (see PART_TYPES)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.class_parts.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def part_types(self) -> tuple[PartType, ...]:
        """Shape, colour and texture of every part type, indexed by part id."""
        return PART_TYPES[: len(self.part_names)]

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> PartsData:
        """The images at ``index`` (class definitions unchanged)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return PartsData(
            self.images[idx],
            self.labels[idx],
            self.part_boxes[idx],
            self.part_ids[idx],
            self.diagnostic[idx],
            self.class_parts,
            list(self.part_names),
        )

    def keypoints(self) -> torch.Tensor:
        """CUB-style part locations, float32 [N, T, 3]: (x, y, visible) of each part type's centre.

        Coordinates are pixel indices (column x, row y; the centre of an 8-pixel box starting at 0 is 3.5).
        Part types absent from an image have (0, 0, 0), as in CUB's ``part_locs.txt``.
        """
        n, t = len(self), len(self.part_names)
        out = torch.zeros(n, t, 3)
        img, slot = torch.nonzero(self.part_ids >= 0, as_tuple=True)
        box = self.part_boxes[img, slot]
        pid = self.part_ids[img, slot]
        out[img, pid, 0] = (box[:, 0] + box[:, 2] - 1) / 2
        out[img, pid, 1] = (box[:, 1] + box[:, 3] - 1) / 2
        out[img, pid, 2] = 1.0
        return out

    def part_masks(self) -> torch.Tensor:
        """Pixel masks of every part slot, bool [N, P, H, W] (all False for absent slots)."""
        return part_masks(self)

    def as_dataset(self):  # -> IndexedTensorDataset (imported lazily to keep this module standalone)
        """The images and labels as an ``IndexedTensorDataset`` (items ``(x, y, index)``)."""
        from priorkit.data.datasets import IndexedTensorDataset

        return IndexedTensorDataset(self.images, self.labels)


# ----------------------------------------------------------------------------------------------------------
# templates


def shape_coverage(shape: str, s: int, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` drawn in an ``s`` x ``s`` box, float32 [s, s]."""
    m = s * supersample
    c = (np.arange(m) + 0.5) / m * 2.0 - 1.0  # sample centres in [-1, 1]
    v, u = np.meshgrid(c, c, indexing="ij")  # v: rows (down), u: columns (right)
    if shape == "disc":
        inside = u**2 + v**2 <= 0.95**2
    elif shape == "square":
        inside = (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
    elif shape == "triangle":  # apex up, base down
        inside = (v <= 0.88) & (np.abs(u) <= (v + 0.95) / 1.83 * 0.95)
    elif shape == "cross":
        inside = ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (np.abs(u) <= 0.95) & (np.abs(v) <= 0.95)
    elif shape == "ring":
        r2 = u**2 + v**2
        inside = (r2 <= 0.95**2) & (r2 >= 0.45**2)
    elif shape == "diamond":
        inside = np.abs(u) + np.abs(v) <= 1.0
    else:  # pragma: no cover - guarded by PART_TYPES
        raise PriorkitError(f"shape must be one of {list(_SHAPES)}, got {shape!r}")
    cov = inside.reshape(s, supersample, s, supersample).mean(axis=(1, 3))
    return cov.astype(np.float32)


def _texture(texture: str, s: int) -> np.ndarray:
    """Brightness factor of the texture, float32 [s, s] (1 = full colour)."""
    r, c = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    if texture == "solid":
        dark = np.zeros((s, s), bool)
    elif texture == "stripes":  # horizontal stripes
        w = max(1, s // 6)
        dark = (r // w) % 2 == 1
    elif texture == "checker":
        w = max(1, s // 4)
        dark = ((r // w) + (c // w)) % 2 == 1
    else:  # pragma: no cover
        raise PriorkitError(f"texture must be one of ['solid', 'stripes', 'checker'], got {texture!r}")
    return np.where(dark, _TEXTURE_DARK, 1.0).astype(np.float32)


def _templates(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage [T, s, s] and texture factor [T, s, s] of every part type at side ``s``."""
    cov = np.stack([shape_coverage(t.shape, s) for t in PART_TYPES])
    tex = np.stack([_texture(t.texture, s) for t in PART_TYPES])
    return cov, tex


# ----------------------------------------------------------------------------------------------------------
# generation


def _max_parts(size: int) -> int:
    s = part_size_for(size)
    return int(_MAX_FILL * size * size // ((s + _GAP) ** 2))


def _class_parts(n_classes: int, k: int) -> np.ndarray:
    """The diagnostic part types of each class, int64 [C, k]; independent of the seed.

    Disjoint blocks first (class c gets types c*k .. c*k+k-1 while they last), then the remaining
    k-subsets of the vocabulary in a fixed pseudo-random order, so every class has a distinct set.
    """
    v = len(_DIAGNOSTIC_IDS)
    chosen = [tuple(range(i * k, (i + 1) * k)) for i in range(v // k)][:n_classes]
    if len(chosen) < n_classes:
        rest = [c for c in combinations(range(v), k) if c not in chosen]
        order = np.random.default_rng(1234).permutation(len(rest))
        chosen += [rest[i] for i in order[: n_classes - len(chosen)]]
    return _DIAGNOSTIC_IDS[np.array(chosen, dtype=np.int64)]


def _place(rng: np.random.Generator, n_active: np.ndarray, p: int, s: int, size: int) -> np.ndarray:
    """Top-left corners int64 [N, P, 2] (x, y) of non-overlapping s x s boxes; -1 for inactive slots.

    Slot j of image i is active iff j < n_active[i]. Sequential placement with rejection, vectorised over
    images; an image that jams is placed again from scratch.
    """
    n = len(n_active)
    lim = size - s + 1
    out = np.full((n, p, 2), -1, dtype=np.int64)
    todo = np.arange(n)
    for _restart in range(200):
        if todo.size == 0:
            break
        m = todo.size
        act = np.arange(p)[None, :] < n_active[todo, None]
        pos = rng.integers(0, lim, size=(m, p, 2))
        ok = np.ones(m, bool)
        for j in range(1, p):
            for _try in range(60):
                d = np.abs(pos[:, :j] - pos[:, j : j + 1])
                bad = ((d < s + _GAP).all(-1)).any(-1) & act[:, j] & ok
                if not bad.any():
                    break
                pos[bad, j] = rng.integers(0, lim, size=(int(bad.sum()), 2))
            else:
                ok &= ~bad
        pos[~act] = -1
        out[todo[ok]] = pos[ok]
        todo = todo[~ok]
    if todo.size:  # pragma: no cover - prevented by the capacity check
        raise PriorkitError(f"could not place {p} parts of side {s} in {todo.size} images of side {size}")
    return out


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth random colour gradients with low-amplitude noise, float32 [N, H, W, 3]."""
    grey = rng.uniform(0.3, 0.7, size=(n, 2, 1))
    cols = np.clip(grey + rng.uniform(-0.13, 0.13, size=(n, 2, 3)), 0.0, 1.0).astype(np.float32)
    theta = rng.uniform(0.0, 2.0 * np.pi, size=n)
    coord = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    cx = (np.cos(theta) / math.sqrt(2.0)).astype(np.float32)[:, None, None]
    cy = (np.sin(theta) / math.sqrt(2.0)).astype(np.float32)[:, None, None]
    t = (cx * coord[None, None, :] + cy * coord[None, :, None] + 0.5)[..., None]  # in [0, 1], [N, H, W, 1]
    img = cols[:, 0, None, None, :] + (cols[:, 1, None, None, :] - cols[:, 0, None, None, :]) * t
    coarse = torch.from_numpy(rng.standard_normal((n, 3, 4, 4), dtype=np.float32) * 0.05)
    blobs = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    img += blobs.permute(0, 2, 3, 1).numpy()
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.015)
    return img


def _validate(n: int, n_classes: int, size: int, parts_per_class: int, n_distractors) -> tuple[int, int]:
    check_positive_int("n", n, 1)
    check_positive_int("size", size, 16)
    v = len(_DIAGNOSTIC_IDS)
    check_positive_int("parts_per_class", parts_per_class, 1)
    if parts_per_class > v:
        raise PriorkitError(f"parts_per_class must be in [1, {v}] (the diagnostic vocabulary), got {parts_per_class}")
    most = math.comb(v, parts_per_class)
    check_positive_int("n_classes", n_classes, 2)
    if n_classes > most:
        raise PriorkitError(
            f"n_classes must be in [2, {most}] for parts_per_class={parts_per_class} "
            f"({v} diagnostic part types give {most} distinct sets), got {n_classes}"
        )
    if isinstance(n_distractors, tuple | list):
        if len(n_distractors) != 2:
            raise PriorkitError(f"n_distractors must be an int or a (low, high) pair, got {n_distractors!r}")
        lo, hi = n_distractors
    else:
        lo = hi = n_distractors
    for name, val in (("n_distractors", lo), ("n_distractors", hi)):
        if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val <= len(_DISTRACTOR_IDS):
            raise PriorkitError(
                f"{name} must be an int (or a (low, high) pair of ints) in [0, {len(_DISTRACTOR_IDS)}], "
                f"got {n_distractors!r}"
            )
    if lo > hi:
        raise PriorkitError(f"n_distractors as (low, high) needs low <= high, got {n_distractors!r}")
    cap = _max_parts(size)
    if parts_per_class + hi > cap:
        raise PriorkitError(
            f"parts_per_class + n_distractors must be <= {cap} for size={size} (parts of side "
            f"{part_size_for(size)} px must fit without overlap), got {parts_per_class} + {hi}; "
            "use a larger size or fewer parts"
        )
    return lo, hi


def _generate(rng: np.random.Generator, n: int, n_classes: int, size: int, k: int, d_lo: int, d_hi: int) -> PartsData:
    s = part_size_for(size)
    p = k + d_hi
    class_parts = _class_parts(n_classes, k)

    labels = rng.permutation(np.arange(n) % n_classes)  # balanced to within one image
    n_dis = rng.integers(d_lo, d_hi + 1, size=n) if d_hi > d_lo else np.full(n, d_hi)
    n_active = k + n_dis

    # part types per slot: the class's diagnostic parts, then distinct distractors
    ids = np.full((n, p), -1, dtype=np.int64)
    ids[:, :k] = class_parts[labels]
    if d_hi:
        keys = rng.random((n, len(_DISTRACTOR_IDS)))
        picks = _DISTRACTOR_IDS[np.argsort(keys, axis=1)[:, :d_hi]]
        ids[:, k:] = np.where(np.arange(d_hi)[None, :] < n_dis[:, None], picks, -1)
    diagnostic = np.zeros((n, p), bool)
    diagnostic[:, :k] = True

    # places: sequential placement, then shuffle which active slot gets which place
    pos = _place(rng, n_active, p, s, size)
    keys = np.where(np.arange(p)[None, :] < n_active[:, None], rng.random((n, p)), np.inf)
    perm = np.argsort(keys, axis=1)
    pos = np.take_along_axis(pos, perm[..., None], axis=1)
    pos[ids < 0] = -1

    # instance colours: mild brightness and per-channel jitter
    colour = np.array([t.rgb for t in PART_TYPES], dtype=np.float32)[np.maximum(ids, 0)]
    colour = colour * rng.uniform(0.85, 1.0, size=(n, p, 1)) + rng.normal(0.0, 0.03, size=(n, p, 3))
    colour = np.clip(colour, 0.0, 1.0).astype(np.float32)

    img = _background(rng, n, size)
    cov, tex = _templates(s)
    ar = np.arange(s)
    img_i, slot = np.nonzero(ids >= 0)  # parts never overlap, so all can be drawn at once
    tid = ids[img_i, slot]
    rows = pos[img_i, slot, 1][:, None] + ar[None, :]  # [m, s]
    cols = pos[img_i, slot, 0][:, None] + ar[None, :]
    where = (img_i[:, None, None], rows[:, :, None], cols[:, None, :])
    alpha = cov[tid][..., None]  # [m, s, s, 1]
    paint = colour[img_i, slot][:, None, None, :] * tex[tid][..., None]
    img[where] = img[where] * (1.0 - alpha) + paint * alpha
    img *= rng.uniform(0.96, 1.04, size=(n, 1, 1, 3)).astype(np.float32)  # mild global colour jitter
    np.clip(img, 0.0, 1.0, out=img)

    boxes = np.full((n, p, 4), -1.0, dtype=np.float32)
    act = ids >= 0
    boxes[act, 0] = pos[act, 0]
    boxes[act, 1] = pos[act, 1]
    boxes[act, 2] = pos[act, 0] + s
    boxes[act, 3] = pos[act, 1] + s
    return PartsData(
        images=torch.from_numpy(np.ascontiguousarray(img.transpose(0, 3, 1, 2))),
        labels=torch.from_numpy(labels.astype(np.int64)),
        part_boxes=torch.from_numpy(boxes),
        part_ids=torch.from_numpy(ids),
        diagnostic=torch.from_numpy(diagnostic & act),
        class_parts=torch.from_numpy(class_parts),
        part_names=[t.name for t in PART_TYPES],
    )


def make_parts(
    n: int,
    *,
    n_classes: int = 4,
    size: int = 32,
    parts_per_class: int = 2,
    n_distractors: int | tuple[int, int] = 1,
    seed: int = 0,
) -> PartsData:
    """Generate ``n`` images of side ``size`` in ``n_classes`` balanced classes.

    Class ``c`` is the set ``class_parts[c]`` of ``parts_per_class`` diagnostic part types; each image holds
    exactly those parts plus ``n_distractors`` distinct distractor parts (an int, or a ``(low, high)`` pair
    for a per-image count drawn uniformly), all at random non-overlapping places. Parts have side
    :func:`part_size_for` ``(size)`` (8 px at 32). The class definitions depend only on ``n_classes`` and
    ``parts_per_class``, never on ``seed``.
    """
    lo, hi = _validate(n, n_classes, size, parts_per_class, n_distractors)
    return _generate(np.random.default_rng(seed), n, n_classes, size, parts_per_class, lo, hi)


def parts_splits(
    n_train: int, n_val: int, n_test: int, *, seed: int = 0, **kw
) -> tuple[PartsData, PartsData, PartsData]:
    """Train / val / test sets with the same class definitions and independent images.

    Each split draws from its own stream of ``SeedSequence([seed, split])``, so the validation images do not
    change when ``n_train`` does. ``kw`` are the keyword arguments of :func:`make_parts` (not ``seed``).
    """
    bad = set(kw) - {"n_classes", "size", "parts_per_class", "n_distractors"}
    if bad:
        raise PriorkitError(
            f"parts_splits got unknown keyword(s) {sorted(bad)}; allowed: n_classes, size, parts_per_class, "
            "n_distractors"
        )
    out = []
    for i, (name, m) in enumerate((("n_train", n_train), ("n_val", n_val), ("n_test", n_test))):
        check_positive_int(name, m, 1)
        opts = dict(n_classes=4, size=32, parts_per_class=2, n_distractors=1) | kw
        lo, hi = _validate(m, opts["n_classes"], opts["size"], opts["parts_per_class"], opts["n_distractors"])
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        out.append(_generate(rng, m, opts["n_classes"], opts["size"], opts["parts_per_class"], lo, hi))
    return out[0], out[1], out[2]


def part_masks(data: PartsData) -> torch.Tensor:
    """Pixel masks of every part slot of ``data``, bool [N, P, H, W]: pixels at least half covered."""
    n, p = data.part_ids.shape
    size = data.size
    s = part_size_for(size)
    cov, _ = _templates(s)
    out = np.zeros((n, p, size, size), bool)
    ids = data.part_ids.numpy()
    boxes = data.part_boxes.numpy().astype(np.int64)
    img_i, slot = np.nonzero(ids >= 0)
    if img_i.size:
        if not np.all(boxes[img_i, slot, 2] - boxes[img_i, slot, 0] == s):
            raise PriorkitError(f"part_boxes must have side {s} for images of side {size} (as make_parts draws)")
        ar = np.arange(s)
        rows = boxes[img_i, slot, 1][:, None] + ar[None, :]
        cols = boxes[img_i, slot, 0][:, None] + ar[None, :]
        out[img_i[:, None, None], slot[:, None, None], rows[:, :, None], cols[:, None, :]] = (
            cov[ids[img_i, slot]] >= 0.5
        )
    return torch.from_numpy(out)


def perturb(data: PartsData | torch.Tensor, noise_std: float, seed: int = 0) -> torch.Tensor:
    """The images plus Gaussian noise N(0, noise_std²), clipped to [0, 1] (same parts, same places).

    For the stability score of ``eval_protopnet``: compare prototype activations on ``data.images`` and on
    ``perturb(data, 0.2)``. Deterministic from ``seed``; ``noise_std = 0`` returns an exact copy.
    """
    check_range("noise_std", noise_std, 0.0)
    images = data.images if isinstance(data, PartsData) else data
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise PriorkitError("data must be a PartsData or a float image tensor")
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(images.shape, generator=g, dtype=images.dtype) * float(noise_std)
    return (images + noise.to(images.device)).clamp_(0.0, 1.0)
