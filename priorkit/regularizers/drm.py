"""Domain-Specific Risk Minimization for Out-of-Distribution Generalization (DRM), Zhang, Wang, Li, Ren, Ding,
Tan and Zhang, KDD 2023.

One hypothesis trained on pooled source domains can be far from the best one for an unseen target (the paper's
"adaptivity gap"). DRM keeps a shared featurizer ``phi``, one linear head ``h_k`` per source domain and a shared
head ``h_all``; head ``k`` only ever sees domain ``k``, ``h_all`` sees every domain. At test time it picks, for
each arriving target batch (online, possibly of one sample), the hypothesis it trusts most -- by default the head
whose predictions have the lowest mean entropy -- and may keep adapting to the target stream ("online model
steering"). The paper reports DRM above competitive domain-generalisation baselines and at or above ERM on every
source domain, at little extra training cost.

Equations (the card, regularizers-theory.md): with one minibatch ``(x_k, y_k)`` per source domain per step,

    l_k = 1/2 [ CE(h_k(phi(x_k)), y_k) + CE(h_all(phi(x_k)), y_k) ],     L = (1/K) sum_k l_k       (Adam on all)

Test-time selection among the K + 1 heads (``rule``):

- ``entropy`` (default): ``H_j = mean_b H(softmax(h_j(phi(x_b))))`` over the batch, predict with ``argmin_j H_j``
  (``per_sample=True``: the argmin per row, for mixed-domain batches); entropies in float32 from log-softmax,
  ties go to ``h_all``. ``h_all`` is always a candidate.
- ``nn``: a domain discriminator MLP on detached features (trained alongside, its own Adam parameter group)
  picks the domain head of highest probability, or (``mix=True``) mixes the domain heads' probabilities with its
  softmax weights.
- ``cosine`` / ``pN`` (``p1``, ``p2``, ...): per-domain feature prototypes (mean feature of the last
  ``prototype_K`` minibatches of that domain); the nearest prototype picks the head, or ``mix=True`` mixes the
  domain heads with weights ``softmax(cos)`` (cosine) or ``d^-gamma / sum d^-gamma`` (p-norm distance ``d``).
- Online steering (:func:`steer_step`, :meth:`DRM.steer`): for each arriving sample, predict; when the
  prediction's confidence is at least ``steer_conf``, take its argmax as a pseudo-label and do one SGD step
  (``steer_lr``) of CE on ``phi`` and the selected head, then predict the next sample.

Fixes to the official code (yfzhang114/AdaNPC, domainbed/algorithms.py::DRM), each behind a flag that restores
the code's behaviour:

- FIX ``cosine_select="argmax"``: the code selects the head with the *smallest* cosine similarity (argmin),
  contradicting "nearest prototype"; here the largest (``cosine_select="argmin"`` is the code's).
- FIX ``cosine_weights="softmax"``: the code's cosine mixture divides the raw (possibly negative) similarities by
  their sum; here they are softmaxed (``cosine_weights="raw"`` is the code's).
- FIX (no flag) ties in the entropy rule go to ``h_all`` (the code keeps the first head reaching the minimum);
  the ``nn`` rule selects per row (the code's ``disc.argmax()`` flattens a batch's ``[B, K]`` scores and is only
  right at batch 1); prototypes average the filled slots only (the code's zero-initialised buffer pulls them
  towards the origin for the first ``prototype_K`` steps).

Assumptions where neither paper nor code decides (flagged): online steering follows the card's assumption above
(the paper gives no update; the official ``adapt_algorithms.py::DRM`` instead runs Adam on the heads only, with
per-head pseudo-labels and test-domain-swept hyperparameters, which is not reproduced), with ``steer_lr`` = the
training rate by default (the middle of that code's grid ``lr x {0.1, 1, 10}``); ``gamma`` defaults to 1
(the code's field is 0, which makes the p-norm mixture uniform); the discriminator uses DomainBed's DANN defaults
(MLP width 256, depth 3, Adam betas (0.5, 0.9), ``lr_d = lr``), since the DRM hparams registry defines none.

Training runs in the engine as DomainBed's ``update(minibatches)``: :meth:`DRM.phase` returns a
:class:`priorkit.train.Phase` drawing one minibatch per source domain per step
(:func:`priorkit.train.domain_phase_parts`, rows tagged with ``batch.extras["domain"]``), whose ``loss`` is
:func:`drm_loss` (plus the discriminator's CE when it is built). The featurizer runs on each domain's rows
separately, as the official code does (it matters only for BatchNorm; ``per_domain_forward=False`` runs it once).
Prototypes are buffers of the module, written from the step's detached features (summed over ranks under DDP),
so checkpoints and resumes hold them. DomainBed itself (an ``Algorithm`` with a private optimizer loop) was
considered and is not a dependency: its contract is kept, its loop is the engine's.

Functional core: :func:`drm_loss`, :func:`head_entropies`, :func:`entropy_select`, :func:`prototype_scores`,
:func:`select_by_scores`, :func:`mixture_weights`, :func:`steer_step`. Entry: the module :class:`DRM`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from priorkit.core.errors import (
    PriorkitError,
    check_choice,
    check_finite,
    check_labels,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.data.domains import DomainData, split_by_domain
from priorkit.nn import distributed as D
from priorkit.train.domains import domain_phase_parts
from priorkit.train.recipe import Phase

__all__ = [
    "DRM",
    "drm_loss",
    "entropy_select",
    "head_entropies",
    "mixture_weights",
    "prototype_scores",
    "select_by_scores",
    "steer_step",
]

SPEC = MethodSpec(
    status="implemented",
    entry="DRM",
    missing="DomainBed image datasets (PACS, VLCS, ...) and the paper's adaptivity-gap estimation not built; "
    "online steering is the card's assumption (one SGD step on a confident pseudo-label), not the official "
    "adapt_algorithms.py variant",
    presets={
        # official DomainBed defaults: lf_alg entropy, prototype_K 50, test_conf 0.5, batch-level selection;
        # training (phase args): Adam lr 5e-5, 32 per domain, 5,000 steps, training-domain validation. steer_lr
        # has no paper value: the training rate (the middle of the official adaptation grid lr x {0.1, 1, 10})
        "paper": {"rule": "entropy", "per_sample": False, "prototype_K": 50, "steer_conf": 0.5, "steer_lr": 5e-5},
        # rotated digits (experiments/drm.py): the same rule; phase args Adam 1e-3 (DomainBed's small-image rate),
        # 32 per domain; steer_lr = that training rate
        "small": {"rule": "entropy", "per_sample": False, "prototype_K": 10, "steer_conf": 0.5, "steer_lr": 1e-3},
    },
)

BASE_RULES = ("entropy", "nn", "cosine", "pN (p1, p2, ...)")
COSINE_SELECT = ("argmax", "argmin")
COSINE_WEIGHTS = ("softmax", "raw")


def _check_rule(rule: str) -> str:
    if not isinstance(rule, str) or not (rule in ("entropy", "nn", "cosine") or re.fullmatch(r"p[1-9][0-9]*", rule)):
        raise PriorkitError(f"rule must be one of {list(BASE_RULES)}, got {rule!r}")
    return rule


def _check_head_logits(head_logits: torch.Tensor) -> tuple[int, int, int]:
    check_shape("head_logits", head_logits, [None, None, None])
    if head_logits.shape[0] < 2:
        raise PriorkitError(f"head_logits must stack K + 1 >= 2 heads on dim 0, got {list(head_logits.shape)}")
    if head_logits.shape[1] == 0:
        raise PriorkitError(f"head_logits must hold a non-empty batch, got shape {list(head_logits.shape)}")
    if not head_logits.is_floating_point():
        raise PriorkitError(f"head_logits must be floating point, got dtype {head_logits.dtype}")
    check_finite("head_logits", head_logits)
    return head_logits.shape[0] - 1, head_logits.shape[1], head_logits.shape[2]


def _check_domain(domain: torch.Tensor, num_domains: int, batch: int) -> torch.Tensor:
    try:
        return check_labels("domain", domain, num_domains, length=batch)
    except PriorkitError as e:
        raise PriorkitError(f"{e} (one source-domain index per row, 0..K-1 with K = {num_domains})") from None


# ------------------------------------------------------------------------------------------ training loss
def drm_loss(head_logits: torch.Tensor, y: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """The DRM risk ``(1/K) sum_k 1/2 [CE(h_k, y_k) + CE(h_all, y_k)]`` over domain ``k``'s rows.

    ``head_logits``: ``[K + 1, B, C]``, every head on every row (``h_all`` last); ``domain``: ``[B]`` in
    ``0..K-1``. Each domain's cross-entropies are means over its own rows (DomainBed's per-minibatch ``CE``), so
    head ``k`` gets no gradient from another domain's rows. Every domain must have rows.
    """
    k, b, c = _check_head_logits(head_logits)
    check_labels("y", y, c, length=b)
    _check_domain(domain, k, b)
    rows = split_by_domain(torch.arange(b, device=head_logits.device), domain, k)
    halves = [
        0.5 * (F.cross_entropy(head_logits[j, r], y[r]) + F.cross_entropy(head_logits[k, r], y[r]))
        for j, r in enumerate(rows)
    ]
    return torch.stack(halves).mean()


# --------------------------------------------------------------------------------------- selection rules
def head_entropies(head_logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy of every head on every row, ``[K + 1, B]``, in float32 from log-softmax."""
    _check_head_logits(head_logits)
    logp = head_logits.float().log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def entropy_select(head_logits: torch.Tensor, *, per_sample: bool = False) -> torch.Tensor:
    """The head of minimum entropy (``[B]`` indices into ``0..K``; ``K`` is ``h_all``).

    Batch mode picks one head for the whole batch from the mean entropy over its rows; ``per_sample`` picks per
    row. Ties go to ``h_all`` (then to the higher index).
    """
    ent = head_entropies(head_logits)
    if not per_sample:
        ent = ent.mean(dim=1, keepdim=True).expand_as(ent)
    last = ent.shape[0] - 1
    return last - ent.flip(0).argmin(dim=0)  # argmin keeps the first minimum: flipped, the last (h_all) wins


