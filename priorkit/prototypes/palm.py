"""Learning with Mixture of Prototypes for Out-of-Distribution Detection (PALM), Lu et al., ICLR 2024.

PALM trains an encoder with a normalised projection head so that each class is a *mixture* of ``M`` prototypes on
the unit sphere instead of one. Per step (two views of a batch, ``Z`` of shape ``[2B, d]``): soft assignments of
samples to prototypes by Sinkhorn-Knopp on ``exp(Z C^T / eps)``, restricted to the sample's own class and to the
top-``k`` prototypes; the prototypes are moved by EMA towards their assigned samples (``c <- norm(m c + (1-m)
U^T Z)``, not by gradients); a maximum-likelihood loss pulls each sample to its weighted prototypes (``L_mle``,
the vMF-mixture likelihood, eq. 5-6) and a prototype contrastive loss pulls the prototypes of one class together
and pushes the classes apart (``L_pcon``, eq. 7), which reaches the encoder only through this step's EMA term.
At test time the encoder features are scored by the class-agnostic SSD+ Mahalanobis score. Reported: CIFAR-100
as ID with ResNet-34, average AUROC 93.82 over SVHN / Places365 / LSUN / iSUN / Textures, ahead of CIDER and KNN+.

Functional core: :func:`sinkhorn`, :func:`class_mask`, :func:`topk_mask`, :func:`assignment_weights`,
:func:`ema_update`, :func:`mle_loss`, :func:`proto_contrastive_loss`; scores :func:`ssd_fit` / :func:`ssd_score`
(SSD+), :func:`class_mahalanobis_fit` / :func:`class_mahalanobis_score` and :func:`knn_score` (KNN+).
Wrappers: :class:`PALMLoss` (the prototype memory, DDP-correct and checkpointable through ``state_dict``),
:class:`PALMNet` (encoder + MLP head + L2 norm) and :func:`train_palm` (the paper's schedule; runs under
``torchrun``). PALM has no classifier, so it trains with its own loop rather than :class:`priorkit.train.Trainer`.

DDP: the Sinkhorn assignment, the EMA update and ``L_pcon`` use the embeddings gathered from every rank (the
rank's own rows keep their gradient, scaled by the world size so that DDP's gradient average restores the
global-batch gradient); ``L_mle`` is the global-batch mean. Every rank then holds the same prototypes, and a
2-process run equals a 1-process run with the same global batch (``tests/prototypes/test_palm_ddp.py``).

Official code: jeff024/PALM (``util/loss_functions.py::PALM``, ``trainer.py::train_palm``,
``util/evaluations/mahalanobis.py::eval_maha``); an OpenOOD port in ``openood/trainers/palm_trainer.py``.
Where the card records a quirk of the official code the default follows the paper and a flag restores the code:

- ``topk_source``: the loss's top-``k`` prototypes are those of the current (post-EMA) assignment (``"paper"``);
  ``"official"`` takes the indices from the pre-update EMA weights ``U`` as the code does.
- ``ssd_score(..., official_centering=True)`` subtracts the *unstandardised* train mean from standardised
  features as ``eval_maha`` does; the default centres correctly (the standardised train mean is zero).
- The official Sinkhorn overflow branch calls an attribute that does not exist; here the normalisations run in
  the log domain (the same arithmetic, with no overflow), in float32.

The SSD+ score is the negative *squared* Mahalanobis distance, as the official code computes (same ranking as
the distance). Libraries considered: pytorch-ood has Mahalanobis / KNN detectors and OpenOOD the PALM trainer,
but neither exposes the loss as tensor functions without its framework; the ~200 lines are written here.

Example (runs in ``tests/prototypes/test_palm.py``)::

    >>> import torch
    >>> from priorkit.models import MLP
    >>> from priorkit.prototypes.palm import PALMLoss, PALMNet
    >>> _ = torch.manual_seed(0)
    >>> net = PALMNet(MLP(64, (32,), 2), proj_dim=16)
    >>> palm = PALMLoss(num_classes=2, feat_dim=16, num_protos=3, k=2)
    >>> x, y = torch.rand(8, 64), torch.tensor([0, 1] * 4)
    >>> z = net(torch.cat([x, x + 0.01]))                  # two views, view-major
    >>> terms = palm(z, y.repeat(2))                       # updates the prototype memory by EMA
    >>> sorted(terms), palm.prototypes.shape
    (['mle', 'pcon'], torch.Size([6, 16]))
    >>> sum(terms.values()).backward()
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range, check_shape
from priorkit.train import distributed as D

TOPK_SOURCES = ("paper", "official")
PROTO_INITS = ("uniform", "normal")


# ------------------------------------------------------------------------------------------- functional core
def sinkhorn(z: torch.Tensor, prototypes: torch.Tensor, epsilon: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft assignments ``Q`` [N, K] of samples to prototypes by Sinkhorn-Knopp on ``exp(z c^T / epsilon)``.

    Alternately each prototype's total is set to ``1/K`` and each sample's to ``1/N``; the result is scaled by
    ``N`` so every sample's weights sum to 1 (SwAV / PALM). No gradient flows (the inputs are detached).
    Computed in the log domain in float32: the same numbers as the official exp-then-normalise loop where that
    does not overflow, and finite where it would (the card's overflow note).
    """
    check_range("epsilon", epsilon, 0.0, low_inclusive=False)
    check_positive_int("iters", iters, 0)
    if z.dim() != 2 or prototypes.dim() != 2 or z.shape[1] != prototypes.shape[1]:
        raise PriorkitError(
            f"z [N, d] and prototypes [K, d] must share d, got {list(z.shape)}, {list(prototypes.shape)}"
        )
    with torch.no_grad():
        logq = (z.detach().float() @ prototypes.detach().float().T / epsilon).T  # [K, N], in the log domain
        k, n = logq.shape
        logq = logq - torch.logsumexp(logq.flatten(), dim=0)
        for _ in range(iters):
            logq = logq - torch.logsumexp(logq, dim=1, keepdim=True) - math.log(k)
            logq = logq - torch.logsumexp(logq, dim=0, keepdim=True) - math.log(n)
        return (torch.exp(logq) * n).T.contiguous()


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


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN401
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN401
        return g * ctx.scale, None


