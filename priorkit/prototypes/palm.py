"""Learning with Mixture of Prototypes for Out-of-Distribution Detection (PALM), Lu et al., ICLR 2024.

PALM trains an encoder with a normalised projection head so that each class is a *mixture* of ``M`` prototypes on
the unit sphere instead of one. Per step (two views of a batch, ``Z`` of shape ``[2B, d]``): soft assignments of
samples to prototypes by Sinkhorn-Knopp on ``exp(Z C^T / eps)``, restricted to the sample's own class and to the
top-``k`` prototypes; the prototypes are moved by EMA towards their assigned samples (``c <- norm(m c + (1-m)
U^T Z)``, not by gradients); a maximum-likelihood loss pulls each sample to its weighted prototypes (``L_mle``,
the vMF-mixture likelihood, eq. 5-6) and a prototype contrastive loss pulls the prototypes of one class together
and pushes the classes apart (``L_pcon``, eq. 7), which reaches the encoder only through this step's EMA term.
At test time the encoder features are scored by the class-agnostic SSD+ Mahalanobis score
(:func:`priorkit.baselines.ood.ssd_fit` / ``ssd_score``). Reported: CIFAR-100 as ID with ResNet-34, average AUROC
93.82 over SVHN / Places365 / LSUN / iSUN / Textures, ahead of CIDER and KNN+.

Functional core: :func:`~priorkit.nn.sinkhorn.sinkhorn` (shared, log domain), :func:`class_mask`,
:func:`topk_mask`, :func:`assignment_weights`, :func:`ema_update`, :func:`mle_loss`, :func:`proto_contrastive_loss`,
:func:`palm_lr`. Entry: :class:`PALMHook` (the prototype memory and the two loss terms, checkpointed with the run;
:meth:`PALMHook.recipe` gives the paper's optimisation as a one-phase :class:`~priorkit.train.Recipe`: SGD
Nesterov, per-step warm-up + cosine, two views of the global batch). :class:`PALMNet` (encoder + MLP head + L2
norm) is the model it trains; :func:`embed` gives the encoder features the OOD scores use. The other papers'
scores (SSD+, class-conditional Mahalanobis, KNN+, energy) live in :mod:`priorkit.baselines.ood`.

DDP: the two views are drawn for the *global* batch from a generator seeded by ``(seed, step)`` and each rank
keeps its rows; the Sinkhorn assignment, the EMA update and ``L_pcon`` use the embeddings gathered with
:func:`priorkit.nn.distributed.gather_with_grad` (every rank computes the same global ``L_pcon``; the gradient
all-reduce then DDP's average give the single-process gradient); ``L_mle`` is each rank's share of the
global-batch mean (``sum of its rows * W / N``), so the phase turns the engine's rescale off. Every rank holds
the same prototypes, and a 2-process run equals a 1-process run (``tests/prototypes/test_palm_ddp.py``).
A batch whose embeddings hold NaN/inf is refused before the prototypes are touched.

Official code: jeff024/PALM (``util/loss_functions.py::PALM``, ``trainer.py::train_palm``,
``util/evaluations/mahalanobis.py::eval_maha``); an OpenOOD port in ``openood/trainers/palm_trainer.py``.
Where the card records a quirk of the official code the default follows the paper and a flag restores the code:

- ``topk_source``: the loss's top-``k`` prototypes are those of the current (post-EMA) assignment (``"paper"``);
  ``"official"`` takes the indices from the pre-update EMA weights ``U`` as the code does.
- ``ssd_score(..., official_centering=True)`` subtracts the *unstandardised* train mean from standardised
  features as ``eval_maha`` does; the default centres correctly (the standardised train mean is zero).
- The official Sinkhorn overflow branch calls an attribute that does not exist; here the normalisations run in
  the log domain (the same arithmetic, with no overflow), in float32.

Libraries considered: pytorch-ood has Mahalanobis / KNN detectors (it requires torchvision, see
:mod:`priorkit.baselines.ood`) and OpenOOD the PALM trainer, but neither exposes the loss as tensor functions
without its framework; the ~200 lines are written here. Small-scale setting (``SPEC.presets["small"]``):
prototype momentum 0.99 instead of 0.999, since a CPU run has ~450 steps instead of ~49k.

Example (runs in ``tests/prototypes/test_palm.py``)::

    >>> import torch
    >>> from priorkit.models import MLP
    >>> from priorkit.prototypes.palm import PALMHook, PALMNet
    >>> _ = torch.manual_seed(0)
    >>> net = PALMNet(MLP(64, (32,), 2), proj_dim=16)
    >>> palm = PALMHook(num_classes=2, feat_dim=16, num_protos=3, k=2)
    >>> x, y = torch.rand(8, 64), torch.tensor([0, 1] * 4)
    >>> z = net(torch.cat([x, x + 0.01]))                  # two views, view-major
    >>> terms = palm.terms(z, y.repeat(2))                 # updates the prototype memory by EMA
    >>> sorted(terms), palm.prototypes.shape
    (['mle', 'pcon'], torch.Size([6, 16]))
    >>> sum(terms.values()).backward()

Training on a dataset of ``(x, y)`` items (``augment(x, generator)`` makes one view)::

    hook = PALMHook(num_classes=5, feat_dim=32, **SPEC.presets["small"], augment=views)
    fit(net, train_set, hook.recipe(), hooks=[hook], config=TrainConfig(batch_size=256, seed=0))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    CheckpointMismatchError,
    PriorkitError,
    check_choice,
    check_finite,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.nn import distributed as D
from priorkit.nn.sinkhorn import sinkhorn
from priorkit.nn.views import global_views
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import Phase, Recipe

__all__ = [
    "SPEC",
    "PALMHook",
    "PALMNet",
    "assignment_weights",
    "class_mask",
    "ema_update",
    "embed",
    "mle_loss",
    "palm_lr",
    "proto_contrastive_loss",
    "sinkhorn",
    "topk_mask",
]

SPEC = MethodSpec(
    status="implemented",
    entry="PALMHook",
    missing="unlabelled-ID variant, optional AMP step and ImageNet-100 fine-tuning not built",
    presets={
        "paper": {
            "num_protos": 6, "k": 5, "momentum": 0.999, "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iters": 3,
            "lambda_pcon": 1.0, "pcon_temperature": 0.5, "epochs": 500, "lr": 0.5, "sgd_momentum": 0.9,
            "weight_decay": 1e-6, "warmup_epochs": 10, "min_lr_ratio": 1e-3,
        },
        "small": {
            "num_protos": 6, "k": 5, "momentum": 0.99, "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iters": 3,
            "lambda_pcon": 1.0, "pcon_temperature": 0.5, "epochs": 150, "lr": 0.5, "sgd_momentum": 0.9,
            "weight_decay": 1e-6, "warmup_epochs": 10, "min_lr_ratio": 1e-3,
        },
    },
)  # fmt: skip

TOPK_SOURCES = ("paper", "official")
PROTO_INITS = ("uniform", "normal")
ViewFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


# ------------------------------------------------------------------------------------------- functional core
def class_mask(labels: torch.Tensor, num_classes: int, num_protos: int) -> torch.Tensor:
    """``A`` [N, C*M]: ``A[i, j] = 1`` when prototype ``j`` belongs to sample ``i``'s class (``j mod C``)."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("num_protos", num_protos)
    if labels.dim() != 1:
        raise PriorkitError(f"labels must be 1-D, got shape {list(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PriorkitError(
            f"labels must lie in [0, {num_classes - 1}] (num_classes), got [{int(labels.min())}, {int(labels.max())}]"
        )
    owner = torch.arange(num_classes * num_protos, device=labels.device) % num_classes
    return (labels.view(-1, 1) == owner.view(1, -1)).float()


