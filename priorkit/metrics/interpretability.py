"""Interpretability scores for part-prototype models: consistency and stability.

From "Evaluation and Improvement of Interpretability for Self-Explainable Part-Prototype Networks" (Huang et al.,
ICCV 2023; card ``eval_protopnet``). Prototype explanations had been judged only by eye; the paper scores them
against ground-truth part locations (CUB's 15 keypoints):

* **coverage**: the prototype's activation map on an image is upsampled (bicubic) to the image size, its argmax
  pixel is the centre of a box of half-size ``half_size`` (clipped to the image, bounds inclusive), and the
  prototype *covers* part p if p is visible and p's keypoint lies in that box;
* **consistency**: per own-class prototype, the frequency with which it covers part p over the images of its
  class where p is visible; the prototype is consistent if some part reaches ``part_thresh`` (0.8). Score =
  100 x fraction of consistent prototypes over all classes;
* **stability**: the coverage vector of each (own-class prototype, image) pair is computed again with Gaussian
  noise N(0, noise_std^2) added to the model input; a pair is stable if the two vectors are identical. Score =
  100 x mean over classes of the mean over that class's pairs. A pair that covers no part with and without noise
  counts as stable, so background-firing prototypes score high; :func:`interpretability_scores` also returns
  ``part_hit_rate`` (the fraction of pairs that cover any part) to read beside it.

Model-agnostic: the scores take ``maps_fn(x) -> [B, M, h, w]`` (activation maps, higher = more active, e.g. a
ProtoPNet's ``similarity_maps`` or a TesNet-style projection map) with the M = C*K prototypes in contiguous class
blocks (prototype j belongs to class j // K, ProtoPNet's identity), or an explicit ``class_prototypes`` [C, K]
index table. Keypoints are [N, P, 3] (x = column, y = row, visible) in the model-input pixel frame; for priorkit's
``parts`` data use :func:`parts_keypoints` (part centres, from ``PartsData.keypoints``), for CUB-style part
locations in original-image pixels use :func:`cub_keypoints_to_frame` (the official crop-and-resize mapping).

Official code: hqhQAQ/EvalProtoPNet (``util/eval_consistency.py::evaluate_consistency``,
``util/eval_stability.py::evaluate_stability``), rewritten here on tensors. Deviations and quirks, each selectable:
the official stability test compares the *sum* of the coverage difference with 0 (a +1 and a -1 cancel);
priorkit requires identical vectors (``official_sum=True`` restores the sum). The official code hard-codes
K = 10 in stability; here K comes from the model. Noise is added to the model input after ``preprocess`` (the
official "after normalisation"; ``noise_space="raw"`` adds it before). Keypoints are compared as given (floats);
the official code truncates the rescaled CUB locations to ints, which :func:`cub_keypoints_to_frame` does too.
A class with no evaluation image raises (the official code would crash there). Libraries considered: CaBRNet's
``core/evaluation/consistency.py`` is tied to its config/CLI and Quantus has no part-keypoint metric, so the
metric is written here (about 150 lines).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range, check_shape

__all__ = [
    "NOISE_SPACES",
    "class_prototype_table",
    "consistency_from_coverage",
    "consistency_score",
    "coverage_from_maps",
    "cub_keypoints_to_frame",
    "interpretability_scores",
    "parts_keypoints",
    "prototype_part_coverage",
    "stability_from_coverage",
    "stability_score",
]

NOISE_SPACES = ("preprocessed", "raw")
MapsFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# keypoints


def parts_keypoints(data) -> torch.Tensor:
    """Keypoints [N, T, 3] (x, y, visible) of a ``priorkit.data.parts.PartsData``: each part type's centre."""
    if not callable(getattr(data, "keypoints", None)):
        raise PriorkitError("data must be a PartsData (with a keypoints() method)")
    return data.keypoints()


