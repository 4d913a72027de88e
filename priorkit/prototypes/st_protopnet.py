"""ST-ProtoPNet: "Learning Support and Trivial Prototypes for Interpretable Image Classification"
(Wang, Liu, Chen, Frazer, Carneiro; ICCV 2023).

By analogy with the support vectors of an SVM, ProtoPNet's prototypes are "trivial": trained by cluster /
separation costs they sit far from the decision boundary. ST-ProtoPNet keeps such a trivial branch and adds a
second, "support" branch on the same backbone whose prototypes are pulled toward the boundary. Each branch b
has its own add-on (``[Upsample x2 |Identity] -> 1x1 conv -> 1x1 conv``, no activation), its own M = K*C unit
prototypes and its own bias-free last layer (+1 / -0.5 init). The similarity is the cosine of the normalised
latent patch and prototype, ReLU'd and global max-pooled, g^b in [0, 1]^M; logits_b = W^b g^b and the
prediction is argmax(logits_t + logits_s). Both branches use a similarity cluster cost (maximised), a
separation cost (minimised) and a TesNet-style per-class orthogonality; the trivial branch adds the
*discrimination* cost (mean over class pairs of the closest cross-class prototype cosine, minimised), the
support branch the *closeness* cost (minus the mean over class pairs of the farthest cross-class prototype
cosine, so cross-class support prototypes approach each other, i.e. the boundary). Mini-batches alternate:
even batches train the trivial loss, odd batches the support loss; prototypes are re-normalised after every
step. Schedule: warm (backbone and both last layers frozen) -> joint -> per-branch cosine push -> last layers.
The paper reports: state-of-the-art accuracy among prototype models on CUB-200 (full and cropped), Cars and
Dogs, with support prototypes that localise on the object more often than trivial ones.

Official code: cwangrun/ST-ProtoPNet (``full/model.py``, ``full/train_and_test.py``, ``full/push_*.py``,
``full/settings_CUB_DOG.py``); this is a new implementation on :mod:`priorkit.prototypes.protopnet_base` (the
stage recipe, push with bookkeeping, class identity, last-layer init, masked L1). Libraries considered: CaBRNet and
prototorch (see ``protopnet_base``): neither has the two-branch head or these costs.

Equations (paper Sec. 3): the branch similarity g = max-pool(relu(cos)) (Eq. 1-2), the cluster and separation
similarities (Eq. 3-4), the discrimination (trivial, Eq. 5) and closeness (support, Eq. 6) costs, the
orthogonality term and the alternating objective (Eq. 7-8).

Use: ``model = STProtoPNet(backbone, num_classes)`` (the entry), trained through the engine with the ProtoPNet
base's recipe: ``protopnet_recipe(model, default_schedule(...), push_data=(x, y), loss=STLoss(),
after_step=renormalize_after_step).fit(model, IndexedTensorDataset(x, y))``. Under DDP, ``STLoss(mode="sum")``
runs (tested equal to one process; the push is sharded over ranks as ProtoPNet's); the alternating mode is refused
under DDP for now: each step leaves one branch's parameters without gradient while the forward computes both, which
DDP refuses even with ``find_unused_parameters`` (a branch-selecting forward is not built yet).

Card vs code, and what is followed here: the card and the code agree on the losses, signs and coefficients
(``settings_CUB_DOG.py``); the code's masked max ``max(g * mask)`` equals a true masked max because g >= 0 after
the ReLU, and a true masked max (-inf fill) is used here so that ``relu=False`` stays correct. The code's
joint optimiser (like ProtoPNet's) omits both last layers, so W^t and W^s stay at +1/-0.5 until the first
last-layer stage: followed. Weight decay is 1e-3 x factor (0.1 for CUB) on backbone and add-ons. The alternation
index is the batch index within the epoch (the code's ``i``, the engine's ``state.batch_in_epoch``). The last-layer
stage runs in eval mode (the code runs it in train mode, which
would also move BatchNorm statistics), as in priorkit's ProtoPNet. Not built: the cropped-setting projection
metric (TesNet) variant, the L2 distance variant, the interpretability metrics (IoU, deletion AUC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    PriorkitError,
    check_batch,
    check_choice,
    check_config_keys,
    check_labels,
    check_positive_int,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.prototypes.protopnet_base import (
    PhaseSchedule,
    PushResult,
    _membership,
    backbone_parameters,
    class_identity,
    class_membership,
    init_last_layer,
    kaiming_init_,
    l1_off_class,
    push_prototypes,
)
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch

__all__ = [
    "BRANCHES",
    "DEFAULT_COEFS",
    "MODES",
    "STLoss",
    "STProtoPNet",
    "STProtoPNetOutput",
    "branch_loss",
    "closeness_cost",
    "cluster_similarity",
    "concat_push_results",
    "cosine_similarity_maps",
    "cross_class_similarities",
    "default_schedule",
    "discrimination_cost",
    "orthogonality_cost",
    "separation_similarity",
    "st_add_on",
]

BRANCHES = ("trivial", "support")
#: ``alternate``: even batches train the trivial loss, odd ones the support loss (the paper); ``sum``: both
#: branch losses on every batch (a variant for comparison).
MODES = ("alternate", "sum")
#: settings_CUB_DOG.py (signs as in the code: the cluster similarity is maximised, hence negative).
DEFAULT_COEFS: dict[str, float] = {
    "crs_ent": 1.0,
    "clst_trv": -0.8,
    "sep_trv": 0.08,
    "clst_spt": -0.8,
    "sep_spt": 0.48,
    "orth": 1e-3,
    "l1": 1e-4,
    "discr": 1.0,
    "close": 1.0,
}


# ----------------------------------------------------------------------------------------------------------
# functional core


def cosine_similarity_maps(z: torch.Tensor, prototypes: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """Cosine of every normalised latent cell z_u [B, D, H, W] with every normalised prototype [M, D, h1, w1]
    (``_cosine_convolution``), [B, M, H', W']; ReLU'd (Deformable ProtoPNet) when ``relu``."""
    check_shape("z", z, (None, None, None, None))
    check_shape("prototypes", prototypes, (None, z.shape[1], None, None))
    sim = F.conv2d(F.normalize(z, p=2, dim=1), F.normalize(prototypes, p=2, dim=1))
    return sim.relu() if relu else sim


