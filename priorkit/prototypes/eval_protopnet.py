"""EvalProtoPNet: "Evaluation and Improvement of Interpretability for Self-Explainable Part-Prototype Networks"
(Huang, Hu, Chen, Wang and Song, ICCV 2023).

The paper scores prototype explanations objectively (consistency: does a prototype hit the same object part
across images; stability: does it keep hitting it under input noise; see :mod:`priorkit.metrics.interpretability`)
and adds two modules to a TesNet-style ProtoPNet that raise both:

* **SDFA** (shallow-deep feature alignment): a shallow backbone map S (detached) is reshaped space-to-depth onto
  the deep grid; the cosine self-similarity matrices of S and of the deep map T over the H*W positions are
  compared at the rows of the argmax positions of the image's own-class prototypes, and
  L_align = mean(relu(|Sim_T - Sim_S| - tau)) pulls the deep features' spatial similarity structure toward the
  shallow one (which keeps the input's spatial layout), so a prototype's activation stays on the part it matches;
* **SA** (score aggregation): logit_c = sum_k a_{c,k} g_{c,k} with a_{c,k} = K softmax_k(theta_{c,k}), theta
  initialised to 1: no cross-class connections, no last-layer stage.

The base: a 1x1 conv + Sigmoid add-on to D, prototypes re-normalised to unit L2 after every optimiser step, the
projection activation <z_u, p_j / ||p_j||> max-pooled to g_j, Clst / Sep on cosine distances (-cos, min-pooled)
with ProtoPNet's formulas, and Orth = sum_c ||P_c P_c^T - I||_1. Loss: CE + 0.8 Clst - 0.08 Sep + 1e-4 Orth +
lambda_align L_align (0.5 in ``scripts/train.sh``; argparse default 0.3), the alignment term only after the
warm-up epochs. Schedule: 5 warm epochs (backbone frozen) then joint, Adam (backbone 1e-4, wd 1e-3; add-on 3e-3,
wd 1e-3; prototypes 3e-3; SA theta 1e-6), StepLR(3, 0.2), 12 epochs, no push. The paper reports: on CUB-200, Cars and
Dogs with nine backbones, consistency and stability well above ProtoPNet, ProtoTree, ProtoPool, TesNet and
Deformable ProtoPNet at equal or better accuracy.

Official code: hqhQAQ/EvalProtoPNet (``model.py::OursNet``, ``train_and_test.py``, ``main.py``); written anew on
priorkit's ProtoPNet base (:mod:`priorkit.prototypes.protopnet_base`: masked-min Clst/Sep, class identity, the
warm/joint stage recipe, push bookkeeping for the figures). Libraries considered: CaBRNet (no SDFA/SA; YAML/CLI
framework) and prototorch (no conv patches). Deviations, all noted where they occur: cosine normalisation uses
``F.normalize`` (eps 1e-12) where the repo divides by the raw norm (NaN on an all-zero ReLU position); Clst/Sep
use a true masked min (the repo's max_dist form is identical here since -cos <= 1 <= D). The shallow map is
taken by a forward hook on a named backbone module (``shallow_layer``; the repo indexes VGG features 17, the
first ResNet block, DenseNet index 4), so any backbone works. ``head="linear"`` replaces SA with ProtoPNet's
last layer (+1/-0.5 init) for ablations. :func:`visual_push` finds each prototype's nearest own-class training
patch for the figures without changing the model (the paper's training has no push).

Equations (paper Sec. 4): SDFA's self-similarity matrices and L_align (Eq. 4-6), SA's a = K softmax(theta)
(Eq. 7), the total loss (Eq. 8); consistency and stability (Eq. 1-3) are in :mod:`priorkit.metrics.interpretability`.

Use: ``model = EvalProtoPNet(backbone, num_classes)`` (the entry), trained through the engine with the ProtoPNet
base's recipe without push: ``protopnet_recipe(model, default_schedule(...), push_data=(x, y),
loss=make_loss_fn(), after_step=renormalize_prototypes).fit(model, IndexedTensorDataset(x, y))``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
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
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.prototypes.protopnet import ADD_ON_TYPES, add_on_layers
from priorkit.prototypes.protopnet_base import (
    PhaseSchedule,
    PushResult,
    _cluster,
    _membership,
    backbone_parameters,
    class_identity,
    init_last_layer,
    kaiming_init_,
    push_prototypes,
)
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch

__all__ = [
    "DEFAULT_COEFS",
    "HEADS",
    "SIMILARITIES",
    "EvalProtoPNet",
    "EvalProtoPNetOutput",
    "cosine_distance_maps",
    "default_schedule",
    "eval_protopnet_loss",
    "make_loss_fn",
    "orthogonality_loss",
    "projection_maps",
    "renormalize_prototypes",
    "sa_logits",
    "sa_weights",
    "sdfa_loss",
    "self_similarity",
    "space_to_depth",
    "visual_push",
]

HEADS = ("sa", "linear")
#: activation maps g: TesNet's projection (default, the repo) or cosine similarity.
SIMILARITIES = ("projection", "cosine")
#: main.py coefs; ``align`` (the repo's ``consis``) is 0.5 in scripts/train.sh (argparse default 0.3).
DEFAULT_COEFS: dict[str, float] = {"crs_ent": 1.0, "clst": 0.8, "sep": -0.08, "orth": 1e-4, "align": 0.5}

SPEC = MethodSpec(
    status="implemented",
    entry="EvalProtoPNet",
    missing="CUB parts evaluation run, nine-backbone study, DDP-sharded metric evaluation and shallow-layer presets "
    "not built; stand-in for the pretrained backbone on CUB: a from-scratch Conv4 on the synthetic parts set",
    presets={
        # main.py + scripts/train.sh (ImageNet-pretrained backbone): 12 epochs, 5 warm, StepLR(3, 0.2), align 0.5
        "paper": {
            "model": {"prototypes_per_class": 10, "prototype_dim": 64, "head": "sa", "align": True, "tau": 0.1},
            "schedule": {"epochs": 12, "warm_epochs": 5, "step_size": 3, "gamma": 0.2, "batch_size": 80},
        },
        # the parts experiment (Conv4 from scratch): backbone lr 1e-3, batch 32, StepLR(7, 0.2) over 25 epochs
        "small": {
            "model": {"prototypes_per_class": 4, "prototype_dim": 32, "head": "sa", "align": True, "tau": 0.1},
            "schedule": {
                "epochs": 25,
                "warm_epochs": 5,
                "step_size": 7,
                "gamma": 0.2,
                "batch_size": 32,
                "joint_lrs": {"backbone": 1e-3, "add_on": 3e-3, "prototypes": 3e-3, "sa": 1e-6},
            },
        },
    },
)


# ----------------------------------------------------------------------------------------------------------
# functional core: activations, orthogonality, SA


def _check_1x1(z: torch.Tensor, prototypes: torch.Tensor) -> None:
    check_shape("z", z, (None, None, None, None))
    check_shape("prototypes", prototypes, (None, z.shape[1], None, None))
    if prototypes.shape[2] > z.shape[2] or prototypes.shape[3] > z.shape[3]:
        raise PriorkitError(f"prototypes' patch {tuple(prototypes.shape[2:])} must fit in {tuple(z.shape[2:])}")


def projection_maps(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """TesNet's projection activation <z_u, p_j / ||p_j||> (features not normalised), [B, M, H', W']."""
    _check_1x1(z, prototypes)
    return F.conv2d(z, F.normalize(prototypes, p=2, dim=1))