def gather_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(all ranks' rows in rank order, this rank's offset)``. The rank's own rows keep their gradient, scaled
    by the world size: a term computed identically on every rank from the gathered rows then gets, after DDP's
    gradient average, the gradient of the single-process run. Identity on one process."""
    if not D.is_dist():
        return z, 0
    sizes = D.all_gather_cat(torch.tensor([z.shape[0]], device=z.device))
    off = int(sizes[: D.rank()].sum())
    full = D.all_gather_cat(z.detach())
    mine = _ScaleGrad.apply(z, float(D.world_size()))
    return torch.cat([full[:off], mine, full[off + z.shape[0] :]]), off


# ------------------------------------------------------------------------------------------------ scores
@dataclass
class SSDPlus:
    """Fitted SSD+ statistics of L2-normalised training features (mean, std, pseudo-inverse covariance)."""

    mean: torch.Tensor
    std: torch.Tensor
    precision: torch.Tensor


def _l2(f: torch.Tensor) -> torch.Tensor:
    f = f.detach().double()
    return f / (f.norm(dim=-1, keepdim=True) + 1e-10)


def ssd_fit(train_features: torch.Tensor) -> SSDPlus:
    """SSD+ (class-agnostic Mahalanobis): L2-normalise, standardise with the train mean and std, and take the
    pseudo-inverse of the (biased) covariance of the standardised train features."""
    if train_features.dim() != 2 or len(train_features) < 2:
        raise PriorkitError(f"train_features must be [N >= 2, d], got {list(train_features.shape)}")
    f = _l2(train_features)
    mean, std = f.mean(0), f.std(0, unbiased=False)
    fs = (f - mean) / (std + 1e-10)
    fc = fs - fs.mean(0)
    cov = fc.T @ fc / len(fs)
    return SSDPlus(mean, std, torch.linalg.pinv(cov, hermitian=True))


def ssd_score(fit: SSDPlus, features: torch.Tensor, *, official_centering: bool = False) -> torch.Tensor:
    """Negative squared Mahalanobis distance to the train distribution (higher = more in-distribution).

    ``official_centering=True`` reproduces ``eval_maha``: the raw (unstandardised) train mean is subtracted from
    the already standardised features. The default subtracts the standardised train mean, which is zero.
    """
    f = _l2(features)
    fs = (f - fit.mean) / (fit.std + 1e-10)
    z = fs - fit.mean if official_centering else fs
    return -(z * (z @ fit.precision)).sum(1)


@dataclass
class ClassMahalanobis:
    means: torch.Tensor
    precision: torch.Tensor


def class_mahalanobis_fit(train_features: torch.Tensor, labels: torch.Tensor) -> ClassMahalanobis:
    """Class-conditional Gaussians with a tied covariance (Lee et al., 2018) on L2-normalised features."""
    f = _l2(train_features)
    classes = labels.unique()
    means = torch.stack([f[labels == c].mean(0) for c in classes])
    cen = f - means[torch.searchsorted(classes, labels)]
    return ClassMahalanobis(means, torch.linalg.pinv(cen.T @ cen / len(f), hermitian=True))


def class_mahalanobis_score(fit: ClassMahalanobis, features: torch.Tensor) -> torch.Tensor:
    """``-min_c (x - mu_c)^T Sigma^+ (x - mu_c)``."""
    d = _l2(features).unsqueeze(1) - fit.means.unsqueeze(0)  # [N, C, d]
    return -torch.einsum("ncd,de,nce->nc", d, fit.precision, d).min(1).values


def knn_score(train_features: torch.Tensor, features: torch.Tensor, k: int = 50) -> torch.Tensor:
    """KNN+ (Sun et al., 2022): minus the distance to the ``k``-th nearest L2-normalised training feature."""
    check_positive_int("k", k)
    if k > len(train_features):
        raise PriorkitError(f"k must be <= the number of training features ({len(train_features)}), got {k}")
    d = torch.cdist(_l2(features), _l2(train_features))
    return -d.topk(k, dim=1, largest=False).values[:, -1]


# ------------------------------------------------------------------------------------------------ wrappers
class PALMLoss(nn.Module):
    """The PALM prototype memory and its two losses. ``forward(z, labels)`` runs one step of the card:
    Sinkhorn, class mask + top-k, EMA update of the prototypes, ``L_mle`` and ``lambda_pcon * L_pcon``.

    ``z`` [N, d] are unit-norm embeddings of every view (view-major, e.g. ``cat([view1, view2])``) and
    ``labels`` [N] their classes (``y.repeat(2)``). Defaults are the paper's (CIFAR): ``M=6, k=5, m=0.999,
    tau=0.1, eps=0.05``, 3 Sinkhorn iterations, ``lambda_pcon=1``, prototype-contrast temperature 0.5.
    ``num_protos=1, k=1`` is the single-prototype (CIDER-like) variant. The prototypes are a buffer, so
    ``state_dict`` checkpoints them; their random init is drawn from ``seed`` (``uniform``: ``rand`` then
    normalise, as the official code; ``normal``: uniform on the sphere).
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
    ) -> None:
        super().__init__()
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
        self.num_classes, self.num_protos, self.k = num_classes, num_protos, k
        self.momentum, self.temperature, self.epsilon = momentum, temperature, epsilon
        self.sinkhorn_iters, self.lambda_pcon, self.pcon_temperature = sinkhorn_iters, lambda_pcon, pcon_temperature
        self.topk_source = topk_source
        g = torch.Generator().manual_seed(seed)
        kk = num_classes * num_protos
        raw = torch.rand(kk, feat_dim, generator=g) if init == "uniform" else torch.randn(kk, feat_dim, generator=g)
        self.register_buffer("prototypes", F.normalize(raw, dim=1))

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        check_shape("z", z, [None, self.prototypes.shape[1]])
        check_shape("labels", labels, [z.shape[0]])
        n_local = z.shape[0]
        z_all, off = gather_with_grad(z)
        y_all = D.all_gather_cat(labels) if D.is_dist() else labels
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
        # global-batch mean: DDP averages the ranks' gradients, so each rank contributes sum / N_global * world
        mle = per_row.sum() * (D.world_size() / z_all.shape[0])
        terms = {"mle": mle}
        if self.lambda_pcon > 0:
            terms["pcon"] = self.lambda_pcon * proto_contrastive_loss(new, self.num_classes, self.pcon_temperature)
        self.prototypes = new.detach().to(self.prototypes.dtype)
        return terms

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_protos={self.num_protos}, k={self.k}, momentum={self.momentum}"


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


