"""Explaining prototypes: "This Looks Like That, Because ... Explaining Prototypes for Interpretable Image
Recognition" (Nauta, Jutte, Provoost, Seifert; ECML-PKDD workshops / XKDD 2021).

A visualised prototype shows *which* patch a model finds similar, not *why*. The method perturbs one visual
characteristic of the whole image at a time (hue, shape, texture, contrast, saturation; brightness in the
code), reads the prototype's similarity on the perturbed image at the location u*_j(x) where it was highest
on the original, and calls the drop Delta_j^m(x) = s_j(x, u*) - s_j(x^(m), u*) the *local* importance of
characteristic m. The *global* importance is the similarity-weighted mean
G_j^m = sum_x Delta_j^m(x) s_j(x, u*) / sum_x s_j(x, u*) over a data set (training images), so images where
the prototype is barely present count little; train and test G are compared per characteristic with a
Shapiro-Wilk and a Welch t-test. The paper reports: on a CUB-200 ProtoPNet (DenseNet121) the global scores
generalise from train to test and match visible properties of the prototypes; they are most useful where a
prototype would otherwise be misread (e.g. looks like a shape but is matched by texture).

Official code: M-Nauta/Explaining_Prototypes (``preprocessing/mod_values.py`` levels,
``preprocessing/create_modified_datasets.py`` transforms, ``prototype_activation.py::forward_get_patch_index,
forward_particular_patch, weighted_mean``). This is a new implementation that perturbs on the fly (the repo
writes modified JPEG data sets to disk). Libraries considered: torchvision's ColorJitter (not a dependency
here; the blend / HSV formulas are re-implemented on tensors with the same conventions), OpenCV / skimage
NL-means (neither installed: :func:`nl_means_denoise` is a vectorised torch NL-means with OpenCV's weight
``exp(-mean_sq_patch_diff / h^2)`` on the 0-255 scale), Captum's Occlusion (perturbs regions, not
characteristics).

Deviations, all configurable: the texture denoiser works in RGB (OpenCV's ``fastNlMeansDenoisingColored``
works in CIELAB with h = hColor) without OpenCV's 0.001 weight cut-off; the shape warp rounds the shift with
``floor`` (the card's formula) by default, while the repo's ``int()`` truncates toward zero (``rounding=
"trunc"``): at 32 px with A = 1, truncation leaves the warp almost the identity (only rows with sin = -1
move). Works for any model exposing ``similarity_maps(x)`` -> [B, M, H', W'] (higher = more similar), e.g.
:class:`priorkit.prototypes.protopnet.ProtoPNet`. Not built: the redundancy analysis across prototypes (card: can wait).

Equations (paper Sec. 3): the local importance Delta_j^m(x) = s_j(x, u*) - s_j(x^(m), u*) (Eq. 1) and the global
importance G_j^m, the similarity-weighted mean of Delta over a data set (Eq. 2).

Use: the entry is :func:`explain` (post hoc, no training of its own): train a prototype model through the engine
(e.g. ProtoPNet with :func:`priorkit.prototypes.protopnet_base.protopnet_recipe`), then ``expl = explain(model,
images, make_perturbations(image_size))`` and ``expl.global_importance()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError, check_batch, check_choice, check_positive_int, check_range, check_shape
from priorkit.core.spec import MethodSpec

__all__ = [
    "CHARACTERISTICS",
    "OFFICIAL_LEVELS",
    "PERTURBATIONS",
    "Explanation",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "explain",
    "generalisation_test",
    "global_importance",
    "grayscale",
    "hsv_to_rgb",
    "importance_figure",
    "local_importance",
    "make_perturbations",
    "nl_means_denoise",
    "patch_saturation",
    "rank_characteristics",
    "report",
    "rgb_to_hsv",
    "shape_level_for",
    "sine_warp",
]

#: The code's characteristic order (``prototype_activation.py::modifications``); brightness is code-only.
CHARACTERISTICS: tuple[str, ...] = ("contrast", "saturation", "hue", "shape", "texture", "brightness")
#: ``mod_values.py``: contrast / saturation / brightness factors, hue shift (fraction of the hue circle),
#: shape warp (amplitude A px, frequency w, at 224 px), texture NL-means strength h (0-255 scale).
OFFICIAL_LEVELS: dict[str, float | tuple[float, float]] = {
    "contrast": 0.45,
    "saturation": 0.7,
    "hue": 0.1,
    "shape": (4.0, 0.05),
    "texture": 4.0,
    "brightness": 0.8,
}
_REFERENCE_SIZE = 224  # image side at which the official shape levels are defined

SPEC = MethodSpec(
    status="implemented",
    entry="explain",
    missing="redundancy analysis across prototypes not built; the texture denoiser is a torch NL-means in RGB "
    "(stand-in for OpenCV's CIELAB one); stand-in for the CUB-200 ProtoPNet: tiny ProtoPNets on synthetic sets",
    presets={
        # mod_values.py levels at 224 px; read at the original argmax, whole-image perturbations
        "paper": {"levels": {**OFFICIAL_LEVELS, "shape": [4.0, 0.05]}, "location": "original", "region": "global",
                  "weighting": "similarity", "rounding": "trunc"},  # fmt: skip
        # the 32 px synthetic sets: the shape warp rescaled (A = 1 px, w = 0.35), the card's floor rounding
        "small": {"levels": {**OFFICIAL_LEVELS, "shape": [1.0, 0.35]}, "location": "original", "region": "global",
                  "weighting": "similarity", "rounding": "floor"},  # fmt: skip
    },
)


def _check_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    check_shape(name, images, (None, None, None, None))
    if images.is_floating_point():
        check_batch(name, images, dim=4)  # non-empty and finite
    if images.shape[1] not in (1, 3):
        raise PriorkitError(f"{name} must have 1 or 3 channels ([N, C, H, W], C in {{1, 3}}), got {images.shape[1]}")
    if not images.is_floating_point():
        raise PriorkitError(f"{name} must be a float tensor with values in [0, 1], got {images.dtype}")
    return images


# ----------------------------------------------------------------------------------------------------------
# perturbations: [N, C, H, W] in [0, 1] -> same shape, same range (applied to unnormalised images)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma 0.2989 R + 0.587 G + 0.114 B, [N, 1, H, W] (torchvision's convention)."""
    _check_images(images)
    if images.shape[1] == 1:
        return images.clone()
    r, g, b = images.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * a + (1.0 - factor) * b).clamp(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """ColorJitter brightness: blend with black, ``factor * x`` (clamped). Official level 0.8."""
    _check_images(images)
    check_range("factor", factor, 0.0)
    return _blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """ColorJitter contrast: blend with the image's mean luma (one scalar per image). Official level 0.45.

    For factor <= 1 no value is clipped, so the mean luma of the image is preserved (to 1e-4 relative: the
    luma weights sum to 0.9999)."""
    _check_images(images)
    check_range("factor", factor, 0.0)
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean.expand_as(images), factor)