def cosine_distance_maps(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """-cos(z_u, p_j), [B, M, H', W'] (the distances that Clst and Sep use; min-pooled)."""
    _check_1x1(z, prototypes)
    return -F.conv2d(F.normalize(z, p=2, dim=1), F.normalize(prototypes, p=2, dim=1))


def orthogonality_loss(prototypes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Orth = sum_c ||P_c P_c^T - I_K||_1 (entrywise L1) over each class's K prototypes (contiguous blocks),
    on the raw prototype vectors as the repo (they are unit-norm after the first re-normalisation)."""
    check_positive_int("num_classes", num_classes)
    m = prototypes.shape[0]
    if m % num_classes:
        raise PriorkitError(f"the number of prototypes ({m}) must be a multiple of num_classes ({num_classes})")
    basis = prototypes.reshape(num_classes, m // num_classes, -1)
    gram = basis @ basis.transpose(1, 2)
    eye = torch.eye(basis.shape[1], dtype=basis.dtype, device=basis.device)
    return (gram - eye).abs().sum()


def sa_weights(theta: torch.Tensor) -> torch.Tensor:
    """SA weights a_{c,k} = K softmax_k(theta_{c,k}), [C, K]; each row sums to K."""
    check_shape("theta", theta, (None, None))
    return F.softmax(theta, dim=1) * theta.shape[1]


def sa_logits(activations: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """logit_c = sum_k a_{c,k} g_{c,k} for pooled activations [B, C*K] (contiguous class blocks), [B, C]."""
    check_shape("activations", activations, (None, theta.numel()))
    c, k = theta.shape
    return (activations.view(-1, c, k) * sa_weights(theta)).sum(dim=2)


# ----------------------------------------------------------------------------------------------------------
# functional core: SDFA


def space_to_depth(shallow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Reshape [B, D_s, H_s, W_s] onto the deep grid ``size`` = (H_d, W_d): [B, D_s r_h r_w, H_d, W_d].

    Cell (i, j) gets the r_h x r_w block of shallow positions above it; channel d*r_h*r_w + a*r_w + b holds
    position (i*r_h + a, j*r_w + b) of channel d (the repo's reshape-permute; ``pixel_unshuffle`` for r_h = r_w).
    """
    check_shape("shallow", shallow, (None, None, None, None))
    b, d, hs, ws = shallow.shape
    hd, wd = (int(v) for v in size)
    check_positive_int("deep height", hd)
    check_positive_int("deep width", wd)
    if hs % hd or ws % wd:
        raise PriorkitError(
            f"the shallow map {hs}x{ws} must be an integer multiple of the deep map {hd}x{wd} "
            "(choose shallow_layer accordingly)"
        )
    rh, rw = hs // hd, ws // wd
    x = shallow.reshape(b, d, hd, rh, wd, rw).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, d * rh * rw, hd, wd)


def self_similarity(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity among the H*W positions of [B, D, H, W] features, [B, N, N] (N = H*W)."""
    check_shape("features", features, (None, None, None, None))
    f = F.normalize(features.flatten(2), p=2, dim=1)  # [B, D, N]
    return f.transpose(1, 2) @ f


def sdfa_loss(
    proto_maps: torch.Tensor,
    shallow: torch.Tensor,
    deep: torch.Tensor,
    labels: torch.Tensor,
    prototypes_per_class: int,
    tau: float = 0.1,
) -> torch.Tensor:
    """L_align = mean(relu(|Sim_T - Sim_S| - tau)) over the rows at the argmax positions of each image's K
    own-class prototypes (``get_SDFA_loss``). ``proto_maps`` [B, M, H, W] (projection activations), ``shallow``
    [B, D_s, H_s, W_s] (detached here; space-to-depth onto H x W), ``deep`` [B, D_d, H, W] (the last backbone
    map, before the add-on; gradients flow into it). Ties in the argmax take the first position."""
    check_shape("proto_maps", proto_maps, (None, None, None, None))
    bsz, m, h, w = proto_maps.shape
    check_shape("deep", deep, (bsz, None, h, w))
    check_shape("shallow", shallow, (bsz, None, None, None))
    check_shape("labels", labels, (bsz,))
    check_positive_int("prototypes_per_class", prototypes_per_class)
    check_range("tau", tau, 0.0)
    k = prototypes_per_class
    if m % k:
        raise PriorkitError(f"proto_maps has {m} prototypes, not a multiple of prototypes_per_class={k}")
    check_labels("labels", labels, m // k)
    return _sdfa_loss(proto_maps, shallow, deep, labels, k, tau)


def _sdfa_loss(
    proto_maps: torch.Tensor, shallow: torch.Tensor, deep: torch.Tensor, labels: torch.Tensor, k: int, tau: float
) -> torch.Tensor:
    h, w = proto_maps.shape[2:]
    sim_s = self_similarity(space_to_depth(shallow.detach(), (h, w)))
    sim_t = self_similarity(deep)
    own = labels.long()[:, None] * k + torch.arange(k, device=labels.device)  # [B, K]
    pos = torch.gather(proto_maps.flatten(2).argmax(dim=2), 1, own)  # [B, K]
    idx = pos[:, :, None].expand(-1, -1, h * w)
    rows_s, rows_t = torch.gather(sim_s, 1, idx), torch.gather(sim_t, 1, idx)
    return F.relu((rows_t - rows_s).abs() - tau).mean()


# ----------------------------------------------------------------------------------------------------------
# loss


@dataclass
class EvalProtoPNetOutput:
    logits: torch.Tensor  # [B, C]
    activations: torch.Tensor  # [B, M] max-pooled projection activations g_j
    proto_maps: torch.Tensor  # [B, M, H, W] projection activation maps
    min_cos_distances: torch.Tensor  # [B, M] min_u -cos(z_u, p_j)
    shallow: torch.Tensor  # [B, D_s, H_s, W_s] shallow backbone map
    deep: torch.Tensor  # [B, D_d, H, W] last backbone map (before the add-on)


def eval_protopnet_loss(
    out: EvalProtoPNetOutput,
    labels: torch.Tensor,
    identity: torch.Tensor,
    prototypes: torch.Tensor,
    coefs: Mapping[str, float] | None = None,
    *,
    align: bool = True,
    tau: float = 0.1,
) -> dict[str, torch.Tensor]:
    """Weighted terms ``{"ce", "clst", "sep", "orth"[, "align"]}``: CE + 0.8 Clst - 0.08 Sep + 1e-4 Orth
    (+ lambda_align L_align when ``align``; the repo adds it only once epoch >= warmup_epochs)."""
    c = dict(DEFAULT_COEFS)
    if coefs:
        check_config_keys("eval_protopnet coefs", coefs, DEFAULT_COEFS)
        c.update(coefs)
    k = identity.shape[0] // identity.shape[1]
    check_shape("out.min_cos_distances", out.min_cos_distances, (out.logits.shape[0], identity.shape[0]))
    check_labels("labels", labels, identity.shape[1], length=out.logits.shape[0])  # once; the terms use it unchecked
    own = _membership(labels, identity)
    terms = {
        "ce": c["crs_ent"] * F.cross_entropy(out.logits, labels),
        "clst": c["clst"] * _cluster(out.min_cos_distances, own, False, None),
        "sep": c["sep"] * _cluster(out.min_cos_distances, ~own, False, None),
        "orth": c["orth"] * orthogonality_loss(prototypes, identity.shape[1]),
    }
    if align and c["align"] != 0:
        check_range("tau", tau, 0.0)
        terms["align"] = c["align"] * _sdfa_loss(out.proto_maps, out.shallow, out.deep, labels, k, tau)
    return terms


# ----------------------------------------------------------------------------------------------------------
# model


class EvalProtoPNet(nn.Module):
    """TesNet-style ProtoPNet with the SA head and the SDFA loss, on ``backbone`` (any module with
    ``feature_map(x)`` -> [B, C_f, H, W]; the deep map T is that output).

    ``shallow_layer`` names the backbone submodule whose output is the shallow map S (``dict(backbone.
    named_modules())``; e.g. ``"body.0"`` for Conv4, ``"layer1"`` for a torchvision ResNet); its spatial size
    must be a multiple of T's. ``add_on``: ``"linear"`` = 1x1 conv + Sigmoid (the repo's "regular"), or
    ProtoPNet's ``"regular"`` / ``"bottleneck"``. ``head``: ``"sa"`` (default) or ``"linear"`` (ProtoPNet's last
    layer, +1 / ``incorrect_weight``). ``similarity``: ``"projection"`` (the repo) or ``"cosine"`` activation maps.
    ``align=False`` turns SDFA off (the ablation).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        prototypes_per_class: int = 10,
        prototype_dim: int = 64,
        *,
        shallow_layer: str = "body.0",
        add_on: str = "linear",
        backbone_channels: int | None = None,
        head: str = "sa",
        similarity: str = "projection",
        align: bool = True,
        tau: float = 0.1,
        coefs: Mapping[str, float] | None = None,
        incorrect_weight: float = -0.5,
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "feature_map", None)):
            raise PriorkitError("backbone must have a feature_map(x) method returning [B, C, H, W] (e.g. Conv4)")
        check_positive_int("num_classes", num_classes, 2)
        check_positive_int("prototypes_per_class", prototypes_per_class)
        check_positive_int("prototype_dim", prototype_dim)
        check_choice("add_on", add_on, ("linear", *ADD_ON_TYPES))
        check_choice("head", head, HEADS)
        check_choice("similarity", similarity, SIMILARITIES)
        check_range("tau", tau, 0.0)
        if coefs:
            check_config_keys("EvalProtoPNet coefs", coefs, DEFAULT_COEFS)
        modules = dict(backbone.named_modules())
        check_choice("shallow_layer", shallow_layer, [n for n in modules if n])
        channels = backbone_channels if backbone_channels is not None else getattr(backbone, "feature_dim", None)
        if channels is None:
            raise PriorkitError("backbone_channels is required when the backbone has no feature_dim attribute")
        self.backbone = backbone
        if add_on == "linear":
            self.add_on = kaiming_init_(nn.Sequential(nn.Conv2d(channels, prototype_dim, 1), nn.Sigmoid()))
        else:
            self.add_on = add_on_layers(channels, prototype_dim, add_on)
        m = num_classes * prototypes_per_class
        self.prototypes = nn.Parameter(torch.rand(m, prototype_dim, 1, 1))
        self.register_buffer("prototype_identity", class_identity(num_classes, prototypes_per_class))
        self.head, self.similarity = head, similarity
        if head == "sa":
            self.sa_theta = nn.Parameter(torch.ones(num_classes, prototypes_per_class))
        else:
            self.last_layer = nn.Linear(m, num_classes, bias=False)
            init_last_layer(self.last_layer.weight, self.prototype_identity, incorrect_weight)
        self.num_classes, self.prototypes_per_class = num_classes, prototypes_per_class
        self.shallow_layer, self.align, self.tau = shallow_layer, align, tau
        self.coefs = {**DEFAULT_COEFS, **(coefs or {})}
        self._captured: torch.Tensor | None = None
        self._want_shallow = False
        modules[shallow_layer].register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self._want_shallow:  # only inside backbone_maps: no stale activations kept alive (or deep-copied)
            self._captured = output

    @property
    def num_prototypes(self) -> int:
        return int(self.prototypes.shape[0])

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """backbone, add_on, prototypes, and ``sa`` (theta) or ``last_layer``."""
        groups = {
            "backbone": backbone_parameters(self.backbone),
            "add_on": list(self.add_on.parameters()),
            "prototypes": [self.prototypes],
        }
        if self.head == "sa":
            groups["sa"] = [self.sa_theta]
        else:
            groups["last_layer"] = list(self.last_layer.parameters())
        return groups

    def backbone_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shallow S, deep T) backbone maps of ``x``."""
        self._captured, self._want_shallow = None, True
        try:
            deep = self.backbone.feature_map(x)
        finally:
            self._want_shallow = False
        if self._captured is None:
            raise PriorkitError(f"shallow_layer {self.shallow_layer!r} did not run in backbone.feature_map")
        shallow, self._captured = self._captured, None
        return shallow, deep

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """z = add_on(T), [B, D, H, W]."""
        return self.add_on(self.backbone.feature_map(x))

    def activation_maps(self, z: torch.Tensor) -> torch.Tensor:
        """Activation maps [B, M, H, W] of latent ``z``: projection (default) or cosine similarity."""
        if self.similarity == "cosine":
            return -cosine_distance_maps(z, self.prototypes)
        return projection_maps(z, self.prototypes)

    def similarity_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Activation maps [B, M, H, W] of ``x`` (the repo's ``push_forward``; what the scores evaluate)."""
        return self.activation_maps(self.latent(x))

    def prototype_activations(self, x: torch.Tensor) -> torch.Tensor:
        """g_j = max_u <z_u, p_j / ||p_j||>, [B, M]."""
        return self.similarity_maps(x).flatten(2).amax(dim=2)

    def class_weights(self) -> torch.Tensor:
        """The effective [C, M] weight of the head (SA: block-diagonal a_{c,k}); logits = g @ W^T."""
        if self.head == "linear":
            return self.last_layer.weight
        a = sa_weights(self.sa_theta)  # [C, K]
        return self.prototype_identity.t() * a.reshape(1, -1)

    def classify(self, activations: torch.Tensor) -> torch.Tensor:
        if self.head == "sa":
            return sa_logits(activations, self.sa_theta)
        return self.last_layer(activations)

    def outputs(self, x: torch.Tensor) -> EvalProtoPNetOutput:
        """Logits, activations, maps, cosine distances and both backbone maps of ``x`` [B, C, H, W] (checked)."""
        check_batch("x", x, dim=4)
        shallow, deep = self.backbone_maps(x)
        z = self.add_on(deep)
        maps = self.activation_maps(z)
        acts = maps.flatten(2).amax(dim=2)
        min_cos = cosine_distance_maps(z, self.prototypes).flatten(2).amin(dim=2)
        return EvalProtoPNetOutput(self.classify(acts), acts, maps, min_cos, shallow, deep)

    def forward(self, x: torch.Tensor, *, full: bool = False) -> torch.Tensor | EvalProtoPNetOutput:
        """Logits [B, C]; ``full=True`` returns the :class:`EvalProtoPNetOutput` (the recipe's step, so that the
        forward runs through the DDP wrapper)."""
        if full:
            return self.outputs(x)
        check_batch("x", x, dim=4)
        return self.classify(self.prototype_activations(x))

    def loss_from_outputs(
        self, out: EvalProtoPNetOutput, y: torch.Tensor, *, align: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Weighted loss terms (see :func:`eval_protopnet_loss`) of outputs already computed; ``align`` overrides
        ``self.align``."""
        use = self.align if align is None else (align and self.align)
        ident = self.prototype_identity
        return eval_protopnet_loss(out, y, ident, self.prototypes, self.coefs, align=use, tau=self.tau)

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor, *, align: bool | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss terms on a batch (see :func:`eval_protopnet_loss`); ``align`` overrides ``self.align``."""
        return self.loss_from_outputs(self.outputs(x), y, align=align)


# ----------------------------------------------------------------------------------------------------------
# training helpers


@torch.no_grad()
def renormalize_prototypes(model: EvalProtoPNet, *_: Any) -> None:
    """p_j <- p_j / ||p_j|| (after every optimiser step; usable as ``after_step`` of the stage driver)."""
    model.prototypes.data.copy_(F.normalize(model.prototypes.data, p=2, dim=1))


def make_loss_fn(align_in_warm: bool = False) -> Callable[[RunState, Batch], dict[str, torch.Tensor]]:
    """The recipe's ``loss(state, batch)`` for :func:`priorkit.prototypes.protopnet_base.protopnet_recipe`: the
    full loss, with L_align gated off in the warm stage (the repo: only once epoch >= warmup_epochs) unless
    ``align_in_warm``."""

    def loss_fn(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        stage = state.phase.options.get("stage", "joint")
        return state.model.loss_from_outputs(batch.output, batch.y, align=align_in_warm or stage != "warm")

    return loss_fn


def default_schedule(
    epochs: int = 12, warm_epochs: int = 5, *, head: str = "sa", step_size: int = 3, gamma: float = 0.2, **kw: Any
) -> PhaseSchedule:
    """The repo's schedule as a :class:`PhaseSchedule` without push: warm (add-on 3e-3, prototypes 3e-3, SA theta
    1e-6; backbone frozen), joint (+ backbone 1e-4), weight decay 1e-3 on backbone and add-on, StepLR(3, 0.2).
    ``kw`` overrides other fields (e.g. ``batch_size``, ``joint_lrs``)."""
    check_choice("head", head, HEADS)
    hg, hlr = ("sa", 1e-6) if head == "sa" else ("last_layer", 1e-4)
    opts: dict[str, Any] = dict(
        epochs=epochs,
        warm_epochs=warm_epochs,
        pushes=False,  # the official loop has no push
        last_layer_epochs=0,
        warm_lrs={"add_on": 3e-3, "prototypes": 3e-3, hg: hlr},
        joint_lrs={"backbone": 1e-4, "add_on": 3e-3, "prototypes": 3e-3, hg: hlr},
        last_layer_lrs={hg: hlr},
        weight_decays={"backbone": 1e-3, "add_on": 1e-3},
        joint_step_size=step_size,
        joint_gamma=gamma,
        batch_size=80,
    )
    opts.update(kw)
    return PhaseSchedule(**opts)


def visual_push(model: EvalProtoPNet, images: torch.Tensor, labels: torch.Tensor, **kw: Any) -> PushResult:
    """Each prototype's nearest own-class training patch by cosine distance, with ProtoPNet's bookkeeping, for
    the gallery and "this looks like that" figures. The model's prototypes are NOT changed (a copy is pushed)."""
    was = model.training
    model.eval()
    protos = copy.deepcopy(model.prototypes.detach())
    res = push_prototypes(
        model.latent,
        protos,
        model.prototype_identity,
        images,
        labels,
        distance_fn=cosine_distance_maps,
        similarity_fn=lambda d: -d,
        **kw,
    )
    model.train(was)
    return res
