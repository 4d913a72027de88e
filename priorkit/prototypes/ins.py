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
confidence is reset to [1, 0] after each update. Bag score = mean (or max) of the instance p(pos). Reported
effect: higher instance AUC than pseudo-labelling MIL and attention MIL on CIFAR-10-MIL, CAMELYON16, TCGA
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
    from priorkit.prototypes.ins import INS, INSConfig, INSTrainer, evaluate, mlp_encoder

    data = mil_gaussian(num_bags=(20, 20), bag_size=10, dim=8, seed=0)
    model = INS(mlp_encoder(8, 32), feature_dim=32, low_dim=16, queue_size=64)
    trainer = INSTrainer(model, data.train, INSConfig(epochs=3, batch_size=32, prot_start=1, seed=0))
    history = trainer.fit()                  # one dict per epoch: cls, cont, bag, phi
    scores = model.instance_scores(data.test.x)   # p(pos) per instance
    print(evaluate(model, data.test))        # {'instance_auc': ..., 'bag_auc': ...}
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    PriorkitError,
    check_choice,
    check_finite_losses,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.seeding import rng_state, seed_everything, set_rng_state
from priorkit.data.mil import MILBags
from priorkit.metrics.mil import AGGREGATORS, bag_scores, mil_metrics
from priorkit.nn.memory import PerSampleMemory
from priorkit.train import distributed as D
from priorkit.train.checkpoint import load_checkpoint, save_checkpoint

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


def supcon_loss(
    features: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
) -> torch.Tensor:
    """SupCon over the first ``batch_size`` rows (anchors) against all rows of ``features``.

    ``mask[i, j] = 1`` when row ``j`` is a positive of anchor ``i``; self (column ``i``) is excluded. Every
    anchor must keep at least one positive (its own key guarantees it in INS).
    """
    check_shape("features", features, [None, None])
    check_shape("mask", mask, [batch_size, features.shape[0]])
    logits = features[:batch_size] @ features.t() / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = torch.ones_like(logits)
    not_self[torch.arange(batch_size), torch.arange(batch_size)] = 0.0
    pos = mask.float().detach() * not_self
    npos = pos.sum(1)
    if bool((npos == 0).any()):
        raise PriorkitError("every anchor needs at least one positive besides itself (check the mask)")
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True) + 1e-12)
    mean_log_prob_pos = (pos * log_prob).sum(1) / npos
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """MoCo InfoNCE (warm-up): the key of the same instance is the positive, the queue the negatives."""
    check_shape("k", k, list(q.shape))
    check_shape("queue", queue, [None, q.shape[1]])
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


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


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of equal-sized rank blocks whose backward sums the gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        ctx.n, ctx.start = t.shape[0], D.rank() * t.shape[0]
        return D.all_gather_cat(t.contiguous())

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        g = g.contiguous().clone()
        dist.all_reduce(g)
        return g[ctx.start : ctx.start + ctx.n]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(t) if D.is_dist() else t


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        check_shape("candidates", candidates, [x_w.shape[0], 2])
        if x_s.shape != x_w.shape:
            raise PriorkitError(f"x_s must have the shape of x_w {list(x_w.shape)}, got {list(x_s.shape)}")
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
        q_glob = gather_with_grad(q)
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
# Training (the official two-phase schedule)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class INSConfig:
    """INS schedule and losses; defaults are the CAMELYON16 ones (``prot_start=1``, 40 epochs, batch 64,
    SGD lr 0.01 constant, momentum 0.9, wd 1e-3, loss_weight 0.5, w_l 0.5, phi 0.95 -> 0.8).

    ``bag_constraint_epochs=None`` runs the bag step in the warm-up epochs only, as in the code. ``bag_batch`` bags
    per bag step (the code: 1; under DDP it must be a multiple of the world size). ``batch_size`` is global.
    """

    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-3
    prot_start: int = 1
    phi_range: tuple[float, float] = (0.95, 0.8)
    loss_weight: float = 0.5
    w_l: float = 0.5
    bag_head: str = "mean_prob"
    aggregator: str = "mean"
    bag_constraint_epochs: tuple[int, ...] | None = None
    bag_batch: int = 1
    seed: int = 0
    ckpt_dir: str | None = None
    stop_after_epoch: int | None = None

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_positive_int("prot_start", self.prot_start, 0)
        check_range("loss_weight", self.loss_weight, 0.0)
        check_range("w_l", self.w_l, 0.0)
        check_choice("bag_head", self.bag_head, BAG_HEADS)
        check_choice("aggregator", self.aggregator, AGGREGATORS)
        check_positive_int("bag_batch", self.bag_batch)
        if len(self.phi_range) != 2:
            raise PriorkitError(f"phi_range must be (start, end), got {self.phi_range!r}")
        for v in self.phi_range:
            check_range("phi_range", v, 0.0, 1.0)

    def bag_epochs(self) -> set[int]:
        if self.bag_constraint_epochs is None:
            return set(range(min(self.prot_start, self.epochs)))
        return {int(e) for e in self.bag_constraint_epochs}


