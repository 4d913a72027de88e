"""An Embedding-Dynamic Approach to Self-supervised Learning (MSBReg), Moon, Buracas, Park, Kim & Canny, 2022.

MSBReg treats the embeddings of images as particles and training as their dynamics. BYOL-like methods (an online
network encoder -> projector -> predictor chasing an EMA "target" copy of encoder -> projector) have no explicit
repulsion and owe their stability to BatchNorm's hidden dispersion; MSBReg replaces it by three explicit forces on
the L2-normalised embeddings of ``V >= 2`` views per image: an attraction of every online prediction to the
centroid of the image's target views, a local dispersion by Brownian motion (a fresh random direction per image
and step, independent of every other particle) and a global dispersion that pushes the batch's singular values
towards equality (a homogeneous density). The two dispersive terms can be added to any joint-embedding loss.

Equations (the card, regularizers-theory.md; ``q^`` online predictions, ``t^`` target projections, unit norm):

- multiview centroid (attraction): ``c_b = normalize(mean_v t^_{b,v})`` (no gradient),
  ``L_MC = mean_{b,v} (2 - 2 <q^_{b,v}, c_b>)``; the variant of the paper's figure (``centroid="online"``)
  compares centroids, ``L_MC = mean_b (1 - cos(mean_v q^_{b,v}, mean_v t^_{b,v}))``;
- Brownian diffusion (local dispersion): ``r_b = eps / ||eps||``, ``eps ~ N(0, I_d)`` drawn per image per step
  (shared by its views), ``L_B = mean_{b,v} cos(q^_{b,v}, r_b)``; its gradient on each embedding is a random push
  with zero mean that does not depend on any other sample;
- singular values (global dispersion; the exact form was not found, the card's assumption): with ``Z`` one view's
  ``[B, d]`` predictions centred over the batch and ``s_k`` the singular values (``s_k = 0`` for ``k`` beyond the
  rank, so ``k`` runs over the ``d`` eigenvalues of ``Z^T Z``), ``p_k = s_k^2 / sum_j s_j^2`` and
  ``L_SV = d * sum_k (p_k - 1/d)^2``, zero iff the batch is isotropic; averaged over the views.
  ``sv_form="vicreg_cov"`` gives VICReg's off-diagonal covariance penalty ``sum_{i != j} C_ij^2 / d`` instead
  (it decorrelates the dimensions but, unlike the spectrum form, does not equalise their variances);
- total: ``L = L_MC + lambda_B L_B + lambda_SV L_SV`` (``lambda_B = 0.1``, ``lambda_SV = 1.0``); as a plug-in:
  ``L_other + lambda_B L_B + lambda_SV L_SV`` (:func:`dispersion_terms`, or ``attraction=`` a callable / ``"byol"``);
- target: ``theta_t <- tau theta_t + (1 - tau) theta_o`` after every optimizer step, with BYOL's cosine schedule
  ``tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`` from ``tau_base = 0.99`` towards 1 over the ``K`` steps.

Functional core: :func:`multiview_centroid_loss`, :func:`byol_loss`, :func:`brownian_directions`,
:func:`brownian_loss`, :func:`singular_value_loss`, :func:`dispersion_terms`, :func:`ema_tau`, :func:`ema_update_`
(pure losses as solo-learn's ``solo/losses``). Entry: the hook :class:`MSBReg` (solo-learn's momentum-method
split: it owns the EMA target, updates it in ``on_step_end`` and checkpoints it; :meth:`MSBReg.recipe` gives the
one-phase recipe whose batches hold ``V`` views of the global batch and whose loss is :meth:`MSBReg.loss`).
:class:`MSBRegNet` (encoder + projector + predictor) is the online network it trains; ``embed`` gives the encoder
features a linear probe reads. The effective rank ``exp(H(s^2 / sum s^2))`` of the predictions is logged every
step (:func:`priorkit.metrics.ssl.effective_rank`).

Layout: a batch's views are view-major (``x = cat([view_1, ..., view_V])``); the loss functions take ``[B, V, d]``.
DDP: ``L_MC`` and ``L_B`` are per-sample (this rank's share of the global-batch mean, the phase's ``rescale`` is
off); ``L_SV`` is computed on the views gathered over ranks with :func:`priorkit.nn.distributed.gather_with_grad`;
views and Brownian directions are drawn for the global batch from generators seeded by ``(seed, step)``, so a
W-process run and a resumed run draw what a 1-process uninterrupted run draws.

Libraries considered: solo-learn (BYOL loss, ``MomentumUpdater``) and lightly (``BYOLPredictionHead``,
``update_momentum``, ``cosine_schedule``) hold BYOL's pieces inside their own training frameworks and have none of
MSBReg's terms; no official MSBReg code was found. The losses and the EMA (a few lines each) are written here.
Official code: none found. Example::

    net = MSBRegNet(encoder, feat_dim=128, proj_dim=64)
    hook = MSBReg(**SPEC.presets["small"], augment=views)          # views(x, generator) -> one augmented view
    fit(net, train_set, hook.recipe(epochs=100), hooks=[hook], config=TrainConfig(optimizer="adam", lr=1e-3,
        batch_size=256))
"""

