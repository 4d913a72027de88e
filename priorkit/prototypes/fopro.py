"""FoPro: Few-Shot Guided Robust Webly-Supervised Prototypical Learning, Qin et al., AAAI 2023.

Learn from many noisy web samples plus K clean real-world samples per class. A MoCo-style model keeps one
prototype per class on the unit sphere, initialised from the few real shots ("realistic" prototypes) and
polished afterwards by a momentum update from high-quality (kept) samples only. Each step mixes the linear
classifier's prediction with the prototype similarities into a soft target, uses it to drop out-of-distribution
or noisy web samples and relabel confident ones (rule A), and later lets a learnable relation module r([z, c])
(the image-to-prototype metric) make the same decision (rule B / fusion). Losses: soft-label classification,
prototype contrast with a margin on few-shot rows and a per-class density temperature, instance contrast
against a queue of momentum keys, a margin cosine classifier on trusted samples, reconstruction of the feature
from its embedding, and the relation loss. The paper reports: WebFG-496 mean accuracy 87.81 (K=16) vs 66.10 for a
vanilla CE model; WebVision1k -> ImageNet top-1 68.83 vs MoPro 67.80.

Functional core (tensor functions): :func:`init_prototypes`, :func:`prototype_logits`, :func:`soft_targets`,
:func:`clean_rule_a`, :func:`clean_relation`, :func:`clean_fusion`, :func:`dist_sim`,
:func:`ema_prototypes` (the sequential per-sample EMA, vectorised exactly), :func:`density_from_stats`,
:func:`soft_cls_loss`, :func:`instance_logits`, :func:`margin_cosine_logits`, :func:`fopro_lr`.
:func:`fopro_losses` (one step's terms from the forward outputs), :func:`fopro_schedule`. Entry:
:class:`FoPro` (encoder, momentum encoder, heads, and the ``FoProMemory`` buffers: prototypes, visit counts,
distance sums, densities, key queue; written only from finite inputs). Training: ``FoPro.recipe(train, domain)``
is the three-stage schedule of the official scripts as a :class:`~priorkit.train.Recipe` (one phase per epoch)
that :func:`priorkit.train.fit` runs; the engine checkpoints every epoch (the memory is in ``state_dict``), and
under DDP every term is computed on the gathered global batch (2 processes equal 1 process). Presets in
``SPEC``: ``paper`` (the WebFG-496 defaults) and ``small`` (the CPU-scale settings of the experiment).

Official code: yuleiqin/fopro (``model.py::FoPro.forward``, ``train.py``, ``shells/web-bird.sh``), read to check
the losses, phases and stages; this is an independent implementation. Where the card and the code differ, the
code was followed and the choice is noted in the function docstring: (1) stage 1 stops after epoch E_clean and
stage 3 resumes at E_rel+1 (``pre_relation`` returns early), (2) the prototype EMA uses momentum keys of the
*weak* view, applied sample by sample and normalised once per batch, with distances measured to the prototypes
before the batch, (3) L_rec trains g and g' together before the prototypes exist, then g' only. The card was
followed where the code looks unintended: the relation head trains on the kept samples in stage 3 (the code
uses only the relabelled ones) and a class with no visits keeps its density (the code divides by 1e-7).
Libraries considered: lightly / solo-learn give MoCo queues and momentum encoders but not the prototype memory,
cleaning rules or stage schedule, and would add a heavy dependency for a few lines; written here.

Example::

    >>> import torch
    >>> from priorkit.data.webly import make_webly
    >>> from priorkit.models import MLP
    >>> from priorkit.prototypes.fopro import FoPro, FoProConfig
    >>> from priorkit.train import TrainConfig, fit
    >>> data = make_webly("digits", shots=2, web_size=200, test_size=100, seed=0)
    >>> cfg = FoProConfig(epochs=6, init_epoch=1, clean_epoch=2, relation_epoch=3, relation_epochs=1,
    ...                   frozen_epochs=0, warmup_epochs=1, lr=1e-3, low_dim=16, proj_hidden=32, queue_size=64,
    ...                   batch_size=32)
    >>> model = FoPro(MLP(64, (32,), 10), 10, cfg)
    >>> history = fit(model, None, model.recipe(data.train, data.domain), config=TrainConfig(seed=0, progress=False))
    >>> acc = (model.predict(data.test.x).argmax(1) == data.test.y).float().mean().item()
    >>> bool(torch.allclose(model.memory.prototypes.norm(dim=1), torch.ones(10)))
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_batch,
    check_choice,
    check_finite,
    check_labels,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.nn import distributed as D
from priorkit.train import Batch, Phase, Recipe

if TYPE_CHECKING:
    from priorkit.train import RunState

__all__ = [
    "FoPro",
    "FoProConfig",
    "clean_fusion",
    "clean_relation",
    "clean_rule_a",
    "default_strong",
    "default_weak",
    "density_from_stats",
    "dist_sim",
    "ema_prototypes",
    "fopro_losses",
    "fopro_lr",
    "fopro_schedule",
    "init_prototypes",
    "instance_logits",
    "margin_cosine_logits",
    "prototype_logits",
    "soft_cls_loss",
    "soft_targets",
]

CLEANING = ("none", "ruleA", "relation", "fusion")


# ----------------------------------------------------------------------------------------------------------------
# functional core
# ----------------------------------------------------------------------------------------------------------------


def _check_labels(name: str, y: torch.Tensor, n: int, num_classes: int) -> None:
    check_shape(name, y, [n])
    if y.dtype != torch.long:
        raise PriorkitError(f"{name} must be int64 class labels, got {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise PriorkitError(f"{name} must lie in [0, {num_classes - 1}], got [{int(y.min())}, {int(y.max())}]")


def _check_mask(name: str, m: torch.Tensor, n: int) -> None:
    check_shape(name, m, [n])
    if m.dtype != torch.bool:
        raise PriorkitError(f"{name} must be a bool mask, got {m.dtype}")


def init_prototypes(emb: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Realistic prototypes: ``c_y = normalize(mean of emb over class y)`` and the per-class counts.

    A class with no sample gets a zero prototype and count 0 (raise upstream if that is not wanted).
    """
    check_shape("emb", emb, [None, None])
    check_positive_int("num_classes", num_classes)
    _check_labels("y", y, emb.shape[0], num_classes)
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype, device=emb.device).index_add_(0, y, emb)
    counts = torch.bincount(y, minlength=num_classes).to(emb.dtype)
    return F.normalize(sums / (counts.unsqueeze(1) + 1e-6), dim=1), counts


