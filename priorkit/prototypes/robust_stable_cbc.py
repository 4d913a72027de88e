"""A Robust Prototype-Based Network with Interpretable RBF Classifier Foundations (Saralajew et al., AAAI 2025).

Classification-by-Components (CBC) detects learned *components* ``w_k`` in the input,
``d_k(x) = exp(-dist(x, w_k) / sigma_k)``, and lets each *reasoning concept* (one or more per class) combine
the detections with positive / negative requiredness. The original CBC normalises by the non-indefinite
mass, which the paper shows can give contradicting explanations. The *stable* CBC drops the indefinite state:
each concept owns a probability vector over the 2K joint events (component k, positive or negative),
``r_c = softmax(theta_c)``, and ``p_c(x) = d(x)^T (r+_c - r-_c) + sum_k r-_kc`` lies in [0, 1]. This is an RBF
network with weights ``r+ - r-`` and bias ``sum r-``, and because a perturbation of norm eps moves every
metric distance by at most eps, every ``d_k`` stays in ``[d_k / t, d_k t]`` with ``t = exp(eps / sigma_min)``.
Theorem 1 turns this into a certified radius ``rho(x) = sigma_min * ln(min_{j wrong} max_{i correct} t*_ij)``
(``t*_ij`` the positive root of ``a t^2 + b t + c``) and the robust loss ``relu(m - rho)`` maximises it.
The paper reports: the shallow robust stable CBC beats GLVQ, GTLVQ, RBF and the original CBC in certified robust
accuracy on MNIST at a small clean-accuracy cost.

Functional core (pure tensor functions): :func:`component_distances`, :func:`detection_probability`,
:func:`cbc_reasoning` (original), :func:`stable_cbc_reasoning`, :func:`reasoning_from_requiredness`,
:func:`decode_requiredness`, :func:`class_scores`, :func:`margin_loss`, :func:`rbf_certified_radius` (the
bound for any RBF head ``logits = W+ d - W- d + bias`` with ``W+-`` >= 0, the "RBF view"),
:func:`stable_cbc_certified_radius` (Theorem 1), :func:`squared_distance_radius` (the conversion for squared
Euclidean distances), :func:`robust_loss`, :func:`certified_accuracy`, :func:`pgd_l2`. Modules:
:class:`CBC` (original, baseline), :class:`StableCBC` (margin loss), :class:`RobustStableCBC` (robust loss; the
public entry); :func:`cbc_recipe` is the paper's plain Adam training with the component clip of the official
code, as a :class:`priorkit.train.Recipe` run by :class:`priorkit.train.Trainer` (no private loop).

Example::

    model = RobustStableCBC(64, 10, robust_margin=1.0)
    Trainer(model, TensorDataset(x, y), recipe=cbc_recipe(model, epochs=60),
            config=TrainConfig(batch_size=128, seed=0)).fit()
    radius = model.certified_radius(x_test, y_test)

Official code: nec-research/enlaight (``core/reasoning.py::stable_cbc_reasoning``,
``core/loss.py::robust_stable_cbc_loss``, ``models/CBC.py::RobustStableCBC.loss``). Followed there: the
broadcasting with masked max/min, the eps clamps, sigma = |sigma| + eps when trainable, the squared-distance
conversion ``-sqrt(D)/3 + sqrt(D/9 + rho/3)`` (conservative: ``2 sqrt(D) r + r^2`` would give a larger
radius), components initialised uniform in [0.45, 0.55] and clipped to [0, 1] after each step, requiredness
U[0.4, 0.6] and component priors softmax(U[0, 1]). Not followed: the official MNIST script trains with Adam 5e-3;
the card's (and the enlaight modules' default) 1e-2 is used. prototorch (si-cim/prototorch, ``CBCC``) was considered:
it has the original CBC only and no stable reasoning or certificate, so this is written here. Not built:
tangent distance / affine-subspace components, the deep (CNN) variant with spatial pooling (an ``encoder``
can be given; the radius then holds in its feature space), AutoAttack.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_batch,
    check_choice,
    check_labels,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.train import Batch, Phase, Recipe

if TYPE_CHECKING:
    from priorkit.train import RunState

DISTANCES = ("euclidean", "squared_euclidean")
LOSSES = ("margin", "robust")


# ----------------------------------------------------------------------------------------------------------
# functional core
# ----------------------------------------------------------------------------------------------------------
def component_distances(x: torch.Tensor, components: torch.Tensor, *, squared: bool = False) -> torch.Tensor:
    """Euclidean (or squared Euclidean) distances ``[B, K]`` between inputs ``[B, D]`` and components ``[K, D]``."""
    check_shape("x", x, [None, None])
    check_shape("components", components, [None, x.shape[1]])
    # no matrix-multiply shortcut: the certificate is checked against attacks, so distances must be accurate
    dist = torch.cdist(x, components, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.pow(2) if squared else dist


def detection_probability(distances: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``d_k = exp(-dist_k / sigma_k)`` (exponentially squashed negative distance); sigma shared or per component."""
    sigma_t = torch.as_tensor(sigma, dtype=distances.dtype, device=distances.device)
    if bool((sigma_t <= 0).any()):
        raise PriorkitError(f"sigma must be > 0, got min {float(sigma_t.min())}")
    return torch.exp(-distances / sigma_t)


