"""ProtoGCD: Unified and Unbiased Prototype Learning for Generalized Category Discovery, Ma et al., TPAMI 2025.

Generalized category discovery (GCD): labelled samples of *old* classes plus unlabelled samples of old and *new*
classes; classify the old ones and discover the new ones. ProtoGCD keeps one cosine prototype per class, old and
new alike (``K = |old| + |new|``), as the rows of a weight-normalised linear layer on the L2-normalised backbone
feature, and trains it with: cross-entropy on the labelled samples (``L_cls``); dual-level adaptive pseudo-labels
(DAPL: a sharpened teacher from the same forward pass, the most confident ``r_e`` fraction of each view turned
one-hot, the rest kept soft, supervising the other view; ``r_e`` ramps 0 -> 1); an entropy regulariser on the
mean prediction (``L_ent = log K - H(mean p)``) that debiases the model away from collapsing onto old classes;
a prototype separation loss (``L_sep``); and SimCLR + SupCon on a projector output for the representation.
``L = (1-lam)(L_dapl + w_ent L_ent + w_sep L_sep) + lam L_cls + (1-lam) L_unsup + lam L_sup``, ``lam = 0.35``.
Prediction is ``argmax`` of the prototype logits (no k-means). The paper reports: state of the art on CIFAR-10/100,
ImageNet-100 and the SSB benchmarks with a smaller Old/New gap than SimGCD; MSP of the prototype logits also
works as an OOD score.

Functional core: :func:`ratio_schedule`, :func:`dapl_targets`, :func:`dapl_loss`, :func:`entropy_regularization`,
:func:`prototype_separation`, :func:`protogcd_loss`, :func:`balanced_indices`, :func:`param_groups`,
:func:`ood_score`; SimCLR's InfoNCE and SupCon are the shared ones of :mod:`priorkit.nn.contrastive`.
Entry: :func:`ProtoGCDRecipe` (a one-phase :class:`~priorkit.train.Recipe`: two views of the global batch, the
balanced labelled/unlabelled sampler as the phase's batch plan, the ratio ramp read from the epoch, SGD with
cosine decay and no weight decay on biases and 1-D parameters). :class:`ProtoGCD` (backbone +
:class:`ProtoGCDHead`) is the model it trains. Metrics: :func:`priorkit.metrics.clustering.split_cluster_acc`.

ProtoGCD holds no state across steps (no EMA teacher, no queue). Its batch-level terms (the DAPL confidence
ranking, the mean prediction of ``L_ent``, the InfoNCE/SupCon negatives) are defined over the whole batch: under
DDP every rank gathers the global batch's projections and logits with
:func:`priorkit.nn.distributed.gather_with_grad` and computes the global loss, so a W-process run equals the
1-process run with the same global batch (``tests/prototypes/test_protogcd.py``; the official code runs on one
GPU). With a priorkit backbone (whose own classifier is unused) run DDP with
``strategy="ddp_find_unused_parameters_true"``.

Official code: mashijie1028/ProtoGCD (``models/model.py::DINOHead``, ``models/loss.py``, ``train.py``). Defaults
follow the card: ``tau=0.1``, teacher ``tau_t=0.05``, ``r0=0`` (the argparse default is 0.2; the card's commands
use 0.0), ramp 100 epochs, ``w_ent=2``, ``w_sep=0.1`` (CIFAR-100), weight decay 5e-5, lr 0.1 cosine to 1e-4.
The prototype layer keeps PyTorch's default Linear init; the projector MLP gets trunc-normal(0.02) as in the code.
Not built: the estimation of ``K`` (the paper's criterion is not specified precisely; the card's substitute is
the GCD k-means/Brent search) and partial fine-tuning of a ViT backbone. Library considered: none offers GCD
losses as tensor functions (SimGCD and ProtoGCD are research repos); the ~200 lines are written here.

Example (runs in ``tests/prototypes/test_protogcd.py``)::

    >>> import torch
    >>> from priorkit.models import MLP
    >>> from priorkit.prototypes.protogcd import ProtoGCD, protogcd_loss
    >>> _ = torch.manual_seed(0)
    >>> model = ProtoGCD(MLP(64, (32,), 2), num_classes=4, proj_dims=(32, 16))
    >>> x = torch.rand(6, 64)
    >>> proj, logits, protos = model(torch.cat([x, x + 0.01]))   # two views, view-major
    >>> y, labelled = torch.tensor([0, 1, 0, 0, 0, 0]), torch.tensor([True, True, False, False, False, False])
    >>> terms = protogcd_loss(proj, logits, protos, y, labelled, ratio=0.5)
    >>> sorted(terms)
    ['cls', 'dapl', 'ent', 'sep', 'sup', 'unsup']
    >>> sum(terms.values()).backward()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_choice,
    check_finite,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.nn import distributed as D
from priorkit.nn.contrastive import info_nce, supcon_views
from priorkit.nn.views import global_views
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch
from priorkit.train.recipe import Phase, Recipe

__all__ = [
    "SPEC",
    "ProtoGCD",
    "ProtoGCDHead",
    "ProtoGCDRecipe",
    "balanced_indices",
    "dapl_loss",
    "dapl_targets",
    "entropy_regularization",
    "ood_score",
    "param_groups",
    "protogcd_loss",
    "prototype_separation",
    "ratio_schedule",
]

_PAPER = {
    "epochs": 200, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-5, "tau": 0.1, "tau_t": 0.05, "r0": 0.0,
    "r1": 1.0, "ramp": 100, "wait": 0, "lam": 0.35, "w_ent": 2.0, "w_sep": 0.1, "tau_unsup": 1.0, "tau_sup": 0.07,
}  # fmt: skip
SPEC = MethodSpec(
    status="implemented",
    entry="ProtoGCDRecipe",
    missing="estimating K and partial ViT fine-tuning not built; stand-in for the DINO ViT: the frozen zoo conv net "
    "fmnist_conv_base5 (pretrained on Fashion-MNIST classes 0-4) with a trained MLP on its features",
    presets={"paper": _PAPER, "small": {**_PAPER, "epochs": 100, "ramp": 50}},
)

OOD_SCORES = ("msp", "energy", "max_logit", "proto")
OBJECTIVES = ("protogcd", "contrastive")


# ------------------------------------------------------------------------------------------- functional core
def ratio_schedule(epoch: int, epochs: int, r0: float = 0.0, r1: float = 1.0, ramp: int = 100, wait: int = 0) -> float:
    """The DAPL one-hot ratio ``r_e``: ``0`` for ``wait`` epochs, then ``linspace(r0, r1, ramp)``, then ``r1``."""
    check_positive_int("epochs", epochs)
    check_positive_int("ramp", ramp)
    check_positive_int("wait", wait, 0)
    if not 0 <= epoch < epochs:
        raise PriorkitError(f"epoch must lie in [0, {epochs - 1}] (epochs), got {epoch}")
    if wait + ramp > epochs:
        raise PriorkitError(f"wait + ramp ({wait} + {ramp}) must be <= epochs ({epochs}): the schedule must cover them")
    if epoch < wait:
        return 0.0
    e = epoch - wait
    if e < ramp:
        return r0 + (r1 - r0) * (e / (ramp - 1) if ramp > 1 else 1.0)
    return r1


def dapl_targets(teacher_logits: torch.Tensor, ratio: float, tau_t: float = 0.05) -> torch.Tensor:
    """Targets of one view: ``softmax(o / tau_t)``, with the ``floor(ratio * B)`` rows of highest confidence
    ``p(1st) / (p(2nd) + 1e-6)`` replaced by their one-hot argmax. Detached."""
    check_range("ratio", ratio, 0.0, 1.0)
    check_range("tau_t", tau_t, 0.0, low_inclusive=False)
    t = F.softmax(teacher_logits.detach() / tau_t, dim=-1)
    n_hot = max(0, int(len(t) * ratio))
    if n_hot == 0:
        return t
    top2 = t.topk(2, dim=-1).values
    conf = top2[:, 0] / (top2[:, 1] + 1e-6)
    rows = conf.topk(n_hot).indices
    out = t.clone()
    out[rows] = F.one_hot(t[rows].argmax(-1), t.shape[1]).to(t.dtype)
    return out


def dapl_loss(
    logits: torch.Tensor, ratio: float, n_views: int = 2, tau: float = 0.1, tau_t: float = 0.05
) -> torch.Tensor:
    """Cross-view DAPL: mean over view pairs ``v != w`` of ``mean_i -sum_k t^w_ik log softmax(o^v_i / tau)_k``.
    ``logits`` are the cosine logits of all views, view-major; the teacher is their detached copy."""
    check_positive_int("n_views", n_views, 2)
    if len(logits) % n_views:
        raise PriorkitError(f"logits has {len(logits)} rows, not a multiple of n_views ({n_views})")
    check_range("tau", tau, 0.0, low_inclusive=False)
    student = [F.log_softmax(v / tau, dim=-1) for v in logits.chunk(n_views)]
    teacher = [dapl_targets(v, ratio, tau_t) for v in logits.chunk(n_views)]
    terms = [-(q * s).sum(-1).mean() for iq, q in enumerate(teacher) for iv, s in enumerate(student) if iq != iv]
    return torch.stack(terms).mean()


def entropy_regularization(logits: torch.Tensor, tau: float = 0.1, eps: float = 1e-12) -> torch.Tensor:
    """``log K - H(mean_i softmax(o_i / tau))``: 0 for a uniform mean prediction, ``log K`` for a collapsed one."""
    p = F.softmax(logits / tau, dim=1).mean(0)
    return math.log(p.numel()) + (p * torch.log(p + eps)).sum()


def prototype_separation(prototypes: torch.Tensor, tau: float = 0.1, base_tau: float = 0.1) -> torch.Tensor:
    """``(tau / base_tau) mean_i log((1/(K-1)) sum_{j != i} exp(p_i . p_j / tau))`` on unit-norm prototypes."""
    k = prototypes.shape[0]
    if k < 2:
        raise PriorkitError(f"prototype separation needs at least 2 prototypes, got {k}")
    p = F.normalize(prototypes, dim=1)
    s = p @ p.T / tau
    off = ~torch.eye(k, dtype=torch.bool, device=p.device)
    lse = torch.logsumexp(s.masked_fill(~off, float("-inf")), dim=1) - math.log(k - 1)
    return tau / base_tau * lse.mean()


def protogcd_loss(
    proj: torch.Tensor,
    logits: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    labelled: torch.Tensor,
    *,
    ratio: float,
    n_views: int = 2,
    tau: float = 0.1,
    tau_t: float = 0.05,
    lam: float = 0.35,
    w_ent: float = 2.0,
    w_sep: float = 0.1,
    tau_unsup: float = 1.0,
    tau_sup: float = 0.07,
    objective: str = "protogcd",
) -> dict[str, torch.Tensor]:
    """ProtoGCD's weighted loss terms for one batch (their sum is the paper's total).

    ``proj`` / ``logits`` hold every view, view-major ([V*B, .]); ``labels`` / ``labelled`` are per sample [B]
    (labels of unlabelled rows are ignored). ``objective='contrastive'`` keeps only the representation terms
    ``(1-lam) L_unsup + lam L_sup`` (the GCD baseline's training).
    """
    check_choice("objective", objective, OBJECTIVES)
    check_range("lam", lam, 0.0, 1.0)
    for name, t in (("proj", proj), ("logits", logits), ("prototypes", prototypes)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2 or len(t) == 0:
            raise PriorkitError(f"{name} must be a non-empty floating-point [N, d] tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)} {list(getattr(t, 'shape', []))}")  # fmt: skip
        check_finite(name, t.detach())
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32) or labels.dim() != 1:
        raise PriorkitError(f"labels must be a 1-D integer tensor, got {getattr(labels, 'dtype', type(labels))}")
    b = labels.shape[0]
    check_shape("labelled", labelled, [b])
    check_shape("logits", logits, [n_views * b, prototypes.shape[0]])
    if labelled.dtype != torch.bool:
        raise PriorkitError(f"labelled must be a boolean mask, got {labelled.dtype}")
    terms: dict[str, torch.Tensor] = {}
    lab_v = labelled.repeat(n_views)
    has_lab = bool(labelled.any())
    if objective == "protogcd":
        zero = logits.sum() * 0.0
        if has_lab:
            if int(labels[labelled].max()) >= prototypes.shape[0] or int(labels[labelled].min()) < 0:
                raise PriorkitError(f"labels of labelled samples must lie in [0, {prototypes.shape[0] - 1}]")
            cls = F.cross_entropy(logits[lab_v] / tau, labels.repeat(n_views)[lab_v])
        terms["cls"] = lam * cls if has_lab else zero
        terms["dapl"] = (1 - lam) * dapl_loss(logits, ratio, n_views, tau, tau_t)
        terms["ent"] = (1 - lam) * w_ent * entropy_regularization(logits, tau)
        terms["sep"] = (1 - lam) * w_sep * prototype_separation(prototypes, tau)
    terms["unsup"] = (1 - lam) * info_nce(proj, n_views, tau_unsup)
    if has_lab:
        views = torch.stack([p[labelled] for p in proj.chunk(n_views)], dim=1)
        terms["sup"] = lam * supcon_views(views, labels[labelled], tau_sup)
    else:
        terms["sup"] = proj.sum() * 0.0
    return terms


def ood_score(logits: torch.Tensor, kind: str = "msp", tau: float = 0.1) -> torch.Tensor:
    """In-distribution score from the cosine logits, higher = more in-distribution (priorkit.metrics' convention):
    ``msp`` max softmax(o/tau), ``energy`` ``tau * logsumexp(o/tau)``, ``max_logit``, or ``proto`` the top-1/top-2
    probability ratio. The official ``get_ood_scores_in`` negates each (its convention is higher = OOD)."""
    check_choice("kind", kind, OOD_SCORES)
    if kind == "msp":
        return F.softmax(logits / tau, dim=1).max(1).values
    if kind == "energy":
        return tau * torch.logsumexp(logits / tau, dim=1)
    if kind == "max_logit":
        return logits.max(1).values
    top2 = F.softmax(logits / tau, dim=1).topk(2, dim=1).values
    return top2[:, 0] / (top2[:, 1] + 1e-6)


# ------------------------------------------------------------------------------------------------ modules
class ProtoGCDHead(nn.Module):
    """Projector MLP (GELU; used only by the contrastive terms) and the cosine prototype layer on the
    L2-normalised input feature. ``forward(u) -> (proj, logits, unit prototypes)``."""

    def __init__(self, in_dim: int, num_classes: int, proj_dims: Sequence[int] = (2048, 2048, 256)) -> None:
        super().__init__()
        check_positive_int("in_dim", in_dim)
        check_positive_int("num_classes", num_classes, 2)
        if not proj_dims:
            raise PriorkitError("proj_dims must name at least the output width")
        layers: list[nn.Module] = []
        d = in_dim
        for i, h in enumerate(proj_dims):
            check_positive_int("proj_dims entry", h)
            layers.append(nn.Linear(d, h))
            if i < len(proj_dims) - 1:
                layers.append(nn.GELU())
            d = h
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototype_layer = nn.Linear(in_dim, num_classes, bias=False)  # default (Kaiming-uniform) init

    @property
    def prototypes(self) -> torch.Tensor:
        return F.normalize(self.prototype_layer.weight, dim=1)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        protos = self.prototypes
        return self.mlp(u), F.normalize(u, dim=1) @ protos.T, protos


class ProtoGCD(nn.Module):
    """A backbone (``features(x)`` if it has one, else ``forward``) with a :class:`ProtoGCDHead` of ``num_classes``
    prototypes (old + new). ``forward(x) -> (proj, logits, prototypes)``; :meth:`predict` is the argmax."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        feat_dim: int | None = None,
        proj_dims: Sequence[int] = (2048, 2048, 256),
    ) -> None:
        super().__init__()
        d = feat_dim if feat_dim is not None else getattr(backbone, "feature_dim", None)
        if d is None:
            raise PriorkitError("feat_dim is needed when the backbone has no feature_dim attribute")
        self.backbone, self.num_classes = backbone, num_classes
        self.head = ProtoGCDHead(d, num_classes, proj_dims)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x) if hasattr(self.backbone, "features") else self.backbone(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(self.features(x))

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        self.eval()
        return torch.cat([self(x[s : s + batch_size])[1] for s in range(0, len(x), batch_size)])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(1)

    @torch.no_grad()
    def init_old_prototypes(self, x_labelled: torch.Tensor, y_labelled: torch.Tensor) -> None:
        """The official ``--init_prototypes`` option (off by default): set prototype ``c`` of every old class
        ``c`` seen in ``y_labelled`` to the mean backbone feature of its labelled samples (new ones are kept)."""
        check_shape("y_labelled", y_labelled, [len(x_labelled)])
        if len(y_labelled) == 0 or int(y_labelled.max()) >= self.num_classes or int(y_labelled.min()) < 0:
            raise PriorkitError(f"y_labelled must be non-empty labels in [0, {self.num_classes - 1}]")
        was = self.training
        self.eval()
        f = self.features(x_labelled)
        self.train(was)
        for c in y_labelled.unique().tolist():
            self.head.prototype_layer.weight[c] = f[y_labelled == c].mean(0)


# ------------------------------------------------------------------------------------------------ training
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: biases and 1-D parameters get none (the official ``get_params_groups``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(".bias") or p.dim() == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def balanced_indices(labelled: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One epoch of the official ``WeightedRandomSampler``: ``N`` draws with replacement, labelled samples with
    weight 1 and unlabelled with ``n_lab / n_unlab``, so both parts carry equal total weight."""
    n_lab, n_unl = int(labelled.sum()), int((~labelled).sum())
    if n_lab == 0 or n_unl == 0:
        raise PriorkitError(f"need labelled and unlabelled samples, got {n_lab} and {n_unl}")
    w = torch.where(labelled, 1.0, n_lab / n_unl).double()
    return torch.multinomial(w, len(w), replacement=True, generator=generator)


def ProtoGCDRecipe(  # noqa: N802  (the method contract's <Id>Recipe entry)
    labelled: Any,
    *,
    epochs: int = 200,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-5,
    tau: float = 0.1,
    tau_t: float = 0.05,
    r0: float = 0.0,
    r1: float = 1.0,
    ramp: int = 100,
    wait: int = 0,
    lam: float = 0.35,
    w_ent: float = 2.0,
    w_sep: float = 0.1,
    tau_unsup: float = 1.0,
    tau_sup: float = 0.07,
    objective: str = "protogcd",
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Recipe:
    """ProtoGCD's training as a one-phase recipe for ``fit(model, train_set, recipe, config=...)``.

    ``labelled`` [N] (tensor or array of bools) marks the training samples whose label is used; the others are
    unlabelled. Per epoch the batches come from :func:`balanced_indices` (``N`` draws with replacement, seeded by
    ``(config.seed, epoch)``, ``drop_last``), the same on every rank; two views of the global batch come from
    ``augment(x, generator)`` seeded by ``(config.seed, step)``; the loss is :func:`protogcd_loss` on the
    gathered global batch with the ratio ``ratio_schedule(epoch)`` (logged as ``ratio``). SGD with momentum,
    no weight decay on biases and 1-D parameters, cosine decay to ``lr * 1e-3``. Defaults: the card's (CIFAR-100).
    """
    lab = as_tensor("labelled", labelled)
    if lab.dtype != torch.bool or lab.dim() != 1:
        raise PriorkitError(f"labelled must be a 1-D boolean mask, got {lab.dtype} {list(lab.shape)}")
    n_lab, n_unl = int(lab.sum()), int((~lab).sum())
    if n_lab == 0 or n_unl == 0:
        raise PriorkitError(f"labelled must mark labelled and unlabelled samples, got {n_lab} and {n_unl}")
    check_positive_int("epochs", epochs)
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("momentum", momentum, 0.0, 1.0)
    check_range("weight_decay", weight_decay, 0.0)
    check_range("r0", r0, 0.0, 1.0)
    check_range("r1", r1, 0.0, 1.0)
    check_range("lam", lam, 0.0, 1.0)
    check_range("w_ent", w_ent, 0.0)
    check_range("w_sep", w_sep, 0.0)
    check_range("tau", tau, 0.0, low_inclusive=False)
    check_range("tau_t", tau_t, 0.0, low_inclusive=False)
    check_choice("objective", objective, OBJECTIVES)
    ratio_schedule(0, epochs, r0, r1, ramp, wait)  # validates the schedule's cover
    if augment is not None and not callable(augment):
        raise PriorkitError(f"augment must be a callable (x, generator) -> view, got {type(augment).__name__}")

    def plan(state: RunState) -> list[list[int]]:
        bs = state.phase.batch_size or state.config.batch_size
        if bs % state.world_size:
            raise PriorkitError(f"batch_size ({bs}) must be divisible by the world size ({state.world_size})")
        data = state.phase.data if state.phase.data is not None else state.data
        if len(data) != len(lab):
            raise PriorkitError(f"labelled has {len(lab)} entries but the training set {len(data)} samples")
        steps = len(lab) // bs
        if steps == 0:
            raise PriorkitError(f"batch_size ({bs}) is larger than the training set ({len(lab)})")
        g = torch.Generator().manual_seed(state.config.seed * 100003 + state.epoch)
        order = balanced_indices(lab, g)
        return [order[s * bs : (s + 1) * bs].tolist() for s in range(steps)]

    def make_batch(state: RunState, local: torch.Tensor) -> Batch:
        views, y, index = global_views(state, augment, 2)
        return Batch(x=torch.cat(views), y=y, index=index, extras={"labelled": lab[index].to(y.device)})

    def loss(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        proj, logits, protos = batch.output
        ratio = ratio_schedule(state.phase_epoch, epochs, r0, r1, ramp, wait)
        state.log(ratio=ratio)
        # the global batch, view-major, on every rank (gradients reach every rank's rows)
        proj_g = torch.cat([D.gather_with_grad(v) for v in proj.chunk(2)])
        logits_g = torch.cat([D.gather_with_grad(v) for v in logits.chunk(2)])
        y_g, lab_g = D.all_gather_cat(batch.y), D.all_gather_cat(batch.extras["labelled"])
        return protogcd_loss(
            proj_g, logits_g, protos, y_g, lab_g, ratio=ratio, tau=tau, tau_t=tau_t, lam=lam, w_ent=w_ent,
            w_sep=w_sep, tau_unsup=tau_unsup, tau_sup=tau_sup, objective=objective,
        )  # fmt: skip

    def opt(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum)

    def sched(o: torch.optim.Optimizer, spe: int) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs, eta_min=lr * 1e-3)

    phase = Phase(
        "protogcd", epochs=epochs, optimizer=opt, scheduler=sched, interval="epoch", loss=loss, batches=plan,
        make_batch=make_batch, rescale=False,
    )  # fmt: skip
    return Recipe([phase], loss_fn=None)