def _metric_p(rule: str) -> int | None:
    return None if rule == "cosine" else int(rule[1:])


def prototype_scores(features: torch.Tensor, prototypes: torch.Tensor, rule: str) -> torch.Tensor:
    """``[B, K]`` scores of every row against the K domain prototypes: cosine similarity (``rule="cosine"``,
    larger is nearer) or the p-norm distance (``rule="pN"``, smaller is nearer)."""
    _check_rule(rule)
    if rule in ("entropy", "nn"):
        raise PriorkitError(f"rule must be 'cosine' or 'pN' for prototype scores, got {rule!r}")
    check_shape("features", features, [None, None])
    check_shape("prototypes", prototypes, [None, features.shape[1]])
    check_finite("features", features)
    check_finite("prototypes", prototypes)
    p = _metric_p(rule)
    if p is None:
        return F.cosine_similarity(features[:, None, :], prototypes[None, :, :], dim=-1)
    return torch.cdist(features[None], prototypes[None], p=float(p))[0]


def select_by_scores(scores: torch.Tensor, rule: str, *, cosine_select: str = "argmax") -> torch.Tensor:
    """The domain head each row picks from its ``[B, K]`` scores: argmax of discriminator probabilities
    (``nn``) and of cosine similarities (``cosine``; FIX: the code's ``argmin`` behind ``cosine_select``),
    argmin of p-norm distances (``pN``)."""
    _check_rule(rule)
    check_choice("cosine_select", cosine_select, COSINE_SELECT)
    check_shape("scores", scores, [None, None])
    if rule == "entropy":
        raise PriorkitError("rule 'entropy' selects from head_logits: use entropy_select")
    if rule == "nn" or (rule == "cosine" and cosine_select == "argmax"):
        return scores.argmax(dim=1)
    return scores.argmin(dim=1)


