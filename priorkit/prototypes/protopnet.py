"""ProtoPNet: "This Looks Like That: Deep Learning for Interpretable Image Recognition" (Chen et al., NeurIPS 2019).

A prototype head on any CNN: add-on 1x1 convs (ending in a sigmoid) map the backbone's feature map to a
latent z in [0,1]^{D x H x W}; each of M = C*k class-assigned prototypes p_j is compared with every latent
patch by squared L2 distance, min-pooled over space and turned into a similarity s_j = log((d_j+1)/(d_j+eps));
the logits are W s with W initialised +1 (own class) / -0.5 (others). The loss is CE + 0.8 Clst - 0.08 Sep +
1e-4 L1(off-class W). Training runs warm (add-on + prototypes) -> joint (all, StepLR) -> push (each prototype
projected onto its nearest own-class training patch) -> last layer only (20 epochs), so every logit
decomposes into "this patch looks like that training patch" x weight. Reported effect: CUB-200 accuracy
comparable to the same backbone without prototypes (e.g. VGG19 78.0 vs 75.1, ResNet34 79.2 vs 82.3).

Equations: the similarity log((d+1)/(d+eps)) is Eq. (1) of the paper (Sec. 2.1); the loss of stage 1 is
CE + lambda1 Clst + lambda2 Sep (Sec. 2.2, "Stochastic gradient descent of layers before the last layer"); the push
is stage 2 ("Projection of prototypes"); stage 3 minimises CE + lambda L1 over the last layer's off-class weights.

Use: ``model = ProtoPNet(backbone, num_classes)`` (the entry), then train it through the engine with the ProtoPNet
base's recipe, ``recipe = protopnet_recipe(model, PhaseSchedule(...), push_data=(x, y)); recipe.fit(model,
IndexedTensorDataset(x, y))`` (:mod:`priorkit.prototypes.protopnet_base`); ``recipe.record.last`` is the last push's
bookkeeping, which :mod:`priorkit.prototypes.viz` draws (``prototype_gallery``, ``this_looks_like_that``).
``SPEC.presets["small"]`` are the from-scratch CPU settings (backbone lr 1e-3 instead of the paper's 1e-4 for a
pretrained one).

Official code: cfchen-duke/ProtoPNet (``model.py``, ``train_and_test.py``, ``push.py``, ``settings.py``); this is
a new implementation whose shared parts live in :mod:`priorkit.prototypes.protopnet_base`. Libraries considered:
CaBRNet (YAML/CLI framework, not a tensor-level dependency) and prototorch (no conv patches or push).
Deviations: the masked min of Clst/Sep is a true masked min (the repo's max_dist trick is ``official_min=True``);
the last-layer stage runs in eval mode (the repo's train mode would also move BatchNorm statistics); min-pooling
uses ``amin`` (at exact ties the gradient is split evenly among the tied positions, see ``min_pool``); a schedule
whose last epoch is not a push epoch gets a final push (``PhaseSchedule.final_push``). Under DDP the push scores
each rank's shard of the push set and takes the global best patch per prototype (equal to one process).
Not built: pruning, ensembling, duplicate merging (``PushResult.n_unique`` reports duplicates).
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
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.prototypes.protopnet_base import (
    ACTIVATIONS,
    DISTANCE_METHODS,
    PushResult,
    _cluster,
    _membership,
    avg_separation_cost,
    backbone_parameters,
    class_identity,
    distance_to_similarity,
    init_last_layer,
    kaiming_init_,
    l1_off_class,
    l2_distance_maps,
    min_pool,
    push_prototypes,
)

__all__ = ["ADD_ON_TYPES", "DEFAULT_COEFS", "ProtoPNet", "ProtoPNetOutput", "add_on_layers", "protopnet_loss"]

SPEC = MethodSpec(
    status="implemented",
    entry="ProtoPNet",
    missing="prototype pruning and duplicate merging not built (card: can wait); the experiment's backbone is "
    "trained from scratch on the generated parts images (no ImageNet-pretrained VGG/ResNet)",
    presets={
        # settings.py / main.py: VGG/ResNet on CUB-200 (ImageNet-pretrained backbone), 10 prototypes per class
        "paper": {
            "model": {"prototypes_per_class": 10, "prototype_dim": 128, "prototype_size": [1, 1], "add_on": "regular"},
            "schedule": {
                "epochs": 1000,
                "warm_epochs": 5,
                "push_start": 10,
                "push_every": 10,
                "last_layer_epochs": 20,
                "warm_lrs": {"add_on": 3e-3, "prototypes": 3e-3},
                "joint_lrs": {"backbone": 1e-4, "add_on": 3e-3, "prototypes": 3e-3},
                "last_layer_lrs": {"last_layer": 1e-4},
                "joint_step_size": 5,
                "joint_gamma": 0.1,
                "batch_size": 80,
            },
        },
        # the parts experiment (Conv4 from scratch): the backbone needs lr 1e-3 in the joint stage
        "small": {
            "model": {"prototypes_per_class": 5, "prototype_dim": 32, "prototype_size": [1, 1], "add_on": "regular"},
            "schedule": {
                "epochs": 21,
                "warm_epochs": 5,
                "push_start": 10,
                "push_every": 10,
                "last_layer_epochs": 10,
                "joint_lrs": {"backbone": 1e-3, "add_on": 3e-3, "prototypes": 3e-3},
                "batch_size": 64,
            },
        },
    },
)

ADD_ON_TYPES = ("regular", "bottleneck")
#: settings.py: crs_ent 1, clst 0.8, sep -0.08, l1 1e-4 (sep's coefficient is negative: Sep is maximised).
DEFAULT_COEFS: dict[str, float] = {"crs_ent": 1.0, "clst": 0.8, "sep": -0.08, "l1": 1e-4}


def add_on_layers(in_channels: int, dim: int, kind: str = "regular") -> nn.Sequential:
    """ProtoPNet's add-on: ``regular`` = 1x1 conv -> ReLU -> 1x1 conv -> Sigmoid; ``bottleneck`` halves the
    channels with conv-ReLU-conv blocks down to ``dim`` and ends in a Sigmoid. Kaiming (fan_out) init."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("dim", dim)
    check_choice("add_on", kind, ADD_ON_TYPES)
    layers: list[nn.Module] = []
    if kind == "regular":
        layers = [nn.Conv2d(in_channels, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.Sigmoid()]
    else:
        cin = in_channels
        while True:
            cout = max(dim, cin // 2)
            layers += [nn.Conv2d(cin, cout, 1), nn.ReLU(), nn.Conv2d(cout, cout, 1)]
            if cout > dim:
                layers.append(nn.ReLU())
                cin = cout
            else:
                layers.append(nn.Sigmoid())
                break
    return kaiming_init_(nn.Sequential(*layers))


@dataclass
class ProtoPNetOutput:
    logits: torch.Tensor  # [B, C]
    min_distances: torch.Tensor  # [B, M]
    distance_maps: torch.Tensor  # [B, M, H', W']


def protopnet_loss(
    out: ProtoPNetOutput,
    labels: torch.Tensor,
    identity: torch.Tensor,
    last_weight: torch.Tensor,
    coefs: Mapping[str, float] | None = None,
    *,
    class_specific: bool = True,
    official_min: bool = False,
    max_dist: float | None = None,
) -> dict[str, torch.Tensor]:
    """ProtoPNet's weighted loss terms ``{"ce", "clst", "sep", "l1"}`` (their sum is the loss).

    Class-specific: crs_ent*CE + clst*Clst + sep*Sep + l1*L1(off-class W) with the repo's signs (sep < 0).
    ``class_specific=False``: crs_ent*CE + clst*(mean_i min_j d_ij) + l1*||W||_1, as the repo.
    """
    c = dict(DEFAULT_COEFS)
    if coefs:
        check_config_keys("protopnet_loss coefs", coefs, DEFAULT_COEFS)
        c.update(coefs)
    m, n_cls = identity.shape
    check_shape("out.logits", out.logits, (None, n_cls))
    check_shape("out.min_distances", out.min_distances, (out.logits.shape[0], m))
    check_labels("labels", labels, n_cls, length=out.logits.shape[0])
    if official_min and max_dist is None:
        raise PriorkitError("max_dist (D*h1*w1) is required with official_min=True")
    terms = {"ce": c["crs_ent"] * F.cross_entropy(out.logits, labels)}
    if class_specific:
        own = _membership(labels, identity)
        terms["clst"] = c["clst"] * _cluster(out.min_distances, own, official_min, max_dist)
        terms["sep"] = c["sep"] * _cluster(out.min_distances, ~own, official_min, max_dist)
        terms["l1"] = c["l1"] * l1_off_class(last_weight, identity)
    else:
        terms["clst"] = c["clst"] * out.min_distances.min(dim=1).values.mean()
        terms["l1"] = c["l1"] * last_weight.abs().sum()
    return terms


class ProtoPNet(nn.Module):
    """ProtoPNet head on ``backbone`` (anything with ``feature_map(x)`` -> [B, C_f, H, W]).

    ``prototypes_per_class`` k gives M = k * ``num_classes`` prototypes of shape [M, ``prototype_dim``,
    *``prototype_size``], initialised U[0,1). ``backbone_channels`` defaults to ``backbone.feature_dim``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        prototypes_per_class: int = 10,
        prototype_dim: int = 128,
        *,
        prototype_size: tuple[int, int] = (1, 1),
        add_on: str = "regular",
        backbone_channels: int | None = None,
        activation: str = "log",
        eps: float = 1e-4,
        incorrect_weight: float = -0.5,
        distance: str = "expansion",
        class_specific: bool = True,
        coefs: Mapping[str, float] | None = None,
        official_min: bool = False,
    ) -> None:
        super().__init__()
        if not callable(getattr(backbone, "feature_map", None)):
            raise PriorkitError("backbone must have a feature_map(x) method returning [B, C, H, W] (e.g. Conv4)")
        check_positive_int("num_classes", num_classes, 2)
        check_positive_int("prototypes_per_class", prototypes_per_class)
        check_positive_int("prototype_dim", prototype_dim)
        if len(prototype_size) != 2:
            raise PriorkitError(f"prototype_size must be (h1, w1), got {prototype_size!r}")
        for v in prototype_size:
            check_positive_int("prototype_size", v)
        check_choice("activation", activation, ACTIVATIONS)
        check_range("eps", eps, 0.0, low_inclusive=False)
        check_choice("distance", distance, DISTANCE_METHODS)
        if coefs:
            check_config_keys("ProtoPNet coefs", coefs, DEFAULT_COEFS)
        channels = backbone_channels if backbone_channels is not None else getattr(backbone, "feature_dim", None)
        if channels is None:
            raise PriorkitError("backbone_channels is required when the backbone has no feature_dim attribute")
        self.backbone = backbone
        self.add_on = add_on_layers(channels, prototype_dim, add_on)
        m = num_classes * prototypes_per_class
        self.prototypes = nn.Parameter(torch.rand(m, prototype_dim, *prototype_size))
        self.register_buffer("prototype_identity", class_identity(num_classes, prototypes_per_class))
        self.last_layer = nn.Linear(m, num_classes, bias=False)
        init_last_layer(self.last_layer.weight, self.prototype_identity, incorrect_weight)
        self.num_classes, self.prototypes_per_class = num_classes, prototypes_per_class
        self.activation, self.eps, self.distance = activation, eps, distance
        self.class_specific, self.official_min = class_specific, official_min
        self.coefs = {**DEFAULT_COEFS, **(coefs or {})}
        self.max_dist = float(prototype_dim * prototype_size[0] * prototype_size[1])

    @property
    def num_prototypes(self) -> int:
        return int(self.prototypes.shape[0])

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The repo's optimiser groups: backbone (``features``), add_on, prototypes, last_layer."""
        return {
            "backbone": backbone_parameters(self.backbone),
            "add_on": list(self.add_on.parameters()),
            "prototypes": [self.prototypes],
            "last_layer": list(self.last_layer.parameters()),
        }

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """z = add_on(feature_map(x)), [B, D, H, W] in (0, 1)."""
        return self.add_on(self.backbone.feature_map(x))

    def distance_maps(self, x: torch.Tensor) -> torch.Tensor:
        return l2_distance_maps(self.latent(x), self.prototypes, self.distance)

    def similarity(self, d: torch.Tensor) -> torch.Tensor:
        return distance_to_similarity(d, self.activation, self.eps)

    def similarity_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position similarity of every prototype, [B, M, H', W'] (what the figures upsample)."""
        return self.similarity(self.distance_maps(x))

    def outputs(self, x: torch.Tensor) -> ProtoPNetOutput:
        """Logits, min-pooled distances and distance maps of a batch ``x`` [B, C, H, W] (checked: non-empty,
        floating point, finite)."""
        check_batch("x", x, dim=4)
        maps = self.distance_maps(x)
        d = min_pool(maps)
        return ProtoPNetOutput(self.last_layer(self.similarity(d)), d, maps)

    def prototype_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled similarities s_j = act(min_u d_j(u)), [B, M]; logits = last_layer(s)."""
        check_batch("x", x, dim=4)
        return self.similarity(min_pool(self.distance_maps(x)))

    def forward(self, x: torch.Tensor, *, full: bool = False) -> torch.Tensor | ProtoPNetOutput:
        """Logits [B, C]; ``full=True`` returns the :class:`ProtoPNetOutput` (what the recipe's step uses, so that
        the forward runs through the DDP wrapper)."""
        out = self.outputs(x)
        return out if full else out.logits

    def loss_from_outputs(self, out: ProtoPNetOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms (see :func:`protopnet_loss`) of outputs already computed."""
        return protopnet_loss(
            out,
            labels,
            self.prototype_identity,
            self.last_layer.weight,
            self.coefs,
            class_specific=self.class_specific,
            official_min=self.official_min,
            max_dist=self.max_dist,
        )

    def loss_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms on a batch (see :func:`protopnet_loss`), plus nothing else."""
        return self.loss_from_outputs(self.outputs(x), y)

    @torch.no_grad()
    def avg_separation(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(avg_separation_cost(self.outputs(x).min_distances, y, self.prototype_identity))

    def push(self, images: torch.Tensor, labels: torch.Tensor, **kw: Any) -> PushResult:
        """Project the prototypes onto their nearest own-class latent patches (see ``push_prototypes``)."""
        was = self.training
        self.eval()
        res = push_prototypes(
            self.latent,
            self.prototypes,
            self.prototype_identity,
            images,
            labels,
            class_specific=self.class_specific,
            distance_fn=lambda z, p: l2_distance_maps(z, p, self.distance),
            similarity_fn=self.similarity,
            **kw,
        )
        self.train(was)
        return res