def cub_keypoints_to_frame(part_locs: torch.Tensor, bbox: torch.Tensor, img_size: int) -> torch.Tensor:
    """Map CUB part locations to the frame of the bbox-cropped image resized to ``img_size``, as the official code.

    ``part_locs`` [N, P, 3] (x, y, visible) in original pixels; ``bbox`` [N, 4] as (x1, y1, x2, y2) (CUB's
    ``bounding_boxes.txt`` gives x, y, w, h: pass x2 = x + w). The new location is
    ``int(img_size * (loc - x1) / (x2 - x1))`` (truncation as the repo); invisible parts become (0, 0, 0).
    """
    check_shape("part_locs", part_locs, (None, None, 3))
    check_shape("bbox", bbox, (part_locs.shape[0], 4))
    check_positive_int("img_size", img_size)
    b = bbox.double()
    w, h = (b[:, 2] - b[:, 0]), (b[:, 3] - b[:, 1])
    if bool((w <= 0).any() or (h <= 0).any()):
        raise PriorkitError("bbox must have x2 > x1 and y2 > y1 for every image")
    x = torch.trunc(img_size * (part_locs[..., 0].double() - b[:, 0, None]) / w[:, None])
    y = torch.trunc(img_size * (part_locs[..., 1].double() - b[:, 1, None]) / h[:, None])
    vis = part_locs[..., 2] > 0
    out = torch.stack([x, y, vis.double()], dim=-1).float()
    return out * vis[..., None]


# ----------------------------------------------------------------------------------------------------------
# coverage (functional core)


