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
Prediction is ``argmax`` of the prototype logits (no k-means). Reported: state of the art on CIFAR-10/100,
ImageNet-100 and the SSB benchmarks with a smaller Old/New gap than SimGCD; MSP of the prototype logits also
works as an OOD score.

Functional core: :func:`ratio_schedule`, :func:`dapl_targets`, :func:`dapl_loss`, :func:`entropy_regularization`,
:func:`prototype_separation`, :func:`info_nce`, :func:`supcon`, :func:`protogcd_loss`, :func:`ood_score`.
Wrappers: :class:`ProtoGCDHead` / :class:`ProtoGCD` (backbone + head) and :func:`train_protogcd` (two views,
the balanced labelled/unlabelled sampler, SGD with cosine decay, no weight decay on biases and 1-D parameters).
Metrics: :func:`priorkit.metrics.clustering.split_cluster_acc` (All / Old / New, one Hungarian match).

ProtoGCD holds no state across steps (no EMA teacher, no queue), so nothing needs gathering for correctness of
a memory; but its batch-level terms (the DAPL confidence ranking, the mean prediction of ``L_ent``, the InfoNCE
negatives) are defined over the whole batch, and the official code runs on one GPU. :func:`train_protogcd`
therefore refuses to run inside a process group rather than silently computing them per rank.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range, check_shape
from priorkit.train import distributed as D

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


def info_nce(features: torch.Tensor, n_views: int = 2, temperature: float = 1.0) -> torch.Tensor:
    """SimCLR's InfoNCE on L2-normalised features (view-major): each row's positive is the same sample in the
    other view(s), negatives every other row (self excluded); cross-entropy, mean over rows."""
    check_positive_int("n_views", n_views, 2)
    n = len(features)
    if n % n_views:
        raise PriorkitError(f"features has {n} rows, not a multiple of n_views ({n_views})")
    f = F.normalize(features, dim=1)
    ids = torch.arange(n // n_views, device=f.device).repeat(n_views)
    sim = f @ f.T / temperature
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    pos = (ids[:, None] == ids[None, :]) & ~eye
    logsm = sim.masked_fill(eye, float("-inf")).log_softmax(dim=1)
    # one positive per row when n_views == 2 (the official code's layout); otherwise each positive is a CE term
    return -(logsm.masked_fill(~pos, 0.0).sum(1) / pos.sum(1)).mean()


def supcon(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07, base_temperature: float = 0.07
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020) on ``features`` [B, V, d] (normalised inside)."""
    if features.dim() != 3:
        raise PriorkitError(f"features must be [B, n_views, d], got {list(features.shape)}")
    check_shape("labels", labels, [features.shape[0]])
    b, v, _ = features.shape
    f = F.normalize(torch.cat(features.unbind(1)), dim=1)
    lab = labels.repeat(v)
    s = f @ f.T / temperature
    s = s - s.max(1, keepdim=True).values.detach()
    eye = torch.eye(b * v, dtype=torch.bool, device=f.device)
    pos = (lab[:, None] == lab[None, :]) & ~eye
    log_prob = s - torch.log((torch.exp(s) * (~eye)).sum(1, keepdim=True))
    mean_pos = (log_prob * pos).sum(1) / pos.sum(1).clamp_min(1)
    return -(temperature / base_temperature) * mean_pos.mean()


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
        terms["sup"] = lam * supcon(views, labels[labelled], tau_sup)
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
@dataclass
class ProtoGCDConfig:
    """Card defaults (CIFAR-100 commands): 200 epochs, batch 128, SGD lr 0.1 momentum 0.9 wd 5e-5, cosine to
    ``lr * 1e-3``; tau 0.1, tau_t 0.05, ratio ramp 0 -> 1 over 100 epochs; lam 0.35, w_ent 2, w_sep 0.1."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    tau: float = 0.1
    tau_t: float = 0.05
    r0: float = 0.0
    r1: float = 1.0
    ramp: int = 100
    wait: int = 0
    lam: float = 0.35
    w_ent: float = 2.0
    w_sep: float = 0.1
    tau_unsup: float = 1.0
    tau_sup: float = 0.07
    objective: str = "protogcd"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size, 2)
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_range("r0", self.r0, 0.0, 1.0)
        check_range("r1", self.r1, 0.0, 1.0)
        check_range("lam", self.lam, 0.0, 1.0)
        check_range("w_ent", self.w_ent, 0.0)
        check_range("w_sep", self.w_sep, 0.0)
        check_choice("objective", self.objective, OBJECTIVES)
        ratio_schedule(0, self.epochs, self.r0, self.r1, self.ramp, self.wait)  # validates the schedule's cover


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


def train_protogcd(
    model: ProtoGCD,
    x: torch.Tensor,
    y: torch.Tensor,
    labelled: torch.Tensor,
    config: ProtoGCDConfig | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on all training samples ``x`` (labels ``y`` used only where ``labelled``); two views of each
    batch from ``augment(x, generator)``; batches from :func:`balanced_indices`, ``drop_last`` as the official
    loader. Returns one record per epoch (mean of each weighted term, ``loss``, ``ratio``)."""
    if D.is_dist():
        raise PriorkitError(
            "train_protogcd runs on one process: its batch-level terms (DAPL ranking, mean-prediction entropy, "
            "InfoNCE negatives) would silently become per-rank under DDP"
        )
    cfg = config or ProtoGCDConfig()
    check_shape("y", y, [len(x)])
    check_shape("labelled", labelled, [len(x)])
    aug = augment if augment is not None else (lambda t, g: t)
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * 1e-3)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = len(x) // cfg.batch_size
    if steps == 0:
        raise PriorkitError(f"batch_size ({cfg.batch_size}) is larger than the training set ({len(x)})")
    history = []
    for epoch in range(cfg.epochs):
        ratio = ratio_schedule(epoch, cfg.epochs, cfg.r0, cfg.r1, cfg.ramp, cfg.wait)
        order = balanced_indices(labelled, gen)
        model.train()
        sums: dict[str, float] = {}
        for s in range(steps):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            xb = x[idx]
            proj, logits, protos = model(torch.cat([aug(xb, gen), aug(xb, gen)]))
            terms = protogcd_loss(
                proj, logits, protos, y[idx], labelled[idx], ratio=ratio, tau=cfg.tau, tau_t=cfg.tau_t,
                lam=cfg.lam, w_ent=cfg.w_ent, w_sep=cfg.w_sep, tau_unsup=cfg.tau_unsup, tau_sup=cfg.tau_sup,
                objective=cfg.objective,
            )  # fmt: skip
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite ProtoGCD loss at epoch {epoch}: {terms}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / steps
        sched.step()
        history.append({"epoch": float(epoch), "ratio": ratio, **sums, "loss": sum(sums.values())})
    return history
