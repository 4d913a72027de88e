"""``heads``: small grayscale heads of identities seen from a yaw angle, mirror-exact by construction.

The CPU-sized stand-in for a personalised 3-D face generator's world (card adapters-lowrank.md, ``my3dgen``).
An identity is six numbers: face-ellipse aspect, eye spacing, eye size, mouth width, brow height and skin tone
(:data:`HEAD_PARAMS`). Its features sit on a 3-D layout that is mirror-symmetric about the face's mid-plane (eyes,
brows and ears in left/right pairs at ``x0 = +-a``; nose and mouth on ``x0 = 0``). A view at ``yaw`` (radians,
in [-1, 1]; 0 is frontal) projects every feature to ``u = x0 cos(yaw) + z sin(yaw)``; features turning away
(``z' = -x0 sin(yaw) + z cos(yaw)`` below 0) fade out, horizontal extents shrink with ``cos(yaw)``, and the
head's silhouette is the projected ellipsoid. Pixels are sampled at cell centres of a grid symmetric about
``u = 0``, pairs of mirrored features are added before anything else and every operation is an even or odd
function of ``u`` and ``yaw``, so ``render_heads(p, -yaw) == render_heads(p, yaw).flip(-1)`` holds bit for bit
(the property a symmetry prior relies on; tested exactly).

Everything is deterministic from a seed (a ``torch.Generator``) and vectorised over images (no per-image Python
loop). No library offers such a generator, so it is written here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from priorkit.core.errors import PriorkitError, check_positive_int, check_range, check_shape
from priorkit.data.datasets import IndexedTensorDataset

__all__ = [
    "HEAD_PARAMS",
    "PARAM_RANGES",
    "HeadsData",
    "make_heads",
    "render_heads",
    "sample_identities",
    "sample_yaws",
]

#: the identity parameters, in column order
HEAD_PARAMS = ("aspect", "eye_spacing", "eye_size", "mouth_width", "brow_height", "tone")
#: the range each parameter is drawn from (uniformly)
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "aspect": (0.72, 1.0),  # half-width of the face ellipse relative to 0.62 (its half-height is 0.8)
    "eye_spacing": (0.18, 0.34),  # |x0| of each eye (and brow)
    "eye_size": (0.05, 0.10),  # Gaussian radius of an eye
    "mouth_width": (0.10, 0.30),  # half-width of the mouth at a frontal view
    "brow_height": (-0.50, -0.30),  # vertical position of the brows (down is +)
    "tone": (0.55, 0.95),  # skin brightness
}

_RY, _RX0, _DEPTH = 0.8, 0.62, 0.9  # face half-height, half-width at aspect 1, depth / width of the ellipsoid
_EYE_V, _NOSE_V, _MOUTH_V = -0.12, 0.14, 0.42  # vertical positions
_Z_EYE, _Z_BROW, _Z_NOSE, _Z_MOUTH = 0.50, 0.52, 0.72, 0.55  # depth (towards the viewer) of each feature
_BACKGROUND = 0.08
_EDGE = 0.06  # softness of the silhouette and of occlusion


def sample_identities(n: int, seed: int) -> torch.Tensor:
    """``[n, 6]`` identity parameters (columns :data:`HEAD_PARAMS`), uniform in :data:`PARAM_RANGES`."""
    check_positive_int("n", n)
    g = torch.Generator().manual_seed(int(seed))
    lo = torch.tensor([PARAM_RANGES[k][0] for k in HEAD_PARAMS])
    hi = torch.tensor([PARAM_RANGES[k][1] for k in HEAD_PARAMS])
    return lo + (hi - lo) * torch.rand(n, len(HEAD_PARAMS), generator=g)


def sample_yaws(n: int, low: float, high: float, seed: int) -> torch.Tensor:
    """``[n]`` yaws uniform in ``[low, high]`` (a sub-interval of [-1, 1])."""
    check_positive_int("n", n)
    check_range("low", low, -1.0, 1.0)
    check_range("high", high, low, 1.0)
    g = torch.Generator().manual_seed(int(seed))
    return low + (high - low) * torch.rand(n, generator=g)


def _odd_sin(yaw: torch.Tensor) -> torch.Tensor:
    """``sin(yaw)`` computed as ``sign(yaw) sin(|yaw|)``, so that it is exactly odd in ``yaw``."""
    return torch.sign(yaw) * torch.sin(yaw.abs())


def _bump(d2: torch.Tensor) -> torch.Tensor:
    """A smooth blob ``exp(-d2)`` of a squared normalised distance."""
    return torch.exp(-d2)


def _soft_inside(level: torch.Tensor) -> torch.Tensor:
    """A soft indicator of ``level > 0``."""
    return torch.sigmoid(level / _EDGE)


def render_heads(identity: torch.Tensor, yaw: torch.Tensor, size: int = 32) -> torch.Tensor:
    """Images ``[N, 1, size, size]`` in [0, 1] of identities ``[N, 6]`` (or one ``[6]``, broadcast) at ``yaw``
    ``[N]`` (radians in [-1, 1]); ``render_heads(p, -y)`` is exactly ``render_heads(p, y).flip(-1)``."""
    check_positive_int("size", size, 4)
    if not isinstance(identity, torch.Tensor) or not isinstance(yaw, torch.Tensor):
        raise PriorkitError("identity and yaw must be torch.Tensors")
    yaw = yaw.to(torch.float32)
    check_shape("yaw", yaw, [None])
    if identity.dim() == 1:
        identity = identity.unsqueeze(0).expand(len(yaw), -1)
    check_shape("identity", identity, [len(yaw), len(HEAD_PARAMS)])
    if len(yaw) == 0:
        raise PriorkitError("yaw must hold at least one view, got shape [0]")
    if not bool(torch.isfinite(yaw).all()) or not bool(torch.isfinite(identity).all()):
        raise PriorkitError("identity and yaw must be finite (no NaN or inf)")
    if float(yaw.abs().max()) > 1.0:
        raise PriorkitError(f"yaw must lie in [-1, 1] (radians), got range [{float(yaw.min())}, {float(yaw.max())}]")
    p = identity.to(torch.float32)
    aspect, eye_x, eye_rad, mouth_w, brow_v, tone = (p[:, k].view(-1, 1, 1) for k in range(len(HEAD_PARAMS)))
    # cell centres (2j + 1 - size) / size: exactly negated by the flip j -> size - 1 - j
    coords = (2 * torch.arange(size, dtype=torch.float32) + 1 - size) / size
    u = coords.view(1, 1, size)
    v = coords.view(1, size, 1)
    c = torch.cos(yaw).view(-1, 1, 1)
    s = _odd_sin(yaw).view(-1, 1, 1)

    def at(x0: torch.Tensor | float, z: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected horizontal position and a visibility weight of a point (x0, z) of the layout."""
        pos = x0 * c + z * s
        depth = -x0 * s + z * c
        return pos, _soft_inside(depth)

    # head: an ellipsoid rotated about the vertical axis, lit from the camera
    rx = _RX0 * aspect
    half_w = torch.sqrt((rx * c) ** 2 + (_DEPTH * rx * s) ** 2)
    level = 1.0 - (u / half_w) ** 2 - (v / _RY) ** 2
    head = _soft_inside(level)
    shade = 0.7 + 0.3 * torch.sqrt(level.clamp(min=0.0))
    face = tone * shade

    def pair(x0: torch.Tensor, z: float, shape: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A left/right pair at ``(-x0, z)`` and ``(x0, z)``, added first (exact under the mirror)."""
        (pos_l, vis_l), (pos_r, vis_r) = at(-x0, z), at(x0, z)
        return vis_l * shape(u - pos_l) + vis_r * shape(u - pos_r)

    # ears at the sides (x0 = +-rx, z = 0): dark blobs visible near the silhouette
    ears = pair(rx, 0.0, lambda du: _bump((du / 0.07) ** 2 + (v / 0.16) ** 2))
    fx = 0.55 + 0.45 * c  # horizontal foreshortening of the face-on features
    eyes = pair(eye_x, _Z_EYE, lambda du: _bump((du / (eye_rad * fx)) ** 2 + ((v - _EYE_V) / eye_rad) ** 2))
    brows = pair(eye_x, _Z_BROW, lambda du: _bump((du / (0.11 * fx)) ** 4 + ((v - brow_v) / 0.035) ** 2))

    nose_p, nose_vis = at(0.0, _Z_NOSE)
    nose = nose_vis * _bump(((u - nose_p) / 0.05) ** 2 + ((v - _NOSE_V) / 0.06) ** 2)
    mouth_p, mouth_vis = at(0.0, _Z_MOUTH)
    mouth = mouth_vis * _bump(((u - mouth_p) / (mouth_w * fx)) ** 4 + ((v - _MOUTH_V) / 0.04) ** 2)

    face = face * (1 - 0.45 * ears) * (1 - 0.85 * eyes) * (1 - 0.75 * brows) * (1 - 0.5 * nose) * (1 - 0.7 * mouth)
    img = _BACKGROUND + head * (face - _BACKGROUND)
    return img.clamp(0.0, 1.0).unsqueeze(1)


@dataclass(frozen=True)
class HeadsData:
    """Rendered heads: ``images`` [N, 1, S, S], ``identity`` [N] (row of ``params``), ``yaw`` [N], ``params``
    [I, 6] (one row per identity)."""

    images: torch.Tensor
    identity: torch.Tensor
    yaw: torch.Tensor
    params: torch.Tensor

    def __len__(self) -> int:
        return int(self.identity.shape[0])

    def as_dataset(self) -> IndexedTensorDataset:
        """``(image, identity, index)`` items for the engine."""
        return IndexedTensorDataset(self.images, self.identity)


def make_heads(
    num_identities: int,
    views: int,
    *,
    seed: int = 0,
    yaw_range: tuple[float, float] = (-1.0, 1.0),
    size: int = 32,
    params: torch.Tensor | None = None,
) -> HeadsData:
    """``views`` renders of each of ``num_identities`` identities at yaws drawn uniformly from ``yaw_range``
    (identities from :func:`sample_identities` with ``seed`` unless ``params`` [I, 6] is given)."""
    check_positive_int("views", views)
    if params is None:
        params = sample_identities(num_identities, seed)
    else:
        check_shape("params", params, [num_identities, len(HEAD_PARAMS)])
    lo, hi = yaw_range
    yaw = sample_yaws(num_identities * views, lo, hi, seed + 1_000_003)
    identity = torch.arange(num_identities).repeat_interleave(views)
    return HeadsData(render_heads(params[identity], yaw, size), identity, yaw, params)