def class_prototype_table(num_prototypes: int, num_classes: int) -> torch.Tensor:
    """[C, K] indices of each class's prototypes for contiguous class blocks (j belongs to class j // K)."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("num_prototypes", num_prototypes)
    if num_prototypes % num_classes:
        raise PriorkitError(
            f"num_prototypes ({num_prototypes}) must be a multiple of num_classes ({num_classes}); "
            "pass class_prototypes for other layouts"
        )
    return torch.arange(num_prototypes).view(num_classes, num_prototypes // num_classes)


def coverage_from_maps(
    maps: torch.Tensor, keypoints: torch.Tensor, image_size: tuple[int, int], half_size: float
) -> torch.Tensor:
    """bool [B, K, P]: prototype k's box covers visible part p on image b.

    ``maps`` [B, K, h, w] activation maps (higher = more active) are upsampled to ``image_size`` (H, W) with
    bicubic interpolation; the argmax pixel (row r, col c; the first in row-major order on ties) gives the box
    rows [max(0, r - half), min(H, r + half)] and cols [max(0, c - half), min(W, c + half)], bounds inclusive
    (the official ``in_bbox``). ``keypoints`` [B, P, 3] = (x = col, y = row, visible).
    """
    check_shape("maps", maps, (None, None, None, None))
    check_shape("keypoints", keypoints, (maps.shape[0], None, 3))
    if len(image_size) != 2:
        raise PriorkitError(f"image_size must be (H, W), got {image_size!r}")
    hi, wi = (int(v) for v in image_size)
    check_positive_int("image_size[0]", hi)
    check_positive_int("image_size[1]", wi)
    check_range("half_size", half_size, 0.0)
    if not torch.isfinite(maps).all():
        raise PriorkitError("maps must be finite (got NaN or inf activations)")
    up = F.interpolate(maps.detach().float(), size=(hi, wi), mode="bicubic", align_corners=False)
    flat = up.flatten(2).argmax(dim=2)  # [B, K], first max in row-major order
    r, c = (flat // wi).float(), (flat % wi).float()
    r0, r1 = (r - half_size).clamp_min(0.0), (r + half_size).clamp_max(float(hi))
    c0, c1 = (c - half_size).clamp_min(0.0), (c + half_size).clamp_max(float(wi))
    kx, ky = keypoints[..., 0].float()[:, None, :], keypoints[..., 1].float()[:, None, :]  # [B, 1, P]
    vis = (keypoints[..., 2] > 0)[:, None, :]
    inside = (ky >= r0[..., None]) & (ky <= r1[..., None]) & (kx >= c0[..., None]) & (kx <= c1[..., None])
    return inside & vis


def _check_labels(labels: torch.Tensor, n: int, num_classes: int) -> None:
    check_shape("labels", labels, (n,))
    if labels.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        raise PriorkitError("labels must be an integer tensor")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PriorkitError(f"labels must lie in [0, {num_classes - 1}]")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise PriorkitError(f"every class needs at least one evaluation image; classes {missing} have none")


def consistency_from_coverage(
    coverage: torch.Tensor,
    visible: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    part_thresh: float = 0.8,
) -> tuple[float, torch.Tensor]:
    """Consistency score (0..100) and the per-prototype consistent flags [C, K] from own-class coverage.

    ``coverage`` bool [N, K, P] (image n's K own-class prototypes), ``visible`` [N, P], ``labels`` [N].
    freq[c, k, p] = #covered / #visible over class c's images (a part never visible counts as 0);
    prototype (c, k) is consistent iff max_p freq >= ``part_thresh``.
    """
    check_shape("coverage", coverage, (None, None, None))
    check_shape("visible", visible, (coverage.shape[0], coverage.shape[2]))
    check_range("part_thresh", part_thresh, 0.0, 1.0, low_inclusive=False)
    check_positive_int("num_classes", num_classes)
    _check_labels(labels, coverage.shape[0], num_classes)
    cov = (coverage.bool() & visible.bool()[:, None, :]).double()
    onehot = F.one_hot(labels.long(), num_classes).double()  # [N, C]
    hits = torch.einsum("nc,nkp->ckp", onehot, cov)
    seen = (onehot.t() @ visible.double()).clamp_min(1.0)  # [C, P]
    freq = hits / seen[:, None, :]
    consistent = (freq >= part_thresh).any(dim=2)  # [C, K]
    return 100.0 * float(consistent.double().mean()), consistent


def stability_from_coverage(
    coverage: torch.Tensor,
    coverage_noisy: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    official_sum: bool = False,
) -> float:
    """Stability score (0..100): mean over classes of the fraction of (image, own-class prototype) pairs whose
    coverage vector is unchanged under noise. ``official_sum=True`` uses the repo's test (sum of differences
    == 0, so a +1 and a -1 cancel)."""
    check_shape("coverage", coverage, (None, None, None))
    check_shape("coverage_noisy", coverage_noisy, tuple(coverage.shape))
    check_positive_int("num_classes", num_classes)
    _check_labels(labels, coverage.shape[0], num_classes)
    diff = coverage.double() - coverage_noisy.double()
    same = (diff.sum(dim=2) == 0) if official_sum else (diff == 0).all(dim=2)  # [N, K]
    per_img = same.double().mean(dim=1)
    onehot = F.one_hot(labels.long(), num_classes).double()
    per_class = (onehot.t() @ per_img) / onehot.sum(0)
    return 100.0 * float(per_class.mean())


# ----------------------------------------------------------------------------------------------------------
# model-level scores


@torch.no_grad()
def prototype_part_coverage(
    maps_fn: MapsFn,
    images: torch.Tensor,
    keypoints: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    half_size: float = 36.0,
    class_prototypes: torch.Tensor | None = None,
    noise_std: float = 0.0,
    noise_space: str = "preprocessed",
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Own-class coverage bool [N, K, P] of ``maps_fn``'s prototypes on ``images`` [N, C, H, W].

    With ``noise_std`` > 0, N(0, noise_std^2) noise (deterministic from ``seed``) is added to the model input
    after ``preprocess`` (``noise_space="preprocessed"``, the official choice) or to the raw images before it
    (``"raw"``); no clipping, as the repo.
    """
    check_shape("images", images, (None, None, None, None))
    n = images.shape[0]
    check_shape("keypoints", keypoints, (n, None, 3))
    check_positive_int("num_classes", num_classes)
    _check_labels(labels, n, num_classes)
    check_range("noise_std", noise_std, 0.0)
    check_choice("noise_space", noise_space, NOISE_SPACES)
    check_positive_int("batch_size", batch_size)
    prep = preprocess or (lambda t: t)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    table = class_prototypes
    for s in range(0, n, batch_size):
        x = images[s : s + batch_size]
        if noise_std > 0 and noise_space == "raw":
            x = x + noise_std * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        x = prep(x)
        if noise_std > 0 and noise_space == "preprocessed":
            x = x + noise_std * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        maps = maps_fn(x)
        check_shape("maps_fn(x)", maps, (x.shape[0], None, None, None))
        if table is None:
            table = class_prototype_table(maps.shape[1], num_classes)
        check_shape("class_prototypes", table, (num_classes, None))
        if int(table.max()) >= maps.shape[1] or int(table.min()) < 0:
            raise PriorkitError(f"class_prototypes must index the {maps.shape[1]} maps of maps_fn")
        y = labels[s : s + batch_size].long()
        own = table.to(maps.device)[y.to(maps.device)]  # [b, K]
        sel = torch.gather(maps, 1, own[:, :, None, None].expand(-1, -1, *maps.shape[2:]))
        out.append(coverage_from_maps(sel.cpu(), keypoints[s : s + batch_size], tuple(images.shape[2:]), half_size))
    return torch.cat(out)


