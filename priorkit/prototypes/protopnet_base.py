"""The ProtoPNet base, shared by the ProtoPNet family (``protopnet``, ``st_protopnet``, ``eval_protopnet``,
``explaining_prototypes``): prototype distances, min-pooling and the log activation, the class-identity matrix and
last-layer initialisation, the cluster / separation / masked-L1 losses, class-specific push with bookkeeping
(sharded over ranks under DDP), and ProtoPNet's warm / joint / push / last-layer schedule
(:class:`PhaseSchedule`) with the builder that turns it into an engine recipe (:func:`protopnet_recipe`).

Chen et al., "This Looks Like That: Deep Learning for Interpretable Image Recognition" (NeurIPS 2019): Eq. (1)
(similarity ``log((d + 1) / (d + eps))`` of the min-pooled squared L2 distance), the loss CE + lambda1 Clst +
lambda2 Sep (Sec. 2.2, stage 1), the projection ("push", stage 2) and the convex last-layer optimisation with the
off-class L1 (stage 3). Functional cores take tensors; the stages run through :class:`priorkit.train.Trainer`
(one Adam per stage kept across pushes, as ``main.py`` of cfchen-duke/ProtoPNet, written anew). Any model that
follows :class:`PrototypeModel` works with the recipe, the push and :mod:`priorkit.prototypes.viz`.

Libraries considered: CaBRNet (aiser-team/cabrnet) has the same pieces behind YAML configs and a CLI, and
prototorch has LVQ-style distance layers without conv patches or push; neither is a small importable
dependency for a tensor-level API, so the math is written here (about 150 lines).

Shapes: latent ``z`` [B, D, H, W]; prototypes ``P`` [M, D, h1, w1]; distance maps [B, M, H-h1+1, W-w1+1];
pooled distances [B, M]; class identity ``I`` [M, C] (0/1); last layer weight ``W`` [C, M].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from priorkit.core.errors import (
    NonFiniteError,
    PriorkitError,
    as_tensor,
    check_batch,
    check_choice,
    check_labels,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.nn import distributed as D
from priorkit.train.config import TrainConfig
from priorkit.train.engine import RunState, Trainer, rank_slice
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import Phase, Recipe

__all__ = [
    "ACTIVATIONS",
    "DISTANCE_METHODS",
    "STAGES",
    "PhaseSchedule",
    "PrototypeModel",
    "ProtoPNetRecipe",
    "PushRecord",
    "PushResult",
    "avg_separation_cost",
    "backbone_parameters",
    "class_identity",
    "class_membership",
    "cluster_cost",
    "distance_to_similarity",
    "high_activation_box",
    "init_last_layer",
    "kaiming_init_",
    "l1_off_class",
    "l2_distance_maps",
    "masked_min",
    "min_pool",
    "min_pool_with_indices",
    "protopnet_recipe",
    "push_prototypes",
    "separation_cost",
    "set_stage",
    "stage_optimizer",
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


def min_pool(maps: torch.Tensor) -> torch.Tensor:
    """Global min over positions of distance maps [B, M, H, W] -> [B, M] (values only, ``amin``: the training path).

    Gradient at ties: ``amin`` splits the incoming gradient evenly among all positions that attain the minimum
    (k tied positions get 1/k each). This differs from :func:`min_pool_with_indices` (``min`` with indices, the
    repo's ``-max_pool2d(-d)``), which sends the whole gradient to the one position it returns. Exact ties only
    occur on identical latent patches (or distances clamped at 0, where the clamp's gradient is 0 anyway); the
    values are identical. ``amin`` skips the index computation (about 1.4 ms instead of 11 ms on the CUB size).
    """
    check_shape("maps", maps, (None, None, None, None))
    return maps.flatten(2).amin(dim=2)


def min_pool_with_indices(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [B, M], flat position index [B, M])`` of the global min of [B, M, H, W] maps (``min``: its
    gradient goes entirely to the returned position, at ties too). Use where the location is needed."""
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
    check_labels("labels", labels, identity.shape[1])
    return _membership(labels, identity)


def _membership(labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    return identity.t()[labels] > 0


#: attribute names of a backbone's own classifier, which ``feature_map`` does not use
CLASSIFIER_NAMES = ("head", "fc", "classifier")


def backbone_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """The backbone's feature parameters (the repo's ``features``): every parameter except those of its own
    classifier (a submodule named ``head``, ``fc`` or ``classifier``), which a prototype head does not use. Keeping
    the classifier out of the optimiser changes nothing on one process (it gets no gradient) and lets plain DDP run
    (it refuses trainable parameters without gradient)."""
    skip: set[int] = set()
    for name in CLASSIFIER_NAMES:
        mod = getattr(backbone, name, None)
        if isinstance(mod, nn.Module):
            skip |= {id(p) for p in mod.parameters()}
    return [p for p in backbone.parameters() if id(p) not in skip]


def kaiming_init_(module: nn.Module) -> nn.Module:
    """The family's add-on init (the repo's ``_initialize_weights``): Kaiming-normal (fan_out, relu) weights and
    zero biases for every ``nn.Conv2d`` in ``module``; returns it."""
    for mod in module.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
    return module


# ----------------------------------------------------------------------------------------------------------
# losses


def masked_min(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise min of ``d`` [B, M] over the entries where ``mask`` [B, M] is True (a true masked min:
    non-members are +inf). Every row needs at least one member."""
    check_shape("mask", mask, tuple(d.shape))
    if not bool(mask.any(dim=1).all()):
        raise PriorkitError("mask must select at least one prototype in every row")
    return _masked_min(d, mask)


def _masked_min(d: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
    check_labels("labels", labels, identity.shape[1], length=min_distances.shape[0])
    return _cluster(min_distances, _membership(labels, identity), official, max_dist)


def _cluster(min_distances: torch.Tensor, mask: torch.Tensor, official: bool, max_dist: float | None) -> torch.Tensor:
    if official:
        if max_dist is None:
            raise PriorkitError("max_dist (D*h1*w1) is required with official=True")
        return _official_masked_min(min_distances, mask, max_dist).mean()
    return _masked_min(min_distances, mask).mean()


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
    check_labels("labels", labels, identity.shape[1], length=min_distances.shape[0])
    return _cluster(min_distances, ~_membership(labels, identity), official, max_dist)


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

    _TENSORS = ("image_index", "location", "distance", "rf_box", "high_act_box", "prototype_class", "before")

    def state_dict(self) -> dict[str, Any]:
        """Tensors and int lists only (loads with ``torch.load(weights_only=True)``): for checkpoints."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self._TENSORS}
        out["latent_size"], out["image_size"] = list(self.latent_size), list(self.image_size)
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> PushResult:
        kw = {k: state[k] for k in cls._TENSORS}
        return cls(latent_size=tuple(state["latent_size"]), image_size=tuple(state["image_size"]), **kw)

    def summary(self) -> dict[str, float]:
        """Numbers for a training log: prototypes moved, unique patches, mean / max distance moved."""
        ok = self.image_index >= 0
        dist = self.distance[ok].double()
        return {
            "pushed": float(ok.sum()),
            "n_unique": float(self.n_unique),
            "mean_distance": float(dist.mean()) if ok.any() else float("nan"),
            "max_distance": float(dist.max()) if ok.any() else float("nan"),
        }

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
    check_shape("identity", identity, (None, None))
    check_shape("prototypes", prototypes, (identity.shape[0], None, None, None))
    images = as_tensor("images", images)
    check_batch("images", images, dim=4)
    labels = as_tensor("labels", labels)
    check_labels("labels", labels, identity.shape[1], length=images.shape[0])
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
    # under DDP each rank scores its contiguous shard of the push images; the per-prototype winners are then
    # gathered and the global one chosen (lowest distance, ties to the lowest rank = the first image found)
    shard = rank_slice(range(len(images)), D.rank(), D.world_size())
    lo, hi = (shard[0], shard[-1] + 1) if shard else (0, 0)
    z_size = features_fn(prep(images[:1].to(device))).shape if not shard else None
    for s in range(lo, hi, batch_size):
        x = prep(images[s : min(s + batch_size, hi)].to(device))
        y = labels[s : min(s + batch_size, hi)].to(device)
        z = features_fn(x)
        _check_latent_and_prototypes(z, prototypes)
        if not bool(torch.isfinite(z).all()):
            raise NonFiniteError(f"the latent of push images {s}..{s + len(x) - 1} holds NaN/inf; prototypes unchanged")
        z_size = z.shape
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
    if D.is_dist():
        vals = D.all_gather_cat(best[None])  # [W, M]
        win = vals.argmin(dim=0)  # first minimum: the lowest rank, i.e. the first image in push order
        ar = torch.arange(m, device=device)
        best = vals[win, ar]
        best_img = D.all_gather_cat(best_img[None])[win, ar]
        best_loc = D.all_gather_cat(best_loc[None])[win, ar]
        best_vec = D.all_gather_cat(best_vec[None])[win, ar]
    latent_size = (int(z_size[2]), int(z_size[3]))
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
# stages, schedule and the recipe


class PrototypeModel(Protocol):
    """What :func:`protopnet_recipe`, :func:`push_prototypes` callers and ``viz`` expect of a model.

    ``parameter_groups()`` -> named parameter lists (ProtoPNet: backbone, add_on, prototypes, last_layer);
    ``forward(x, full=True)`` -> the outputs object its ``loss_from_outputs(out, labels)`` takes (the recipe's
    default step); ``similarity_maps(x)`` -> [B, M, H', W'] (higher = more similar); ``prototype_activations(x)``
    -> [B, M]; ``prototype_identity`` [M, C]; ``last_layer`` (weight [C, M]); ``push(images, labels)``.
    """

    prototype_identity: torch.Tensor

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]: ...

    def similarity_maps(self, x: torch.Tensor) -> torch.Tensor: ...

    def prototype_activations(self, x: torch.Tensor) -> torch.Tensor: ...

    def push(self, images: torch.Tensor, labels: torch.Tensor, **kw: Any) -> Any: ...


#: The stages of the ProtoPNet schedule, in the order they first occur.
STAGES = ("warm", "joint", "push", "last_layer")


@dataclass
class PhaseSchedule:
    """ProtoPNet's schedule (``main.py`` + ``settings.py`` defaults).

    Epoch e < ``warm_epochs`` is a warm epoch (backbone frozen; optimiser over ``warm_lrs`` groups), later
    epochs are joint (``joint_lrs`` groups, StepLR(``joint_step_size``, ``joint_gamma``) stepped at the start of
    each joint epoch). After epoch e's training, if e >= ``push_start`` and e % ``push_every`` == 0: push, then
    (``last_layer_epochs`` > 0) that many epochs on ``last_layer_lrs`` only. The official lrs have
    ``weight_decay`` per group (``weight_decays``); groups missing there get 0.

    A run always ends on a pushed model (the paper evaluates pushed models; the repo keeps the best *pushed*
    checkpoint): when the last epoch is not a push epoch, ``final_push=True`` (default) adds a push (+ the
    last-layer stage) after it, and ``final_push=False`` refuses such a schedule. ``pushes=False`` is a schedule
    without any push (TesNet-style models such as EvalProtoPNet).
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
    final_push: bool = True
    pushes: bool = True

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
        for name in ("warm_lrs", "joint_lrs", "last_layer_lrs", "weight_decays"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise PriorkitError(f"{name} must be a mapping group -> value, got {type(value).__name__}")
            for k, v in value.items():
                check_range(f"{name}[{k!r}]", v, 0.0, low_inclusive=name == "weight_decays")
        if self.pushes and not self.final_push and not self.push_at(self.epochs - 1):
            raise PriorkitError(
                f"this schedule ends {self.epochs - 1 - max(self.push_epochs(), default=-1)} epoch(s) after its last "
                f"push (push epochs {self.push_epochs()} of {self.epochs}): the run would end on an unpushed model; "
                "set final_push=True (a push + last-layer stage after the last epoch) or choose epochs, push_start "
                "and push_every so that the last epoch is a push epoch"
            )

    def stage(self, epoch: int) -> str:
        """``warm`` or ``joint``: the training stage of ``epoch``."""
        check_positive_int("epoch", epoch, 0)
        return "warm" if epoch < self.warm_epochs else "joint"

    def push_at(self, epoch: int) -> bool:
        """Whether a push (then the last-layer stage) follows ``epoch``'s training."""
        if not self.pushes:
            return False
        if epoch == self.epochs - 1 and self.final_push:
            return True
        return epoch >= self.push_start and epoch % self.push_every == 0

    def push_epochs(self) -> list[int]:
        return [e for e in range(self.epochs) if self.push_at(e)]

    def plan(self) -> list[tuple[int, str]]:
        """Every (epoch, stage) the recipe runs, e.g. [(0, 'warm'), ..., (10, 'joint'), (10, 'push'),
        (10, 'last_layer'), ...]; each 'last_layer' entry is ``last_layer_epochs`` passes."""
        out: list[tuple[int, str]] = []
        for e in range(self.epochs):
            out.append((e, self.stage(e)))
            if self.push_at(e):
                out.append((e, "push"))
                if self.last_layer_epochs:
                    out.append((e, "last_layer"))
        return out

    def stage_lrs(self, stage: str) -> Mapping[str, float]:
        check_choice("stage", stage, ("warm", "joint", "last_layer"))
        return {"warm": self.warm_lrs, "joint": self.joint_lrs, "last_layer": self.last_layer_lrs}[stage]

    def joint_lr_factor(self, joint_epoch: int) -> float:
        """The joint lr factor in the ``joint_epoch``-th joint epoch (0-based): the repo steps its StepLR once
        *before* every joint epoch, so it is ``gamma ** ((joint_epoch + 1) // step_size)``."""
        return self.joint_gamma ** ((joint_epoch + 1) // self.joint_step_size)


def _groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    if not callable(getattr(model, "parameter_groups", None)):
        raise PriorkitError("model must define parameter_groups() -> {name: [parameters]} (see PrototypeModel)")
    return dict(model.parameter_groups())


def set_stage(model: nn.Module, stage: str, trainable: Sequence[str]) -> None:
    """Freeze every parameter group except ``trainable`` (ProtoPNet's ``warm_only`` / ``joint`` /
    ``last_only``), and set the module mode: train mode for warm / joint (as the repo: BatchNorm statistics of
    a frozen backbone still move), eval mode for push and last_layer (so that only the last layer changes).
    For your own loop; the recipe does the same through the engine's phases."""
    check_choice("stage", stage, STAGES)
    groups = _groups(model)
    for name in trainable:
        check_choice("trainable group", name, list(groups))
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(name in trainable)
    model.train(stage in ("warm", "joint"))


def stage_optimizer(model: nn.Module, lrs: Mapping[str, float], weight_decays: Mapping[str, float]) -> torch.optim.Adam:
    """One stage's Adam over its named groups, with per-group lr and weight decay (groups missing in
    ``weight_decays`` get 0), as ``main.py``'s ``joint_optimizer`` / ``warm_optimizer`` / ``last_layer_optimizer``."""
    groups = _groups(model)
    specs = []
    for name, lr in lrs.items():
        check_choice("lr group", name, list(groups))
        specs.append({"params": groups[name], "lr": lr, "weight_decay": weight_decays.get(name, 0.0)})
    return torch.optim.Adam(specs)


def _as_push_data(push_data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(push_data, IndexedTensorDataset):
        return push_data.x, push_data.y
    if isinstance(push_data, torch.utils.data.TensorDataset):
        return push_data.tensors[0], push_data.tensors[1]
    if isinstance(push_data, tuple | list) and len(push_data) == 2:
        return as_tensor("push_data images", push_data[0]), as_tensor("push_data labels", push_data[1])
    raise PriorkitError(
        "push_data must be (images, labels), an IndexedTensorDataset or a TensorDataset, "
        f"got {type(push_data).__name__}"
    )


class PushRecord(Hook):
    """Keeps every push's bookkeeping (a :class:`PushResult`, or ``{name: PushResult}`` for multi-branch models)
    in the checkpoint, so a run resumed after a push still has it (``last``: the latest push)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.results: list[Any] = []

    @property
    def state_key(self) -> str:
        return "protopnet_push"

    @property
    def last(self) -> Any:
        """The latest push's result (``None`` before the first push)."""
        return self.results[-1] if self.results else None

    def add(self, epoch: int, result: Any) -> None:
        if not isinstance(result, PushResult) and not (
            isinstance(result, Mapping) and all(isinstance(v, PushResult) for v in result.values())
        ):
            raise PriorkitError(f"a push must return a PushResult or {{name: PushResult}}, got {type(result).__name__}")
        self.epochs.append(int(epoch))
        self.results.append(result)

    def state_dict(self) -> dict[str, Any]:
        out = []
        for r in self.results:
            if isinstance(r, PushResult):
                out.append({"single": r.state_dict()})
            else:
                out.append({"named": {k: v.state_dict() for k, v in r.items()}})
        return {"epochs": list(self.epochs), "results": out}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = [int(e) for e in state["epochs"]]
        self.results = [
            PushResult.from_state_dict(r["single"])
            if "single" in r
            else {k: PushResult.from_state_dict(v) for k, v in r["named"].items()}
            for r in state["results"]
        ]


class _AfterStep(Hook):
    """Runs ``fn(model, stage)`` after every optimiser step (e.g. re-normalising prototypes)."""

    def __init__(self, fn: Callable[[nn.Module, str], None]) -> None:
        self.fn = fn

    @property
    def state_key(self) -> str:
        return "protopnet_after_step"

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        self.fn(state.model, state.phase.options["stage"])


def _full_forward(net: nn.Module, batch: Batch) -> Any:
    return net(batch.x, full=True)


def _default_loss(state: RunState, batch: Batch) -> Mapping[str, torch.Tensor]:
    return state.model.loss_from_outputs(batch.output, batch.y)


@dataclass
class ProtoPNetRecipe(Recipe):
    """The engine recipe of a :class:`PhaseSchedule` (built by :func:`protopnet_recipe`) with its hooks.

    Run it with :meth:`fit`, or give ``recipe.hooks`` to your own :class:`~priorkit.train.Trainer` together with
    the recipe. ``record.last`` is the latest push's bookkeeping (restored on resume).
    """

    schedule: PhaseSchedule | None = None
    record: PushRecord = field(default_factory=PushRecord)
    extra_hooks: list[Hook] = field(default_factory=list)

    @property
    def hooks(self) -> list[Hook]:
        return [self.record, *self.extra_hooks]

    def fit(
        self,
        model: nn.Module,
        train_data: Dataset,
        config: TrainConfig | dict[str, Any] | None = None,
        *,
        hooks: Sequence[Hook] = (),
        eval_fn: Callable[[RunState], dict[str, float]] | None = None,
        resume: bool = False,
    ) -> list[dict[str, Any]]:
        """Train ``model`` through the engine; afterwards every parameter requires grad again and the model is in
        eval mode (as the repo's driver leaves it). Returns the history (one record per epoch / action)."""
        if isinstance(train_data, tuple | list):
            train_data = IndexedTensorDataset(as_tensor("images", train_data[0]), as_tensor("labels", train_data[1]))
        cfg = config if config is not None else TrainConfig(progress=False)
        trainer = Trainer(model, train_data, recipe=self, hooks=[*self.hooks, *hooks], config=cfg, eval_fn=eval_fn)
        history = trainer.fit(resume=resume)
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
        return history


def protopnet_recipe(
    model: nn.Module,
    schedule: PhaseSchedule | None = None,
    *,
    push_data: Any,
    loss: Callable[[RunState, Batch], Mapping[str, torch.Tensor]] | None = None,
    forward: Callable[[nn.Module, Batch], Any] | None = None,
    push_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any] | None = None,
    after_step: Callable[[nn.Module, str], None] | None = None,
    before_push: Callable[[RunState], Mapping[str, float] | None] | None = None,
) -> ProtoPNetRecipe:
    """ProtoPNet's warm / joint / push / last-layer schedule as engine phases.

    Consecutive epochs of one stage form one phase (``warm@0``, ``joint@5``, ``push@10``, ``last_layer@10``,
    ``joint@11``, ...; ``phase.options["stage"]`` names the stage). One Adam per stage (:func:`stage_optimizer`,
    per-group lrs and weight decays) is shared by all phases of that stage, so its state survives pushes; the
    joint lr follows the repo's StepLR stepped *before* each joint epoch (:meth:`PhaseSchedule.joint_lr_factor`).
    warm / joint run in train mode, push and last_layer in eval mode (the last-layer stage moves only W).

    ``push_data``: ``(images, labels)`` or a dataset (usually the training set without augmentation);
    ``loss(state, batch) -> {name: term}`` (default ``model.loss_from_outputs(batch.output, batch.y)``) after
    ``forward(net, batch)`` (default ``net(batch.x, full=True)``); ``push_fn(model, images, labels)`` (default
    ``model.push(images, labels, batch_size=schedule.push_batch_size)``) returns a :class:`PushResult` or
    ``{name: PushResult}``, kept by the recipe's :class:`PushRecord` and summarised in the history;
    ``after_step(model, stage)`` runs after every optimiser step; ``before_push(state)`` runs right before each
    push and its numbers are logged with it.
    """
    schedule = schedule if schedule is not None else PhaseSchedule()
    if not isinstance(schedule, PhaseSchedule):
        raise PriorkitError(f"schedule must be a PhaseSchedule, got {type(schedule).__name__}")
    groups = _groups(model)
    for stage in ("warm", "joint", "last_layer"):
        for name in schedule.stage_lrs(stage):
            check_choice(f"{stage} lr group", name, list(groups))
    images, labels = _as_push_data(push_data)
    check_batch("push_data images", images, dim=4)
    ident = getattr(model, "prototype_identity", None)
    num_classes = int(ident.shape[1]) if isinstance(ident, torch.Tensor) else int(labels.max()) + 1
    check_labels("push_data labels", labels, num_classes, length=images.shape[0])
    for name, fn in (("loss", loss), ("forward", forward), ("push_fn", push_fn), ("after_step", after_step)):
        if fn is not None and not callable(fn):
            raise PriorkitError(f"{name} must be callable, got {type(fn).__name__}")
    record = PushRecord()
    push_fn = push_fn or (lambda m, x, y: m.push(x, y, batch_size=schedule.push_batch_size))

    def push_action(state: RunState) -> dict[str, float]:
        out: dict[str, float] = {}
        if before_push is not None:
            out.update(before_push(state) or {})
        res = push_fn(state.model, images, labels)
        record.add(state.epoch, res)
        parts = {"": res} if isinstance(res, PushResult) else res
        for name, r in parts.items():
            out.update({f"push/{name + '/' if name else ''}{k}": v for k, v in r.summary().items()})
        return out

    def joint_sched(opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(opt, schedule.joint_lr_factor)

    def optimizer_for(stage: str) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: stage_optimizer(m, schedule.stage_lrs(stage), schedule.weight_decays)

    runs: list[list[Any]] = []  # [stage, first epoch, epochs]
    for epoch, stage in schedule.plan():
        if runs and runs[-1][0] == stage and stage in ("warm", "joint"):
            runs[-1][2] += 1
        else:
            runs.append([stage, epoch, 1])
    phases = []
    for stage, first, n in runs:
        name = f"{stage}@{first}"
        common = dict(loss=loss or _default_loss, forward=forward or _full_forward, options={"stage": stage})
        if stage == "push":
            phases.append(
                Phase(name, epochs=0, trainable=[], train_mode=False, on_end=push_action, options={"stage": stage})
            )
        elif stage == "last_layer":
            phases.append(
                Phase(
                    name,
                    epochs=schedule.last_layer_epochs,
                    trainable=list(schedule.last_layer_lrs),
                    optimizer=optimizer_for(stage),
                    optimizer_key=stage,
                    batch_size=schedule.batch_size,
                    train_mode=False,
                    **common,
                )
            )
        else:
            phases.append(
                Phase(
                    name,
                    epochs=n,
                    trainable=list(schedule.stage_lrs(stage)),
                    optimizer=optimizer_for(stage),
                    optimizer_key=stage,
                    scheduler=joint_sched if stage == "joint" else None,
                    interval="epoch",
                    batch_size=schedule.batch_size,
                    train_mode=True,
                    **common,
                )
            )
    extra = [_AfterStep(after_step)] if after_step is not None else []
    return ProtoPNetRecipe(phases, loss_fn=None, schedule=schedule, record=record, extra_hooks=extra)