def _check_detections(d: torch.Tensor) -> None:
    check_shape("detections", d, [None, None])
    if bool((d < 0).any()) or bool((d > 1).any()):
        raise PriorkitError("detections must be probabilities in [0, 1]")


def cbc_reasoning(
    detections: torch.Tensor,
    requiredness: torch.Tensor,
    component_prior: torch.Tensor | None = None,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Original CBC: ``p_c = sum_k pi_k [d_k r+_kc + (1 - d_k) r-_kc] / (sum_k pi_k (r+_kc + r-_kc) + eps)``.

    ``requiredness`` is ``[2, K, R]`` (positive, negative; their sum per entry is <= 1, the rest indefinite),
    ``component_prior`` ``[K]`` on the simplex (uniform when ``None``). Returns ``[B, R]``.
    """
    _check_detections(detections)
    k = detections.shape[1]
    check_shape("requiredness", requiredness, [2, k, None])
    if component_prior is None:
        component_prior = torch.full((k,), 1.0 / k, dtype=detections.dtype, device=detections.device)
    check_shape("component_prior", component_prior, [k])
    r = requiredness * component_prior.view(1, -1, 1)
    num = detections @ (r[0] - r[1]) + r[1].sum(0)
    return num / (r.sum(dim=(0, 1)) + eps)


def stable_cbc_reasoning(detections: torch.Tensor, reasoning: torch.Tensor) -> torch.Tensor:
    """Stable CBC: ``p_c = d^T (r+_c - r-_c) + sum_k r-_kc`` with ``reasoning = [r+; r-]`` of shape ``[2K, R]``.

    Each column of ``reasoning`` is a probability vector over the 2K joint events, so ``p_c`` lies in [0, 1].
    """
    _check_detections(detections)
    k = detections.shape[1]
    check_shape("reasoning", reasoning, [2 * k, None])
    pos, neg = reasoning[:k], reasoning[k:]
    return detections @ (pos - neg) + neg.sum(0)


def reasoning_from_requiredness(requiredness: torch.Tensor, component_probs: torch.Tensor) -> torch.Tensor:
    """Joint reasoning probabilities ``[pi * q; pi * (1 - q)]`` (``[2K, R]``) from requiredness ``q`` and class-wise
    component priors ``pi`` (both ``[K, R]``, ``pi`` column-wise on the simplex)."""
    check_shape("component_probs", component_probs, [None, None])
    check_shape("requiredness", requiredness, list(component_probs.shape))
    if bool((requiredness < 0).any()) or bool((requiredness > 1).any()):
        raise PriorkitError("requiredness must lie in [0, 1]")
    if bool((component_probs < 0).any()) or not torch.allclose(
        component_probs.sum(0), torch.ones_like(component_probs[0]), atol=1e-5
    ):
        raise PriorkitError("component_probs must be column-wise probability vectors (>= 0, sum 1)")
    return torch.cat([component_probs * requiredness, component_probs * (1 - requiredness)])


def decode_requiredness(reasoning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(requiredness r+/pi, component prior pi)`` from joint reasoning ``[2K, R]``; where ``pi = 0`` the
    requiredness is reported as 0.5 with a warning (the official code's convention)."""
    if reasoning.dim() != 2 or reasoning.shape[0] % 2:
        raise PriorkitError(f"reasoning must have shape [2K, R], got {list(reasoning.shape)}")
    k = reasoning.shape[0] // 2
    pi = reasoning[:k] + reasoning[k:]
    zero = pi == 0
    if bool(zero.any()):
        warnings.warn("some component priors are 0: their requiredness is reported as 0.5", UserWarning, stacklevel=2)
    req = torch.where(zero, torch.full_like(pi, 0.5), reasoning[:k] / torch.where(zero, torch.ones_like(pi), pi))
    return req, pi


def class_scores(concept_probs: torch.Tensor, concept_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class score = max over the class's reasoning concepts: ``[B, R] -> [B, C]``."""
    check_shape("concept_probs", concept_probs, [None, len(concept_labels)])
    onehot = F.one_hot(concept_labels, num_classes).to(concept_probs.dtype)  # [R, C]
    # scores are probabilities >= 0: masking with -1 picks the max over the class's own concepts
    masked = concept_probs.unsqueeze(-1) * onehot - (1 - onehot)
    return masked.max(dim=1).values


def margin_loss(scores: torch.Tensor, y: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Per-sample ``relu(max_{wrong} p - p_y + margin)`` on class probabilities ``[B, C]`` (original CBC, m=0.3)."""
    check_shape("y", y, [scores.shape[0]])
    correct = scores.gather(1, y.view(-1, 1)).squeeze(1)
    wrong = scores.masked_fill(F.one_hot(y, scores.shape[1]).bool(), -math.inf).max(1).values
    return F.relu(wrong - correct + margin)


def rbf_certified_radius(
    detections: torch.Tensor,
    w_pos: torch.Tensor,
    w_neg: torch.Tensor,
    bias: torch.Tensor,
    sigma: torch.Tensor | float,
    concept_labels: torch.Tensor,
    y: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Certified radius (in distance units) of an RBF head ``s_r = d^T w+_r - d^T w-_r + bias_r`` (``w+-`` >= 0).

    With ``t = exp(eps / sigma_min)`` every detection stays in ``[d/t, d t]``, so for a correct concept ``i``
    and a wrong one ``j`` ``s_i - s_j >= (a t^2 + b t + c) / t`` with ``a = -(D-_i + D+_j)``,
    ``b = bias_i - bias_j``, ``c = D+_i + D-_j``. The prediction of class ``y`` cannot change while
    ``t < min_j max_i t*_ij``; the radius is ``sigma_min * ln`` of that (negative when ``y`` is not predicted).
    ``a`` is clamped to <= -eps, the discriminant and ``t*`` to >= eps, all of which only shrink the radius.
    Shapes: detections ``[B, K]``, ``w_pos``/``w_neg`` ``[K, R]``, ``bias`` ``[R]``, labels ``[R]``, ``y`` ``[B]``.
    """
    _check_detections(detections)
    b_, k = detections.shape
    check_shape("w_pos", w_pos, [k, len(concept_labels)])
    check_shape("w_neg", w_neg, [k, len(concept_labels)])
    check_shape("bias", bias, [len(concept_labels)])
    check_shape("y", y, [b_])
    if bool((w_pos < 0).any()) or bool((w_neg < 0).any()):
        raise PriorkitError("w_pos and w_neg must be >= 0 (split signed weights with relu(W), relu(-W))")
    sigma_min = torch.as_tensor(sigma, dtype=detections.dtype, device=detections.device).min()
    if float(sigma_min.detach()) <= 0:
        raise PriorkitError(f"sigma must be > 0, got min {float(sigma_min.detach())}")
    dp, dn = detections @ w_pos, detections @ w_neg  # [B, R]
    a = -(dn.unsqueeze(2) + dp.unsqueeze(1))  # [B, i, j]
    c = dp.unsqueeze(2) + dn.unsqueeze(1)
    b = (bias.view(-1, 1) - bias.view(1, -1)).unsqueeze(0)
    e = torch.as_tensor(eps, dtype=detections.dtype, device=detections.device)
    a = torch.minimum(a, -e)
    t_star = -(b + torch.sqrt(torch.maximum(b * b - 4 * a * c, e))) / (2 * a)
    correct = (concept_labels.view(1, -1) == y.view(-1, 1)).to(detections.dtype)  # [B, R]
    if bool((correct.sum(1) == 0).any()) or bool((correct.sum(1) == len(concept_labels)).any()):
        raise PriorkitError("every label in y needs at least one reasoning concept of its own and one of another class")
    big = t_star.detach().abs().max() + 1.0
    best_i = (t_star - ((1 - correct) * big).unsqueeze(2)).max(dim=1).values  # [B, j]
    worst_j = (best_i + correct * big).min(dim=1).values  # [B]
    return sigma_min * torch.log(torch.maximum(worst_j, e))


def stable_cbc_certified_radius(
    detections: torch.Tensor,
    reasoning: torch.Tensor,
    sigma: torch.Tensor | float,
    concept_labels: torch.Tensor,
    y: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Theorem 1: the stable CBC radius, ``rho = sigma_min ln min_j max_i t*_ij`` (``b_ij = R-_i - R-_j``).

    The stable CBC is the RBF head with ``w+ = r+``, ``w- = r-``, ``bias = sum_k r-``.
    """
    k = detections.shape[1]
    check_shape("reasoning", reasoning, [2 * k, len(concept_labels)])
    pos, neg = reasoning[:k], reasoning[k:]
    return rbf_certified_radius(detections, pos, neg, neg.sum(0), sigma, concept_labels, y, eps)


def squared_distance_radius(
    rho: torch.Tensor, max_sq_distance: torch.Tensor, negative_loss_weight: float = 1.0
) -> torch.Tensor:
    """Input-space radius for squared Euclidean distances (official ``RobustStableCBC.loss``).

    ``rho`` bounds the change of every squared distance; for ``rho > 0`` the returned radius is
    ``-sqrt(D_max)/3 + sqrt(D_max/9 + rho/3)`` (``D_max`` the largest squared distance to a component), which
    keeps ``2 sqrt(D_max) r + 3 r^2 <= rho`` and so any change of a squared distance below ``rho``; for
    ``rho <= 0`` it returns ``rho * negative_loss_weight``.
    """
    check_shape("max_sq_distance", max_sq_distance, list(rho.shape))
    root = torch.sqrt(max_sq_distance)
    pos = -root / 3 + torch.sqrt(max_sq_distance / 9 + rho.abs() / 3)
    return torch.where(rho > 0, pos, rho * negative_loss_weight)


def robust_loss(radius: torch.Tensor, margin: float | None = None) -> torch.Tensor:
    """Per-sample robust loss: ``-radius`` without a margin, ``relu(margin - radius)`` with one."""
    if margin is None:
        return -radius
    check_range("margin", margin, 0.0, low_inclusive=False)
    return F.relu(margin - radius)


def certified_accuracy(radius: torch.Tensor, eps: float | list[float]) -> torch.Tensor | list[float]:
    """Fraction of points certified at ``eps`` (``radius >= eps``, with ``radius`` taken w.r.t. the true label, so
    a misclassified point has a negative radius); at ``eps = 0`` a point counts when ``radius > 0``."""
    if isinstance(eps, list):
        return [float(certified_accuracy(radius, e)) for e in eps]
    check_range("eps", eps, 0.0)
    ok = radius > 0 if eps == 0 else radius >= eps
    return ok.float().mean()


def pgd_l2(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    steps: int = 20,
    step_size: float | torch.Tensor | None = None,
    clip: tuple[float, float] | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L2 PGD on the class margin ``max_{wrong} s - s_y`` of ``score_fn(x) -> [B, C]``; returns ``x + delta``.

    ``||delta||_2 <= eps`` per sample (``eps`` a number or a ``[B]`` tensor of per-sample budgets); the step is
    normalised-gradient with size ``2.5 eps / steps`` by default; ``clip`` keeps the adversarial input in a box
    (data domain). The best (largest margin) iterate is kept.
    """
    check_positive_int("steps", steps)
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device).detach()
    if e.dim() == 0:
        check_range("eps", float(e), 0.0)
        e = e.expand(len(x))
    check_shape("eps", e, [len(x)])
    if bool((e < 0).any()):
        raise PriorkitError("eps must be >= 0")
    e = e.reshape(-1, 1)
    alpha = 2.5 * e / steps if step_size is None else torch.as_tensor(step_size, dtype=x.dtype).reshape(-1, 1)
    flat = x.reshape(len(x), -1)
    delta = torch.zeros_like(flat)
    if random_start:
        r = torch.randn(flat.shape, generator=generator, dtype=x.dtype)
        delta = r / r.norm(dim=1, keepdim=True) * e * torch.rand(len(x), 1, generator=generator, dtype=x.dtype)

    def margin(d: torch.Tensor) -> torch.Tensor:
        xa = (flat + d).reshape(x.shape)
        if clip is not None:
            xa = xa.clamp(*clip)
        s = score_fn(xa)
        correct = s.gather(1, y.view(-1, 1)).squeeze(1)
        wrong = s.masked_fill(F.one_hot(y, s.shape[1]).bool(), -math.inf).max(1).values
        return wrong - correct

    best = delta.clone()
    with torch.no_grad():
        best_m = margin(best)
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        m = margin(delta)
        (g,) = torch.autograd.grad(m.sum(), delta)
        with torch.no_grad():
            delta = delta + alpha * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            norm = delta.norm(dim=1, keepdim=True)
            delta = delta * torch.clamp(e / norm.clamp_min(1e-12), max=1.0)
            m = margin(delta)
            better = m > best_m
            best[better], best_m[better] = delta[better], m[better]
    out = (flat + best).reshape(x.shape)
    return out.clamp(*clip) if clip is not None else out


# ----------------------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------------------
class _ComponentModel(nn.Module):
    """Shared parts: components, (trainable) temperature, optional encoder, concept labels, the margin loss,
    input checks and the certificate; subclasses define the reasoning (``_concepts_from``) and its RBF view."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        num_components: int,
        concepts_per_class: int,
        *,
        distance: str,
        sigma: float | torch.Tensor,
        trainable_sigma: bool,
        shared_sigma: bool,
        component_range: tuple[float, float] | None,
        init_components: torch.Tensor | None,
        margin: float,
        encoder: nn.Module | None,
        generator: torch.Generator | None,
        sigma_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        check_positive_int("num_features", num_features)
        check_positive_int("num_classes", num_classes, 2)
        check_positive_int("num_components", num_components)
        check_positive_int("concepts_per_class", concepts_per_class)
        check_choice("distance", distance, DISTANCES)
        check_range("margin", margin, 0.0)
        if component_range is not None and not component_range[0] < component_range[1]:
            raise PriorkitError(f"component_range must be (low, high) with low < high, got {component_range}")
        self.num_classes, self.distance, self.component_range = num_classes, distance, component_range
        self.num_features, self.margin = num_features, margin
        self.trainable_sigma, self.sigma_eps, self.encoder = trainable_sigma, sigma_eps, encoder
        if init_components is None:  # official code: uniform in [0.45, 0.55]
            init_components = torch.rand(num_components, num_features, generator=generator) / 10 + 0.45
        check_shape("init_components", init_components, [num_components, num_features])
        self.components = nn.Parameter(init_components.clone().float())
        s = torch.as_tensor(sigma, dtype=torch.float32)
        if bool((s <= 0).any()):
            raise PriorkitError(f"sigma must be > 0, got {sigma}")
        s = s.reshape(1) if shared_sigma else (s.expand(num_components).clone() if s.numel() == 1 else s.flatten())
        if s.numel() not in (1, num_components):
            raise PriorkitError(f"sigma must be a scalar or have {num_components} entries, got {s.numel()}")
        if trainable_sigma:
            self._sigma = nn.Parameter(s.clone())
        else:
            self.register_buffer("_sigma", s.clone())
        labels = torch.arange(num_classes).repeat_interleave(concepts_per_class)
        self.register_buffer("concept_labels", labels)

    @property
    def squared(self) -> bool:
        return self.distance == "squared_euclidean"

    @property
    def sigma(self) -> torch.Tensor:
        """Positive temperatures: ``|sigma| + eps`` when trainable (official code)."""
        return self._sigma.abs() + self.sigma_eps if self.trainable_sigma else self._sigma

    # ----------------------------------------------------------------------------------- input boundary
    def check_input(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Refuse a wrong shape, dtype, an empty or non-finite batch ``x`` and labels ``y`` out of range."""
        x = as_tensor("x", x)
        check_batch("x", x)
        if self.encoder is None:
            check_shape("x", x, [None, self.num_features])
        if y is not None:
            check_labels("y", as_tensor("y", y), self.num_classes, length=len(x))
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x) if self.encoder is not None else x
        return z.reshape(len(z), -1)

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        return component_distances(self.features(x), self.components, squared=self.squared)

    def detections(self, x: torch.Tensor) -> torch.Tensor:
        return detection_probability(self.distances(x), self.sigma)

    def _concepts_from(self, det: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def concept_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self._concepts_from(self.detections(self.check_input(x)))

    def forward(self, x: torch.Tensor, *, parts: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """Class probabilities ``[B, C]`` (max over each class's reasoning concepts); ``parts=True`` returns
        ``{"distances", "detections", "scores"}`` (what the training loss needs, through one forward)."""
        dist = self.distances(self.check_input(x))
        det = detection_probability(dist, self.sigma)
        scores = class_scores(self._concepts_from(det), self.concept_labels, self.num_classes)
        return {"distances": dist, "detections": det, "scores": scores} if parts else scores

    def loss_from_parts(self, parts: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Batch loss from ``forward(x, parts=True)``: the margin loss (original / stable CBC baselines)."""
        return margin_loss(parts["scores"], y, self.margin).mean()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (checked inputs)."""
        x = self.check_input(x, y)
        return self.loss_from_parts(self(x, parts=True), as_tensor("y", y))

    @torch.no_grad()
    def project(self) -> None:
        """Constraints after each optimiser step: components clipped to ``component_range``."""
        if self.component_range is not None:
            self.components.clamp_(*self.component_range)

    def certified_radius(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Certified radius per sample w.r.t. ``y`` (default: the prediction), in input units for the shallow
        model (feature units with an encoder); squared distances are converted as the official code does."""
        parts = self(self.check_input(x, y), parts=True)
        y = parts["scores"].argmax(1) if y is None else as_tensor("y", y)
        w_pos, w_neg, bias = self.head_weights()
        rho = rbf_certified_radius(parts["detections"], w_pos, w_neg, bias, self.sigma, self.concept_labels, y)
        if self.squared:
            rho = squared_distance_radius(rho, parts["distances"].max(1).values)
        return rho


_BASE_DEFAULTS: dict[str, Any] = dict(
    distance="euclidean", sigma=1.0, trainable_sigma=True, shared_sigma=False, component_range=(0.0, 1.0),
    init_components=None, margin=0.3, encoder=None, generator=None,
)  # fmt: skip


def _split_base(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the shared constructor settings (with their defaults) out of ``kwargs``."""
    return {k: kwargs.pop(k, v) for k, v in _BASE_DEFAULTS.items()}


class CBC(_ComponentModel):
    """Original CBC (baseline): requiredness by the breaking-chopstick encoding ``q in [0,1]^2``
    (``r+ = q0``, ``r- = (1 - q0) q1``, clamped to [0, 1] after every step) and a global component prior.

    Shared keyword settings (as :class:`StableCBC`): ``distance``, ``sigma``, ``trainable_sigma``,
    ``shared_sigma``, ``component_range``, ``init_components``, ``margin`` (0.3), ``encoder``, ``generator``.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        num_components: int = 20,
        concepts_per_class: int = 2,
        *,
        trainable_prior: bool = False,
        **kwargs: Any,
    ) -> None:
        base = _split_base(kwargs)
        if kwargs:
            raise PriorkitError(f"CBC got unknown keyword(s) {sorted(kwargs)}; valid: {sorted(_BASE_DEFAULTS)}")
        super().__init__(num_features, num_classes, num_components, concepts_per_class, **base)
        r = num_classes * concepts_per_class
        self.chopstick = nn.Parameter(0.6 - 0.2 * torch.rand(2, num_components, r, generator=base["generator"]))
        prior_logits = torch.zeros(num_components)
        self.prior_logits = nn.Parameter(prior_logits) if trainable_prior else None
        if not trainable_prior:
            self.register_buffer("_prior_logits", prior_logits)

    @property
    def requiredness(self) -> torch.Tensor:
        q = self.chopstick
        return torch.stack([q[0], (1 - q[0]) * q[1]])

    @property
    def component_prior(self) -> torch.Tensor:
        logits = self.prior_logits if self.prior_logits is not None else self._prior_logits
        return torch.softmax(logits, 0)

    def _concepts_from(self, det: torch.Tensor) -> torch.Tensor:
        return cbc_reasoning(det, self.requiredness, self.component_prior)

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The RBF view: ``p_c = d^T w+_c - d^T w-_c + bias_c`` with the normalisation folded in."""
        r = self.requiredness * self.component_prior.view(1, -1, 1)
        z = r.sum(dim=(0, 1)) + 1e-7
        return r[0] / z, r[1] / z, r[1].sum(0) / z

    @torch.no_grad()
    def project(self) -> None:
        super().project()
        self.chopstick.clamp_(0.0, 1.0)


class StableCBC(_ComponentModel):
    """Stable CBC: per concept a softmax over the 2K joint (component, positive/negative) events.

    ``loss='margin'`` (default, margin 0.3) is the non-robust model; ``loss='robust'`` is the robust loss
    ``relu(robust_margin - radius)`` (``robust_margin=None``: ``-radius``) of :class:`RobustStableCBC`.
    ``init_requiredness`` / ``init_component_probs`` (``[K, R]``) initialise the joint probabilities
    (official defaults: U[0.4, 0.6] and softmax(U[0, 1]) per column). Shared keyword settings: ``distance``
    (``"euclidean"``), ``sigma`` (1.0), ``trainable_sigma`` (True), ``shared_sigma`` (False),
    ``component_range`` ((0, 1)), ``init_components``, ``margin`` (0.3), ``encoder``, ``generator``.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        num_components: int = 20,
        concepts_per_class: int = 2,
        *,
        init_requiredness: torch.Tensor | None = None,
        init_component_probs: torch.Tensor | None = None,
        loss: str = "margin",
        robust_margin: float | None = 1.58,
        negative_loss_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        base = _split_base(kwargs)
        if kwargs:
            raise PriorkitError(
                f"{type(self).__name__} got unknown keyword(s) {sorted(kwargs)}; valid: {sorted(_BASE_DEFAULTS)}"
            )
        super().__init__(num_features, num_classes, num_components, concepts_per_class, **base)
        check_choice("loss", loss, LOSSES)
        if robust_margin is not None:
            check_range("robust_margin", robust_margin, 0.0, low_inclusive=False)
        check_range("negative_loss_weight", negative_loss_weight, 0.0)
        self.loss_kind, self.robust_margin = loss, robust_margin
        self.negative_loss_weight = negative_loss_weight
        r, g = num_classes * concepts_per_class, base["generator"]
        if init_requiredness is None:
            init_requiredness = 0.6 - 0.2 * torch.rand(num_components, r, generator=g)
        if init_component_probs is None:
            init_component_probs = torch.softmax(torch.rand(num_components, r, generator=g), 0)
        joint = reasoning_from_requiredness(init_requiredness, init_component_probs)
        self.reasoning_logits = nn.Parameter(torch.log(joint))

    @property
    def reasoning(self) -> torch.Tensor:
        """Joint probabilities ``[2K, R]``: rows ``:K`` positive, ``K:`` negative; columns sum to 1."""
        return torch.softmax(self.reasoning_logits, 0)

    def requiredness(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r+ / pi, pi)``: the interpretable requiredness and class-wise component prior."""
        return decode_requiredness(self.reasoning.detach())

    def _concepts_from(self, det: torch.Tensor) -> torch.Tensor:
        return stable_cbc_reasoning(det, self.reasoning)

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.components.shape[0]
        r = self.reasoning
        return r[:k], r[k:], r[k:].sum(0)

    def loss_from_parts(self, parts: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "margin":
            return super().loss_from_parts(parts, y)
        rho = stable_cbc_certified_radius(parts["detections"], self.reasoning, self.sigma, self.concept_labels, y)
        if self.squared:  # official: positive part converted to input units, negative part weighted
            rho = squared_distance_radius(rho, parts["distances"].max(1).values, self.negative_loss_weight)
        return robust_loss(rho, self.robust_margin).mean()


class RobustStableCBC(StableCBC):
    """Stable CBC trained with the robust loss (official shallow default ``robust_margin=1.58``); the module's
    public entry. Train it with :func:`cbc_recipe` through :class:`priorkit.train.Trainer`."""

    def __init__(
        self, num_features: int, num_classes: int, *args: Any, robust_margin: float | None = 1.58, **kwargs: Any
    ) -> None:
        kwargs.setdefault("loss", "robust")
        if kwargs["loss"] != "robust":
            raise PriorkitError(f"RobustStableCBC uses loss='robust', got loss={kwargs['loss']!r}")
        super().__init__(num_features, num_classes, *args, robust_margin=robust_margin, **kwargs)


def median_init_sigma(x: torch.Tensor, components: torch.Tensor) -> float:
    """sigma0 = median sample-to-component Euclidean distance (median initial detection about e^-1)."""
    x = as_tensor("x", x)
    check_batch("x", x)
    return float(torch.cdist(x.reshape(len(x), -1), components).median())


# ----------------------------------------------------------------------------------------------------------
# training recipe
# ----------------------------------------------------------------------------------------------------------
def cbc_recipe(model: _ComponentModel, *, epochs: int = 40, lr: float = 1e-2) -> Recipe:
    """The paper's plain Adam training of any CBC model as one engine phase: ``model``'s loss (margin or robust)
    on each batch, the constraints (component clip, chopstick clamp) applied after every optimiser step.

    The projection runs right before each forward and once at the end of the phase, which is the same
    trajectory as after each step (nothing reads the parameters in between) and keeps the step on the
    engine's DDP path. Batch size and seed come from the run's :class:`~priorkit.train.TrainConfig`.
    """
    if not isinstance(model, _ComponentModel):
        raise PriorkitError(f"model must be a CBC / StableCBC / RobustStableCBC, got {type(model).__name__}")
    check_positive_int("epochs", epochs)
    check_range("lr", lr, 0.0, low_inclusive=False)

    def forward(net: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        check_labels("y", batch.y, model.num_classes, length=len(batch.y))  # x is checked by the forward
        model.project()
        return net(batch.x, parts=True)

    def loss(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": model.loss_from_parts(batch.output, batch.y)}

    def finish(state: RunState) -> None:
        model.project()
        model.eval()

    return Recipe(
        [
            Phase(
                "fit", epochs=epochs, forward=forward, loss=loss, on_end=finish,
                optimizer=lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr),
            )
        ],
        loss_fn=None,
    )  # fmt: skip


SPEC = MethodSpec(
    status="implemented",
    entry="RobustStableCBC",
    missing="tangent-distance / affine-subspace components, a deep CNN variant with spatial pooling and AutoAttack "
    "(a 20-step L2 PGD is used) not built",
    presets={
        "paper": {"num_components": 20, "concepts_per_class": 1, "distance": "euclidean", "robust_margin": 1.58,
                  "trainable_sigma": True, "component_range": (0.0, 1.0), "lr": 1e-2, "batch_size": 128},
        "small": {"num_components": 20, "concepts_per_class": 2, "distance": "euclidean", "robust_margin": 1.0,
                  "sigma": "median_init_sigma(x, init_components)", "component_range": (0.0, 1.0), "lr": 1e-2,
                  "batch_size": 128, "epochs": 60},
    },
)  # fmt: skip

__all__ = [
    "CBC",
    "RobustStableCBC",
    "StableCBC",
    "cbc_reasoning",
    "cbc_recipe",
    "certified_accuracy",
    "class_scores",
    "component_distances",
    "decode_requiredness",
    "detection_probability",
    "margin_loss",
    "median_init_sigma",
    "pgd_l2",
    "rbf_certified_radius",
    "reasoning_from_requiredness",
    "robust_loss",
    "squared_distance_radius",
    "stable_cbc_certified_radius",
    "stable_cbc_reasoning",
]