def consistency_score(
    maps_fn: MapsFn,
    images: torch.Tensor,
    keypoints: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    half_size: float = 36.0,
    part_thresh: float = 0.8,
    **kw,
) -> float:
    """The paper's consistency score (0..100) of a model's prototypes; ``kw`` go to
    :func:`prototype_part_coverage` (``class_prototypes``, ``preprocess``, ``batch_size``)."""
    cov = prototype_part_coverage(maps_fn, images, keypoints, labels, num_classes, half_size=half_size, **kw)
    return consistency_from_coverage(cov, keypoints[..., 2] > 0, labels, num_classes, part_thresh)[0]


def stability_score(
    maps_fn: MapsFn,
    images: torch.Tensor,
    keypoints: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    half_size: float = 36.0,
    noise_std: float = 0.2,
    official_sum: bool = False,
    seed: int = 0,
    **kw,
) -> float:
    """The paper's stability score (0..100): coverage with vs without N(0, ``noise_std``^2) input noise."""
    clean = prototype_part_coverage(maps_fn, images, keypoints, labels, num_classes, half_size=half_size, **kw)
    noisy = prototype_part_coverage(
        maps_fn, images, keypoints, labels, num_classes, half_size=half_size, noise_std=noise_std, seed=seed, **kw
    )
    return stability_from_coverage(clean, noisy, labels, num_classes, official_sum=official_sum)


def interpretability_scores(
    maps_fn: MapsFn,
    images: torch.Tensor,
    keypoints: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    half_size: float = 36.0,
    part_thresh: float = 0.8,
    noise_std: float = 0.2,
    seed: int = 0,
    **kw,
) -> dict[str, float]:
    """``{"consistency", "stability", "part_hit_rate"}`` with one clean pass shared by both scores.

    ``part_hit_rate`` (a priorkit diagnostic, not in the paper): 100 x the fraction of clean (image, own-class
    prototype) pairs whose box covers at least one visible part. Stability counts a pair whose box covers no
    part with and without noise as stable, so a prototype that sits on the background scores high stability;
    read the two together."""
    clean = prototype_part_coverage(maps_fn, images, keypoints, labels, num_classes, half_size=half_size, **kw)
    noisy = prototype_part_coverage(
        maps_fn, images, keypoints, labels, num_classes, half_size=half_size, noise_std=noise_std, seed=seed, **kw
    )
    cons, _ = consistency_from_coverage(clean, keypoints[..., 2] > 0, labels, num_classes, part_thresh)
    return {
        "consistency": cons,
        "stability": stability_from_coverage(clean, noisy, labels, num_classes),
        "part_hit_rate": 100.0 * float(clean.any(dim=2).double().mean()),
    }