def _masked_max(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return g.masked_fill(~mask, float("-inf")).amax(dim=1)


def cluster_similarity(g: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """Clst = mean_i max_{j: class(j) = y_i} g_ij on pooled similarities g [B, M] (maximised: coefficient < 0)."""
    check_shape("g", g, (None, identity.shape[0]))
    return _masked_max(g, class_membership(labels, identity)).mean()


def separation_similarity(g: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """Sep = mean_i max_{j: class(j) != y_i} g_ij (minimised: coefficient > 0)."""
    check_shape("g", g, (None, identity.shape[0]))
    return _masked_max(g, ~class_membership(labels, identity)).mean()


def _per_class(prototypes: torch.Tensor, num_classes: int) -> torch.Tensor:
    check_positive_int("num_classes", num_classes, 2)
    p = prototypes.reshape(prototypes.shape[0], -1)
    if p.shape[0] % num_classes:
        raise PriorkitError(f"prototypes ({p.shape[0]}) must be a multiple of num_classes ({num_classes})")
    return p.reshape(num_classes, p.shape[0] // num_classes, p.shape[1])  # [C, K, D]


def orthogonality_cost(prototypes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Orth = sum_c || P_c P_c^T - I_K ||_1 (entry-wise) over each class's K prototypes [C*K, D, ...]; 0 for
    per-class orthonormal sets. Computed on the stored vectors (unit after every step), as the code."""
    p = _per_class(prototypes, num_classes)
    gram = p @ p.transpose(1, 2)
    eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    return (gram - eye).abs().sum()


def cross_class_similarities(prototypes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dot products of every prototype pair arranged [C, C, K*K] (class c, class c', flattened (k, k'))."""
    p = _per_class(prototypes, num_classes)
    c, k, _ = p.shape
    s = torch.einsum("akd,bld->abkl", p, p)
    return s.reshape(c, c, k * k)


def _off_diagonal_mean(a: torch.Tensor) -> torch.Tensor:
    c = a.shape[0]
    off = 1.0 - torch.eye(c, dtype=a.dtype, device=a.device)
    return (a * off).sum() / off.sum()


def discrimination_cost(prototypes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Discr = mean_{c != c'} max_{k,k'} <p_ck, p_c'k'> (trivial branch; minimised: the closest cross-class
    pair is pushed apart)."""
    return _off_diagonal_mean(cross_class_similarities(prototypes, num_classes).amax(dim=2))


def closeness_cost(prototypes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Close = -mean_{c != c'} min_{k,k'} <p_ck, p_c'k'> (support branch; minimised: even the farthest
    cross-class pair is pulled together, toward the boundary)."""
    return -_off_diagonal_mean(cross_class_similarities(prototypes, num_classes).amin(dim=2))


def branch_loss(
    branch: str,
    logits: torch.Tensor,
    g: torch.Tensor,
    labels: torch.Tensor,
    identity: torch.Tensor,
    prototypes: torch.Tensor,
    last_weight: torch.Tensor,
    coefs: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """One branch's weighted loss terms (their sum is the loss of a trivial / support step).

    trivial: crs_ent CE(logits_t) + clst_trv Clst_t + sep_trv Sep_t + orth Orth_t + discr Discr + l1 L1_t;
    support: crs_ent CE(logits_s) + clst_spt Clst_s + sep_spt Sep_s + orth Orth_s + close Close + l1 L1_s.
    Keys are prefixed by the branch (``trivial/ce``, ...)."""
    check_choice("branch", branch, BRANCHES)
    c = dict(DEFAULT_COEFS)
    if coefs:
        check_config_keys("st_protopnet coefs", coefs, DEFAULT_COEFS)
        c.update(coefs)
    check_shape("logits", logits, (g.shape[0], identity.shape[1]))
    check_shape("g", g, (None, identity.shape[0]))
    n_cls = identity.shape[1]
    check_labels("labels", labels, n_cls, length=g.shape[0])  # once per step; the terms below use it unchecked
    own = _membership(labels, identity)
    tag = "trv" if branch == "trivial" else "spt"
    terms = {
        "ce": c["crs_ent"] * F.cross_entropy(logits, labels),
        "clst": c[f"clst_{tag}"] * _masked_max(g, own).mean(),
        "sep": c[f"sep_{tag}"] * _masked_max(g, ~own).mean(),
        "orth": c["orth"] * orthogonality_cost(prototypes, n_cls),
    }
    if branch == "trivial":
        terms["discr"] = c["discr"] * discrimination_cost(prototypes, n_cls)
    else:
        terms["close"] = c["close"] * closeness_cost(prototypes, n_cls)
    terms["l1"] = c["l1"] * l1_off_class(last_weight, identity)
    return {f"{branch}/{k}": v for k, v in terms.items()}


def concat_push_results(a: PushResult, b: PushResult) -> PushResult:
    """One :class:`PushResult` for prototypes [a; b] (e.g. trivial then support, both searched on the same
    images), so that ``viz`` can explain the summed-logit model."""
    if a.latent_size != b.latent_size or a.image_size != b.image_size:
        raise PriorkitError("push results must come from the same images and latent size to be concatenated")
    return PushResult(
        image_index=torch.cat([a.image_index, b.image_index]),
        location=torch.cat([a.location, b.location]),
        distance=torch.cat([a.distance, b.distance]),
        rf_box=torch.cat([a.rf_box, b.rf_box]),
        high_act_box=torch.cat([a.high_act_box, b.high_act_box]),
        prototype_class=torch.cat([a.prototype_class, b.prototype_class]),
        latent_size=a.latent_size,
        image_size=a.image_size,
        before=torch.cat([a.before, b.before]),
    )


# ----------------------------------------------------------------------------------------------------------
# model


def st_add_on(in_channels: int, dim: int, upsample: bool = True) -> nn.Sequential:
    """The "regular" ST-ProtoPNet add-on: [bilinear Upsample x2 (non-VGG) | Identity (VGG)] -> 1x1 conv
    (C_f -> D) -> 1x1 conv (D -> D), no activation; Kaiming (fan_out) weights, zero biases."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("dim", dim)
    first: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear") if upsample else nn.Identity()
    return kaiming_init_(nn.Sequential(first, nn.Conv2d(in_channels, dim, 1), nn.Conv2d(dim, dim, 1)))


@dataclass
class STProtoPNetOutput:
    logits: dict[str, torch.Tensor]  # branch -> [B, C]
    pooled: dict[str, torch.Tensor]  # branch -> [B, M] similarities g^b
    maps: dict[str, torch.Tensor]  # branch -> [B, M, H', W']

    @property
    def combined(self) -> torch.Tensor:
        """logits_t + logits_s, the prediction's logits."""
        return self.logits["trivial"] + self.logits["support"]


class _Head(nn.Module):
    """A last layer viewed as one [C, 2M] linear map over [g^t; g^s] (for ``viz``)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight


class STProtoPNet(nn.Module):
    """Two-branch (trivial + support) prototype head on ``backbone`` (``feature_map(x)`` -> [B, C_f, H, W]).

    Per branch: add-on to ``prototype_dim`` D (``upsample`` x2 first, as the code for non-VGG backbones),
    M = K*C prototypes [M, D, 1, 1] drawn U[0,1) (unit-normalised after each optimiser step), a bias-free
    last layer initialised +1 / ``incorrect_weight``. ``forward`` returns the summed logits. For ``viz`` the
    model also looks like a single prototype model over the 2M prototypes [trivial; support]:
    ``similarity_maps``, ``prototype_activations``, ``prototype_identity`` [2M, C] and ``last_layer.weight``
    = [W^t, W^s] (so logits = [W^t, W^s] [g^t; g^s]).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        prototypes_per_class: int = 5,
        prototype_dim: int = 64,
        *,
        upsample: bool = True,
        relu: bool = True,
        backbone_channels: int | None = None,
        incorrect_weight: float = -0.5,
        coefs: Mapping[str, float] | None = None,
        mode: str = "alternate",
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "feature_map", None)):
            raise PriorkitError("backbone must have a feature_map(x) method returning [B, C, H, W] (e.g. Conv4)")
        check_positive_int("num_classes", num_classes, 2)
        check_positive_int("prototypes_per_class", prototypes_per_class)
        check_positive_int("prototype_dim", prototype_dim)
        check_choice("mode", mode, MODES)
        if coefs:
            check_config_keys("STProtoPNet coefs", coefs, DEFAULT_COEFS)
        channels = backbone_channels if backbone_channels is not None else getattr(backbone, "feature_dim", None)
        if channels is None:
            raise PriorkitError("backbone_channels is required when the backbone has no feature_dim attribute")
        self.backbone = backbone
        m = num_classes * prototypes_per_class
        self.add_on_trivial = st_add_on(channels, prototype_dim, upsample)
        self.add_on_support = st_add_on(channels, prototype_dim, upsample)
        self.prototypes_trivial = nn.Parameter(torch.rand(m, prototype_dim, 1, 1))
        self.prototypes_support = nn.Parameter(torch.rand(m, prototype_dim, 1, 1))
        self.last_layer_trivial = nn.Linear(m, num_classes, bias=False)
        self.last_layer_support = nn.Linear(m, num_classes, bias=False)
        ident = class_identity(num_classes, prototypes_per_class)
        self.register_buffer("branch_identity", ident)
        self.register_buffer("prototype_identity", torch.cat([ident, ident]))
        init_last_layer(self.last_layer_trivial.weight, ident, incorrect_weight)
        init_last_layer(self.last_layer_support.weight, ident, incorrect_weight)
        self.num_classes, self.prototypes_per_class, self.prototype_dim = (
            num_classes,
            prototypes_per_class,
            prototype_dim,
        )
        self.relu, self.mode = relu, mode
        self.coefs = {**DEFAULT_COEFS, **(coefs or {})}

    # --- parts by branch
    def add_on(self, branch: str) -> nn.Module:
        check_choice("branch", branch, BRANCHES)
        return self.add_on_trivial if branch == "trivial" else self.add_on_support

    def prototypes(self, branch: str) -> nn.Parameter:
        check_choice("branch", branch, BRANCHES)
        return self.prototypes_trivial if branch == "trivial" else self.prototypes_support

    def head(self, branch: str) -> nn.Linear:
        check_choice("branch", branch, BRANCHES)
        return self.last_layer_trivial if branch == "trivial" else self.last_layer_support

    @property
    def num_prototypes(self) -> int:
        """M per branch."""
        return int(self.prototypes_trivial.shape[0])

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The code's optimiser groups: backbone (``features``), add_on (both), prototypes (both), last_layer
        (both)."""
        return {
            "backbone": backbone_parameters(self.backbone),
            "add_on": list(self.add_on_trivial.parameters()) + list(self.add_on_support.parameters()),
            "prototypes": [self.prototypes_trivial, self.prototypes_support],
            "last_layer": list(self.last_layer_trivial.parameters()) + list(self.last_layer_support.parameters()),
        }

    # --- forward
    def latent(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """Branch latent z^b = add_on_b(feature_map(x)), [B, D, H, W] (not normalised)."""
        return self.add_on(branch)(self.backbone.feature_map(x))

    def outputs(self, x: torch.Tensor) -> STProtoPNetOutput:
        """Both branches' logits, pooled similarities and maps of a batch ``x`` [B, C, H, W] (checked)."""
        check_batch("x", x, dim=4)
        f = self.backbone.feature_map(x)
        logits, pooled, maps = {}, {}, {}
        for b in BRANCHES:
            maps[b] = cosine_similarity_maps(self.add_on(b)(f), self.prototypes(b), self.relu)
            pooled[b] = maps[b].flatten(2).amax(dim=2)
            logits[b] = self.head(b)(pooled[b])
        return STProtoPNetOutput(logits, pooled, maps)

    def forward(self, x: torch.Tensor, *, full: bool = False) -> torch.Tensor | STProtoPNetOutput:
        """Summed logits logits_t + logits_s, [B, C]; ``full=True`` returns the :class:`STProtoPNetOutput` (the
        recipe's step, so the forward runs through the DDP wrapper)."""
        out = self.outputs(x)
        return out if full else out.combined

    def similarity_maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2M, H', W']: trivial then support similarity maps."""
        out = self.outputs(x)
        return torch.cat([out.maps["trivial"], out.maps["support"]], dim=1)

    def prototype_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2M]: [g^t; g^s]."""
        out = self.outputs(x)
        return torch.cat([out.pooled["trivial"], out.pooled["support"]], dim=1)

    @property
    def last_layer(self) -> _Head:
        return _Head(torch.cat([self.last_layer_trivial.weight, self.last_layer_support.weight], dim=1))

    # --- losses
    def loss_terms(self, x: torch.Tensor, y: torch.Tensor, branches: tuple[str, ...] = BRANCHES) -> dict:
        """Weighted loss terms of the given branches on a batch (see :func:`branch_loss`)."""
        return self.loss_from_outputs(self.outputs(x), y, branches)

    def loss_from_outputs(
        self, out: STProtoPNetOutput, y: torch.Tensor, branches: tuple[str, ...] = BRANCHES
    ) -> dict[str, torch.Tensor]:
        """Weighted loss terms of the given branches on outputs already computed."""
        terms: dict[str, torch.Tensor] = {}
        for b in branches:
            terms.update(
                branch_loss(
                    b,
                    out.logits[b],
                    out.pooled[b],
                    y,
                    self.branch_identity,
                    self.prototypes(b),
                    self.head(b).weight,
                    self.coefs,
                )
            )
        return terms

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Re-normalise both prototype sets to unit L2 norm along D (after every optimiser step)."""
        for b in BRANCHES:
            p = self.prototypes(b)
            p.data.copy_(F.normalize(p.data, p=2, dim=1))

    # --- push
    def push_branch(self, images: torch.Tensor, labels: torch.Tensor, branch: str, **kw: Any) -> PushResult:
        """Project branch prototypes onto the nearest own-class *normalised* latent cell under cosine distance
        (``push_trivial`` / ``push_support``): afterwards p_j equals F.normalize(z^b)[:, u] of an own-class
        image exactly. Boxes come from the gradient support of z_u (no receptive-field arithmetic), so the x2
        upsampling is handled (upstream issue cwangrun/ST-ProtoPNet #1)."""
        check_choice("branch", branch, BRANCHES)
        was = self.training
        self.eval()
        try:
            res = push_prototypes(
                lambda t: F.normalize(self.latent(t, branch), p=2, dim=1),
                self.prototypes(branch),
                self.branch_identity,
                images,
                labels,
                distance_fn=lambda z, p: -cosine_similarity_maps(z, p, relu=False),
                similarity_fn=lambda d: -d,
                **kw,
            )
        finally:
            self.train(was)
        return res

    def push(self, images: torch.Tensor, labels: torch.Tensor, **kw: Any) -> dict[str, PushResult]:
        """Push each branch separately (trivial, then support); returns ``{branch: PushResult}``."""
        return {b: self.push_branch(images, labels, b, **kw) for b in BRANCHES}


# ----------------------------------------------------------------------------------------------------------
# training


class STLoss:
    """The recipe's ``loss(state, batch)`` for :func:`priorkit.prototypes.protopnet_base.protopnet_recipe`.

    ``alternate`` (the paper): batch i of each epoch (``state.batch_in_epoch``, the code's in-epoch index) trains
    the trivial loss when i is even and the support loss when odd. ``sum``: both branches' terms on every batch.
    """

    def __init__(self, mode: str = "alternate") -> None:
        check_choice("mode", mode, MODES)
        self.mode = mode

    @staticmethod
    def branch_at(batch_in_epoch: int) -> str:
        return "trivial" if batch_in_epoch % 2 == 0 else "support"

    def __call__(self, state: RunState, batch: Batch) -> dict:
        model = state.model
        if self.mode == "sum":
            return model.loss_from_outputs(batch.output, batch.y)
        if state.world_size > 1:
            raise PriorkitError(
                "STLoss(mode='alternate') is not supported under DDP yet (each step leaves one branch without "
                "gradient, which DDP refuses); use STLoss(mode='sum') or one process"
            )
        return model.loss_from_outputs(batch.output, batch.y, (self.branch_at(state.batch_in_epoch),))


def renormalize_after_step(model: STProtoPNet, stage: str) -> None:
    """``after_step`` of the recipe: unit-normalise both prototype sets after every warm / joint optimiser step.

    The code also re-normalises during the last-layer stage, where the prototypes are frozen unit vectors, so
    that is a no-op up to round-off; it is skipped here so that pushed prototypes stay bit-identical to their
    training patches."""
    if stage in ("warm", "joint"):
        model.normalize_prototypes()


def default_schedule(**overrides: Any) -> PhaseSchedule:
    """The code's CUB schedule (``main.py`` + ``settings_CUB_DOG.py``): 120 epochs, 10 warm (add-ons and
    prototypes, lr 3e-3; last layers frozen), joint (backbone 1e-4, add-ons and prototypes 3e-3; last layers
    not in the optimiser), weight decay 1e-3 x 0.1 on backbone and add-ons, StepLR(20, 0.2), push at 100 and
    110, then 10 last-layer epochs (lr 1e-4, both W), batch 80."""
    kw: dict[str, Any] = dict(
        epochs=120,
        warm_epochs=10,
        push_start=100,
        push_every=10,
        last_layer_epochs=10,
        warm_lrs={"add_on": 3e-3, "prototypes": 3e-3},
        joint_lrs={"backbone": 1e-4, "add_on": 3e-3, "prototypes": 3e-3},
        last_layer_lrs={"last_layer": 1e-4},
        weight_decays={"backbone": 1e-4, "add_on": 1e-4},
        joint_step_size=20,
        joint_gamma=0.2,
        batch_size=80,
        push_batch_size=100,
    )
    kw.update(overrides)
    return PhaseSchedule(**kw)


def prototype_geometry(
    model: STProtoPNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> dict[str, dict[str, float]]:
    """The card's boundary diagnostic per branch: ``nearest_cross_cos`` = mean over prototypes of the cosine to
    the nearest other-class prototype of the same branch, and ``margin`` = mean over prototypes of (mean over
    own-class images of the max cosine to their patches) - (same over other-class images)."""
    check_shape("labels", labels, (images.shape[0],))
    was = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        pooled = {b: [] for b in BRANCHES}
        for s in range(0, len(images), batch_size):
            for b in BRANCHES:  # without the ReLU: the raw max cosine
                z = model.latent(images[s : s + batch_size], b)
                pooled[b].append(cosine_similarity_maps(z, model.prototypes(b), relu=False).flatten(2).amax(2))
        for b in BRANCHES:
            g = torch.cat(pooled[b])  # [N, M]
            own = class_membership(labels, model.branch_identity).float()  # [N, M]
            margin = (g * own).sum(0) / own.sum(0).clamp_min(1) - (g * (1 - own)).sum(0) / (1 - own).sum(0).clamp_min(1)
            p = F.normalize(model.prototypes(b).flatten(1), dim=1)
            cos = p @ p.t()
            ident = model.branch_identity
            same = (ident @ ident.t()) > 0
            nearest = cos.masked_fill(same, float("-inf")).amax(1)
            out[b] = {"nearest_cross_cos": float(nearest.mean()), "margin": float(margin.mean())}
    model.train(was)
    return out


__all__ += ["prototype_geometry", "renormalize_after_step"]

SPEC = MethodSpec(
    status="implemented",
    entry="STProtoPNet",
    missing="projection-metric (TesNet) and L2 distance variants, IoU/content-heatmap/deletion-AUC metrics, "
    "single-branch arms and the alternating mode under DDP not built (mode='sum' runs under DDP); stand-in for "
    "the pretrained backbone on CUB: a from-scratch Conv4 on the synthetic parts set",
    presets={
        # settings_CUB_DOG.py + main.py (ImageNet/iNaturalist-pretrained backbone)
        "paper": {
            "model": {"prototypes_per_class": 10, "prototype_dim": 64, "upsample": True, "mode": "alternate"},
            "schedule": {
                "epochs": 120,
                "warm_epochs": 10,
                "push_start": 100,
                "push_every": 10,
                "last_layer_epochs": 10,
                "joint_lrs": {"backbone": 1e-4, "add_on": 3e-3, "prototypes": 3e-3},
                "weight_decays": {"backbone": 1e-4, "add_on": 1e-4},
                "joint_step_size": 20,
                "joint_gamma": 0.2,
                "batch_size": 80,
            },
        },
        # the parts experiment (Conv4 from scratch): backbone lr 1e-3, batch 64
        "small": {
            "model": {"prototypes_per_class": 5, "prototype_dim": 32, "upsample": True, "mode": "alternate"},
            "schedule": {
                "epochs": 21,
                "warm_epochs": 3,
                "push_start": 10,
                "push_every": 10,
                "last_layer_epochs": 5,
                "joint_lrs": {"backbone": 1e-3, "add_on": 3e-3, "prototypes": 3e-3},
                "batch_size": 64,
                "push_batch_size": 256,
            },
        },
    },
)