def adjust_saturation(images: torch.Tensor, factor: float) -> torch.Tensor:
    """ColorJitter saturation: blend each pixel with its own luma (identity on 1-channel images); for factor
    <= 1 every pixel's luma is preserved. Official level 0.7."""
    _check_images(images)
    check_range("factor", factor, 0.0)
    if images.shape[1] == 1:
        return images.clone()
    return _blend(images, grayscale(images).expand_as(images), factor)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3, H, W] in [0, 1] -> HSV with h, s, v in [0, 1] (h as a fraction of the circle)."""
    check_shape("images", images, (None, 3, None, None))
    r, g, b = images.unbind(1)
    maxc = images.max(dim=1).values
    minc = images.min(dim=1).values
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dd = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / dd, (maxc - g) / dd, (maxc - b) / dd
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`; the largest output channel equals v exactly."""
    check_shape("hsv", hsv, (None, 3, None, None))
    h, s, v = hsv.unbind(1)
    h6 = torch.remainder(h, 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    table = torch.stack(
        [torch.stack(c, dim=0) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    )  # [6, 3, N, H, W]
    out = torch.gather(table, 0, i[None, None].expand(1, 3, *i.shape))[0]
    return out.permute(1, 0, 2, 3).contiguous()


def adjust_hue(images: torch.Tensor, shift: float) -> torch.Tensor:
    """ColorJitter hue: rotate the hue by ``shift`` (fraction of the circle, in [-0.5, 0.5]); value and
    saturation are kept. Identity on 1-channel images and for shift 0. Official level +0.1."""
    _check_images(images)
    check_range("shift", shift, -0.5, 0.5)
    if images.shape[1] == 1 or shift == 0:
        return images.clone()
    hsv = rgb_to_hsv(images)
    hsv = torch.stack([torch.remainder(hsv[:, 0] + shift, 1.0), hsv[:, 1], hsv[:, 2]], dim=1)
    return hsv_to_rgb(hsv).clamp(0.0, 1.0)


def _row_shifts(n: int, amplitude: float, w: float, rounding: str) -> torch.Tensor:
    raw = amplitude * torch.sin(math.pi * torch.arange(n, dtype=torch.float64) * w)
    return (torch.floor(raw) if rounding == "floor" else torch.trunc(raw)).long()


def sine_warp(images: torch.Tensor, amplitude: float, w: float, rounding: str = "floor") -> torch.Tensor:
    """The shape modification (``modify_shape``): row i is rolled right by r(i) = round(A sin(pi i w)), then
    column i is rolled down by r(i). A pure permutation of pixels; A = 0 is the identity. ``rounding``:
    ``floor`` (card) or ``trunc`` (the repo's ``int()``)."""
    _check_images(images)
    check_range("amplitude", amplitude, 0.0)
    check_range("w", w, 0.0)
    check_choice("rounding", rounding, ("floor", "trunc"))
    n, c, hh, ww = images.shape
    rows = _row_shifts(hh, amplitude, w, rounding).to(images.device)  # shift of row i (horizontal roll)
    cols = _row_shifts(ww, amplitude, w, rounding).to(images.device)  # shift of column i (vertical roll)
    # out[i, j] = in[i, (j - r_i) mod W]  (np.roll by r_i moves content to higher indices)
    jj = torch.remainder(torch.arange(ww, device=images.device)[None, :] - rows[:, None], ww)  # [H, W]
    out = torch.gather(images, 3, jj.expand(n, c, hh, ww))
    ii = torch.remainder(torch.arange(hh, device=images.device)[:, None] - cols[None, :], hh)  # [H, W]
    return torch.gather(out, 2, ii.expand(n, c, hh, ww))


def shape_level_for(size: int, amplitude: float = 4.0, w: float = 0.05, reference: int = _REFERENCE_SIZE):
    """Rescale the official warp (A = 4 px, w = 0.05 at 224 px) to images of side ``size``: A/size and
    w*size are kept (card), with A rounded to whole pixels and at least 1. 32 px -> (1, 0.35)."""
    check_positive_int("size", size)
    return float(max(1, round(amplitude * size / reference))), float(w * reference / size)


def nl_means_denoise(images: torch.Tensor, h: float, template: int = 7, search: int = 21) -> torch.Tensor:
    """The texture modification: non-local means (``cv2.fastNlMeansDenoisingColored(h=hColor=4, 7, 21)``).

    Each pixel becomes the weighted mean of the pixels q in its ``search`` window, with weight
    exp(-d(p, q) / h^2), d = mean squared difference (0-255 scale) of the ``template`` patches around p and q
    over pixels and channels. Reflect padding; h = 0 is the identity."""
    _check_images(images)
    check_range("h", h, 0.0)
    for name, v in (("template", template), ("search", search)):
        check_positive_int(name, v)
        if v % 2 == 0:
            raise PriorkitError(f"{name} must be odd, got {v}")
    if h == 0:
        return images.clone()
    n, c, hh, ww = images.shape
    r, t = search // 2, template // 2
    mode = "reflect" if min(hh, ww) > max(r, t) else "replicate"
    k = search * search
    chunk = max(1, int(2e7 // (k * c * hh * ww)))  # bound the [chunk, K, C, H, W] temporaries
    outs = []
    for s0 in range(0, n, chunk):
        x = images[s0 : s0 + chunk] * 255.0
        b = x.shape[0]
        q = F.unfold(F.pad(x, (r, r, r, r), mode=mode), search).view(b, c, k, hh, ww)  # every offset q(p + o)
        d2 = ((x[:, :, None] - q) ** 2).mean(dim=1)  # [B, K, H, W]
        d2 = F.avg_pool2d(F.pad(d2, (t, t, t, t), mode="replicate"), template, stride=1)
        wgt = torch.exp(-d2 / (h * h))[:, None]  # [B, 1, K, H, W]
        outs.append((wgt * q).sum(dim=2) / wgt.sum(dim=2) / 255.0)
    return torch.cat(outs).clamp(0.0, 1.0)


#: name -> callable(images, *level) (levels as in :data:`OFFICIAL_LEVELS`; shape takes (A, w)).
PERTURBATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "contrast": adjust_contrast,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
    "shape": sine_warp,
    "texture": nl_means_denoise,
    "brightness": adjust_brightness,
}


def make_perturbations(
    image_size: int,
    names: Sequence[str] = CHARACTERISTICS,
    levels: Mapping[str, float | tuple[float, float]] | None = None,
    *,
    rounding: str = "floor",
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Perturbations at the official levels (``levels`` overrides some), shape warp rescaled to ``image_size``
    unless ``levels['shape']`` is given. Returns name -> callable(images) -> images."""
    check_positive_int("image_size", image_size)
    if not names:
        raise PriorkitError(f"names must be a non-empty subset of {list(CHARACTERISTICS)}")
    for nm in names:
        check_choice("names", nm, CHARACTERISTICS)
    if levels:
        for nm in levels:
            check_choice("levels", nm, CHARACTERISTICS)
    lv = dict(OFFICIAL_LEVELS)
    lv["shape"] = shape_level_for(image_size, *OFFICIAL_LEVELS["shape"])  # type: ignore[misc]
    lv.update(levels or {})
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for nm in names:
        fn, level = PERTURBATIONS[nm], lv[nm]
        if nm == "shape":
            a, w = level  # type: ignore[misc]
            out[nm] = lambda x, a=a, w=w: sine_warp(x, a, w, rounding)
        else:
            out[nm] = lambda x, fn=fn, level=level: fn(x, level)
    return out


# ----------------------------------------------------------------------------------------------------------
# importance


def local_importance(
    orig_maps: torch.Tensor, mod_maps: torch.Tensor, location: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Delta_j(x) = s_j(x, u*) - s_j(x', u*) at u*_j(x) = argmax_u s_j(x, u) (first on ties, as the repo's
    max-pool indices). ``orig_maps`` and ``mod_maps`` are [B, M, H', W'] similarity maps; ``location`` [B, M]
    (flat index into H' x W') overrides u*. Returns (delta [B, M], s(x, u*) [B, M], u* [B, M])."""
    check_shape("orig_maps", orig_maps, (None, None, None, None))
    check_shape("mod_maps", mod_maps, tuple(orig_maps.shape))
    flat = orig_maps.flatten(2)
    loc = flat.argmax(dim=2) if location is None else location
    check_shape("location", loc, tuple(orig_maps.shape[:2]))
    s = flat.gather(2, loc[..., None])[..., 0]
    s_mod = mod_maps.flatten(2).gather(2, loc[..., None])[..., 0]
    return s - s_mod, s, loc


def global_importance(delta: torch.Tensor, similarity: torch.Tensor, weighting: str = "similarity") -> torch.Tensor:
    """G_j^m = sum_x Delta_j^m(x) s_j(x) / sum_x s_j(x) (``weighted_mean``) or the plain mean over x.

    ``delta`` [N, K, M] (K characteristics), ``similarity`` [N, M] (must be >= 0 for the weighted form, as
    ProtoPNet's log activation is). Returns [K, M]."""
    check_choice("weighting", weighting, ("similarity", "mean"))
    check_shape("delta", delta, (None, None, None))
    check_shape("similarity", similarity, (delta.shape[0], delta.shape[2]))
    if weighting == "mean":
        return delta.mean(dim=0)
    if (similarity < 0).any():
        raise PriorkitError("similarity must be >= 0 for weighting='similarity' (use weighting='mean')")
    tot = similarity.sum(dim=0)
    if (tot <= 0).any():
        raise PriorkitError("similarity sums to 0 for some prototype; use weighting='mean'")
    return (delta * similarity[:, None, :]).sum(dim=0) / tot


@dataclass
class Explanation:
    """Local explanations of N images: ``delta`` [N, K, M] (Delta per characteristic and prototype),
    ``similarity`` [N, M] = s_j(x, u*), ``location`` [N, M] (flat u* on the H' x W' map), ``names`` [K]."""

    names: list[str]
    delta: torch.Tensor
    similarity: torch.Tensor
    location: torch.Tensor
    map_size: tuple[int, int]

    def global_importance(self, weighting: str = "similarity") -> torch.Tensor:
        return global_importance(self.delta, self.similarity, weighting)


def _grid_boxes(location: torch.Tensor, map_size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """Pixel boxes (x0, y0, x1, y1) of the grid cell of each flat map location, [..., 4]."""
    (mh, mw), (ih, iw) = map_size, image_size
    r, c = location // mw, location % mw
    y0 = torch.div(r * ih, mh, rounding_mode="floor")
    y1 = torch.div((r + 1) * ih + mh - 1, mh, rounding_mode="floor")
    x0 = torch.div(c * iw, mw, rounding_mode="floor")
    x1 = torch.div((c + 1) * iw + mw - 1, mw, rounding_mode="floor")
    return torch.stack([x0, y0, x1, y1], dim=-1)


def _box_masks(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    ys = torch.arange(image_size[0])[:, None]
    xs = torch.arange(image_size[1])[None, :]
    b = boxes[..., None, None, :]
    return (ys >= b[..., 1]) & (ys < b[..., 3]) & (xs >= b[..., 0]) & (xs < b[..., 2])


@torch.no_grad()
def explain(
    model: torch.nn.Module,
    images: torch.Tensor,
    perturbations: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    location: str = "original",
    region: str = "global",
    batch_size: int = 64,
) -> Explanation:
    """Local importance of every characteristic for every image and prototype (one forward per image and
    characteristic, all characteristics of a batch in one pass).

    ``images`` [N, C, H, W] in [0, 1], unnormalised: perturbations act on them, then ``preprocess``.
    ``location``: ``original`` (official: read at u*(x)) or ``remax`` (re-maximise on x'). ``region``:
    ``global`` (official: perturb the whole image) or ``patch`` (not official: perturb only the grid cell of
    u*_j, one perturbed copy per prototype, M times the cost)."""
    _check_images(images)
    check_choice("location", location, ("original", "remax"))
    check_choice("region", region, ("global", "patch"))
    check_positive_int("batch_size", batch_size)
    if not callable(getattr(model, "similarity_maps", None)):
        raise PriorkitError("model must expose similarity_maps(x) -> [B, M, H', W'] (e.g. ProtoPNet)")
    perts = dict(perturbations) if perturbations is not None else make_perturbations(images.shape[-1])
    if not perts:
        raise PriorkitError("perturbations must not be empty")
    was = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), images.device)
    prep = preprocess or (lambda x: x)
    names = list(perts)
    deltas, sims, locs = [], [], []
    map_size: tuple[int, int] = (0, 0)
    for s0 in range(0, len(images), batch_size):
        x = images[s0 : s0 + batch_size]
        maps = model.similarity_maps(prep(x).to(device)).float().cpu()  # [B, M, H', W']
        map_size = tuple(maps.shape[-2:])  # type: ignore[assignment]
        flat = maps.flatten(2)
        loc = flat.argmax(dim=2)
        s = flat.gather(2, loc[..., None])[..., 0]
        b, m = s.shape
        mods = [perts[nm](x) for nm in names]
        for nm, xm in zip(names, mods):
            if xm.shape != x.shape:
                raise PriorkitError(f"perturbation {nm!r} changed the image shape {list(x.shape)} -> {list(xm.shape)}")
        if region == "global":
            mod_maps = model.similarity_maps(prep(torch.cat(mods)).to(device)).float().cpu()
            mod_maps = mod_maps.view(len(names), b, m, -1)  # [K, B, M, H'W']
        else:
            masks = _box_masks(_grid_boxes(loc, map_size, tuple(x.shape[-2:])), tuple(x.shape[-2:]))  # [B,M,H,W]
            mod_maps = torch.empty(len(names), b, m, flat.shape[-1])
            for k, xm in enumerate(mods):
                for j in range(m):
                    mk = masks[:, j, None].to(x.dtype)
                    xj = x * (1 - mk) + xm * mk
                    mod_maps[k, :, j] = model.similarity_maps(prep(xj).to(device)).float().cpu()[:, j].flatten(1)
        if location == "original":
            s_mod = mod_maps.gather(3, loc[None, ..., None].expand(len(names), b, m, 1))[..., 0]
        else:
            s_mod = mod_maps.max(dim=3).values
        deltas.append((s[None] - s_mod).permute(1, 0, 2))
        sims.append(s)
        locs.append(loc)
    model.train(was)
    return Explanation(names, torch.cat(deltas), torch.cat(sims), torch.cat(locs), map_size)


def generalisation_test(
    g_train: torch.Tensor, g_test: torch.Tensor, names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per characteristic: Shapiro-Wilk p of the train and test G over prototypes, Welch's t and p of train vs
    test (``prototype_activation.py``'s closing analysis). ``g_*`` are [K, M] with M >= 3."""
    from scipy import stats

    check_shape("g_train", g_train, (len(names), None))
    check_shape("g_test", g_test, (len(names), None))
    if g_train.shape[1] < 3 or g_test.shape[1] < 3:
        raise PriorkitError(f"generalisation_test needs at least 3 prototypes, got {g_train.shape[1]}")
    out = {}
    for k, nm in enumerate(names):
        a, b = g_train[k].double().numpy(), g_test[k].double().numpy()
        t = stats.ttest_ind(a, b, equal_var=False)
        out[nm] = {
            "shapiro_train_p": float(stats.shapiro(a).pvalue),
            "shapiro_test_p": float(stats.shapiro(b).pvalue),
            "welch_t": float(t.statistic),
            "welch_p": float(t.pvalue),
        }
    return out


def rank_characteristics(importance: torch.Tensor, names: Sequence[str]) -> list[list[tuple[str, float]]]:
    """For every prototype j, the characteristics sorted by G_j^m, largest first. ``importance`` [K, M]."""
    check_shape("importance", importance, (len(names), None))
    order = importance.argsort(dim=0, descending=True)
    return [[(names[int(k)], float(importance[k, j])) for k in order[:, j]] for j in range(importance.shape[1])]


def report(
    importance: torch.Tensor, names: Sequence[str], top: int = 3, saturation: torch.Tensor | None = None
) -> list[str]:
    """One line per prototype: its ``top`` characteristics with G (and the patch's mean saturation, which
    bounds what a hue shift can do)."""
    check_positive_int("top", top)
    lines = []
    for j, ranked in enumerate(rank_characteristics(importance, names)):
        txt = ", ".join(f"{nm} {v:+.3f}" for nm, v in ranked[:top])
        if saturation is not None:
            txt += f" (patch saturation {float(saturation[j]):.2f})"
        lines.append(f"p{j}: {txt}")
    return lines


def patch_saturation(images: torch.Tensor, expl: Explanation) -> torch.Tensor:
    """Mean HSV saturation of each image's grid-cell patch at u*_j, weighted by s_j over images, [M]."""
    _check_images(images)
    check_shape("expl.location", expl.location, (images.shape[0], None))
    if images.shape[1] == 1:
        return torch.zeros(expl.location.shape[1])
    sat = rgb_to_hsv(images)[:, 1]  # [N, H, W]
    masks = _box_masks(_grid_boxes(expl.location, expl.map_size, tuple(images.shape[-2:])), tuple(images.shape[-2:]))
    per = (sat[:, None] * masks).sum(dim=(2, 3)) / masks.sum(dim=(2, 3)).clamp_min(1)  # [N, M]
    w = expl.similarity.clamp_min(0)
    return (per * w).sum(0) / w.sum(0).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------------------
# figure


def importance_figure(
    importance: torch.Tensor,
    names: Sequence[str],
    push,
    push_images: torch.Tensor,
    path: str | Path,
    *,
    prototypes: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Why does the prototype match? Global importance (similarity drop)",
) -> Path:
    """Write a PNG: per prototype a row with its pushed patch (high-activation crop), its source image with
    the box, and a bar chart of G_j^m per characteristic. ``push`` is a ``PushResult``; ``labels`` an optional
    text per prototype (e.g. the part it sits on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from priorkit.prototypes.viz import draw_box, show_image

    check_shape("importance", importance, (len(names), None))
    _check_images(push_images, "push_images")
    js = list(range(importance.shape[1])) if prototypes is None else [int(j) for j in prototypes]
    if not js:
        raise PriorkitError("prototypes must not be empty")
    fig, axes = plt.subplots(
        len(js), 3, figsize=(6.2, 1.05 * len(js) + 0.5), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 3]}
    )
    lim = float(importance[:, js].abs().max()) * 1.1 or 1.0
    colours = ["tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple", "tab:gray"]
    for r, j in enumerate(js):
        a_crop, a_src, a_bar = axes[r]
        n = int(push.image_index[j])
        if n >= 0:
            x0, y0, x1, y1 = push.high_act_box[j].tolist()
            show_image(a_crop, push_images[n][:, y0:y1, x0:x1])
            show_image(a_src, push_images[n])
            draw_box(a_src, (x0, y0, x1, y1))
        else:
            a_crop.axis("off")
            a_src.axis("off")
        a_crop.set_ylabel(f"p{j}", fontsize=7)
        if labels is not None:
            a_src.set_title(labels[r], fontsize=6)
        vals = importance[:, j].tolist()
        a_bar.barh(range(len(names)), vals, color=[colours[k % len(colours)] for k in range(len(names))])
        a_bar.set_yticks(range(len(names)))
        a_bar.set_yticklabels(names, fontsize=6)
        a_bar.set_xlim(-lim, lim)
        a_bar.axvline(0, color="k", lw=0.5)
        a_bar.tick_params(axis="x", labelsize=6)
        a_bar.invert_yaxis()
    axes[-1, 2].set_xlabel("G = weighted mean of s(x, u*) - s(x', u*)", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