def topk_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask of the ``k`` largest entries of each row of ``w`` (``torch.topk``'s tie order)."""
    check_positive_int("k", k)
    if k > w.shape[1]:
        raise PriorkitError(f"k must be <= the number of prototypes ({w.shape[1]}), got {k}")
    idx = torch.topk(w, k, dim=1).indices
    return torch.zeros_like(w).scatter_(1, idx, 1.0)


def assignment_weights(q: torch.Tensor, mask: torch.Tensor, k: int = 0) -> torch.Tensor:
    """EMA weights ``U``: the class-masked assignments (top-``k`` per row when ``k > 0``), L1-normalised per
    sample, then per prototype (so each prototype's update is a convex combination of its samples)."""
    check_shape("mask", mask, list(q.shape))
    w = mask * q
    if k > 0:
        w = topk_mask(w, k) * w
    return F.normalize(F.normalize(w, p=1, dim=1), p=1, dim=0)


def ema_update(prototypes: torch.Tensor, u: torch.Tensor, z: torch.Tensor, momentum: float) -> torch.Tensor:
    """``normalize(m c + (1 - m) U^T z)``. Differentiable in ``z`` (``L_pcon``'s only path to the encoder); a
    prototype with no assigned sample (zero column of ``U``) keeps its direction."""
    check_range("momentum", momentum, 0.0, 1.0)
    check_shape("u", u, [z.shape[0], prototypes.shape[0]])
    return F.normalize(momentum * prototypes + (1.0 - momentum) * (u.T @ z), p=2, dim=1)


def mle_loss(
    z: torch.Tensor,
    prototypes: torch.Tensor,
    q: torch.Tensor,
    mask: torch.Tensor,
    k: int = 0,
    temperature: float = 0.1,
    topk_from: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """``L_mle = -mean_i [sum_j w_ij l_ij - log sum_j exp l_ij]`` with ``l = z c^T / tau`` (prototypes detached)
    and ``w_i`` the row-normalised class-masked assignments of sample ``i``, kept on its top-``k`` prototypes
    (chosen in ``topk_from`` when given, else in ``mask * q``). ``reduction='none'`` gives the per-row terms."""
    check_range("temperature", temperature, 0.0, low_inclusive=False)
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    check_shape("q", q, [z.shape[0], prototypes.shape[0]])
    check_shape("mask", mask, list(q.shape))
    logits = z @ prototypes.detach().T / temperature
    w = mask * q
    if k > 0:
        w = topk_mask(topk_from if topk_from is not None else w, k) * w
    w = F.normalize(w, p=1, dim=1).detach()
    rows = -((w * logits).sum(1) - torch.logsumexp(logits, dim=1))
    return rows if reduction == "none" else rows.sum() if reduction == "sum" else rows.mean()


def proto_contrastive_loss(prototypes: torch.Tensor, num_classes: int, temperature: float = 0.5) -> torch.Tensor:
    """``L_pcon = -mean_a [mean_{b in pos(a)} s_ab - log sum_{b != a} exp s_ab]``, ``s = c_a . c_b / T``, where
    ``pos(a)`` are the other prototypes of ``a``'s class (``j mod C``). As in the official code the row maximum
    (the self-similarity) is subtracted first; with one prototype per class ``pos(a)`` is empty and counts 0."""
    check_range("temperature", temperature, 0.0, low_inclusive=False)
    kk = prototypes.shape[0]
    if kk % num_classes:
        raise PriorkitError(f"the number of prototypes ({kk}) must be a multiple of num_classes ({num_classes})")
    c = F.normalize(prototypes, dim=1)
    s = c @ c.T / temperature
    s = s - s.max(dim=1, keepdim=True).values.detach()
    owner = torch.arange(kk, device=c.device) % num_classes
    not_self = 1.0 - torch.eye(kk, device=c.device)
    pos = (owner.view(-1, 1) == owner.view(1, -1)).float() * not_self
    pos_term = (F.normalize(pos, p=1, dim=1) * s).sum(1)
    neg_term = torch.log((not_self * torch.exp(s)).sum(1))
    return -(pos_term - neg_term).mean()


def palm_lr(step: int, steps_per_epoch: int, epochs: int, lr: float, warmup_epochs: int = 10,
            min_lr_ratio: float = 1e-3) -> float:
    """``adjust_learning_rate`` of the official code: linear warm-up from 0, then cosine to ``min_lr_ratio * lr``."""
    total, warm = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    if step < warm:
        return lr * step / warm
    q = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return lr * q + lr * min_lr_ratio * (1 - q)


# ------------------------------------------------------------------------------------------------ the entry
class PALMHook(Hook):
    """PALM as a hook: the prototype memory and its two loss terms ``mle`` and ``pcon`` on the phase's output.

    The model's output on a batch is ``z`` [V*b, d], unit-norm embeddings of every view, view-major (what
    :class:`PALMNet` gives on ``batch.x`` built by :meth:`recipe`); ``batch.y`` [b] holds one label per sample.
    Each step runs the card: Sinkhorn, class mask + top-k, EMA update of the prototypes, ``L_mle`` and
    ``lambda_pcon * L_pcon``. Prototype defaults are the paper's (CIFAR): ``M=6, k=5, m=0.999, tau=0.1,
    eps=0.05``, 3 Sinkhorn iterations, ``lambda_pcon=1``, prototype-contrast temperature 0.5; ``num_protos=1,
    k=1`` is the single-prototype (CIDER-like) variant. The random init is drawn from ``seed`` (``uniform``:
    ``rand`` then normalise, as the official code; ``normal``: uniform on the sphere). The optimisation settings
    (``epochs``, ``lr``, ``sgd_momentum``, ``weight_decay``, ``warmup_epochs``, ``min_lr_ratio``) and
    ``augment(x, generator) -> view`` are used by :meth:`recipe`; the global batch size is the run config's.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int = 128,
        num_protos: int = 6,
        k: int = 5,
        *,
        momentum: float = 0.999,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iters: int = 3,
        lambda_pcon: float = 1.0,
        pcon_temperature: float = 0.5,
        topk_source: str = "paper",
        init: str = "uniform",
        seed: int = 0,
        epochs: int = 500,
        lr: float = 0.5,
        sgd_momentum: float = 0.9,
        weight_decay: float = 1e-6,
        warmup_epochs: int = 10,
        min_lr_ratio: float = 1e-3,
        augment: ViewFn | None = None,
        n_views: int = 2,
    ) -> None:
        check_positive_int("num_classes", num_classes, 2)
        check_positive_int("feat_dim", feat_dim)
        check_positive_int("num_protos", num_protos)
        check_positive_int("k", k, 0)
        if k > num_protos:
            raise PriorkitError(f"k must be <= num_protos ({num_protos}), got {k}")
        check_range("momentum", momentum, 0.0, 1.0)
        check_range("temperature", temperature, 0.0, low_inclusive=False)
        check_range("epsilon", epsilon, 0.0, low_inclusive=False)
        check_positive_int("sinkhorn_iters", sinkhorn_iters, 0)
        check_range("lambda_pcon", lambda_pcon, 0.0)
        check_range("pcon_temperature", pcon_temperature, 0.0, low_inclusive=False)
        check_choice("topk_source", topk_source, TOPK_SOURCES)
        check_choice("init", init, PROTO_INITS)
        check_positive_int("epochs", epochs)
        check_range("lr", lr, 0.0, low_inclusive=False)
        check_range("sgd_momentum", sgd_momentum, 0.0, 1.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_positive_int("warmup_epochs", warmup_epochs, 0)
        check_range("min_lr_ratio", min_lr_ratio, 0.0, 1.0)
        check_positive_int("n_views", n_views)
        if augment is not None and not callable(augment):
            raise PriorkitError(f"augment must be a callable (x, generator) -> view, got {type(augment).__name__}")
        self.num_classes, self.num_protos, self.k, self.feat_dim = num_classes, num_protos, k, feat_dim
        self.momentum, self.temperature, self.epsilon = momentum, temperature, epsilon
        self.sinkhorn_iters, self.lambda_pcon, self.pcon_temperature = sinkhorn_iters, lambda_pcon, pcon_temperature
        self.topk_source = topk_source
        self.epochs, self.lr, self.sgd_momentum, self.weight_decay = epochs, lr, sgd_momentum, weight_decay
        self.warmup_epochs, self.min_lr_ratio = warmup_epochs, min_lr_ratio
        self.augment, self.n_views = augment, n_views
        g = torch.Generator().manual_seed(seed)
        kk = num_classes * num_protos
        raw = torch.rand(kk, feat_dim, generator=g) if init == "uniform" else torch.randn(kk, feat_dim, generator=g)
        self.prototypes = F.normalize(raw, dim=1)

    # -- the step ------------------------------------------------------------------------------------------
    def terms(self, z: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One PALM step on this rank's embeddings ``z`` [N, d] and their ``labels`` [N]; updates the prototypes.

        Under DDP ``z`` is gathered over ranks for the assignment, the EMA and ``L_pcon``; ``mle`` is this rank's
        share of the global mean. Non-finite ``z`` or bad ``labels`` raise before the prototypes change.
        """
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise PriorkitError(f"z must be a floating-point tensor, got {getattr(z, 'dtype', type(z).__name__)}")
        check_shape("z", z, [None, self.prototypes.shape[1]])
        if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
            raise PriorkitError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels))}")
        check_shape("labels", labels, [z.shape[0]])
        n_local = z.shape[0]
        z_all = D.gather_with_grad(z)
        if z_all.shape[0] == 0:
            raise PriorkitError("z is empty on every rank: PALM needs at least one embedding")
        check_finite("z", z_all.detach())  # every rank sees the gathered rows: all refuse together
        y_all = D.all_gather_cat(labels.long())
        off = D.gather_offset(n_local, z.device)
        protos = self.prototypes.to(z.device, torch.float32)
        mask = class_mask(y_all, self.num_classes, self.num_protos)
        q = sinkhorn(z_all, protos, self.epsilon, self.sinkhorn_iters)
        u = assignment_weights(q, mask, self.k)
        new = ema_update(protos, u, z_all.float(), self.momentum)  # carries the gradient of z (L_pcon's path)
        q_new = sinkhorn(z_all, new, self.epsilon, self.sinkhorn_iters)
        rows = slice(off, off + n_local)
        topk_from = u[rows] if self.topk_source == "official" else None
        per_row = mle_loss(
            z.float(), new, q_new[rows], mask[rows], self.k, self.temperature, topk_from=topk_from, reduction="none"
        )
        # this rank's share of the global-batch mean: DDP averages the ranks' gradients (rescale is off)
        out = {"mle": per_row.sum() * (D.world_size() / z_all.shape[0])}
        if self.lambda_pcon > 0:
            out["pcon"] = self.lambda_pcon * proto_contrastive_loss(new, self.num_classes, self.pcon_temperature)
        self.prototypes = new.detach().to(self.prototypes.dtype).cpu()
        return out

    def extra_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        z = batch.output
        n_views = max(1, len(z) // max(1, len(batch.y))) if isinstance(z, torch.Tensor) else 1
        return self.terms(z, batch.y.repeat(n_views))  # type: ignore[arg-type]

    # -- the recipe ----------------------------------------------------------------------------------------
    def make_batch(self, state: RunState, local: torch.Tensor) -> Batch:
        """``n_views`` views of the global batch drawn from ``(config.seed, step)``; this rank's rows, view-major."""
        views, y, index = global_views(state, self.augment, self.n_views)
        return Batch(x=torch.cat(views), y=y, index=index)

    def recipe(self) -> Recipe:
        """The paper's optimisation as one phase: SGD Nesterov over every parameter, the per-step warm-up +
        cosine lr of :func:`palm_lr`, the two-view batches of :meth:`make_batch`; the loss is this hook's."""

        def opt(model: nn.Module) -> torch.optim.Optimizer:
            params = [p for p in model.parameters() if p.requires_grad]
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.sgd_momentum, nesterov=True, weight_decay=self.weight_decay
            )

        def sched(o: torch.optim.Optimizer, spe: int) -> Any:
            spe = max(1, spe)
            return torch.optim.lr_scheduler.LambdaLR(
                o, lambda s: palm_lr(s, spe, self.epochs, self.lr, self.warmup_epochs, self.min_lr_ratio) / self.lr
            )

        phase = Phase(
            "palm", epochs=self.epochs, optimizer=opt, scheduler=sched, interval="step",
            make_batch=self.make_batch, rescale=False,
        )  # fmt: skip
        return Recipe([phase], loss_fn=None)

    # -- checkpoint ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"prototypes": self.prototypes.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p = state.get("prototypes")
        if not isinstance(p, torch.Tensor) or p.shape != self.prototypes.shape:
            raise CheckpointMismatchError(
                f"PALM prototypes in the checkpoint have shape {getattr(p, 'shape', None)}, this run "
                f"{tuple(self.prototypes.shape)}"
            )
        self.prototypes = p.clone().to(self.prototypes.dtype)