def prototype_logits(
    z: torch.Tensor,
    prototypes: torch.Tensor,
    y: torch.Tensor,
    fewshot: torch.Tensor,
    *,
    margin: float = 0.5,
    temperature: torch.Tensor | float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, raw)``: ``z c_c / t_c`` with ``margin`` subtracted from the true logit of few-shot rows (logits).

    ``temperature`` is a scalar tau or the per-class densities phi ``[C]``; ``raw`` has no margin (and no grad),
    it feeds the soft target.
    """
    check_shape("prototypes", prototypes, [None, z.shape[1]])
    _check_labels("y", y, z.shape[0], prototypes.shape[0])
    _check_mask("fewshot", fewshot, z.shape[0])
    check_range("margin", margin, 0.0)
    t = temperature if isinstance(temperature, torch.Tensor) else torch.tensor(float(temperature))
    if t.dim() == 1:
        check_shape("temperature", t, [prototypes.shape[0]])
    if bool((t <= 0).any()):
        raise PriorkitError("temperature (tau or the densities phi) must be > 0")
    sim = z @ prototypes.t()
    raw = sim.detach() / t
    if margin:
        sub = torch.zeros_like(sim)
        rows = torch.nonzero(fewshot).flatten()
        sub[rows, y[rows]] = margin
        sim = sim - sub
    return sim / t, raw


def soft_targets(
    cls_logits: torch.Tensor, proto_raw: torch.Tensor, y: torch.Tensor, fewshot: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """``s = alpha softmax(h) + (1 - alpha) softmax(proto logits)``; few-shot rows are their one-hot labels."""
    check_range("alpha", alpha, 0.0, 1.0)
    check_shape("proto_raw", proto_raw, list(cls_logits.shape))
    _check_labels("y", y, cls_logits.shape[0], cls_logits.shape[1])
    _check_mask("fewshot", fewshot, cls_logits.shape[0])
    with torch.no_grad():
        s = alpha * F.softmax(cls_logits.detach(), 1) + (1 - alpha) * F.softmax(proto_raw.detach(), 1)
        s[fewshot] = F.one_hot(y[fewshot], cls_logits.shape[1]).to(s.dtype)
    return s


def clean_rule_a(
    soft: torch.Tensor, y: torch.Tensor, fewshot: torch.Tensor, gamma: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rule A: keep ``s[y] > 1/C``; relabel web rows with ``max s > gamma`` to ``argmax s`` (and keep them).

    Few-shot rows are always kept and never relabelled. Returns ``(keep, new_y)``.
    """
    check_range("gamma", gamma, 0.0, 1.0)
    _check_labels("y", y, soft.shape[0], soft.shape[1])
    _check_mask("fewshot", fewshot, soft.shape[0])
    g = soft.gather(1, y.unsqueeze(1)).squeeze(1)
    top, arg = soft.max(1)
    relabel = (top > gamma) & ~fewshot
    new_y = torch.where(relabel, arg, y)
    return (g > 1.0 / soft.shape[1]) | relabel | fewshot, new_y