@dataclass
class PALMConfig:
    """The paper's optimisation (CIFAR defaults): SGD Nesterov, momentum 0.9, lr 0.5, wd 1e-6, batch 512, 500
    epochs, linear warm-up over 10 epochs then per-step cosine decay to ``min_lr_ratio * lr``."""

    epochs: int = 500
    batch_size: int = 512
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_epochs: int = 10
    min_lr_ratio: float = 1e-3
    seed: int = 0
    drop_last: bool = False

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_positive_int("warmup_epochs", self.warmup_epochs, 0)
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)


def palm_lr(step: int, steps_per_epoch: int, cfg: PALMConfig) -> float:
    """``adjust_learning_rate`` of the official code: linear warm-up from 0, then cosine to ``min_lr_ratio * lr``."""
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * step / warm
    q = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return cfg.lr * q + cfg.lr * cfg.min_lr_ratio * (1 - q)


def train_palm(
    net: PALMNet,
    loss: PALMLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    config: PALMConfig | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """Train ``net`` with PALM on ``(x, y)``; returns one record per epoch (mean ``mle``, ``pcon``, ``loss``).

    ``augment(x, generator)`` makes one view (two per sample per step); it is drawn for the whole *global*
    batch from a generator seeded by ``(seed, step)``, then each rank takes its rows, so under ``torchrun`` (or
    :func:`priorkit.train.distributed.run_gloo`) the run equals the single-process one. ``config.batch_size``
    is the global batch. The encoder is wrapped in DDP when a process group is initialised.
    """
    cfg = config or PALMConfig()
    check_shape("y", y, [len(x)])
    aug = augment if augment is not None else (lambda t, g: t)
    world, rank = D.world_size(), D.rank()
    # find_unused_parameters: a priorkit backbone's own classifier head is not used by ``features``
    model: nn.Module = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True) if D.is_dist() else net
    opt = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
    )
    sampler = D.ShardedBatchSampler(
        len(x), cfg.batch_size, drop_last=cfg.drop_last, seed=cfg.seed, rank=0, world_size=1
    )
    spe = len(sampler)
    history, step = [], 0
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        net.train()
        sums = {"mle": 0.0, "pcon": 0.0}
        nb = 0
        for glob in sampler:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            xb = x[glob]
            v1, v2 = aug(xb, g), aug(xb, g)
            per = -(-len(glob) // world)
            mine = slice(rank * per, (rank + 1) * per)
            yb = y[glob][mine]
            for grp in opt.param_groups:
                grp["lr"] = palm_lr(step, spe, cfg)
            z = model(torch.cat([v1[mine], v2[mine]]))
            terms = loss(z, yb.repeat(2))
            total = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            for k_, v in terms.items():
                sums[k_] += float(v.detach())
            nb += 1
            step += 1
        rec = {"epoch": float(epoch), **{k_: v / max(nb, 1) for k_, v in sums.items()}}
        rec["loss"] = rec["mle"] + rec["pcon"]
        history.append(rec)
    return history


@torch.no_grad()
def embed(net: PALMNet, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Encoder features of ``x`` in eval mode (what the OOD scores use)."""
    net.eval()
    return torch.cat([net.embed(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])