class PALMNet(nn.Module):
    """Encoder + MLP projection head (``d -> hidden -> proj_dim``, ReLU) + L2 normalisation.

    ``encoder`` is any module; if it has ``features(x)`` (priorkit's backbones) that is used, so its classifier
    head is ignored. ``embed(x)`` gives the encoder features ``e`` that the OOD score uses; ``forward`` gives ``z``.
    """

    def __init__(
        self, encoder: nn.Module, feat_dim: int | None = None, proj_dim: int = 128, hidden: int | None = None
    ) -> None:
        super().__init__()
        d = feat_dim if feat_dim is not None else getattr(encoder, "feature_dim", None)
        if d is None:
            raise PriorkitError("feat_dim is needed when the encoder has no feature_dim attribute")
        check_positive_int("feat_dim", d)
        check_positive_int("proj_dim", proj_dim)
        self.encoder = encoder
        h = hidden if hidden is not None else d
        self.head = nn.Sequential(nn.Linear(d, h), nn.ReLU(inplace=True), nn.Linear(h, proj_dim))
        self.feat_dim, self.proj_dim = d, proj_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x) if hasattr(self.encoder, "features") else self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.embed(x)), dim=1)


@torch.no_grad()
def embed(net: PALMNet, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Encoder features of ``x`` in eval mode (what the OOD scores use)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise PriorkitError(f"x must be a non-empty floating-point batch [N, ...], got {getattr(x, 'shape', x)}")
    was = net.training
    net.eval()
    out = torch.cat([net.embed(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])
    net.train(was)
    return out