def mixture_weights(
    scores: torch.Tensor, rule: str, *, gamma: float = 1.0, cosine_weights: str = "softmax"
) -> torch.Tensor:
    """``[B, K]`` weights that mix the domain heads' probabilities: the discriminator's probabilities (``nn``),
    ``softmax(cos)`` (``cosine``; FIX: the code's ``cos / sum(cos)`` behind ``cosine_weights="raw"``), or
    ``d^-gamma / sum_k d_k^-gamma`` (``pN``)."""
    _check_rule(rule)
    check_choice("cosine_weights", cosine_weights, COSINE_WEIGHTS)
    check_range("gamma", gamma, 0.0)
    check_shape("scores", scores, [None, None])
    if rule == "entropy":
        raise PriorkitError("rule 'entropy' selects one head; mixture weights need rule 'nn', 'cosine' or 'pN'")
    if rule == "nn":
        return scores / scores.sum(dim=1, keepdim=True)
    if rule == "cosine":
        return scores.softmax(dim=1) if cosine_weights == "softmax" else scores / scores.sum(dim=1, keepdim=True)
    # d^-gamma normalised, as a softmax of -gamma log d (a zero distance takes all the weight)
    return (-gamma * scores.clamp_min(torch.finfo(scores.dtype).tiny).log()).softmax(dim=1)