Views = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _sync_grads(params: Sequence[nn.Parameter]) -> None:
    if not D.is_dist():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(D.world_size())


class INSTrainer:
    """Warm-up (``epoch < prot_start``): classifier on the bag label copied to each instance + 0.5 MoCo InfoNCE,
    then the bag-constraint pass; main phase: partial loss on the prototype-refined confidences + 0.5 SupCon.

    Runs under ``torchrun``/gloo (gradients averaged across ranks; queue, prototypes and confidences from
    gathered tensors); ``state_dict`` holds the model (queues, prototypes, key encoder), the optimizer, the
    confidence table and the epoch, and ``fit(resume=True)`` continues from ``ckpt_dir``.
    """

    def __init__(self, model: INS, bags: MILBags, config: INSConfig | None = None, views: Views = noise_views) -> None:
        self.cfg = config or INSConfig()
        if not isinstance(bags, MILBags):
            raise PriorkitError(f"bags must be a priorkit.data.mil.MILBags, got {type(bags).__name__}")
        if model.queue_size % self.cfg.batch_size:
            raise PriorkitError(
                f"queue_size ({model.queue_size}) must be a multiple of batch_size ({self.cfg.batch_size})"
            )
        if self.cfg.batch_size % D.world_size() or self.cfg.bag_batch % D.world_size():
            raise PriorkitError(
                f"batch_size ({self.cfg.batch_size}) and bag_batch ({self.cfg.bag_batch}) must be divisible by "
                f"the world size ({D.world_size()})"
            )
        if len(bags.x) < self.cfg.batch_size:
            raise PriorkitError(f"batch_size ({self.cfg.batch_size}) exceeds the number of instances ({len(bags.x)})")
        self.model, self.bags, self.views = model, bags, views
        self.candidates = candidate_sets(bags.instance_bag_y)
        self.warmup = warmup_targets(bags.instance_bag_y)
        self.confidence = PerSampleMemory(len(bags.x), 2)
        self.confidence.table.copy_(uniform_confidence(self.candidates))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            self.params,
            lr=self.cfg.lr,
            momentum=self.cfg.momentum,
            weight_decay=self.cfg.weight_decay,
        )
        self.sampler = D.ShardedBatchSampler(len(bags.x), self.cfg.batch_size, drop_last=True, seed=self.cfg.seed)
        self.bag_sampler = D.ShardedBatchSampler(
            bags.num_bags, self.cfg.bag_batch, drop_last=True, seed=self.cfg.seed + 1
        )
        self.epoch, self.history = 0, []

    # -- one phase ---------------------------------------------------------------------------------------------
    def _generator(self, epoch: int, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.cfg.seed * 1_000_003 + epoch) * 100_003 + step) % (2**63))

    def instance_epoch(self, epoch: int) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        main = epoch >= cfg.prot_start
        phi = phi_at(epoch, cfg.epochs, cfg.phi_range)
        self.sampler.set_epoch(epoch)
        model.train()
        sums = {"cls": 0.0, "cont": 0.0}
        steps = 0
        for step, local in enumerate(self.sampler):
            idx = torch.as_tensor(local, dtype=torch.long)
            x = self.bags.x[idx]
            glob = (len(x) * D.world_size(), *x.shape[1:])
            noise_src = torch.zeros(glob, dtype=x.dtype)
            start = D.rank() * len(x)
            noise_src[start : start + len(x)] = x
            x_w, x_s = self.views(noise_src, self._generator(epoch, step))
            x_w, x_s = x_w[start : start + len(x)], x_s[start : start + len(x)]
            cand = self.candidates[idx]
            out = model.step(x_w, x_s, cand)
            b = len(idx)
            if main:
                conf = confidence_update(self.confidence.read(idx), out["score_prot"], cand, phi)
                self.confidence.write(idx, conf)
                mask = pseudo_label_mask(out["pseudo_labels"], b)
                cont = supcon_loss(out["features"], mask, b, model.temperature)
                cls = partial_loss(out["logits"], conf)
            else:
                queue_start = out["features"].shape[0] - model.queue_size
                # the queue *before* this step's enqueue sits at the end of the contrast set
                cont = moco_loss(out["q"], out["k"], out["features"][queue_start:].detach(), model.temperature)
                cls = partial_loss(out["logits"], self.warmup[idx])
            check_finite_losses({"cls": cls, "cont": cont}, step)
            loss = cls + cfg.loss_weight * cont
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _sync_grads(self.params)
            self.optimizer.step()
            sums["cls"] += float(D.all_reduce_mean(cls.detach()))
            sums["cont"] += float(D.all_reduce_mean(cont.detach()))
            steps += 1
        return {k: v / max(steps, 1) for k, v in sums.items()} | {"phi": phi if main else float("nan")}

    def bag_epoch(self, epoch: int) -> float:
        cfg, model = self.cfg, self.model
        self.bag_sampler.set_epoch(epoch)
        model.train()
        total, steps = 0.0, 0
        for local in self.bag_sampler:
            parts, ys = [], []
            for b in local:
                xb, _ = self.bags.bag(b)
                ys.append(self.bags.bag_y[b])
                if cfg.bag_head == "mean_prob":
                    parts.append(model.encoder_q(xb)[0])
                else:
                    parts.append(model.encoder_q.features(xb))
            kw = {"logits": parts} if cfg.bag_head == "mean_prob" else {"features": parts}
            loss = cfg.w_l * bag_constraint_loss(torch.stack(ys), head=cfg.bag_head, aggregator=cfg.aggregator, **kw)
            check_finite_losses({"bag": loss}, steps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _sync_grads(self.params)
            self.optimizer.step()
            total += float(D.all_reduce_mean(loss.detach()))
            steps += 1
        return total / max(steps, 1)

    # -- loop, checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "confidence": self.confidence.state_dict(),
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
            "config": {
                k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in ("ckpt_dir", "stop_after_epoch")
            },
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in ("ckpt_dir", "stop_after_epoch")}
        theirs = state.get("config", {})
        diff = sorted(k for k in mine if k in theirs and _norm(theirs[k]) != _norm(mine[k]))
        if diff:
            raise PriorkitError(f"checkpoint was written with a different INSConfig: {', '.join(diff)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.confidence.load_state_dict(state["confidence"])
        self.epoch, self.history = int(state["epoch"]), [dict(h) for h in state["history"]]
        set_rng_state(state["rng"])

    def checkpoint_path(self) -> Path | None:
        return Path(self.cfg.ckpt_dir) / "ins_last.pt" if self.cfg.ckpt_dir else None

    def fit(self, resume: bool = False) -> list[dict[str, float]]:
        """Train from ``self.epoch`` to ``cfg.epochs``; one history dict per epoch (cls, cont, bag, phi)."""
        path = self.checkpoint_path()
        if resume:
            if path is None or not path.is_file():
                raise PriorkitError("resume=True needs an existing checkpoint in config.ckpt_dir")
            self.load_state_dict(load_checkpoint(path))
        elif self.epoch == 0:
            seed_everything(self.cfg.seed)
        bag_epochs = self.cfg.bag_epochs()
        while self.epoch < self.cfg.epochs:
            e = self.epoch
            rec = {"epoch": float(e)} | self.instance_epoch(e)
            rec["bag"] = self.bag_epoch(e) if e in bag_epochs else float("nan")
            self.history.append(rec)
            self.epoch = e + 1
            if path is not None and D.rank() == 0:
                save_checkpoint(path, self.state_dict())
            if self.cfg.stop_after_epoch is not None and e >= self.cfg.stop_after_epoch:
                break
        return self.history


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple | list) else v


@torch.no_grad()
def evaluate(model: nn.Module, bags: MILBags, aggregator: str = "mean") -> dict[str, float]:
    """Instance AUC of p(pos) and bag AUC of its per-bag ``mean`` or ``max``."""
    scores = model.instance_scores(bags.x) if isinstance(model, INS) else torch.softmax(model(bags.x), 1)[:, POS]
    return mil_metrics(scores, bags.instance_y, bags.offsets, bags.bag_y, aggregator)


def bag_predictions(model: INS, bags: MILBags, aggregator: str = "mean") -> torch.Tensor:
    """Bag scores: ``aggregator`` of the instance p(pos) over each bag."""
    return bag_scores(model.instance_scores(bags.x), bags.offsets, aggregator)
