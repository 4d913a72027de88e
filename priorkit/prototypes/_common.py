"""Shared parts of the ProtoPNet family: prototype distances and activations, the class-identity matrix and
last-layer initialisation, the cluster / separation / masked-L1 losses, class-specific push with bookkeeping,
the warm / joint / push / last-layer schedule with named parameter groups, and a kernel benchmark.

Everything here is written once for ``protopnet`` and reused by ``st_protopnet``, ``eval_protopnet``,
``explaining_prototypes`` and the other prototype methods. Functional cores take tensors; the driver
:func:`train_prototype_model` takes any model that follows :class:`PrototypeModel` (ProtoPNet's
``warm_only`` / ``joint`` / ``last_only`` / ``push_prototypes`` of cfchen-duke/ProtoPNet, written anew).

Libraries considered: CaBRNet (aiser-team/cabrnet) has the same pieces behind YAML configs and a CLI, and
prototorch has LVQ-style distance layers without conv patches or push; neither is a small importable
dependency for a tensor-level API, so the math is written here (about 150 lines).

Shapes: latent ``z`` [B, D, H, W]; prototypes ``P`` [M, D, h1, w1]; distance maps [B, M, H-h1+1, W-w1+1];
pooled distances [B, M]; class identity ``I`` [M, C] (0/1); last layer weight ``W`` [C, M].
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range, check_shape

__all__ = [
    "ACTIVATIONS",
    "DISTANCE_METHODS",
    "STAGES",
    "PhaseSchedule",
    "PrototypeModel",
    "PushResult",
    "avg_separation_cost",
    "class_identity",
    "cluster_cost",
    "distance_kernel_gflops",
    "distance_to_similarity",
    "high_activation_box",
    "init_last_layer",
    "l1_off_class",
    "l2_distance_maps",
    "masked_min",
    "min_pool",
    "push_prototypes",
    "separation_cost",
    "set_stage",
    "stage_optimizers",
    "train_prototype_model",
    "upsample_map",
]

DISTANCE_METHODS = ("expansion", "cdist")
ACTIVATIONS = ("log", "linear")
#: The stages of the ProtoPNet schedule, in the order they first occur.
STAGES = ("warm", "joint", "push", "last_layer")


# ----------------------------------------------------------------------------------------------------------
# distances, pooling, activation


def _check_latent_and_prototypes(z: torch.Tensor, prototypes: torch.Tensor) -> None:
    check_shape("z", z, (None, None, None, None))
    check_shape("prototypes", prototypes, (None, z.shape[1], None, None))
    if prototypes.shape[2] > z.shape[2] or prototypes.shape[3] > z.shape[3]:
        raise PriorkitError(
            f"prototypes' patch size {tuple(prototypes.shape[2:])} must fit in the latent map {tuple(z.shape[2:])}"
        )


def l2_distance_maps(z: torch.Tensor, prototypes: torch.Tensor, method: str = "expansion") -> torch.Tensor:
    """Squared L2 distance of every prototype to every ``h1 x w1`` patch of ``z``, [B, M, H', W'].

    ``expansion`` (ProtoPNet's ``_l2_convolution``): ||z_u||^2 - 2<z_u, p_j> + ||p_j||^2, clamped at 0 against
    round-off. For 1x1 prototypes the cross term is one matmul [B*H*W, D] x [D, M] fused with the two norms
    (``addmm``), so the kernel runs at matmul speed; larger patches use ``conv2d``. ``cdist`` computes the
    differences directly (exact, slower); use it where an exact 0 matters.
    """
    check_choice("method", method, DISTANCE_METHODS)
    _check_latent_and_prototypes(z, prototypes)
    b, d, h, w = z.shape
    m, _, h1, w1 = prototypes.shape
    ho, wo = h - h1 + 1, w - w1 + 1
    if h1 == 1 and w1 == 1:
        zf = z.permute(0, 2, 3, 1).reshape(-1, d)  # [B*H*W, D]
        pf = prototypes.reshape(m, d)
        if method == "expansion":
            z2 = (zf * zf).sum(1, keepdim=True)
            p2 = (pf * pf).sum(1).unsqueeze(0)
            # one GEMM with the prototype norms as its bias, then two in-place passes (the ReLU of the repo)
            dist = torch.addmm(p2, zf, pf.t(), alpha=-2.0).add_(z2).relu_()
        else:
            dist = torch.cdist(zf, pf, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
        return dist.view(b, h, w, m).permute(0, 3, 1, 2)
    if method == "expansion":
        ones = torch.ones(1, d, h1, w1, dtype=z.dtype, device=z.device)
        z2 = F.conv2d(z * z, ones)  # [B, 1, H', W']
        cross = F.conv2d(z, prototypes)  # [B, M, H', W']
        p2 = (prototypes * prototypes).sum(dim=(1, 2, 3)).view(1, m, 1, 1)
        return (z2 - 2.0 * cross + p2).clamp_min(0.0)
    patches = F.unfold(z, (h1, w1)).transpose(1, 2)  # [B, H'W', D*h1*w1]
    pf = prototypes.reshape(m, -1).unsqueeze(0).expand(b, -1, -1)
    dist = torch.cdist(patches, pf, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    return dist.transpose(1, 2).reshape(b, m, ho, wo)


def min_pool(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global min over positions of distance maps [B, M, H, W]: ``(values [B, M], flat index [B, M])``."""
    check_shape("maps", maps, (None, None, None, None))
    return maps.flatten(2).min(dim=2)


def distance_to_similarity(d: torch.Tensor, activation: str = "log", eps: float = 1e-4) -> torch.Tensor:
    """ProtoPNet's activation: ``log((d + 1) / (d + eps))`` (strictly decreasing, ``log(1/eps)`` at 0), or
    ``linear`` = ``-d``."""
    check_choice("activation", activation, ACTIVATIONS)
    if activation == "linear":
        return -d
    check_range("eps", eps, 0.0, low_inclusive=False)
    return torch.log((d + 1.0) / (d + eps))


def upsample_map(maps: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Upsample [B, M, h, w] (or [h, w]) maps to image ``size`` (ProtoPNet uses bicubic for its figures)."""
    check_choice("mode", mode, ("bicubic", "bilinear", "nearest"))
    x = maps[None, None] if maps.dim() == 2 else maps
    check_shape("maps", x, (None, None, None, None))
    kw = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(x.float(), size=tuple(size), mode=mode, **kw)
    return out[0, 0] if maps.dim() == 2 else out


def high_activation_box(heat: torch.Tensor, percentile: float = 95.0) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` (pixel edges, x1/y1 exclusive) of the pixels of an upsampled
    similarity map [H, W] at or above its ``percentile`` (ProtoPNet's ``find_high_activation_crop``)."""
    check_shape("heat", heat, (None, None))
    check_range("percentile", percentile, 0.0, 100.0)
    thr = torch.quantile(heat.float().flatten(), percentile / 100.0)
    ys, xs = torch.nonzero(heat >= thr, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# ----------------------------------------------------------------------------------------------------------
# class identity and last layer


def class_identity(num_classes: int, prototypes_per_class: int) -> torch.Tensor:
    """One-hot [M, C] float matrix, M = C * k: prototype j belongs to class ``j // k`` (contiguous blocks)."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("prototypes_per_class", prototypes_per_class)
    cls = torch.arange(num_classes * prototypes_per_class) // prototypes_per_class
    return F.one_hot(cls, num_classes).float()


def init_last_layer(weight: torch.Tensor, identity: torch.Tensor, incorrect: float = -0.5) -> torch.Tensor:
    """Set ``weight`` [C, M] in place to +1 on own-class and ``incorrect`` on other connections; returns it."""
    check_shape("weight", weight, (identity.shape[1], identity.shape[0]))
    with torch.no_grad():
        weight.copy_(identity.t() + incorrect * (1.0 - identity.t()))
    return weight


def class_membership(labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """bool [B, M]: prototype j belongs to the class of sample i."""
    check_shape("identity", identity, (None, None))
    check_shape("labels", labels, (None,))
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= identity.shape[1]):
        raise PriorkitError(f"labels must lie in [0, {identity.shape[1] - 1}] (the identity's classes)")
    return identity.t()[labels] > 0


# ----------------------------------------------------------------------------------------------------------
# losses


def masked_min(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise min of ``d`` [B, M] over the entries where ``mask`` [B, M] is True (a true masked min:
    non-members are +inf). Every row needs at least one member."""
    check_shape("mask", mask, tuple(d.shape))
    if not bool(mask.any(dim=1).all()):
        raise PriorkitError("mask must select at least one prototype in every row")
    return d.masked_fill(~mask.bool(), float("inf")).amin(dim=1)


def _official_masked_min(d: torch.Tensor, mask: torch.Tensor, max_dist: float) -> torch.Tensor:
    # ProtoPNet's form: max_dist - max((max_dist - d) * mask); equals masked_min only while d <= max_dist.
    return max_dist - ((max_dist - d) * mask.to(d.dtype)).amax(dim=1)


def cluster_cost(
    min_distances: torch.Tensor,
    labels: torch.Tensor,
    identity: torch.Tensor,
    *,
    official: bool = False,
    max_dist: float | None = None,
) -> torch.Tensor:
    """Clst = mean_i min_{j: class(j) = y_i} d_ij. ``official=True`` uses the repo's max_dist trick
    (``max_dist`` = D*h1*w1) for bit-compatibility; it is only a masked min while d <= max_dist."""
    check_shape("min_distances", min_distances, (None, identity.shape[0]))
    mask = class_membership(labels, identity)
    if official:
        if max_dist is None:
            raise PriorkitError("max_dist (D*h1*w1) is required with official=True")
        return _official_masked_min(min_distances, mask, max_dist).mean()
    return masked_min(min_distances, mask).mean()


def separation_cost(
    min_distances: torch.Tensor,
    labels: torch.Tensor,
    identity: torch.Tensor,
    *,
    official: bool = False,
    max_dist: float | None = None,
) -> torch.Tensor:
    """Sep = mean_i min_{j: class(j) != y_i} d_ij (it enters the loss with a negative coefficient)."""
    check_shape("min_distances", min_distances, (None, identity.shape[0]))
    mask = ~class_membership(labels, identity)
    if official:
        if max_dist is None:
            raise PriorkitError("max_dist (D*h1*w1) is required with official=True")
        return _official_masked_min(min_distances, mask, max_dist).mean()
    return masked_min(min_distances, mask).mean()


def avg_separation_cost(min_distances: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """Mean distance to all wrong-class prototypes (logged by ProtoPNet, not used in its loss)."""
    check_shape("min_distances", min_distances, (None, identity.shape[0]))
    mask = (~class_membership(labels, identity)).to(min_distances.dtype)
    return ((min_distances * mask).sum(1) / mask.sum(1).clamp_min(1.0)).mean()


def l1_off_class(weight: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """L1 = sum_{c,j} |W_cj| (1 - I_jc): the last layer's wrong-class connections only."""
    check_shape("weight", weight, (identity.shape[1], identity.shape[0]))
    return (weight * (1.0 - identity.t())).abs().sum()


# ----------------------------------------------------------------------------------------------------------
# push (projection) with bookkeeping


@dataclass
class PushResult:
    """What :func:`push_prototypes` did to each prototype j (all tensors have length M).

    ``image_index``: index of the source image in the push images (-1: no candidate, prototype unchanged);
    ``location``: (row, col) of the patch's top-left cell on the latent map; ``distance``: squared L2 from
    the old prototype to the chosen patch; ``rf_box``: (x0, y0, x1, y1) pixel box of the patch's receptive
    field (support of d z_u / d x, or the grid cell); ``high_act_box``: box of the >= ``percentile`` pixels
    of the new prototype's upsampled similarity map on its source image; ``latent_size``: (H, W).
    """

    image_index: torch.Tensor
    location: torch.Tensor
    distance: torch.Tensor
    rf_box: torch.Tensor
    high_act_box: torch.Tensor
    prototype_class: torch.Tensor
    latent_size: tuple[int, int]
    image_size: tuple[int, int]
    before: torch.Tensor = field(repr=False)

    @property
    def n_unique(self) -> int:
        """Number of distinct (image, location) patches the prototypes were pushed to (duplicates are a known
        failure: several prototypes of one class collapsing onto one patch)."""
        ok = self.image_index >= 0
        keys = torch.cat([self.image_index[ok, None], self.location[ok]], dim=1)
        return int(torch.unique(keys, dim=0).shape[0])

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_index": self.image_index.tolist(),
            "location": self.location.tolist(),
            "distance": self.distance.tolist(),
            "rf_box": self.rf_box.tolist(),
            "high_act_box": self.high_act_box.tolist(),
            "prototype_class": self.prototype_class.tolist(),
            "n_unique": self.n_unique,
        }


DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _receptive_boxes(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    loc: torch.Tensor,
    patch: tuple[int, int],
    mode: str,
    latent_size: tuple[int, int],
) -> torch.Tensor:
    """(x0, y0, x1, y1) boxes [n, 4] of each selected patch's receptive field on its image ``x[i]``."""
    n, _, hi, wi = x.shape
    if mode == "grid":  # the patch's cells scaled to the image: no receptive-field arithmetic at all
        sy, sx = hi / latent_size[0], wi / latent_size[1]
        r, c = loc[:, 0].double(), loc[:, 1].double()
        return torch.stack(
            [
                (c * sx).floor(),
                (r * sy).floor(),
                ((c + patch[1]) * sx).ceil(),
                ((r + patch[0]) * sy).ceil(),
            ],
            1,
        ).long()
    # "gradient": the support of d <z_u, v> / d x for a random direction v (each image is its own sample in
    # eval mode, so one backward pass serves all n patches). Works with any backbone, upsampling included.
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = features_fn(xg)
        g = torch.Generator().manual_seed(0)
        v = torch.rand(z.shape[1], patch[0], patch[1], generator=g).to(z) + 0.5
        ar = torch.arange(n, device=z.device)
        total = z.new_zeros(())
        for dr in range(patch[0]):
            for dc in range(patch[1]):
                total = total + (z[ar, :, loc[:, 0] + dr, loc[:, 1] + dc] * v[:, dr, dc]).sum()
        (grad,) = torch.autograd.grad(total, xg)
    support = grad.abs().sum(1) > 0  # [n, H, W]
    boxes = torch.zeros(n, 4, dtype=torch.long)
    for i in range(n):
        ys, xs = torch.nonzero(support[i], as_tuple=True)
        if ys.numel():
            boxes[i] = torch.tensor([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
        else:
            boxes[i] = torch.tensor([0, 0, wi, hi])
    return boxes


@torch.no_grad()
def push_prototypes(
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    prototypes: torch.Tensor,
    identity: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_specific: bool = True,
    batch_size: int = 256,
    distance_fn: DistanceFn | None = None,
    patch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    similarity_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    receptive_field: str = "gradient",
    percentile: float = 95.0,
) -> PushResult:
    """Project every prototype onto its nearest latent patch among the push images of its own class.

    ``features_fn`` maps (preprocessed) images to the latent ``z`` [B, D, H, W] and must already be in eval
    mode; ``prototypes`` [M, D, h1, w1] (a Parameter or tensor) is overwritten in place once at the end with
    ``patch_transform(patch)`` (default: the patch itself, so p_j equals a training patch exactly).
    ``distance_fn(z, prototypes)`` gives [B, M, H', W'] distances (default squared L2, expansion form);
    ``similarity_fn`` maps distance maps to similarity maps for the high-activation box (default ProtoPNet's
    log activation). ``class_specific=False`` searches all images. ``preprocess`` (e.g. normalisation) is
    applied inside push, so ``images`` are the raw images a figure shows. Ties keep the first patch found.
    """
    check_shape("prototypes", prototypes, (identity.shape[0], None, None, None))
    check_shape("images", images, (None, None, None, None))
    check_shape("labels", labels, (images.shape[0],))
    check_positive_int("batch_size", batch_size)
    check_choice("receptive_field", receptive_field, ("gradient", "grid"))
    distance_fn = distance_fn or l2_distance_maps
    similarity_fn = similarity_fn or distance_to_similarity
    prep = preprocess or (lambda t: t)
    m, d, h1, w1 = prototypes.shape
    device = prototypes.device
    proto_class = identity.argmax(1).to(device)
    best = torch.full((m,), float("inf"), device=device)
    best_img = torch.full((m,), -1, dtype=torch.long, device=device)
    best_loc = torch.zeros(m, 2, dtype=torch.long, device=device)
    best_vec = prototypes.detach().clone()
    latent_size: tuple[int, int] | None = None
    for s in range(0, len(images), batch_size):
        x = prep(images[s : s + batch_size].to(device))
        y = labels[s : s + batch_size].to(device)
        z = features_fn(x)
        _check_latent_and_prototypes(z, prototypes)
        latent_size = (int(z.shape[2]), int(z.shape[3]))
        dist = distance_fn(z, prototypes)  # [b, M, H', W']
        if class_specific:
            own = y[:, None] == proto_class[None, :]  # [b, M]
            dist = dist.masked_fill(~own[:, :, None, None], float("inf"))
        b, _, ho, wo = dist.shape
        flat = dist.permute(1, 0, 2, 3).reshape(m, -1)  # [M, b*H'*W'] in (image, row, col) order
        val, idx = flat.min(dim=1)
        better = val < best
        if better.any():
            j = torch.nonzero(better, as_tuple=True)[0]
            bi, rem = idx[j] // (ho * wo), idx[j] % (ho * wo)
            r, c = rem // wo, rem % wo
            best[j] = val[j]
            best_img[j] = bi + s
            best_loc[j, 0], best_loc[j, 1] = r, c
            for jj, bb, rr, cc in zip(j.tolist(), bi.tolist(), r.tolist(), c.tolist()):
                best_vec[jj] = z[bb, :, rr : rr + h1, cc : cc + w1]
    if latent_size is None:
        raise PriorkitError("images must hold at least one image")
    before = prototypes.detach().clone()
    found = best_img >= 0
    new = best_vec.clone()
    if patch_transform is not None and found.any():
        new[found] = patch_transform(best_vec[found])
    prototypes.data.copy_(new)

    # bookkeeping: receptive fields and high-activation boxes of the pushed prototypes on their images
    image_size = (int(images.shape[2]), int(images.shape[3]))
    rf = torch.zeros(m, 4, dtype=torch.long)
    hab = torch.zeros(m, 4, dtype=torch.long)
    jf = torch.nonzero(found, as_tuple=True)[0]
    for s in range(0, len(jf), batch_size):
        js = jf[s : s + batch_size]
        x = prep(images[best_img[js].cpu()].to(device))
        rf[js.cpu()] = _receptive_boxes(features_fn, x, best_loc[js], (h1, w1), receptive_field, latent_size)
        z = features_fn(x)
        dmaps = distance_fn(z, prototypes)  # [n, M, H', W']
        own_map = dmaps[torch.arange(len(js), device=device), js]  # [n, H', W']
        heat = upsample_map(similarity_fn(own_map)[:, None], image_size)[:, 0]
        for i, j in enumerate(js.tolist()):
            hab[j] = torch.tensor(high_activation_box(heat[i], percentile))
    return PushResult(
        image_index=best_img.cpu(),
        location=best_loc.cpu(),
        distance=best.cpu(),
        rf_box=rf,
        high_act_box=hab,
        prototype_class=proto_class.cpu(),
        latent_size=latent_size,
        image_size=image_size,
        before=before.cpu(),
    )


# ----------------------------------------------------------------------------------------------------------
# stages and schedule


class PrototypeModel(Protocol):
    """What :func:`train_prototype_model`, :func:`push_prototypes` callers and ``viz`` expect of a model.

    ``parameter_groups()`` -> named parameter lists (ProtoPNet: backbone, add_on, prototypes, last_layer);
    ``latent(x)`` -> [B, D, H, W]; ``prototypes`` [M, D, h1, w1]; ``prototype_identity`` [M, C];
    ``similarity_maps(x)`` -> [B, M, H', W'] (higher = more similar); ``prototype_activations(x)`` -> [B, M];
    ``last_layer`` (``nn.Linear`` M -> C, no bias); ``forward(x)`` -> logits; ``push(images, labels)``.
    """

    prototype_identity: torch.Tensor
    last_layer: nn.Linear

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]: ...

    def similarity_maps(self, x: torch.Tensor) -> torch.Tensor: ...

    def prototype_activations(self, x: torch.Tensor) -> torch.Tensor: ...

    def push(self, images: torch.Tensor, labels: torch.Tensor, **kw: Any) -> Any: ...


@dataclass
class PhaseSchedule:
    """ProtoPNet's schedule (``main.py`` + ``settings.py`` defaults).

    Epoch e < ``warm_epochs`` is a warm epoch (backbone frozen; optimiser over ``warm_lrs`` groups), later
    epochs are joint (``joint_lrs`` groups, StepLR(``joint_step_size``, ``joint_gamma``) stepped at the start of
    each joint epoch). After epoch e's training, if e >= ``push_start`` and e % ``push_every`` == 0: push, then
    (``last_layer_epochs`` > 0) that many epochs on ``last_layer_lrs`` only. The official lrs have
    ``weight_decay`` per group (``weight_decays``); groups missing there get 0.
    """

    epochs: int = 1000
    warm_epochs: int = 5
    push_start: int = 10
    push_every: int = 10
    last_layer_epochs: int = 20
    warm_lrs: Mapping[str, float] = field(default_factory=lambda: {"add_on": 3e-3, "prototypes": 3e-3})
    joint_lrs: Mapping[str, float] = field(
        default_factory=lambda: {"backbone": 1e-4, "add_on": 3e-3, "prototypes": 3e-3}
    )
    last_layer_lrs: Mapping[str, float] = field(default_factory=lambda: {"last_layer": 1e-4})
    weight_decays: Mapping[str, float] = field(default_factory=lambda: {"backbone": 1e-3, "add_on": 1e-3})
    joint_step_size: int = 5
    joint_gamma: float = 0.1
    batch_size: int = 80
    push_batch_size: int = 256

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_int("warm_epochs", self.warm_epochs, 0)
        check_positive_int("push_start", self.push_start, 0)
        check_positive_int("push_every", self.push_every)
        check_positive_int("last_layer_epochs", self.last_layer_epochs, 0)
        check_positive_int("joint_step_size", self.joint_step_size)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("push_batch_size", self.push_batch_size)
        check_range("joint_gamma", self.joint_gamma, 0.0, 1.0, low_inclusive=False)
        for name in ("warm_lrs", "joint_lrs", "last_layer_lrs"):
            for k, v in getattr(self, name).items():
                check_range(f"{name}[{k!r}]", v, 0.0, low_inclusive=False)

    def stage(self, epoch: int) -> str:
        """``warm`` or ``joint``: the training stage of ``epoch``."""
        check_positive_int("epoch", epoch, 0)
        return "warm" if epoch < self.warm_epochs else "joint"

    def push_at(self, epoch: int) -> bool:
        """Whether a push (then the last-layer stage) follows ``epoch``'s training."""
        return epoch >= self.push_start and epoch % self.push_every == 0

    def push_epochs(self) -> list[int]:
        return [e for e in range(self.epochs) if self.push_at(e)]

    def plan(self) -> list[tuple[int, str]]:
        """Every (epoch, stage) the driver runs, e.g. [(0, 'warm'), ..., (10, 'joint'), (10, 'push'),
        (10, 'last_layer'), ...]; each 'last_layer' entry is ``last_layer_epochs`` passes."""
        out: list[tuple[int, str]] = []
        for e in range(self.epochs):
            out.append((e, self.stage(e)))
            if self.push_at(e):
                out.append((e, "push"))
                if self.last_layer_epochs:
                    out.append((e, "last_layer"))
        return out


def _groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    if not hasattr(model, "parameter_groups"):
        raise PriorkitError("model must define parameter_groups() -> {name: [parameters]} (see PrototypeModel)")
    return dict(model.parameter_groups())


def set_stage(model: nn.Module, stage: str, trainable: Sequence[str]) -> None:
    """Freeze every parameter group except ``trainable`` (ProtoPNet's ``warm_only`` / ``joint`` /
    ``last_only``), and set the module mode: train mode for warm / joint (as the repo: BatchNorm statistics of
    a frozen backbone still move), eval mode for push and last_layer (so that only the last layer changes)."""
    check_choice("stage", stage, STAGES)
    groups = _groups(model)
    for name in trainable:
        check_choice("trainable group", name, list(groups))
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name in trainable)
    model.train(stage in ("warm", "joint"))


def stage_optimizers(model: nn.Module, schedule: PhaseSchedule) -> dict[str, torch.optim.Optimizer]:
    """One Adam per stage (warm, joint, last_layer) over its named groups, with per-group lr and weight decay;
    created once and kept across epochs and pushes, as in the repo."""
    groups = _groups(model)
    out = {}
    for stage, lrs in (
        ("warm", schedule.warm_lrs),
        ("joint", schedule.joint_lrs),
        ("last_layer", schedule.last_layer_lrs),
    ):
        specs = []
        for name, lr in lrs.items():
            check_choice(f"{stage} lr group", name, list(groups))
            specs.append({"params": groups[name], "lr": lr, "weight_decay": schedule.weight_decays.get(name, 0.0)})
        out[stage] = torch.optim.Adam(specs)
    return out


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, str, int], Mapping[str, torch.Tensor]]


def _run_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    loss_fn: LossFn,
    stage: str,
    batch_size: int,
    gen: torch.Generator,
    step0: int,
    after_step: Callable[[nn.Module, str, int], None] | None,
) -> tuple[dict[str, float], int]:
    order = torch.randperm(len(x), generator=gen)
    sums: dict[str, float] = {}
    n = 0
    step = step0
    for s in range(0, len(x), batch_size):
        idx = order[s : s + batch_size]
        xb, yb = x[idx], y[idx]
        terms = dict(loss_fn(model, xb, yb, stage, step))
        if not terms:
            raise PriorkitError("loss_fn must return at least one named loss term")
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss in stage {stage}: " + str({k: float(v) for k, v in terms.items()})
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(model, stage, step)
        step += 1
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * len(idx)
        n += len(idx)
    return {k: v / n for k, v in sums.items()}, step


def train_prototype_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn,
    schedule: PhaseSchedule | None = None,
    *,
    push_fn: Callable[[nn.Module], Any] | None = None,
    after_step: Callable[[nn.Module, str, int], None] | None = None,
    eval_fn: Callable[[nn.Module, int, str], Mapping[str, float]] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Run ProtoPNet's warm / joint / push / last-layer schedule; returns one log dict per stage run.

    ``loss_fn(model, x, y, stage, step)`` returns named (already weighted) loss terms whose sum is minimised;
    other methods pass their own (e.g. ProtoPNet's terms plus theirs, or alternating branches by ``step``).
    ``push_fn(model)`` projects the prototypes (default ``model.push(images, labels)``) and its return value
    (e.g. a :class:`PushResult`) is stored under ``"push"`` in the log. ``after_step(model, stage, step)``
    runs after every optimiser step (e.g. re-normalising prototypes); ``eval_fn(model, epoch, stage)`` adds
    metrics to each log entry. Batches are drawn from a generator seeded with ``seed``.
    """
    schedule = schedule or PhaseSchedule()
    check_shape("images", images, (None, None, None, None))
    check_shape("labels", labels, (images.shape[0],))
    groups = _groups(model)
    opts = stage_optimizers(model, schedule)
    sched = torch.optim.lr_scheduler.StepLR(
        opts["joint"], step_size=schedule.joint_step_size, gamma=schedule.joint_gamma
    )
    gen = torch.Generator().manual_seed(int(seed))
    push_fn = push_fn or (lambda m: m.push(images, labels))
    history: list[dict[str, Any]] = []
    step = 0
    lr_groups = {"warm": schedule.warm_lrs, "joint": schedule.joint_lrs, "last_layer": schedule.last_layer_lrs}
    for epoch, stage in schedule.plan():
        entry: dict[str, Any] = {"epoch": epoch, "stage": stage}
        if stage == "push":
            set_stage(model, "push", [])
            entry["push"] = push_fn(model)
        else:
            set_stage(model, stage, list(lr_groups[stage]))
            if stage == "joint":
                with warnings.catch_warnings():  # the repo steps the scheduler before the epoch's optimiser steps
                    warnings.simplefilter("ignore", UserWarning)
                    sched.step()
            passes = schedule.last_layer_epochs if stage == "last_layer" else 1
            for _ in range(passes):
                logs, step = _run_epoch(
                    model, images, labels, opts[stage], loss_fn, stage, schedule.batch_size, gen, step, after_step
                )
            entry.update(logs)
        if eval_fn is not None:
            was = model.training
            model.eval()
            entry.update(eval_fn(model, epoch, stage))
            model.train(was)
        history.append(entry)
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)
    model.eval()
    return history


# ----------------------------------------------------------------------------------------------------------
# kernel benchmark


def _median_seconds(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int, sync: bool) -> list[float]:
    """Median time of each function; the functions are interleaved so load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if sync:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t0)
    return [sorted(t)[len(t) // 2] for t in times]


@torch.no_grad()
def distance_kernel_gflops(
    batch: int = 32,
    dim: int = 128,
    height: int = 7,
    width: int = 7,
    num_prototypes: int = 2000,
    *,
    repeats: int = 5,
    warmup: int = 2,
    method: str = "expansion",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Time :func:`l2_distance_maps` (1x1 prototypes) against a plain ``torch.matmul`` with the same
    M = batch*height*width, N = num_prototypes, K = dim; both are credited 2*M*N*K flops.

    Returns ``kernel_gflops``, ``matmul_gflops``, ``kernel_ratio`` (kernel / matmul; near 1 means the distance
    kernel runs at matmul speed), ``kernel_ms`` and ``matmul_ms`` (medians of ``repeats`` interleaved runs).
    ``threads`` sets torch's CPU thread count for the measurement (1 gives stable numbers on a shared, loaded
    machine) and restores it afterwards.
    """
    for name, v in (("batch", batch), ("dim", dim), ("height", height), ("width", width)):
        check_positive_int(name, v)
    check_positive_int("num_prototypes", num_prototypes)
    check_positive_int("repeats", repeats)
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(batch, dim, height, width, generator=g).to(device)
    p = torch.rand(num_prototypes, dim, 1, 1, generator=g).to(device)
    a = torch.rand(batch * height * width, dim, generator=g).to(device)
    b = torch.rand(dim, num_prototypes, generator=g).to(device)
    sync = torch.device(device).type == "cuda"
    old = torch.get_num_threads()
    if threads is not None:
        check_positive_int("threads", threads)
        torch.set_num_threads(threads)
    try:
        t_kernel, t_mm = _median_seconds(
            [lambda: l2_distance_maps(z, p, method), lambda: torch.matmul(a, b)], repeats, warmup, sync
        )
    finally:
        torch.set_num_threads(old)
    flops = 2.0 * batch * height * width * num_prototypes * dim
    kg, mg = flops / t_kernel / 1e9, flops / t_mm / 1e9
    return {
        "kernel_gflops": kg,
        "matmul_gflops": mg,
        "kernel_ratio": kg / mg if mg > 0 and math.isfinite(mg) else float("nan"),
        "kernel_ms": 1e3 * t_kernel,
        "matmul_ms": 1e3 * t_mm,
    }