def clean_relation(
    rel_prob: torch.Tensor, y: torch.Tensor, fewshot: torch.Tensor, gamma: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rule B: keep ``rho[y] > gamma``; relabel the other web rows with ``max rho > gamma`` to ``argmax rho``."""
    check_range("gamma", gamma, 0.0, 1.0)
    _check_labels("y", y, rel_prob.shape[0], rel_prob.shape[1])
    _check_mask("fewshot", fewshot, rel_prob.shape[0])
    keep_rel = rel_prob.gather(1, y.unsqueeze(1)).squeeze(1) > gamma
    top, arg = rel_prob.max(1)
    relabel = (top > gamma) & ~fewshot & ~keep_rel
    return keep_rel | relabel | fewshot, torch.where(relabel, arg, y)


def clean_fusion(
    soft: torch.Tensor, rel_prob: torch.Tensor, y: torch.Tensor, fewshot: torch.Tensor, gamma: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fusion (official ``is_clean=3``): keep ``s[y] > 1/C`` or ``rho[y] > gamma``; relabel by ``argmax s``."""
    check_range("gamma", gamma, 0.0, 1.0)
    check_shape("rel_prob", rel_prob, list(soft.shape))
    _check_labels("y", y, soft.shape[0], soft.shape[1])
    _check_mask("fewshot", fewshot, soft.shape[0])
    keep_pred = soft.gather(1, y.unsqueeze(1)).squeeze(1) > 1.0 / soft.shape[1]
    keep_rel = rel_prob.gather(1, y.unsqueeze(1)).squeeze(1) > gamma
    top, arg = soft.max(1)
    relabel = (top > gamma) & ~fewshot & ~keep_rel
    return keep_pred | keep_rel | relabel | fewshot, torch.where(relabel, arg, y)


def dist_sim(z: torch.Tensor, prototypes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 gap between a sample's similarity profile and its class prototype's profile (trust filter).

    ``0.5 |c_y.c_y - z.c_y| + 0.5 sum_{c != y} |c_y.c_c - z.c_c|``.
    """
    check_shape("prototypes", prototypes, [None, z.shape[1]])
    _check_labels("y", y, z.shape[0], prototypes.shape[0])
    diff = (prototypes[y] @ prototypes.t() - z @ prototypes.t()).abs()
    own = diff.gather(1, y.unsqueeze(1)).squeeze(1)
    return 0.5 * own + 0.5 * (diff.sum(1) - own)


def ema_prototypes(
    prototypes: torch.Tensor, keys: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, mu: float = 0.999
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official sample-by-sample EMA ``c_y <- mu c_y + (1 - mu) k_i`` over kept rows in order, then normalise.

    Vectorised exactly: the j-th of n kept keys of a class enters with weight ``(1 - mu) mu^(n-1-j)`` and the old
    prototype with ``mu^n``. Returns ``(new prototypes, visits [C], distance sums [C])``, where the distances
    ``||k_i - c_y||`` are measured to the prototypes before the batch (as in the official loop). Rows that are
    not kept never move a prototype.
    """
    check_range("mu", mu, 0.0, 1.0)
    check_shape("keys", keys, [None, prototypes.shape[1]])
    _check_labels("y", y, keys.shape[0], prototypes.shape[0])
    _check_mask("keep", keep, keys.shape[0])
    c = prototypes.shape[0]
    k, yk = keys[keep], y[keep]
    dist = (k - prototypes[yk]).norm(dim=1)
    onehot = F.one_hot(yk, c).to(keys.dtype)  # [n, C]
    later = onehot.flip(0).cumsum(0).flip(0) - onehot  # later[j, c]: kept rows after j with class c
    n_after = later.gather(1, yk.unsqueeze(1)).squeeze(1)
    w = (1 - mu) * torch.pow(torch.tensor(mu, dtype=keys.dtype), n_after)
    visits = onehot.sum(0)
    new = prototypes * torch.pow(torch.tensor(mu, dtype=keys.dtype), visits).unsqueeze(1)
    new = new.index_add(0, yk, w.unsqueeze(1) * k)
    dist_sum = torch.zeros(c, dtype=keys.dtype, device=keys.device).index_add_(0, yk, dist)
    return F.normalize(new, dim=1), visits, dist_sum


def density_from_stats(dist_sum: torch.Tensor, visits: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """PCL concentration ``phi_c = sum dist / (n_c log(n_c + 10))``; a class with ``n_c = 0`` keeps ``old``."""
    check_shape("visits", visits, list(dist_sum.shape))
    check_shape("old", old, list(dist_sum.shape))
    phi = dist_sum / (visits * torch.log(visits + 10.0) + 1e-7)
    return torch.where((visits > 0) & (phi > 0), phi, old)


def soft_cls_loss(logits: torch.Tensor, y: torch.Tensor, soft: torch.Tensor, gt_score: torch.Tensor) -> torch.Tensor:
    """``mean_i[g_i CE(h_i, y_i)] + mean_i[(1 - g_i) H(s_i, softmax h_i)]`` (official ``use_soft_label``)."""
    check_shape("soft", soft, list(logits.shape))
    check_shape("gt_score", gt_score, [logits.shape[0]])
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logp = F.log_softmax(logits, 1)
    hard = F.nll_loss(logp, y, reduction="none") * gt_score
    softl = -(soft * logp).sum(1) * (1 - gt_score)
    return hard.mean() + softl.mean()


def instance_logits(z: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE logits ``[z.k, z.queue] / tau``; the positive is column 0."""
    check_shape("k", k, list(z.shape))
    check_shape("queue", queue, [None, z.shape[1]])
    check_range("temperature", temperature, 0.0, low_inclusive=False)
    pos = (z * k.detach()).sum(1, keepdim=True)
    return torch.cat([pos, z @ queue.detach().t()], 1) / temperature


def margin_cosine_logits(
    cos: torch.Tensor, y: torch.Tensor, margin: float = 0.5, temperature: float = 0.1
) -> torch.Tensor:
    """Additive-margin logits ``(cos - margin 1[c = y]) / tau`` for the low-dim cosine classifier."""
    _check_labels("y", y, cos.shape[0], cos.shape[1])
    check_range("temperature", temperature, 0.0, low_inclusive=False)
    return (cos - margin * F.one_hot(y, cos.shape[1]).to(cos.dtype)) / temperature


def fopro_lr(epoch: int, base_lr: float, warmup: int, total: int) -> float:
    """Per-epoch lr: linear warm-up ``lr (t+1)/W`` for ``t < W``, then ``lr/2 (1 + cos((t - W + 1) pi / (T - W)))``."""
    check_positive_int("total", total)
    check_positive_int("warmup", warmup, 0)
    if epoch < warmup:
        return base_lr * (epoch + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * base_lr * (1 + math.cos(min(epoch - warmup + 1, span) * math.pi / span))


def default_weak(x: torch.Tensor) -> torch.Tensor:
    """Weak view: small Gaussian jitter (sigma 0.05)."""
    return x + 0.05 * torch.randn_like(x)


def default_strong(x: torch.Tensor) -> torch.Tensor:
    """Strong view: random 1-step circular shift (images: both axes; vectors: last axis), 10% erasing, noise 0.1."""
    b = x.shape[0]
    if x.dim() == 4:
        h, w = x.shape[2], x.shape[3]
        s = torch.randint(-1, 2, (b, 2))
        rows = (torch.arange(h).unsqueeze(0) - s[:, :1]) % h  # [B, H]
        cols = (torch.arange(w).unsqueeze(0) - s[:, 1:]) % w  # [B, W]
        out = x.gather(2, rows[:, None, :, None].expand(b, x.shape[1], h, w))
        out = out.gather(3, cols[:, None, None, :].expand(b, x.shape[1], h, w))
    else:
        flat = x.reshape(b, -1)
        n = flat.shape[1]
        pos = (torch.arange(n).unsqueeze(0) - torch.randint(-1, 2, (b, 1))) % n
        out = flat.gather(1, pos).view_as(x)
    out = out * (torch.rand_like(out) > 0.1)
    return out + 0.1 * torch.randn_like(out)


# ----------------------------------------------------------------------------------------------------------------
# configuration, memory and model
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FoProConfig:
    """FoPro settings; the defaults are the fine-grained (WebFG-496) ones of the paper and ``shells/web-bird.sh``.

    Epochs are 0-based as in the official loop: prototypes are initialised at the start of ``init_epoch`` and
    used from ``init_epoch + 1``; rule A cleans in ``(clean_epoch, relation_epoch]``; rule B / fusion after.
    With ``cleaning`` in {relation, fusion} training runs the three official stages (stage 1 up to
    ``clean_epoch``, then ``relation_epochs`` of relation-head-only training, then stage 3 from
    ``relation_epoch + 1`` to ``epochs - 1`` with the relation head updated every epoch); with {none, ruleA} it
    is one run of ``epochs`` epochs.
    """

    epochs: int = 200
    frozen_epochs: int = 5
    init_epoch: int = 20
    clean_epoch: int = 25
    relation_epoch: int = 26
    relation_epochs: int = 20
    cleaning: str = "fusion"
    low_dim: int = 128
    proj_hidden: int = 2048
    rel_hidden: int = 128
    queue_size: int = 2048
    temperature: float = 0.1
    use_density: bool = True
    margin: float = 0.5
    alpha: float = 0.5
    gamma: float = 0.6
    dist_th: float = 20.0
    proto_m: float = 0.999
    moco_m: float = 0.999
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-8
    warmup_epochs: int = 5
    beta1_drop_epoch: int | None = 40
    w_cls: float = 1.0
    w_proto: float = 1.0
    w_inst: float = 1.0
    w_low: float = 1.0
    w_rec: float = 1.0
    w_rel: float = 1.0

    def __post_init__(self) -> None:
        check_choice("cleaning", self.cleaning, CLEANING)
        for name in ("epochs", "low_dim", "proj_hidden", "rel_hidden", "queue_size", "batch_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("frozen_epochs", "init_epoch", "clean_epoch", "relation_epoch", "relation_epochs"):
            check_positive_int(name, getattr(self, name), 0)
        check_positive_int("warmup_epochs", self.warmup_epochs, 0)
        if not self.init_epoch <= self.clean_epoch < self.relation_epoch < self.epochs:
            raise PriorkitError(
                "need init_epoch <= clean_epoch < relation_epoch < epochs, got "
                f"{self.init_epoch}, {self.clean_epoch}, {self.relation_epoch}, {self.epochs}"
            )
        check_range("temperature", self.temperature, 0.0, low_inclusive=False)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("margin", self.margin, 0.0)
        check_range("dist_th", self.dist_th, 0.0)
        check_range("proto_m", self.proto_m, 0.0, 1.0)
        check_range("moco_m", self.moco_m, 0.0, 1.0)
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0.0)
        for f in fields(self):
            if f.name.startswith("w_"):
                check_range(f.name, getattr(self, f.name), 0.0)


class FoProMemory(nn.Module):
    """FoPro's global state as buffers (so ``state_dict`` checkpoints it): prototypes ``[C, d]``, visit counts,
    distance sums and densities ``[C]``, and the key queue ``[Q, d]`` with its pointer.

    By default every write gathers its inputs from all ranks first (rank order = global batch order in the
    engine), so all ranks hold the state a 1-process run with the same global batch would hold; the recipe passes
    the already-gathered global batch with ``gather=False``. Non-finite inputs are refused before any write.
    """

    def __init__(self, num_classes: int, dim: int, queue_size: int, temperature: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("dim", dim)
        check_positive_int("queue_size", queue_size)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim, generator=g), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("visits", torch.zeros(num_classes))
        self.register_buffer("dist_sum", torch.zeros(num_classes))
        self.register_buffer("density", torch.full((num_classes,), float(temperature)))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, *, gather: bool = True) -> None:
        """Write the keys (gathered from every rank when ``gather``) at the pointer, wrapping around the ring.

        Non-finite keys are refused before anything is written.
        """
        check_shape("keys", keys, [None, self.queue.shape[1]])
        check_finite("keys", keys)
        if gather:
            keys = D.all_gather_cat(keys.detach())
        q = self.queue.shape[0]
        if keys.shape[0] > q:
            keys = keys[-q:]
        pos = (int(self.queue_ptr) + torch.arange(keys.shape[0])) % q
        self.queue[pos] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + keys.shape[0]) % q)

    @torch.no_grad()
    def set_prototypes(self, emb: torch.Tensor, y: torch.Tensor, *, gather: bool = True) -> None:
        """Initialise from embeddings (gathered when ``gather``): normalised class means (few-shot init, Sec. 3.2)."""
        check_finite("emb", emb)
        if gather:
            emb, y = D.all_gather_cat(emb.detach()), D.all_gather_cat(y)
        protos, counts = init_prototypes(emb, y, self.prototypes.shape[0])
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise PriorkitError(f"prototype initialisation saw no sample of classes {missing}")
        self.prototypes.copy_(protos)
        self.visits.zero_()
        self.dist_sum.zero_()
        self.initialised.fill_(True)

    @torch.no_grad()
    def update(
        self, keys: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, mu: float, *, gather: bool = True
    ) -> None:
        """Momentum-update the prototypes from the kept rows (gathered when ``gather``) and accumulate visits and
        distances. Non-finite keys are refused before anything is written."""
        check_finite("keys", keys)
        if gather:
            keys, y = D.all_gather_cat(keys.detach()), D.all_gather_cat(y)
            keep = D.all_gather_cat(keep.long()).bool()
        new, visits, dist = ema_prototypes(self.prototypes, keys.to(self.prototypes.dtype), y, keep, mu)
        self.prototypes.copy_(new)
        self.visits += visits
        self.dist_sum += dist

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Recompute the densities phi from this epoch's statistics, then reset the counters."""
        self.density.copy_(density_from_stats(self.dist_sum, self.visits, self.density))
        self.visits.zero_()
        self.dist_sum.zero_()


class CosineClassifier(nn.Module):
    """``h_n``: cosine similarity between the (unit) embedding and normalised class weights."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) / math.sqrt(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).t()


class FoPro(nn.Module):
    """The FoPro model around any encoder ``f`` (a module with ``features(x)`` -> ``[B, D]`` or ``forward``).

    ``feature_dim`` is read from ``encoder.feature_dim`` unless given. Inference: ``predict(x) = h(f(x))``.
    """

    def __init__(
        self, encoder: nn.Module, num_classes: int, config: FoProConfig | None = None, *, feature_dim: int | None = None
    ) -> None:
        super().__init__()
        cfg = config or FoProConfig()
        check_positive_int("num_classes", num_classes, 2)
        dim = feature_dim if feature_dim is not None else getattr(encoder, "feature_dim", None)
        if dim is None:
            raise PriorkitError("feature_dim must be given when the encoder has no 'feature_dim' attribute")
        check_positive_int("feature_dim", dim)
        self.num_classes, self.feature_dim, self.low_dim = num_classes, dim, cfg.low_dim
        self.config = cfg
        self.encoder = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.projection = nn.Sequential(
            nn.Linear(dim, cfg.proj_hidden), nn.ReLU(), nn.Linear(cfg.proj_hidden, cfg.low_dim)
        )
        self.projection_back = nn.Sequential(
            nn.Linear(cfg.low_dim, cfg.proj_hidden), nn.ReLU(), nn.Linear(cfg.proj_hidden, dim)
        )
        self.classifier = nn.Linear(dim, num_classes)
        self.classifier_low = CosineClassifier(cfg.low_dim, num_classes)
        self.relation = nn.Sequential(
            nn.Linear(2 * cfg.low_dim, cfg.rel_hidden), nn.ReLU(), nn.Linear(cfg.rel_hidden, 1)
        )
        self.memory = FoProMemory(num_classes, cfg.low_dim, cfg.queue_size, cfg.temperature)

    @staticmethod
    def _feat(enc: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return enc.features(x) if hasattr(enc, "features") else enc(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._feat(self.encoder, x)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """``g``: projection to the unit sphere."""
        return F.normalize(self.projection(feats), dim=1)

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        """``g(f_k(x))``: the momentum key (no gradient)."""
        return self.embed(self._feat(self.encoder_k, x))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parts (the recipe's phases train subsets of them; ``encoder_k`` never trains, nor do encoder
        parameters that ``features`` does not use, e.g. a backbone's own classification head)."""
        names = ("encoder_k", "projection", "projection_back", "classifier", "classifier_low", "relation")
        groups = {n: list(getattr(self, n).parameters()) for n in names}
        unused = getattr(self, "_unused_encoder", set())
        groups["encoder"] = [p for p in self.encoder.parameters() if id(p) not in unused]
        groups["encoder_unused"] = [p for p in self.encoder.parameters() if id(p) in unused]
        return groups

    def _find_unused_encoder_parameters(self, x: torch.Tensor) -> None:
        """Encoder parameters that ``features`` does not reach (probed once on two inputs); DDP needs them frozen."""
        params = list(self.encoder.parameters())
        if not params:
            return
        with torch.enable_grad():
            out = self.features(x[:2].to(params[0].device)).sum()
            grads = torch.autograd.grad(out, params, allow_unused=True)
        self._unused_encoder = {id(p) for p, g in zip(params, grads) if g is None}

    def forward(
        self,
        x: torch.Tensor,
        strong: torch.Tensor | None = None,
        *,
        momentum: float | None = None,
        weak_key: bool = False,
        train_step: bool | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Inference ``h(f(x))``; with ``strong`` (or ``train_step=True``) one training forward (official order).

        The training forward returns ``q``, ``z``, ``out`` for the weak view ``x``; then, with ``momentum``, the
        momentum encoder moves; then the no-grad keys ``key_weak`` (when ``weak_key``) and, with ``strong``,
        ``key_strong`` and the strong view's embedding ``z_strong``.
        """
        if not (strong is not None or train_step or weak_key):
            return self.classifier(self.features(x))
        q = self.features(x)
        res = {"q": q, "z": self.embed(q), "out": self.classifier(q)}
        if momentum is not None:
            self.momentum_update(momentum)
        if weak_key:
            res["key_weak"] = self.key(x)
        if strong is not None:
            res["key_strong"] = self.key(strong)
            res["z_strong"] = self.embed(self.features(strong))
        return res

    def recipe(
        self,
        train: Any,
        domain: Any,
        *,
        weak: Callable[[torch.Tensor], torch.Tensor] = default_weak,
        strong: Callable[[torch.Tensor], torch.Tensor] = default_strong,
    ) -> Recipe:
        """FoPro's stage schedule as a :class:`~priorkit.train.Recipe`: one phase per schedule epoch.

        ``train``: an :class:`~priorkit.data.IndexedTensorDataset`, a ``TensorDataset`` or an ``(x, y)`` pair
        (tensors or numpy arrays); ``domain`` ``[N]``: 0 web, 1 real few-shot. Each phase starts by setting
        its lr and Adam beta1 (and, at ``init_epoch``, initialising the prototypes from the real shots); a
        fresh Adam starts with each stage and when the encoder unfreezes, as in the official ``train.py``. The
        global batch is ``config.batch_size``; under DDP every loss term is computed on the gathered global
        batch, so W processes give the 1-process result. The memory buffers are part of ``state_dict``, so
        the engine's checkpoints hold them. Run it with ``priorkit.train.fit(model, None, model.recipe(...))``.
        """
        return _fopro_recipe(self, train, domain, weak, strong)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        was = self.training
        self.eval()
        out = torch.cat([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        for pq, pk in zip(self.encoder.parameters(), self.encoder_k.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        for bq, bk in zip(self.encoder.buffers(), self.encoder_k.buffers()):
            bk.copy_(bq)

    def relation_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``r([z, c_c])`` for every class (inputs detached, so only r learns): ``[B, C]`` logits."""
        protos = self.memory.prototypes.detach().clone()
        b, c = z.shape[0], protos.shape[0]
        pair = torch.cat([z.detach().repeat_interleave(c, 0), protos.repeat(b, 1)], 1)
        return self.relation(pair).view(b, c)


# ----------------------------------------------------------------------------------------------------------------
# one training step and the stage schedule
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class StepFlags:
    is_proto: bool  # prototypes exist (epoch > init_epoch)
    clean: str  # "none", "ruleA", "relation" or "fusion"
    train_relation: bool
    relation_only: bool = False


def fopro_losses(
    model: FoPro,
    outputs: dict[str, torch.Tensor],
    y: torch.Tensor,
    fewshot: torch.Tensor,
    cfg: FoProConfig,
    flags: StepFlags,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One FoPro step's loss terms from the forward ``outputs`` (official ``FoPro.forward`` + ``train.py`` sum).

    ``outputs`` is :meth:`FoPro.forward`'s training dict over the whole (global) batch: ``q`` features, ``z``
    embeddings, ``out`` logits of h, ``key_weak``, and unless ``flags.relation_only`` also ``z_strong`` and
    ``key_strong``. Writes the memory (prototype EMA from the kept rows, key queue) without gathering: under
    DDP the engine passes the gathered global batch. Returns the named terms and ``info`` (keep mask, new
    labels, trusted mask). Every term is present at every step (0 when its rows are empty), so all trainable
    parts get a gradient, which DDP needs.
    """
    mem = model.memory
    q, z, out = outputs["q"], outputs["z"], outputs["out"]
    y = y.clone()
    terms: dict[str, torch.Tensor] = {}
    if flags.is_proto:
        temp = mem.density.clone() if cfg.use_density else cfg.temperature
        logits_proto, raw = prototype_logits(z, mem.prototypes.clone(), y, fewshot, margin=cfg.margin, temperature=temp)
        soft = soft_targets(out, raw, y, fewshot, cfg.alpha)
    else:
        logits_proto, soft = None, F.softmax(out.detach(), 1)
    gt = soft.gather(1, y.unsqueeze(1)).squeeze(1)
    keep = torch.ones_like(fewshot)
    cleaning = flags.is_proto and flags.clean != "none"
    if cleaning:
        if flags.clean == "ruleA":
            keep, y = clean_rule_a(soft, y, fewshot, cfg.gamma)
        else:
            with torch.no_grad():
                rho = torch.sigmoid(model.relation_logits(z))
            if flags.clean == "relation":
                keep, y = clean_relation(rho, y, fewshot, cfg.gamma)
            else:
                keep, y = clean_fusion(soft, rho, y, fewshot, cfg.gamma)
        mem.update(outputs["key_weak"], y, keep, cfg.proto_m, gather=False)
    # trusted set for the low-dim classifier (official ``arcface_idx``)
    with torch.no_grad():
        if not flags.is_proto:
            trusted = fewshot | (gt > cfg.gamma)
        elif not cleaning:
            trusted = fewshot | (dist_sim(z.detach(), mem.prototypes, y) <= cfg.dist_th)
        else:
            trusted = keep
    any_trusted = bool(trusted.any())
    if flags.train_relation and flags.is_proto:
        # card: the relation head learns on the trusted (kept) samples with their (new) labels
        rel = model.relation_logits(z[trusted] if any_trusted else z)
        terms["rel"] = cfg.w_rel * (F.cross_entropy(rel, y[trusted]) if any_trusted else rel.sum() * 0.0)
    info = {"keep": keep, "y": y, "trusted": trusted}
    if flags.relation_only:
        return terms, info
    kk, zs = outputs["key_strong"], outputs["z_strong"]
    if flags.is_proto:
        terms["cls"] = cfg.w_cls * soft_cls_loss(out[keep], y[keep], soft[keep], gt[keep])
        terms["proto"] = cfg.w_proto * F.cross_entropy(logits_proto[keep], y[keep]) if bool(keep.any()) else z.sum() * 0
        terms["inst"] = cfg.w_inst * F.cross_entropy(
            instance_logits(z, kk, mem.queue.clone(), cfg.temperature), torch.zeros(len(y), dtype=torch.long)
        )
    else:
        terms["cls"] = cfg.w_cls * F.cross_entropy(out, y)
    if any_trusted:
        cos = model.classifier_low(torch.cat([z[trusted], zs[trusted]]))
        yy = torch.cat([y[trusted], y[trusted]])
        terms["low"] = cfg.w_low * F.cross_entropy(margin_cosine_logits(cos, yy, cfg.margin, cfg.temperature), yy)
    else:
        terms["low"] = model.classifier_low(zs).sum() * 0.0
    rec = model.projection_back(z.detach()) if flags.is_proto else model.projection_back(model.embed(q.detach()))
    terms["rec"] = cfg.w_rec * F.mse_loss(rec, q.detach())
    mem.enqueue(kk, gather=False)
    return terms, info


def fopro_schedule(cfg: FoProConfig) -> list[tuple[int, int]]:
    """The ``(stage, epoch)`` pairs in run order (see :class:`FoProConfig`); each becomes one recipe phase."""
    if cfg.cleaning in ("none", "ruleA"):
        return [(1, e) for e in range(cfg.epochs)]
    return (
        [(1, e) for e in range(cfg.clean_epoch + 1)]
        + [(2, e) for e in range(1, cfg.relation_epochs + 1)]
        + [(3, e) for e in range(cfg.relation_epoch + 1, cfg.epochs)]
    )


def _flags(cfg: FoProConfig, stage: int, epoch: int) -> StepFlags:
    if stage == 2:  # official ft_relation run: init/clean epochs 0, rule A, relation head only
        return StepFlags(is_proto=True, clean="ruleA", train_relation=True, relation_only=True)
    is_proto = epoch > cfg.init_epoch
    if epoch <= cfg.clean_epoch or cfg.cleaning == "none":
        clean = "none"
    elif epoch <= cfg.relation_epoch or cfg.cleaning == "ruleA":
        clean = "ruleA"
    else:
        clean = cfg.cleaning
    return StepFlags(is_proto=is_proto, clean=clean, train_relation=stage == 3)


def _trainable(model: FoPro, cfg: FoProConfig, stage: int, epoch: int) -> list[str]:
    if stage == 2:
        return ["relation"]
    groups = [g for g in model.parameter_groups() if g not in ("encoder_k", "encoder_unused")]
    if epoch < cfg.frozen_epochs:
        groups.remove("encoder")
    if stage == 1:
        groups.remove("relation")
    return groups


def _check_train(model: FoPro, train: Any, domain: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, domain)`` of a training set of ``(x, y[, index])`` items, checked once per run."""
    if isinstance(train, IndexedTensorDataset):
        x, y = train.x, train.y
    elif isinstance(train, TensorDataset):
        x, y = train.tensors[0], train.tensors[1]
    elif isinstance(train, tuple | list) and len(train) == 2:
        x, y = as_tensor("train x", train[0]), as_tensor("train y", train[1])
        if not isinstance(train[0], torch.Tensor) and x.dtype == torch.float64:
            x = x.float()  # numpy's default float64 -> the model's float32
    else:
        raise PriorkitError(
            f"train must be an IndexedTensorDataset, a TensorDataset or an (x, y) pair, got {type(train).__name__}"
        )
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise PriorkitError(f"train x must be a non-empty batch [N, ...], got {list(getattr(x, 'shape', []))}")
    if not x.is_floating_point():
        raise PriorkitError(f"train x must be floating point, got dtype {x.dtype}")
    check_labels("train y", y, model.num_classes, length=x.shape[0])
    domain = as_tensor("domain", domain)
    check_shape("domain", domain, [x.shape[0]])
    if domain.is_floating_point() or bool(((domain != 0) & (domain != 1)).any()):
        raise PriorkitError("domain must hold integers 0 (web) or 1 (real few-shot), one per training sample")
    return x, y.long(), domain.long()


def _views_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def _fopro_recipe(
    model: FoPro,
    train: Any,
    domain: Any,
    weak: Callable[[torch.Tensor], torch.Tensor],
    strong: Callable[[torch.Tensor], torch.Tensor],
) -> Recipe:
    cfg = model.config
    x_all, y_all, dom = _check_train(model, train, domain)
    model._find_unused_encoder_parameters(x_all)
    data = train if isinstance(train, Dataset) else IndexedTensorDataset(x_all, y_all)

    def make_batch(state: RunState, local: torch.Tensor) -> Batch:
        glob = torch.as_tensor(state.global_indices, dtype=torch.long)
        xg = check_batch("x", x_all[glob])  # validated once per step, before any state is written
        # the views are drawn for the GLOBAL batch from (seed, step), then each rank takes its rows
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_views_seed(state.config.seed, state.step))
            xw, xs = weak(xg), strong(xg)
        per = -(-len(glob) // state.world_size)
        rows = slice(state.rank * per, state.rank * per + len(local))
        dev = state.device
        return Batch(
            x=xw[rows].to(dev),
            y=y_all[local].to(dev),
            index=local,
            extras={"strong": xs[rows].to(dev), "fewshot": (dom[local] == 1).to(dev)},
        )

    def adam(m: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in m.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    phases = []
    for stage, epoch in fopro_schedule(cfg):
        flags = _flags(cfg, stage, epoch)
        total = cfg.relation_epochs + 1 if stage == 2 else cfg.epochs
        lr = fopro_lr(epoch, cfg.lr, 0 if stage == 2 else cfg.warmup_epochs, total)
        drop = cfg.beta1_drop_epoch is not None and stage != 2 and epoch >= cfg.beta1_drop_epoch
        beta1 = 0.1 if drop else 0.9

        def start(state: RunState, lr: float = lr, beta1: float = beta1, stage: int = stage, epoch: int = epoch):
            for grp in state.optimizer.param_groups:
                grp["lr"] = lr
                grp["betas"] = (beta1, grp["betas"][1])
            if stage == 1 and epoch == cfg.init_epoch:
                _init_prototypes(state.model, x_all, y_all, dom)
            return {"stage": float(stage), "stage_epoch": float(epoch), "lr": lr}

        def forward(net: nn.Module, batch: Batch, flags: StepFlags = flags) -> dict[str, torch.Tensor]:
            return net(
                batch.x,
                None if flags.relation_only else batch.extras["strong"],
                momentum=None if flags.relation_only else cfg.moco_m,
                weak_key=flags.is_proto and flags.clean != "none",
            )

        def loss(
            state: RunState, batch: Batch, flags: StepFlags = flags, stage: int = stage
        ) -> dict[str, torch.Tensor]:
            o = batch.output
            glob = {k: (D.gather_with_grad(v) if v.requires_grad else D.all_gather_cat(v)) for k, v in o.items()}
            y, few = D.all_gather_cat(batch.y), D.all_gather_cat(batch.extras["fewshot"].long()).bool()
            terms, info = fopro_losses(state.model, glob, y, few, cfg, flags)
            state.log(stage=float(stage), kept=float(info["keep"].float().mean()))
            return terms

        def end(state: RunState) -> dict[str, float]:
            state.model.memory.end_epoch()
            return {"density_mean": float(state.model.memory.density.mean())}

        frozen = epoch < cfg.frozen_epochs  # the official key (stage, frozen): a fresh Adam when it changes
        phases.append(
            Phase(
                name=f"stage{stage}_epoch{epoch}",
                epochs=1,
                trainable=_trainable(model, cfg, stage, epoch),
                optimizer=adam,
                optimizer_key=f"stage{stage}" + ("_frozen" if frozen else ""),
                loss=loss,
                forward=forward,
                data=data,
                batch_size=cfg.batch_size,
                make_batch=make_batch,
                rescale=False,  # every term is computed on the gathered global batch
                on_start=start,
                on_end=end if flags.is_proto and flags.clean != "none" else None,
            )
        )
    return Recipe(phases, loss_fn=None)


@torch.no_grad()
def _init_prototypes(model: FoPro, x: torch.Tensor, y: torch.Tensor, domain: torch.Tensor) -> None:
    """Few-shot init from ``g(f_k(x))`` of the real shots; with K = 0 (assumption) from all web samples.

    Every rank embeds all of them (the data is on every rank), so no gather is needed.
    """
    idx = torch.nonzero(domain == 1).flatten()
    if len(idx) == 0:
        idx = torch.arange(len(y))
    was = model.training
    model.eval()
    dev = model.memory.prototypes.device
    emb = torch.cat([model.key(check_batch("x", x[idx[i : i + 512]]).to(dev)) for i in range(0, len(idx), 512)])
    model.memory.set_prototypes(emb, y[idx].to(dev), gather=False)
    model.train(was)


_PAPER = {f.name: f.default for f in fields(FoProConfig)}
_SMALL = dict(
    _PAPER,
    epochs=60, frozen_epochs=0, init_epoch=10, clean_epoch=15, relation_epoch=20, relation_epochs=6, low_dim=32,
    proj_hidden=256, queue_size=256, batch_size=64, lr=1e-3, moco_m=0.99,
)  # fmt: skip

SPEC = MethodSpec(
    status="implemented",
    entry="FoPro",
    missing=(
        "pretrained B-CNN/ResNet-50 backbones (stand-in: MLP 64-128 from scratch), shuffle-BN under DDP, WebVision "
        "class-frequency weighting, MoPro-style fine-tuning and TFRecord loaders not built"
    ),
    presets={"paper": _PAPER, "small": _SMALL},
)