from __future__ import annotations

import copy
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
from priorkit.metrics.ssl import effective_rank
from priorkit.nn import distributed as D
from priorkit.nn.views import global_views, rank_rows
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import OptimizerFactory, Phase, Recipe

__all__ = [
    "MSBReg",
    "MSBRegNet",
    "brownian_directions",
    "brownian_loss",
    "byol_loss",
    "dispersion_terms",
    "ema_tau",
    "ema_update_",
    "multiview_centroid_loss",
    "singular_value_loss",
]

CENTROIDS = ("target", "online")
SV_FORMS = ("spectrum", "vicreg_cov")
TAU_SCHEDULES = ("cosine", "constant")
ATTRACTIONS = ("centroid", "byol")
NORMS = ("layernorm", "batchnorm", "none")
REDUCTIONS = ("mean", "none")

_COMMON = {"attraction": "centroid", "centroid": "target", "lambda_b": 0.1, "lambda_sv": 1.0, "sv_form": "spectrum",
           "tau_base": 0.99, "tau_schedule": "cosine"}  # fmt: skip

SPEC = MethodSpec(
    status="implemented",
    entry="MSBReg",
    missing="the ImageNet-scale multi-crop recipe (small crops seen by the online network only; target_views sets "
    "how many leading views the target sees) and the paper's exact singular-value form (not found: the card's "
    "assumption d * sum_k (s_k^2 / sum s^2 - 1/d)^2 is used, with VICReg's covariance penalty as the alternative); "
    "lambda_B = 0.1 comes from a public re-implementation, lambda_SV = 1 and the 0.99 -> 1 cosine EMA are BYOL-style "
    "assumptions; the number of views (4) is the card's small check, the paper's count was not confirmed",
    presets={
        # the card's defaults: lambda_B 0.1 (public re-implementation), lambda_SV 1 (assumption), BYOL's cosine EMA
        "paper": {**_COMMON, "n_views": 4},
        # the card's small-scale check (digits, 4 views): the same terms and weights
        "small": {**_COMMON, "n_views": 4},
    },
)