# ------------------------------------------------------------------------------------------------ model
def _mlp(n_in: int, n_out: int, width: int, depth: int, dropout: float) -> nn.Sequential:
    """DomainBed's ``networks.MLP``: ``depth`` linear layers (width ``width``), dropout and ReLU between them."""
    layers: list[nn.Module] = [nn.Linear(n_in, width), nn.Dropout(dropout), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Dropout(dropout), nn.ReLU()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class DRM(nn.Module):
    """Shared featurizer, K domain heads and ``h_all`` (``heads[K]``), with DRM's test-time selection.

    - ``model(x)``: test-time prediction with ``rule`` (log-probabilities ``[B, C]``); :meth:`select` also returns
      the chosen head per row (``K`` is ``h_all``; with ``mix`` the head of largest weight).
    - ``model(x, domain)`` / ``model(x, parts=True)``: the parts ``{"features", "head_logits" [K+1, B, C],
      "disc_logits"}`` (training forward; with ``domain`` the featurizer runs per domain).
    - :meth:`phase`: the training phase (DomainBed's ``update``) for :class:`priorkit.train.Trainer`.
    - :meth:`steer`: online steering on a stream of samples (updates the model in place).

    ``discriminator`` (``None``: built iff ``rule == "nn"``) adds the domain MLP; prototypes are always kept.
    Presets: ``DRM(featurizer, d, C, K, **SPEC.presets["paper"])``.
    """

    def __init__(
        self,
        featurizer: nn.Module,
        feature_dim: int,
        num_classes: int,
        num_domains: int,
        *,
        rule: str = "entropy",
        per_sample: bool = False,
        mix: bool = False,
        gamma: float = 1.0,
        prototype_K: int = 50,  # noqa: N803 (the code's name)
        discriminator: bool | None = None,
        disc_width: int = 256,
        disc_depth: int = 3,
        disc_dropout: float = 0.0,
        cosine_select: str = "argmax",
        cosine_weights: str = "softmax",
        per_domain_forward: bool = True,
        steer_lr: float = 5e-5,
        steer_conf: float = 0.5,
    ) -> None:
        super().__init__()
        if not isinstance(featurizer, nn.Module):
            raise PriorkitError(f"featurizer must be a torch.nn.Module, got {type(featurizer).__name__}")
        check_positive_int("feature_dim", feature_dim)
        check_positive_int("num_classes", num_classes)
        check_positive_int("num_domains", num_domains)
        check_positive_int("prototype_K", prototype_K)
        check_positive_int("disc_width", disc_width)
        check_positive_int("disc_depth", disc_depth, 2)
        check_range("disc_dropout", disc_dropout, 0.0, 1.0, high_inclusive=False)
        self.featurizer = featurizer
        self.feature_dim, self.num_classes, self.num_domains = feature_dim, num_classes, num_domains
        self.heads = nn.ModuleList(nn.Linear(feature_dim, num_classes) for _ in range(num_domains + 1))
        self.rule, self.per_sample, self.mix, self.gamma = "entropy", False, False, 1.0
        self.cosine_select, self.cosine_weights = "argmax", "softmax"
        self.steer_lr, self.steer_conf = 5e-5, 0.5
        build = (rule == "nn") if discriminator is None else bool(discriminator)
        self.discriminator = _mlp(feature_dim, num_domains, disc_width, disc_depth, disc_dropout) if build else None
        self.configure(rule=rule, per_sample=per_sample, mix=mix, gamma=gamma, cosine_select=cosine_select,
                       cosine_weights=cosine_weights, steer_lr=steer_lr, steer_conf=steer_conf)  # fmt: skip
        self.per_domain_forward = bool(per_domain_forward)
        self.prototype_K = prototype_K
        self.register_buffer("proto_sum", torch.zeros(num_domains, prototype_K, feature_dim))
        self.register_buffer("proto_count", torch.zeros(num_domains, prototype_K))
        self.register_buffer("proto_ptr", torch.zeros((), dtype=torch.long))

    # -------------------------------------------------------------------------------------- settings
    def configure(self, **settings: Any) -> DRM:
        """Change test-time settings (``rule``, ``per_sample``, ``mix``, ``gamma``, ``cosine_select``,
        ``cosine_weights``, ``steer_lr``, ``steer_conf``) after training; returns the model."""
        allowed = ("rule", "per_sample", "mix", "gamma", "cosine_select", "cosine_weights", "steer_lr", "steer_conf")
        for key in settings:
            check_choice("DRM setting", key, allowed)
        new = {k: getattr(self, k) for k in allowed} | settings
        _check_rule(new["rule"])
        check_range("gamma", new["gamma"], 0.0)
        check_choice("cosine_select", new["cosine_select"], COSINE_SELECT)
        check_choice("cosine_weights", new["cosine_weights"], COSINE_WEIGHTS)
        check_range("steer_lr", new["steer_lr"], 0.0, low_inclusive=False)
        check_range("steer_conf", new["steer_conf"], 0.0, 1.0)
        if new["mix"] and new["rule"] == "entropy":
            raise PriorkitError("mix must be False with rule 'entropy' (mixtures exist for 'nn', 'cosine', 'pN')")
        if new["rule"] == "nn" and self.discriminator is None:
            raise PriorkitError("rule 'nn' needs the discriminator: build DRM(..., discriminator=True)")
        for k, v in new.items():
            setattr(self, k, v)
        return self

    # -------------------------------------------------------------------------------------- forward
    def _features(self, x: torch.Tensor, domain: torch.Tensor | None) -> torch.Tensor:
        if domain is None or not self.per_domain_forward:
            f = self.featurizer(x)
        else:  # the official update runs the featurizer on each domain's minibatch (BatchNorm statistics)
            idx = [torch.nonzero(domain == k).flatten() for k in range(self.num_domains)]
            idx = [i for i in idx if len(i)]
            f = torch.cat([self.featurizer(x[i]) for i in idx])
            f = f[torch.argsort(torch.cat(idx))]
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[1] != self.feature_dim:
            got = list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise PriorkitError(f"featurizer output must have shape [batch, feature_dim={self.feature_dim}], got {got}")
        return f

    def forward(self, x: torch.Tensor, domain: torch.Tensor | None = None, *, parts: bool = False) -> Any:
        if domain is None and not parts:
            return self.select(x)[0]
        if domain is not None:
            _check_domain(domain, self.num_domains, x.shape[0])
        f = self._features(x, domain)
        out = {"features": f, "head_logits": torch.stack([h(f) for h in self.heads])}
        if self.discriminator is not None:
            out["disc_logits"] = self.discriminator(f.detach())
        return out

    # ------------------------------------------------------------------------------------ prototypes
    def prototypes(self) -> torch.Tensor:
        """``[K, D]`` mean feature of the last ``prototype_K`` minibatches of every domain (filled slots only)."""
        n = self.proto_count.sum(dim=1)
        if bool((n == 0).any()):
            empty = torch.nonzero(n == 0).flatten().tolist()
            raise PriorkitError(f"prototypes of domains {empty} are empty: train the model through DRM.phase first")
        return self.proto_sum.sum(dim=1) / n[:, None]

    @torch.no_grad()
    def update_prototypes(self, features: torch.Tensor, domain: torch.Tensor) -> None:
        """Write this step's per-domain feature sums into the ring slot ``proto_ptr`` (summed over ranks)."""
        check_shape("features", features, [None, self.feature_dim])
        _check_domain(domain, self.num_domains, features.shape[0])
        check_finite("features", features)
        f = features.detach().to(self.proto_sum.dtype)
        sums = torch.zeros(self.num_domains, self.feature_dim, dtype=f.dtype, device=f.device).index_add_(0, domain, f)
        counts = torch.bincount(domain, minlength=self.num_domains).to(f.dtype)
        packed = D.all_reduce_sum(torch.cat([sums, counts[:, None]], dim=1))
        slot = int(self.proto_ptr)
        self.proto_sum[:, slot] = packed[:, :-1]
        self.proto_count[:, slot] = packed[:, -1]
        self.proto_ptr.fill_((slot + 1) % self.prototype_K)

    # ------------------------------------------------------------------------------------- selection
    def decide(self, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log-probabilities [B, C], head [B])`` from the forward's parts under the configured rule."""
        logits = parts["head_logits"]
        k, b = self.num_domains, logits.shape[1]
        rows = torch.arange(b, device=logits.device)
        logp = logits.float().log_softmax(dim=-1)
        if self.rule == "entropy":
            heads = entropy_select(logits, per_sample=self.per_sample)
            return logp[heads, rows], heads
        if self.rule == "nn":
            scores = parts["disc_logits"].float().softmax(dim=1)
        else:
            scores = prototype_scores(parts["features"].float(), self.prototypes().float(), self.rule)
        if not self.per_sample:
            scores = scores.mean(dim=0, keepdim=True).expand(b, k)
        if self.mix:
            w = mixture_weights(scores, self.rule, gamma=self.gamma, cosine_weights=self.cosine_weights)
            probs = torch.einsum("bk,kbc->bc", w, logp[:k].exp())
            return probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), w.argmax(dim=1)
        heads = select_by_scores(scores, self.rule, cosine_select=self.cosine_select)
        return logp[heads, rows], heads

    def select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-time prediction of a batch: ``(log-probabilities [B, C], selected head [B])``."""
        return self.decide(self.forward(x, parts=True))

    # -------------------------------------------------------------------------------------- training
    def phase(
        self,
        data: DomainData,
        *,
        epochs: int = 1,
        steps_per_epoch: int = 5000,
        per_domain: int = 32,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        lr_d: float | None = None,
        weight_decay_d: float = 0.0,
        beta1_d: float = 0.5,
        name: str = "drm",
    ) -> Phase:
        """The DRM training phase: ``epochs`` x ``steps_per_epoch`` steps, each with ``per_domain`` rows of every
        source domain of ``data`` (in head order); loss terms ``drm`` (:func:`drm_loss`) and, with the
        discriminator, ``disc`` (its CE on detached features); one Adam with the discriminator in its own group
        (``lr_d``, default ``lr``; betas ``(beta1_d, 0.9)``), which equals DomainBed's two optimizers. Train with
        ``Trainer(model, None, recipe=Recipe([phase], loss_fn=None), config=...)``; an ``eval_fn`` there can
        do training-domain validation at every epoch end."""
        if not isinstance(data, DomainData):
            raise PriorkitError(f"data must be a priorkit.data.domains.DomainData, got {type(data).__name__}")
        if data.num_domains != self.num_domains or data.num_classes != self.num_classes:
            raise PriorkitError(
                f"data has {data.num_domains} source domains and {data.num_classes} classes; this DRM has "
                f"num_domains={self.num_domains}, num_classes={self.num_classes}"
            )
        check_positive_int("epochs", epochs)
        check_range("lr", lr, 0.0, low_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0)
        lr_d = lr if lr_d is None else lr_d
        check_range("lr_d", lr_d, 0.0, low_inclusive=False)
        check_range("weight_decay_d", weight_decay_d, 0.0)
        check_range("beta1_d", beta1_d, 0.0, 1.0, high_inclusive=False)
        batches, make_batch = domain_phase_parts(data, per_domain, steps_per_epoch)

        def optimizer(model: nn.Module) -> torch.optim.Optimizer:
            main = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
            groups: list[dict[str, Any]] = [{"params": main}]
            if model.discriminator is not None:
                disc = list(model.discriminator.parameters())
                groups.append({"params": disc, "lr": lr_d, "weight_decay": weight_decay_d, "betas": (beta1_d, 0.9)})
            return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)

        def forward(net: nn.Module, batch: Any) -> Any:
            return net(batch.x, batch.extras["domain"])

        def loss(state: Any, batch: Any) -> dict[str, torch.Tensor]:
            out, domain = batch.output, batch.extras["domain"]
            terms = {"drm": drm_loss(out["head_logits"], batch.y, domain)}
            if "disc_logits" in out:
                terms["disc"] = F.cross_entropy(out["disc_logits"], domain)
            state.model.update_prototypes(out["features"], domain)
            return terms

        return Phase(name, epochs=epochs, optimizer=optimizer, loss=loss, forward=forward, batches=batches,
                     make_batch=make_batch)  # fmt: skip

    # -------------------------------------------------------------------------------------- steering
    def steer(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Online steering over a stream: each row of ``xs`` is predicted, then :func:`steer_step` adapts the
        model before the next row. Returns ``(log-probabilities [N, C], head [N], updated [N])``; the model's
        parameters are updated in place (deep-copy it first to keep the source model). Runs in eval mode."""
        if not isinstance(xs, torch.Tensor) or xs.dim() < 2 or xs.shape[0] == 0:
            got = list(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__
            raise PriorkitError(f"xs must be a non-empty batch of samples [N, ...], got {got}")
        was = self.training
        self.eval()
        params = {n: p.detach() for n, p in self.named_parameters()}
        outs, heads, updated = [], [], []
        for i in range(xs.shape[0]):
            params, logp, head, up = steer_step(self, params, xs[i : i + 1], lr=self.steer_lr, conf=self.steer_conf)
            outs.append(logp)
            heads.append(head)
            updated.append(up)
        with torch.no_grad():
            for n, p in self.named_parameters():
                p.copy_(params[n])
        self.train(was)
        return torch.cat(outs), torch.cat(heads), torch.tensor(updated)


def steer_step(
    model: DRM, params: dict[str, torch.Tensor], x: torch.Tensor, *, lr: float, conf: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, bool]:
    """One online-steering step on one arriving sample ``x`` (``[1, ...]``), pure in the parameters.

    With ``model``'s rule and parameters ``params`` (a name -> tensor dict; missing names and the buffers come
    from ``model``): predict; if the prediction's top probability is ``>= conf``, take its argmax as a
    pseudo-label and return parameters after one SGD step (rate ``lr``) of ``CE(h_sel(phi(x)), pseudo)`` on the
    featurizer and the selected head only (the card's assumption; the paper gives no update). Returns
    ``(new params, log-probabilities [1, C], head [1], updated)``; the prediction is made before the step.
    """
    if not isinstance(model, DRM):
        raise PriorkitError(f"model must be a DRM, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] != 1:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise PriorkitError(f"x must be one sample with a batch axis [1, ...], got {got}")
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("conf", conf, 0.0, 1.0)
    check_finite("x", x)
    with torch.enable_grad():
        leaves = {n: p.detach().requires_grad_(_steered(n)) for n, p in params.items()}
        parts = functional_call(model, leaves, (x,), {"parts": True})
        logp, heads = model.decide(parts)
        top, pseudo = logp.detach().max(dim=1)
        head = int(heads[0])
        if float(top.exp()) < conf:
            return dict(params), logp.detach(), heads.detach(), False
        names = [n for n in leaves if n.startswith("featurizer.") or n.startswith(f"heads.{head}.")]
        names = [n for n in names if leaves[n].requires_grad]
        loss = F.cross_entropy(parts["head_logits"][head], pseudo)
        grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    new = dict(params)
    for n, g in zip(names, grads):
        if g is not None:
            new[n] = params[n].detach() - lr * g
    return new, logp.detach(), heads.detach(), True


def _steered(name: str) -> bool:
    return name.startswith("featurizer.") or name.startswith("heads.")
