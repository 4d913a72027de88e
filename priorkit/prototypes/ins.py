"""Rethinking Multiple Instance Learning for Whole Slide Image Classification: A Good Instance Classifier is All
You Need (INS), Qu et al., IEEE TCSVT 2024 (arXiv 2307.02249).

INS trains an instance classifier from bag labels alone, treating MIL as partial-label learning in the style
of PiCO. Every instance of a negative bag has the candidate set {neg}; every instance of a positive bag has
{neg, pos}. A per-instance confidence vector (the soft target of the classifier) starts uniform over the
candidates and is pulled, by an EMA with weight phi (0.95 -> 0.8 linearly over the epochs), towards the
one-hot label of the nearest class prototype; the two prototypes are EMAs (proto_m = 0.9) of the normalised
projections of the instances that the classifier assigns to each class. A MoCo momentum encoder
(moco_m = 0.999) with a queue of keys and pseudo-scores gives a supervised contrastive loss (SupCon,
tau = 0.07) whose positives share the classifier's candidate-masked pseudo-label. Before the prototype phase
(``prot_start``) the classifier trains on the bag label copied to each instance, with plain MoCo InfoNCE, and
a bag-constraint step (one bag per step, weight w_l = 0.5) runs after each instance epoch. A negative-bag
instance can never be labelled positive: the candidate mask is applied before every argmax and its
confidence is reset to [1, 0] after each update. Bag score = mean (or max) of the instance p(pos). The paper
reports: higher instance AUC than pseudo-labelling MIL and attention MIL on CIFAR-10-MIL, CAMELYON16, TCGA
lung and a cervical-cancer set, with competitive or better bag AUC.

Official code: miccaiif/INS (``model.py::INS.forward``, ``utils/utils_loss.py::partial_loss, SupConLoss``,
``train_withbag_cam.py::train, train_bag, main_worker``); checked against it for the losses, the step order
(classifier pseudo-label -> prototype scores with the prototypes *before* this step's EMA -> prototype EMA ->
key-encoder EMA -> keys -> enqueue -> confidence update -> loss on the updated confidences) and the defaults.
Differences, all documented and configurable where they matter:

- ``phi`` at epoch ``e`` is ``start + (end - start) * e / epochs`` (:func:`phi_at`); the official loop sets it
  after each epoch, so its epoch ``e`` uses the value of ``e - 1`` (a one-epoch lag).
- Bag constraint: the default ``bag_head="mean_prob"`` (an assumption marked in the card) scores a bag by the
  mean (or max, ``aggregator``) of its instances' p(pos) and uses BCE. ``bag_head="official"`` reproduces the
  code: softmax of the mean-pooled encoder feature, then cross-entropy against the bag label, so feature
  dimensions 0 and 1 act as bag logits.
- The queue keys start as random unit rows (the code normalises the random queue along the wrong axis), the
  queued pseudo-scores start random as in the code; no shuffle-BN (the small encoders here have no BatchNorm).
- Under DDP the contrast set holds the queries and keys of the *global* batch (the code uses the local ones),
  so a W-process run equals a 1-process run with the same global batch; queue, prototypes and confidences are
  written from gathered tensors in global-batch order.
- The prototype EMA is applied per sample in batch order, as in the code, but computed in closed form
  (:func:`prototype_ema`, equal to the loop :func:`prototype_ema_sequential`).
- Augmentations (weak view for the classifier, strong view for the keys) are not part of the card for vector
  data: :func:`noise_views` (Gaussian noise, plus feature dropout for the strong view) is an assumption;
  pass your own ``views``.

No library implements INS or PiCO's partial-label disambiguation (PiCO's repo is research code); the
confidence table reuses priorkit's :class:`~priorkit.nn.memory.PerSampleMemory`, AUCs come from
scikit-learn (:mod:`priorkit.metrics.mil`).

Example::

    from priorkit.data.mil import mil_gaussian
    from priorkit.prototypes.ins import INS, INSHook, evaluate, mlp_encoder
    from priorkit.train import TrainConfig, fit

    data = mil_gaussian(num_bags=(20, 20), bag_size=10, dim=8, seed=0)
    model = INS(mlp_encoder(8, 32), feature_dim=32, low_dim=16, queue_size=64)
    hook = INSHook(data.train, epochs=3, prot_start=1)
    history = fit(model, None, hook.recipe(), hooks=[hook], config=TrainConfig(batch_size=32, seed=0))
    scores = model.instance_scores(data.test.x)   # p(pos) per instance
    print(evaluate(model, data.test))        # {'instance_auc': ..., 'bag_auc': ...}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    NonFiniteError,
    PriorkitError,
    check_choice,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.mil import MILBags
from priorkit.metrics.mil import AGGREGATORS, bag_scores, mil_metrics
from priorkit.nn import distributed as D
from priorkit.nn.contrastive import moco_info_nce as moco_loss
from priorkit.nn.contrastive import supcon_loss
from priorkit.nn.memory import PerSampleMemory
from priorkit.nn.views import global_views
from priorkit.train.engine import RunState, shuffled_batches
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import Phase, Recipe

__all__ = [
    "INS",
    "SPEC",
    "INSHook",
    "INSNet",
    "bag_constraint_loss",
    "bag_predictions",
    "candidate_sets",
    "confidence_update",
    "evaluate",
    "masked_pseudo_labels",
    "mlp_encoder",
    "moco_loss",
    "noise_views",
    "partial_loss",
    "phi_at",
    "prototype_ema",
    "prototype_ema_sequential",
    "prototype_scores",
    "pseudo_label_mask",
    "supcon_loss",
    "uniform_confidence",
    "warmup_targets",
]

_PAPER = {
    "epochs": 40, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3, "prot_start": 1, "phi_range": (0.95, 0.8),
    "loss_weight": 0.5, "w_l": 0.5, "bag_head": "mean_prob", "aggregator": "mean", "bag_batch": 1,
}  # fmt: skip
SPEC = MethodSpec(
    status="implemented",
    entry="INSHook",
    missing="WSI tiling/feature caching and the DSMIL/attention teacher heads not built; stand-ins: a from-scratch "
    "MLP encoder for the ImageNet-pretrained ResNet-18, noise views for the image augmentations (assumption)",
    presets={"paper": _PAPER, "small": {**_PAPER, "prot_start": 5}},
)

BAG_HEADS = ("mean_prob", "official")
NEG, POS = 0, 1

# --------------------------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------------------------


def _check_bag_labels(name: str, y: torch.Tensor) -> torch.Tensor:
    check_shape(name, y, [None])
    if len(y) and not bool(((y == 0) | (y == 1)).all()):
        raise PriorkitError(f"{name} must hold 0/1 bag labels, got values {sorted(set(y.tolist()))}")
    return y.long()


def candidate_sets(instance_bag_y: torch.Tensor) -> torch.Tensor:
    """Candidate label sets ``[N, 2]``: ``[1, 0]`` for instances of negative bags, ``[1, 1]`` for positive bags."""
    y = _check_bag_labels("instance_bag_y", instance_bag_y)
    cand = torch.ones(len(y), 2)
    cand[y == 0, POS] = 0.0
    return cand


def uniform_confidence(candidates: torch.Tensor) -> torch.Tensor:
    """Initial confidences: uniform over each candidate set (``[1, 0]`` and ``[0.5, 0.5]``)."""
    check_shape("candidates", candidates, [None, None])
    if bool((candidates.sum(1) <= 0).any()):
        raise PriorkitError("every candidate set must be non-empty (a row of candidates sums to 0)")
    return candidates / candidates.sum(1, keepdim=True)


def warmup_targets(instance_bag_y: torch.Tensor) -> torch.Tensor:
    """Warm-up classifier targets (the code's ``confidence_pos``; card assumption): the bag label, one-hot."""
    return F.one_hot(_check_bag_labels("instance_bag_y", instance_bag_y), 2).float()


def masked_pseudo_labels(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``argmax(scores * candidates)``: the candidate mask applied before the argmax (never pos in a neg bag)."""
    check_shape("candidates", candidates, list(scores.shape))
    return (scores * candidates).argmax(dim=1)


def phi_at(epoch: int, epochs: int, phi_range: tuple[float, float] = (0.95, 0.8)) -> float:
    """Confidence EMA weight at 0-based ``epoch``: linear from ``phi_range[0]`` (epoch 0) towards ``phi_range[1]``."""
    check_positive_int("epochs", epochs)
    if not 0 <= epoch < epochs:
        raise PriorkitError(f"epoch must be in [0, {epochs - 1}], got {epoch}")
    start, end = phi_range
    check_range("phi_range[0]", start, 0.0, 1.0)
    check_range("phi_range[1]", end, 0.0, 1.0)
    return start + (end - start) * epoch / epochs


def _check_proto_args(prototypes: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, m: float) -> None:
    check_shape("prototypes", prototypes, [None, None])
    check_shape("feats", feats, [None, prototypes.shape[1]])
    check_shape("labels", labels, [feats.shape[0]])
    check_range("proto_m", m, 0.0, 1.0)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= prototypes.shape[0]):
        raise PriorkitError(f"labels must lie in [0, {prototypes.shape[0] - 1}]")


def prototype_ema_sequential(
    prototypes: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, m: float = 0.9
) -> torch.Tensor:
    """The official loop: for each sample in order ``c_y <- m c_y + (1 - m) q``; then L2-normalise every row."""
    _check_proto_args(prototypes, feats, labels, m)
    out = prototypes.clone()
    for q, y in zip(feats, labels.tolist()):
        out[y] = m * out[y] + (1.0 - m) * q
    return F.normalize(out, p=2, dim=1)


def prototype_ema(prototypes: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, m: float = 0.9) -> torch.Tensor:
    """The same sequential EMA in closed form: with ``n_c`` samples of class ``c`` (the ``j``-th at 0-based rank
    ``r_j`` among them), ``c <- m^{n_c} c + (1 - m) sum_j m^{n_c - 1 - r_j} q_j``; then L2-normalise every row."""
    _check_proto_args(prototypes, feats, labels, m)
    k = prototypes.shape[0]
    onehot = F.one_hot(labels.long(), k).to(feats.dtype)  # [B, K]
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # 0-based rank of each sample within its class
    count = onehot.sum(0)  # [K]
    w = (1.0 - m) * torch.pow(torch.tensor(m, dtype=feats.dtype), count[labels] - 1 - rank)
    decay = torch.pow(torch.tensor(m, dtype=feats.dtype), count).unsqueeze(1)
    out = decay * prototypes + torch.zeros_like(prototypes).index_add_(0, labels.long(), w.unsqueeze(1) * feats)
    return F.normalize(out, p=2, dim=1)


def prototype_scores(q: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``softmax(q C^T)`` over classes, no temperature (the code's ``score_prot``)."""
    check_shape("prototypes", prototypes, [None, q.shape[-1]])
    return torch.softmax(q @ prototypes.t(), dim=1)


def confidence_update(
    confidence: torch.Tensor, proto_scores: torch.Tensor, candidates: torch.Tensor, phi: float
) -> torch.Tensor:
    """``conf <- phi conf + (1 - phi) onehot(argmax(s * Y))``, then instances of negative bags reset to ``[1, 0]``.

    Rows stay on the simplex with support inside the candidate set (the target is a candidate, the old row
    already was).
    """
    check_shape("proto_scores", proto_scores, list(confidence.shape))
    check_shape("candidates", candidates, list(confidence.shape))
    check_range("phi", phi, 0.0, 1.0)
    target = F.one_hot(masked_pseudo_labels(proto_scores, candidates), confidence.shape[1]).to(confidence.dtype)
    out = phi * confidence + (1.0 - phi) * target
    neg = candidates[:, POS] == 0
    out[neg] = F.one_hot(torch.tensor(NEG), confidence.shape[1]).to(out.dtype)
    return out


def partial_loss(logits: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """``-mean_i sum_c conf_ic log p_ic`` (the code's ``partial_loss``; the warm-up uses the same form)."""
    check_shape("confidence", confidence, list(logits.shape))
    return -(F.log_softmax(logits, dim=1) * confidence).sum(dim=1).mean()


def pseudo_label_mask(pseudo_labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[batch_size, N]`` positives mask: entries sharing the anchor's pseudo-label."""
    check_shape("pseudo_labels", pseudo_labels, [None])
    return (pseudo_labels[:batch_size, None] == pseudo_labels[None, :]).float()


def bag_constraint_loss(
    bag_y: torch.Tensor,
    *,
    logits: Sequence[torch.Tensor] | None = None,
    features: Sequence[torch.Tensor] | None = None,
    head: str = "mean_prob",
    aggregator: str = "mean",
) -> torch.Tensor:
    """Mean over bags of the bag-constraint loss.

    ``head="mean_prob"`` (priorkit default, assumption): bag score = ``aggregator`` of the instances' p(pos)
    from ``logits`` (one ``[n_b, 2]`` tensor per bag), BCE against the bag label. ``head="official"``:
    ``CE(softmax(mean of features), bag label)`` on the encoder ``features`` (one ``[n_b, D]`` per bag, D >= 2).
    """
    check_choice("bag_head", head, BAG_HEADS)
    check_choice("aggregator", aggregator, AGGREGATORS)
    y = _check_bag_labels("bag_y", bag_y)
    parts = logits if head == "mean_prob" else features
    if parts is None:
        raise PriorkitError(f"bag_head={head!r} needs {'logits' if head == 'mean_prob' else 'features'}")
    if len(parts) != len(y) or len(y) == 0:
        raise PriorkitError(f"need one tensor per bag: got {len(parts)} for {len(y)} bag labels (and at least one)")
    losses = []
    for part, lab in zip(parts, y):
        if part.dim() != 2 or part.shape[0] == 0:
            raise PriorkitError(f"each bag must be a non-empty [n, d] tensor, got {list(part.shape)}")
        if head == "mean_prob":
            p = torch.softmax(part, dim=1)[:, POS]
            s = p.mean() if aggregator == "mean" else p.max()
            losses.append(F.binary_cross_entropy(s.clamp(1e-6, 1 - 1e-6), lab.float()))
        else:
            if part.shape[1] < 2:
                raise PriorkitError("bag_head='official' needs an encoder feature of at least 2 dimensions")
            pred = torch.softmax(part.mean(dim=0, keepdim=True), dim=1)
            losses.append(F.cross_entropy(pred, lab.view(1)))
    return torch.stack(losses).mean()


def noise_views(
    x: torch.Tensor,
    generator: torch.Generator,
    weak_std: float = 0.1,
    strong_std: float = 0.2,
    strong_drop: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weak and strong views of vector or image inputs (assumption, see the module docstring)."""
    weak = x + weak_std * torch.randn(x.shape, generator=generator)
    keep = (torch.rand(x.shape, generator=generator) >= strong_drop).to(x.dtype)
    strong = (x + strong_std * torch.randn(x.shape, generator=generator)) * keep
    return weak, strong


# --------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------


def mlp_encoder(in_features: int, hidden: int = 128) -> nn.Module:
    """The card's small encoder: ``in -> hidden`` with ReLU (inputs flattened)."""
    check_positive_int("in_features", in_features)
    check_positive_int("hidden", hidden)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())


class INSNet(nn.Module):
    """Encoder with a 2-way instance classifier and an L2-normalised projection (the code's ``SupConResNet``)."""

    def __init__(self, encoder: nn.Module, feature_dim: int, low_dim: int = 128, head: str = "mlp") -> None:
        super().__init__()
        check_positive_int("feature_dim", feature_dim)
        check_positive_int("low_dim", low_dim)
        check_choice("head", head, ("mlp", "linear"))
        self.encoder = encoder
        self.fc = nn.Linear(feature_dim, 2)
        if head == "mlp":
            self.head: nn.Module = nn.Sequential(
                nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, low_dim)
            )
        else:
            self.head = nn.Linear(feature_dim, low_dim)
        self.feature_dim, self.low_dim = feature_dim, low_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)
        if f.dim() != 2 or f.shape[1] != self.feature_dim:
            raise PriorkitError(f"encoder must return [batch, {self.feature_dim}] (feature_dim), got {list(f.shape)}")
        return f

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.fc(f), F.normalize(self.head(f), dim=1)


class INS(nn.Module):
    """The INS model: query network, momentum key network, key/pseudo-score/candidate queues, two prototypes.

    ``forward(x)`` returns the instance classifier's logits; :meth:`instance_scores` gives p(pos).
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        *,
        low_dim: int = 128,
        queue_size: int = 8192,
        moco_m: float = 0.999,
        proto_m: float = 0.9,
        temperature: float = 0.07,
        head: str = "mlp",
    ) -> None:
        super().__init__()
        check_positive_int("queue_size", queue_size)
        check_range("moco_m", moco_m, 0.0, 1.0)
        check_range("proto_m", proto_m, 0.0, 1.0)
        check_range("temperature", temperature, 0.0, low_inclusive=False)
        self.encoder_q = INSNet(encoder, feature_dim, low_dim, head)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.moco_m, self.proto_m, self.temperature = moco_m, proto_m, temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, low_dim), dim=1))
        self.register_buffer("queue_pseudo", torch.randn(queue_size, 2))
        self.register_buffer("queue_partial", torch.randn(queue_size, 2))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("prototypes", torch.zeros(2, low_dim))

    @property
    def queue_size(self) -> int:
        return self.queue.shape[0]

    def forward(
        self,
        x: torch.Tensor,
        x_s: torch.Tensor | None = None,
        candidates: torch.Tensor | None = None,
        *,
        features: bool = False,
    ) -> Any:
        """The classifier's logits; ``features=True``: the encoder features; with ``x_s`` and ``candidates``:
        one training step (:meth:`step`), so that DDP sees the training forward through the wrapped module."""
        if x_s is not None:
            if candidates is None:
                raise PriorkitError("candidates are needed with x_s (the training step)")
            return self.step(x, x_s, candidates)
        if features:
            return self.encoder_q.features(x)
        return self.encoder_q(x)[0]

    @torch.no_grad()
    def instance_scores(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """p(pos) of each instance, in eval mode."""
        was = self.training
        self.eval()
        out = torch.cat([torch.softmax(self(x[i : i + batch_size]), 1)[:, POS] for i in range(0, len(x), batch_size)])
        self.train(was)
        return out

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``theta_k <- m theta_k + (1 - m) theta_q``."""
        if not hasattr(self, "_pairs"):
            self._pairs = (list(self.encoder_q.parameters()), list(self.encoder_k.parameters()))
        pq, pk = self._pairs
        torch._foreach_mul_(pk, self.moco_m)
        torch._foreach_add_(pk, [p.detach() for p in pq], alpha=1.0 - self.moco_m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, scores: torch.Tensor, candidates: torch.Tensor) -> None:
        """Write the (already gathered) global batch at the pointer and advance it modulo the queue size."""
        n = keys.shape[0]
        if self.queue_size % n:
            raise PriorkitError(f"queue_size ({self.queue_size}) must be a multiple of the global batch ({n})")
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + n] = keys
        self.queue_pseudo[ptr : ptr + n] = scores
        self.queue_partial[ptr : ptr + n] = candidates
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    def step(self, x_w: torch.Tensor, x_s: torch.Tensor, candidates: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training forward (the code's ``INS.forward``), with the stateful updates in the official order.

        Returns the local ``logits`` and ``q``, the prototype scores ``score_prot`` (prototypes before this
        step's EMA), the contrast ``features`` ``[q_local; q_other_ranks; k_global; queue]`` and their
        ``pseudo_labels`` (candidate-masked argmax), with the local anchors first.
        """
        for name, t in (("x_w", x_w), ("x_s", x_s)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise PriorkitError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t))}")
        check_shape("candidates", candidates, [x_w.shape[0], 2])
        if x_s.shape != x_w.shape:
            raise PriorkitError(f"x_s must have the shape of x_w {list(x_w.shape)}, got {list(x_s.shape)}")
        bad = torch.tensor([float(not bool(torch.isfinite(x_w).all() and torch.isfinite(x_s).all()))])
        if float(D.all_reduce_sum(bad)) > 0:  # every rank refuses together, before any state is written
            raise NonFiniteError("x_w or x_s holds NaN or infinite values (on some rank): the step is refused")
        logits, q = self.encoder_q(x_w)
        with torch.no_grad():
            pred = torch.softmax(logits.detach(), dim=1) * candidates
            pseudo = pred.argmax(dim=1)
            score_prot = prototype_scores(q.detach(), self.prototypes.clone())
            q_all = D.all_gather_cat(q.detach())
            self.prototypes.copy_(prototype_ema(self.prototypes, q_all, D.all_gather_cat(pseudo), self.proto_m))
            self.momentum_update()
            _, k = self.encoder_k(x_s)
            k_all, pred_all, cand_all = (D.all_gather_cat(t) for t in (k, pred, candidates))
            queue, queue_pseudo = self.queue.clone(), self.queue_pseudo.clone()
            self.enqueue(k_all, pred_all, cand_all)
        q_glob = D.gather_with_grad(q)
        b, start = q.shape[0], D.rank() * q.shape[0]
        order = torch.cat(
            [torch.arange(start, start + b), torch.arange(0, start), torch.arange(start + b, len(q_glob))]
        )
        q_first = q_glob[order]
        features = torch.cat([q_first, k_all, queue], dim=0)
        pseudo_scores = torch.cat([pred_all[order], pred_all, queue_pseudo], dim=0)
        return {
            "logits": logits,
            "q": q,
            "k": k,
            "score_prot": score_prot,
            "features": features,
            "pseudo_labels": pseudo_scores.argmax(dim=1),
        }


# --------------------------------------------------------------------------------------------------------------
# The entry: the confidence table and the official two-phase schedule as a recipe
# --------------------------------------------------------------------------------------------------------------

Views = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class INSHook(Hook):
    """INS's per-instance confidence table (checkpointed) and its schedule, :meth:`recipe`, for an :class:`INS`.

    Warm-up (instance epoch ``< prot_start``): the classifier on the bag label copied to each instance +
    ``loss_weight`` x MoCo InfoNCE, then a bag-constraint epoch (``w_l`` x :func:`bag_constraint_loss`, ``bag_batch``
    bags per step); main phase: partial loss on the prototype-refined confidences + ``loss_weight`` x SupCon. One
    SGD (constant lr) across all phases. The queues, prototypes and key encoder are the model's buffers, so the
    engine's checkpoint holds them; the confidence table is this hook's state. The global ``batch_size`` is the
    run config's (the queue size must be a multiple of it; batches drop the last partial one).

    Run: ``fit(model, None, hook.recipe(), hooks=[hook], config=TrainConfig(batch_size=64, seed=0))``. Under DDP
    use ``strategy="ddp_find_unused_parameters_true"`` (the bag step does not use the projection head).
    """

    def __init__(
        self,
        bags: MILBags,
        *,
        epochs: int = 40,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        prot_start: int = 1,
        phi_range: tuple[float, float] = (0.95, 0.8),
        loss_weight: float = 0.5,
        w_l: float = 0.5,
        bag_head: str = "mean_prob",
        aggregator: str = "mean",
        bag_constraint_epochs: Sequence[int] | None = None,
        bag_batch: int = 1,
        views: Views | None = None,
    ) -> None:
        if not isinstance(bags, MILBags):
            raise PriorkitError(f"bags must be a priorkit.data.mil.MILBags, got {type(bags).__name__}")
        check_positive_int("epochs", epochs)
        check_range("lr", lr, 0.0, low_inclusive=False)
        check_range("momentum", momentum, 0.0, 1.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_positive_int("prot_start", prot_start, 0)
        check_range("loss_weight", loss_weight, 0.0)
        check_range("w_l", w_l, 0.0)
        check_choice("bag_head", bag_head, BAG_HEADS)
        check_choice("aggregator", aggregator, AGGREGATORS)
        check_positive_int("bag_batch", bag_batch)
        if len(phi_range) != 2:
            raise PriorkitError(f"phi_range must be (start, end), got {phi_range!r}")
        for v in phi_range:
            check_range("phi_range", v, 0.0, 1.0)
        if views is not None and not callable(views):
            raise PriorkitError(f"views must be a callable (x, generator) -> (weak, strong), got {type(views)}")
        self.bags, self.epochs, self.lr, self.momentum, self.weight_decay = bags, epochs, lr, momentum, weight_decay
        self.prot_start, self.phi_range, self.loss_weight, self.w_l = prot_start, tuple(phi_range), loss_weight, w_l
        self.bag_head, self.aggregator, self.bag_batch = bag_head, aggregator, bag_batch
        self.views = views if views is not None else noise_views
        default = set(range(min(prot_start, epochs)))
        self.bag_epochs = default if bag_constraint_epochs is None else {int(e) for e in bag_constraint_epochs}
        self.candidates = candidate_sets(bags.instance_bag_y)
        self.warmup = warmup_targets(bags.instance_bag_y)
        self.confidence = PerSampleMemory(len(bags.x), 2)
        self.confidence.table.copy_(uniform_confidence(self.candidates))
        self.data = IndexedTensorDataset(bags.x, bags.instance_bag_y.long())

    # -- instance steps ------------------------------------------------------------------------------------------
    @staticmethod
    def _epoch(state: RunState) -> int:
        return int(state.phase.options["first_epoch"]) + state.phase_epoch

    def _instance_plan(self, state: RunState) -> list[list[int]]:
        bs = state.phase.batch_size or state.config.batch_size
        model = state.model
        if bs % state.world_size:
            raise PriorkitError(f"batch_size ({bs}) must be divisible by the world size ({state.world_size})")
        if getattr(model, "queue_size", bs) % bs:
            raise PriorkitError(f"queue_size ({model.queue_size}) must be a multiple of batch_size ({bs})")
        if len(self.data) < bs:
            raise PriorkitError(f"batch_size ({bs}) exceeds the number of instances ({len(self.data)})")
        return shuffled_batches(len(self.data), bs, seed=state.config.seed, epoch=self._epoch(state), drop_last=True)

    def _instance_batch(self, state: RunState, local: torch.Tensor) -> Batch:
        (x_w, x_s), y, index = global_views(state, self.views, 2, pair=True)
        cand = self.candidates[index].to(x_w.device)
        return Batch(x=x_w, y=y, index=index, extras={"x_s": x_s, "candidates": cand})

    @staticmethod
    def _instance_forward(net: nn.Module, batch: Batch) -> Any:
        return net(batch.x, batch.extras["x_s"], batch.extras["candidates"])

    def _instance_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        epoch, out, idx, b = self._epoch(state), batch.output, batch.index, len(batch)
        temp = state.model.temperature
        if epoch >= self.prot_start:
            phi = phi_at(epoch, self.epochs, self.phi_range)
            state.log(phi=phi)
            cand = batch.extras["candidates"]
            conf = confidence_update(self.confidence.read(idx, cand.device), out["score_prot"], cand, phi)
            self.confidence.write(idx, conf)
            cont = supcon_loss(out["features"], pseudo_label_mask(out["pseudo_labels"], b), b, temp)
            cls = partial_loss(out["logits"], conf)
        else:
            queue_start = out["features"].shape[0] - state.model.queue_size
            # the queue *before* this step's enqueue sits at the end of the contrast set
            cont = moco_loss(out["q"], out["k"], out["features"][queue_start:].detach(), temp)
            cls = partial_loss(out["logits"], self.warmup[idx].to(out["logits"].device))
        return {"cls": cls, "cont": self.loss_weight * cont}

    # -- bag steps -----------------------------------------------------------------------------------------------
    def _bag_plan(self, state: RunState) -> list[list[int]]:
        if self.bag_batch % state.world_size:
            raise PriorkitError(f"bag_batch ({self.bag_batch}) must be divisible by the world size "
                                f"({state.world_size})")  # fmt: skip
        epoch = self._epoch(state)
        return shuffled_batches(self.bags.num_bags, self.bag_batch, seed=state.config.seed + 1, epoch=epoch,
                                drop_last=True)  # fmt: skip

    def _bag_batch(self, state: RunState, local: torch.Tensor) -> Batch:
        parts = [self.bags.bag(int(b))[0] for b in local]
        sizes = [len(p) for p in parts]
        x = torch.cat(parts).to(state.device)
        return Batch(x=x, y=self.bags.bag_y[local].to(state.device), index=local, extras={"sizes": sizes})

    def _bag_forward(self, net: nn.Module, batch: Batch) -> Any:
        return net(batch.x, features=self.bag_head == "official")

    def _bag_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        parts = list(batch.output.split(batch.extras["sizes"]))
        kw = {"logits": parts} if self.bag_head == "mean_prob" else {"features": parts}
        return {"bag": self.w_l * bag_constraint_loss(batch.y, head=self.bag_head, aggregator=self.aggregator, **kw)}

    # -- the recipe ----------------------------------------------------------------------------------------------
    def recipe(self) -> Recipe:
        """Instance epochs (grouped into phases) and, after each epoch in the bag-constraint set, one bag epoch;
        one SGD shared by every phase (``optimizer_key="ins"``)."""

        def opt(model: nn.Module) -> torch.optim.Optimizer:
            params = [p for p in model.parameters() if p.requires_grad]
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

        trainable = ["encoder_q"]
        phases: list[Phase] = []
        start = 0
        for e in range(self.epochs):
            if e in self.bag_epochs or e == self.epochs - 1:
                phases.append(Phase(
                    f"instance{start}", epochs=e + 1 - start, trainable=trainable, optimizer=opt, optimizer_key="ins",
                    loss=self._instance_loss, forward=self._instance_forward, data=self.data,
                    batches=self._instance_plan, make_batch=self._instance_batch, options={"first_epoch": start},
                ))  # fmt: skip
                start = e + 1
            if e in self.bag_epochs:
                phases.append(Phase(
                    f"bag{e}", epochs=1, trainable=trainable, optimizer=opt, optimizer_key="ins", loss=self._bag_loss,
                    forward=self._bag_forward, data=self.data, batches=self._bag_plan, make_batch=self._bag_batch,
                    options={"first_epoch": e},
                ))  # fmt: skip
        return Recipe(phases, loss_fn=None)

    # -- checkpoint ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"confidence": self.confidence.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.confidence.load_state_dict(state["confidence"])


@torch.no_grad()
def evaluate(model: nn.Module, bags: MILBags, aggregator: str = "mean") -> dict[str, float]:
    """Instance AUC of p(pos) and bag AUC of its per-bag ``mean`` or ``max``."""
    scores = model.instance_scores(bags.x) if isinstance(model, INS) else torch.softmax(model(bags.x), 1)[:, POS]
    return mil_metrics(scores, bags.instance_y, bags.offsets, bags.bag_y, aggregator)


def bag_predictions(model: INS, bags: MILBags, aggregator: str = "mean") -> torch.Tensor:
    """Bag scores: ``aggregator`` of the instance p(pos) over each bag."""
    return bag_scores(model.instance_scores(bags.x), bags.offsets, aggregator)