#: ``attraction(q, t)`` for the plug-in mode: online ``[B, V, d]``, target ``[B, Vt, d]`` -> per-image ``[B]``
#: values (or a scalar: the local-batch mean)
AttractionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------- checks
def _views(name: str, x: torch.Tensor, b: int | None = None, d: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise PriorkitError(f"{name} must be a floating-point tensor [batch, views, dim], got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")  # fmt: skip
    check_shape(name, x, [b, None, d])
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise PriorkitError(f"{name} must be a non-empty [batch, views, dim] tensor, got shape {list(x.shape)}")
    check_finite(name, x)
    return x


def _reduce(per: torch.Tensor, reduction: str) -> torch.Tensor:
    check_choice("reduction", reduction, REDUCTIONS)
    return per.mean() if reduction == "mean" else per


# ------------------------------------------------------------------------------------------ the losses
def multiview_centroid_loss(
    q: torch.Tensor, t: torch.Tensor, variant: str = "target", reduction: str = "mean"
) -> torch.Tensor:
    """Attraction ``L_MC`` of online predictions ``q`` ``[B, V, d]`` to the target views ``t`` ``[B, Vt, d]``.

    ``variant="target"``: ``mean_{b,v} (2 - 2 <q^_{b,v}, normalize(mean_v t^_{b,v})>)``; ``"online"`` (the
    paper's figure): ``mean_b (1 - cos(mean_v q^_{b,v}, mean_v t^_{b,v}))``. ``t`` gets no gradient. ``reduction
    ="none"`` gives the per-image values ``[B]`` (mean over views).
    """
    check_choice("variant", variant, CENTROIDS)
    _views("q", q)
    _views("t", t, q.shape[0], q.shape[2])
    qn, tn = F.normalize(q, dim=-1), F.normalize(t.detach(), dim=-1)
    if variant == "target":
        c = F.normalize(tn.mean(dim=1), dim=-1)
        per = (2.0 - 2.0 * (qn * c.unsqueeze(1)).sum(dim=-1)).mean(dim=1)
    else:
        per = 1.0 - F.cosine_similarity(qn.mean(dim=1), tn.mean(dim=1), dim=-1, eps=1e-12)
    return _reduce(per, reduction)


def byol_loss(q: torch.Tensor, t: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BYOL's loss over view pairs (solo-learn's multi-view form): ``sum_{v != v'} mean_b (2 - 2 <q^_{b,v},
    t^_{b,v'}>)`` over online views ``v`` and target views ``v' < Vt``; with two views it is BYOL's symmetrised
    ``L + L~``. ``t`` gets no gradient; ``reduction="none"`` gives the per-image sums ``[B]``."""
    _views("q", q)
    _views("t", t, q.shape[0], q.shape[2])
    pairs = [(v, w) for v in range(q.shape[1]) for w in range(t.shape[1]) if v != w]
    if not pairs:
        raise PriorkitError(f"byol_loss needs two views (q has {q.shape[1]}, t has {t.shape[1]}): no pair v != v'")
    qn, tn = F.normalize(q, dim=-1), F.normalize(t.detach(), dim=-1)
    per = sum(2.0 - 2.0 * (qn[:, v] * tn[:, w]).sum(dim=-1) for v, w in pairs)
    return _reduce(per, reduction)  # type: ignore[arg-type]


def brownian_directions(n: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random unit directions ``eps / ||eps||``, ``eps ~ N(0, I_dim)`` (uniform on the sphere), ``[n, dim]``."""
    check_positive_int("n", n)
    check_positive_int("dim", dim)
    eps = torch.randn(n, dim, generator=generator)
    return eps / eps.norm(dim=1, keepdim=True).clamp_min(1e-30)


def brownian_loss(q: torch.Tensor, r: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``L_B = mean_{b,v} cos(q_{b,v}, r_b)`` for predictions ``q`` ``[B, V, d]`` and directions ``r`` ``[B, d]``
    (one per image, shared by its views). Each image's term depends on that image only: no cross-sample terms."""
    _views("q", q)
    if not isinstance(r, torch.Tensor) or not r.is_floating_point():
        raise PriorkitError(f"r must be a floating-point tensor [batch, dim], got {getattr(r, 'dtype', type(r))}")
    check_shape("r", r, [q.shape[0], q.shape[2]])
    check_finite("r", r)
    rn = F.normalize(r.detach().to(q.dtype), dim=-1)
    per = (F.normalize(q, dim=-1) * rn.unsqueeze(1)).sum(dim=-1).mean(dim=1)
    return _reduce(per, reduction)


def singular_value_loss(z: torch.Tensor, form: str = "spectrum") -> torch.Tensor:
    """Global dispersion of one batch of embeddings ``z`` ``[N, d]``, centred over the batch.

    ``"spectrum"`` (the card's assumption): ``d * sum_k (p_k - 1/d)^2``, ``p_k = s_k^2 / sum s^2`` over the ``d``
    eigenvalues of ``Z^T Z`` (``torch.linalg.svdvals`` in float32; missing ones are 0), 0 iff all singular values
    are equal; with ``N < d`` it cannot reach 0 (the card: ``B >= d`` recommended). ``"vicreg_cov"``: VICReg's
    ``sum_{i != j} C_ij^2 / d`` with ``C`` the ``(N - 1)``-normalised covariance.
    """
    check_choice("form", form, SV_FORMS)
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        raise PriorkitError(f"z must be a floating-point tensor [batch, dim], got {getattr(z, 'dtype', type(z))}")
    check_shape("z", z, [None, None])
    if z.shape[0] < 2 or z.shape[1] == 0:
        raise PriorkitError(f"z must hold at least 2 embeddings of dimension >= 1, got shape {list(z.shape)}")
    check_finite("z", z)
    zc = (z - z.mean(dim=0, keepdim=True)).float()
    d = z.shape[1]
    if form == "vicreg_cov":
        cov = zc.T @ zc / (z.shape[0] - 1)
        off = cov - torch.diag(torch.diagonal(cov))
        return off.pow(2).sum() / d
    s2 = torch.linalg.svdvals(zc).pow(2)
    p = s2 / s2.sum().clamp_min(1e-30)
    if p.shape[0] < d:
        p = torch.cat([p, p.new_zeros(d - p.shape[0])])
    return d * (p - 1.0 / d).pow(2).sum()


def dispersion_terms(
    q: torch.Tensor,
    r: torch.Tensor | None,
    *,
    lambda_b: float = 0.1,
    lambda_sv: float = 1.0,
    sv_form: str = "spectrum",
) -> dict[str, torch.Tensor]:
    """The plug-in: ``{"brownian": lambda_B L_B, "sv": lambda_SV L_SV}`` on predictions ``q`` ``[B, V, d]`` (add
    them to any joint-embedding loss). ``r`` ``[B, d]``: this step's directions (:func:`brownian_directions`;
    needed when ``lambda_b > 0``, never reused across steps). ``L_SV`` is the mean over views of
    :func:`singular_value_loss` of the normalised predictions; a zero weight drops its term."""
    check_range("lambda_b", lambda_b, 0.0)
    check_range("lambda_sv", lambda_sv, 0.0)
    check_choice("sv_form", sv_form, SV_FORMS)
    _views("q", q)
    out: dict[str, torch.Tensor] = {}
    if lambda_b > 0:
        if r is None:
            raise PriorkitError("r (the Brownian directions [batch, dim]) is needed when lambda_b > 0")
        out["brownian"] = lambda_b * brownian_loss(q, r)
    if lambda_sv > 0:
        qn = F.normalize(q, dim=-1)
        out["sv"] = lambda_sv * torch.stack([singular_value_loss(qn[:, v], sv_form) for v in range(q.shape[1])]).mean()
    return out


# ------------------------------------------------------------------------------------------ the target
def ema_tau(step: int, total_steps: int, tau_base: float = 0.99, schedule: str = "cosine") -> float:
    """EMA weight at 0-based ``step`` of ``total_steps``: BYOL's ``1 - (1 - tau_base)(cos(pi step / K) + 1) / 2``
    (``tau_base`` at step 0, towards 1 at the end), or ``tau_base`` throughout (``"constant"``)."""
    check_positive_int("total_steps", total_steps)
    check_range("tau_base", tau_base, 0.0, 1.0)
    check_choice("schedule", schedule, TAU_SCHEDULES)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        raise PriorkitError(f"step must be an integer in [0, {total_steps}], got {step!r}")
    if schedule == "constant":
        return float(tau_base)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """In place: ``theta_t <- tau theta_t + (1 - tau) theta_o`` over the parameters (buffers, e.g. BatchNorm
    statistics, follow the target's own forward passes, as in BYOL / solo-learn)."""
    check_range("tau", tau, 0.0, 1.0)
    pt, po = dict(target.named_parameters()), dict(online.named_parameters())
    if list(pt) != list(po) or any(pt[k].shape != po[k].shape for k in pt):
        raise PriorkitError("target and online must have the same parameters (names and shapes): the target is a copy")
    keys = list(pt)
    torch._foreach_mul_([pt[k] for k in keys], tau)
    torch._foreach_add_([pt[k] for k in keys], [po[k].detach() for k in keys], alpha=1.0 - tau)


# ------------------------------------------------------------------------------------------- the model
def _mlp(d_in: int, hidden: int, d_out: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, hidden)]
    if norm == "layernorm":
        layers.append(nn.LayerNorm(hidden))
    elif norm == "batchnorm":
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(), nn.Linear(hidden, d_out)]
    return nn.Sequential(*layers)


class MSBRegNet(nn.Module):
    """The online network: ``encoder`` -> projector MLP (``feat_dim -> hidden -> proj_dim``) -> predictor MLP
    (``proj_dim -> hidden -> proj_dim``; the identity with ``predictor=False``).

    ``norm`` is the heads' normalisation layer (``"layernorm"`` by default: the card's check removes BatchNorm's
    implicit dispersion). ``forward`` gives the predictions ``q``, ``project`` the projections (what the target
    copy computes), ``embed`` the encoder features (``encoder.features`` when it has one) that a probe reads.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feat_dim: int,
        proj_dim: int = 64,
        hidden: int = 128,
        *,
        predictor: bool = True,
        norm: str = "layernorm",
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise PriorkitError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        check_positive_int("feat_dim", feat_dim)
        check_positive_int("proj_dim", proj_dim)
        check_positive_int("hidden", hidden)
        check_choice("norm", norm, NORMS)
        self.encoder = encoder
        self.projector = _mlp(feat_dim, hidden, proj_dim, norm)
        self.predictor = _mlp(proj_dim, hidden, proj_dim, norm) if predictor else nn.Identity()
        self.feat_dim, self.proj_dim = feat_dim, proj_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x) if hasattr(self.encoder, "features") else self.encoder(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.project(x))


class _Target(nn.Module):
    """The EMA copy of ``encoder`` + ``projector`` (same parameter names as the online pair)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder, self.projector = encoder, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder.features(x) if hasattr(self.encoder, "features") else self.encoder(x)
        return self.projector(f)


# -------------------------------------------------------------------------------------------- the hook
class MSBReg(Hook):
    """MSBReg as a training hook + recipe: the EMA target network, the ``V``-view batches and the loss.

    Use with :meth:`recipe` (``fit(net, data, hook.recipe(epochs), hooks=[hook])``); the model must expose
    ``encoder`` and ``projector`` modules and return the predictions from ``forward`` (:class:`MSBRegNet`). The
    target (a copy of encoder + projector taken at the start of the fit) is updated after every optimizer step
    with :func:`ema_tau` over the run's steps, and saved in checkpoints.

    - ``attraction``: ``"centroid"`` (MSBReg's ``L_MC``, logged as ``"mc"``), ``"byol"`` (BYOL's pairwise loss,
      ``"byol"``: with zero dispersion weights and 2 views, plain BYOL), or a callable ``(q, t) -> [B]`` (any
      joint-embedding loss, ``"attraction"``; with ``tau_base=0`` and ``tau_schedule="constant"`` the target is
      the online network with a stop-gradient, SimSiam's).
    - ``lambda_b`` / ``lambda_sv`` / ``sv_form``: the dispersive terms, logged weighted as ``"brownian"``/``"sv"``.
    - ``n_views`` views per image from ``augment(x, generator) -> view`` (``None``: identical views);
      ``target_views``: how many leading views the target sees (default all; fewer for multi-crop).
    """

    def __init__(
        self,
        *,
        n_views: int = 4,
        target_views: int | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        attraction: str | AttractionFn = "centroid",
        centroid: str = "target",
        lambda_b: float = 0.1,
        lambda_sv: float = 1.0,
        sv_form: str = "spectrum",
        tau_base: float = 0.99,
        tau_schedule: str = "cosine",
        log_rank: bool = True,
    ) -> None:
        check_positive_int("n_views", n_views, 2 if attraction == "byol" else 1)
        if target_views is not None:
            check_positive_int("target_views", target_views)
            if target_views > n_views:
                raise PriorkitError(f"target_views must be in [1, n_views={n_views}], got {target_views}")
        if not callable(attraction):
            check_choice("attraction", attraction, ATTRACTIONS)
        check_choice("centroid", centroid, CENTROIDS)
        check_range("lambda_b", lambda_b, 0.0)
        check_range("lambda_sv", lambda_sv, 0.0)
        check_choice("sv_form", sv_form, SV_FORMS)
        check_range("tau_base", tau_base, 0.0, 1.0)
        check_choice("tau_schedule", tau_schedule, TAU_SCHEDULES)
        if augment is not None and not callable(augment):
            raise PriorkitError(f"augment must be a callable (x, generator) -> view, got {type(augment).__name__}")
        self.n_views, self.target_views, self.augment = n_views, target_views, augment
        self.attraction, self.centroid = attraction, centroid
        self.lambda_b, self.lambda_sv, self.sv_form = lambda_b, lambda_sv, sv_form
        self.tau_base, self.tau_schedule, self.log_rank = tau_base, tau_schedule, log_rank
        self.target: _Target | None = None
        self.tau = tau_base
        self._online: _Target | None = None

    # -- the target ----------------------------------------------------------------------------------------
    def on_fit_start(self, state: RunState) -> None:
        model = state.model
        parts = [getattr(model, n, None) for n in ("encoder", "projector")]
        if not all(isinstance(p, nn.Module) for p in parts):
            raise PriorkitError(
                f"MSBReg: the model must have `encoder` and `projector` modules (e.g. MSBRegNet), got "
                f"{type(model).__name__}"
            )
        self._online = _Target(*parts)  # a view of the online modules (shares their parameters)
        self.target = copy.deepcopy(self._online).to(state.device)
        self.target.requires_grad_(False)

    def _need_target(self) -> _Target:
        if self.target is None:
            raise PriorkitError("MSBReg: no target network yet: the hook must run inside a fit (on_fit_start)")
        return self.target

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        target = self._need_target()
        total = max(1, state.num_epochs * max(1, state.steps_per_epoch))
        self.tau = ema_tau(min(state.step, total), total, self.tau_base, self.tau_schedule)
        ema_update_(target, self._online, self.tau)  # type: ignore[arg-type]

    # -- the batches ---------------------------------------------------------------------------------------
    def make_batch(self, state: RunState, local: torch.Tensor) -> Batch:
        """``n_views`` views of the global batch drawn from ``(config.seed, step)``; this rank's rows, view-major."""
        views, y, index = global_views(state, self.augment, self.n_views)
        return Batch(x=torch.cat(views), y=y, index=index)

    def directions(self, state: RunState, n_local: int, dim: int) -> torch.Tensor:
        """This step's Brownian directions: drawn for the global batch from ``(config.seed, step)`` (a stream
        apart from the views'), this rank's rows."""
        n = len(state.global_indices) or n_local
        g = torch.Generator().manual_seed((int(state.config.seed) * 1_000_003 + int(state.step)) * 7919 + 104_729)
        r = brownian_directions(n, dim, g)
        return r[rank_rows(n, state.rank, state.world_size)].to(state.device)

    # -- the loss ------------------------------------------------------------------------------------------
    def loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        """The step's named terms on this rank's ``[V * B]`` view-major inputs (the phase's ``loss``)."""
        target = self._need_target()
        v, b = self.n_views, len(batch)
        if not isinstance(batch.x, torch.Tensor) or batch.x.shape[0] != v * b:
            got = list(batch.x.shape) if isinstance(batch.x, torch.Tensor) else type(batch.x).__name__
            raise PriorkitError(f"MSBReg: batch.x must hold n_views * batch = {v} * {b} view-major rows, got {got}")
        out = state.net(batch.x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != v * b:
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise PriorkitError(f"MSBReg: the model's predictions must have shape [{v * b}, dim], got {got}")
        check_finite("MSBReg: the model's predictions (check batch.x and the learning rate)", out.detach())
        batch.output = out
        q = out.view(v, b, -1).transpose(0, 1)
        vt = self.target_views or v
        target.train(state.model.training)
        with torch.no_grad():
            t = target(batch.x[: vt * b]).view(vt, b, -1).transpose(0, 1)
        if t.shape[2] != q.shape[2]:
            raise PriorkitError(f"MSBReg: predictions have dim {q.shape[2]} but target projections {t.shape[2]}")
        n_glob = len(state.global_indices) or b
        share = state.world_size / n_glob  # sum of this rank's rows * share: its part of the global-batch mean
        terms: dict[str, torch.Tensor] = {}
        if callable(self.attraction):
            per = self.attraction(q, t)
            if not isinstance(per, torch.Tensor) or tuple(per.shape) not in ((), (b,)):
                got = list(per.shape) if isinstance(per, torch.Tensor) else type(per).__name__
                raise PriorkitError(f"MSBReg: attraction(q, t) must return a scalar or values [{b}], got {got}")
            terms["attraction"] = per * (b * share) if per.dim() == 0 else per.sum() * share
        elif self.attraction == "byol":
            terms["byol"] = byol_loss(q, t, reduction="none").sum() * share
        else:
            terms["mc"] = multiview_centroid_loss(q, t, self.centroid, reduction="none").sum() * share
        if self.lambda_b > 0:
            r = self.directions(state, b, q.shape[2])
            terms["brownian"] = self.lambda_b * brownian_loss(q, r, reduction="none").sum() * share
        qn = F.normalize(q, dim=-1)
        if self.lambda_sv > 0:  # on the global batch: every rank computes the same value (gradient all-reduced)
            gathered = [D.gather_with_grad(qn[:, i]) for i in range(v)]
            terms["sv"] = self.lambda_sv * torch.stack([singular_value_loss(z, self.sv_form) for z in gathered]).mean()
        if self.log_rank:
            state.log(eff_rank=effective_rank(D.all_gather_cat(qn[:, 0].detach())), tau=self.tau)
        return terms

    def recipe(self, epochs: int, optimizer: OptimizerFactory | None = None) -> Recipe:
        """One phase of ``epochs`` over every parameter (the run config's optimizer unless ``optimizer``) with
        the ``V``-view batches of :meth:`make_batch` and the loss of :meth:`loss` (no base cross-entropy)."""
        check_positive_int("epochs", epochs)
        phase = Phase("msbreg", epochs=epochs, optimizer=optimizer, make_batch=self.make_batch, loss=self.loss,
                      rescale=False)  # fmt: skip
        return Recipe([phase], loss_fn=None)

    # -- checkpoint ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        target = self._need_target()
        return {"target": {k: v.detach().clone() for k, v in target.state_dict().items()}, "tau": float(self.tau)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        target = self._need_target()
        saved, mine = state.get("target"), target.state_dict()
        if not isinstance(saved, dict) or sorted(saved) != sorted(mine):
            raise CheckpointMismatchError(
                f"MSBReg target in the checkpoint has keys {sorted(saved) if isinstance(saved, dict) else saved!r}, "
                f"this run's {sorted(mine)}"
            )
        bad = [k for k in mine if tuple(saved[k].shape) != tuple(mine[k].shape)]
        if bad:
            raise CheckpointMismatchError(f"MSBReg target tensors {bad} have other shapes in the checkpoint")
        target.load_state_dict(saved)
        self.tau = float(state["tau"])
