"""Few-Shot Class-Incremental Learning via Training-Free Prototype Calibration (TEEN), Wang et al., NeurIPS 2023.

In few-shot class-incremental learning a backbone trained on many base classes is frozen, and each new class
gets the mean feature of its K shots as its prototype in a cosine classifier. TEEN observes that new-class
test images are mostly misclassified *into base classes*, and calibrates each new prototype, once per session
and without training, towards a mix of the base prototypes weighted by their softmax similarity to it:

    s_ni = softmax_i(tau * <p̂_n, b̂_i>),  Δ_n = normalize(Σ_i s_ni b̂_i),  p_n <- (1 - alpha) p̂_n + alpha Δ_n

(paper Eq. 3-4; official code ``models/teen/Network.py::MYNET.soft_calibration``). Base prototypes are the
class means of the base training images (``replace_base_fc``) and never change; inference is a cosine
classifier ``t * cos(f(x), w_c)`` over all seen classes. The paper reports: the best last-session accuracy on
miniImageNet / CUB200 / CIFAR100 (+1.6 / +2.4 / +0.5 over the runner-up), mostly from new-class accuracy.
With ``alpha=0`` TEEN is exactly the plain prototype classifier (PyCIL's SimpleCIL), the baseline.

Defaults follow the official code: ``tau`` (``softmax_t``) 16, ``alpha`` (``shift_weight``) 0.5 (its argparse
default, used on miniImageNet and CUB; CIFAR-100 uses 0.1), classifier temperature ``t`` 16. Configurable as the
card asks: the calibration pool (``"base"`` as in the paper, or ``"seen"``: all earlier classes) and
``new_mode`` (``"cos"`` as in the paper; ``"dot"`` uses the calibrated prototypes un-normalised, as the
official code stores them). PyCIL's SimpleCIL learner and easyfsl's PrototypicalNetworks were considered;
neither calibrates prototypes nor exposes a session loop as plain functions, so the math is written here.

Functional core: :func:`class_means`, :func:`calibration_weights`, :func:`teen_calibrate`,
:func:`cosine_logits`. Entry: :class:`TEEN` (a frozen backbone + ``TEENHead``, the prototype buffer on
features: checkpointable, gathers features across ranks under DDP, refuses non-finite features before writing).
TEEN is training-free: the base session is an ordinary cosine-classifier fit through ``priorkit.train`` (see
``priorkit.experiments.teen``). Presets in ``SPEC``: ``paper`` = ``small`` (the official defaults are used
unchanged on digits).

Example:

>>> import torch
>>> from priorkit.models import MLP
>>> g = torch.Generator().manual_seed(0)
>>> backbone = MLP(8, (16,), 4)                      # any module with .features(x)
>>> model = TEEN(backbone, num_classes=6, num_base=4, alpha=0.5, tau=16.0)
>>> model.fit_base(torch.randn(40, 8, generator=g), torch.arange(40) % 4)
>>> _ = model.add_session(torch.randn(10, 8, generator=g), 4 + torch.arange(10) % 2)
>>> model(torch.randn(3, 8, generator=g)).shape     # logits over the 6 seen classes
torch.Size([3, 6])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    PriorkitError,
    check_choice,
    check_finite,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.nn.distributed import all_gather_cat, is_dist

__all__ = ["TEEN", "calibration_weights", "class_means", "cosine_logits", "teen_calibrate"]

POOLS = ("base", "seen")
NEW_MODES = ("cos", "dot")


# ----------------------------------------------------------------------------------------------- functional core


def class_means(features: torch.Tensor, labels: torch.Tensor, classes: list[int] | torch.Tensor) -> torch.Tensor:
    """Mean feature of each class in ``classes`` (in that order), ``[len(classes), D]``.

    The mean does not depend on the order of the examples. Every class must have at least one example.
    """
    check_shape("features", features, [None, None])
    check_shape("labels", labels, [features.shape[0]])
    classes = torch.as_tensor(classes, dtype=torch.long, device=labels.device)
    onehot = (labels.unsqueeze(0) == classes.unsqueeze(1)).to(features.dtype)  # [C, N]
    counts = onehot.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        missing = classes[(counts.squeeze(1) == 0)].tolist()
        raise PriorkitError(f"labels hold no example of class(es) {missing}; every class needs >= 1 example")
    return onehot @ features / counts


def calibration_weights(new_protos: torch.Tensor, base_protos: torch.Tensor, tau: float = 16.0) -> torch.Tensor:
    """``s_ni = softmax_i(tau * cos(p_n, b_i))``: one row on the simplex per new prototype, ``[N_new, N_base]``."""
    check_range("tau", tau, 0.0)
    check_shape("new_protos", new_protos, [None, None])
    check_shape("base_protos", base_protos, [None, new_protos.shape[1]])
    if base_protos.shape[0] == 0:
        raise PriorkitError("base_protos must hold at least one prototype")
    sim = F.normalize(new_protos, dim=-1) @ F.normalize(base_protos, dim=-1).T
    return torch.softmax(tau * sim, dim=1)


def teen_calibrate(
    new_protos: torch.Tensor,
    base_protos: torch.Tensor,
    alpha: float = 0.5,
    tau: float = 16.0,
    *,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """TEEN's calibrated prototypes ``(1 - alpha) p̂_n + alpha normalize(Σ_i s_ni b̂_i)`` (paper Eq. 3-4).

    ``new_protos`` ``[N_new, D]`` (class means of the shots), ``base_protos`` ``[N_base, D]``. The result is not
    re-normalised (as in the official code); ``alpha=0`` gives the normalised means. With
    ``return_weights=True`` also returns the similarity weights ``s``.
    """
    check_range("alpha", alpha, 0.0, 1.0)
    s = calibration_weights(new_protos, base_protos, tau)
    delta = F.normalize(s @ F.normalize(base_protos, dim=-1), dim=-1)
    out = (1.0 - alpha) * F.normalize(new_protos, dim=-1) + alpha * delta
    return (out, s) if return_weights else out


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, temperature: float = 16.0) -> torch.Tensor:
    """``t * cos(f, w_c)``: the cosine classifier of the base session and of inference."""
    check_shape("features", features, [None, None])
    check_shape("prototypes", prototypes, [None, features.shape[1]])
    return temperature * F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T


# ---------------------------------------------------------------------------------------------------- wrappers


def _gather(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' examples (identity on one process), so that every rank computes the same prototypes."""
    if is_dist():
        return all_gather_cat(features), all_gather_cat(labels)
    return features, labels


def _check_session_input(features: torch.Tensor, labels: torch.Tensor, dim: int) -> None:
    """Features ``[N, dim]`` finite and non-empty, labels ``[N]`` integer: checked before any prototype is written."""
    check_shape("features", features, [None, dim])
    if features.shape[0] == 0:
        raise PriorkitError("features must be a non-empty batch, got 0 rows")
    if not features.is_floating_point():
        raise PriorkitError(f"features must be floating point, got dtype {features.dtype}")
    check_finite("features", features)
    check_shape("labels", labels, [features.shape[0]])
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise PriorkitError(f"labels must hold integer class indices, got dtype {labels.dtype}")


class TEENHead(nn.Module):
    """A prototype classifier on features that grows by sessions, with TEEN's calibration of new prototypes.

    ``prototypes`` is a ``[num_classes, D]`` buffer (rows beyond ``num_seen`` unused), so a state dict saved at
    any session loads into a fresh head. ``fit_base`` writes the base means; ``add_session`` writes the next
    classes' means, calibrated against the base prototypes (``pool="base"``) or all earlier classes
    (``pool="seen"``). ``alpha=0`` is the uncalibrated prototype classifier.
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        num_base: int,
        *,
        alpha: float = 0.5,
        tau: float = 16.0,
        temperature: float = 16.0,
        pool: str = "base",
        new_mode: str = "cos",
    ) -> None:
        super().__init__()
        check_positive_int("feature_dim", feature_dim)
        check_positive_int("num_base", num_base)
        check_positive_int("num_classes", num_classes, num_base)
        check_range("alpha", alpha, 0.0, 1.0)
        check_range("tau", tau, 0.0)
        check_range("temperature", temperature, 0.0, low_inclusive=False)
        check_choice("pool", pool, POOLS)
        check_choice("new_mode", new_mode, NEW_MODES)
        self.feature_dim, self.num_classes, self.num_base = feature_dim, num_classes, num_base
        self.alpha, self.tau, self.temperature, self.pool, self.new_mode = alpha, tau, temperature, pool, new_mode
        self.register_buffer("prototypes", torch.zeros(num_classes, feature_dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @property
    def num_seen(self) -> int:
        return int(self.seen)

    @torch.no_grad()
    def fit_base(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Base prototypes = class means of the base training features (``replace_base_fc``)."""
        _check_session_input(features, labels, self.feature_dim)
        features, labels = _gather(features, labels)
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_base:
            raise PriorkitError(f"base labels must lie in [0, {self.num_base - 1}]")
        self.prototypes[: self.num_base] = class_means(features, labels, list(range(self.num_base))).to(
            self.prototypes.dtype
        )
        self.seen.fill_(self.num_base)

    @torch.no_grad()
    def add_session(self, features: torch.Tensor, labels: torch.Tensor, *, calibrate: bool = True) -> torch.Tensor:
        """Add the classes of one session from their shots; returns their (calibrated) prototypes.

        The session's labels must be the next consecutive classes ``num_seen .. num_seen + way - 1``.
        """
        if self.num_seen == 0:
            raise PriorkitError("call fit_base before add_session")
        _check_session_input(features, labels, self.feature_dim)
        features, labels = _gather(features, labels)
        new = sorted(int(c) for c in torch.unique(labels))
        want = list(range(self.num_seen, self.num_seen + len(new)))
        if new != want or want[-1] >= self.num_classes:
            raise PriorkitError(
                f"session labels must be the next classes {self.num_seen}..{self.num_seen + len(new) - 1} "
                f"(and < num_classes={self.num_classes}), got {new}"
            )
        protos = class_means(features, labels, new).to(self.prototypes.dtype)
        if calibrate:
            ref = self.prototypes[: self.num_base if self.pool == "base" else self.num_seen]
            protos = teen_calibrate(protos, ref, self.alpha, self.tau)
        self.prototypes[want[0] : want[-1] + 1] = protos
        self.seen.fill_(want[-1] + 1)
        return protos

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits over the seen classes: cosine (``t * cos``) or, with ``new_mode="dot"``, ``t * <f, w>``."""
        if self.num_seen == 0:
            raise PriorkitError("the head has no prototypes yet: call fit_base first")
        w = self.prototypes[: self.num_seen]
        if self.new_mode == "dot":
            check_shape("features", features, [None, self.feature_dim])
            return self.temperature * features @ w.T
        return cosine_logits(features, w, self.temperature)


class TEEN(nn.Module):
    """A frozen backbone (any module with ``features(x)``) and a :class:`TEENHead`; inputs in, logits out."""

    def __init__(self, backbone: nn.Module, num_classes: int, num_base: int, **head_kwargs: Any) -> None:
        super().__init__()
        if not callable(getattr(backbone, "features", None)):
            raise PriorkitError("backbone must have a features(x) method returning [N, D] features")
        self.backbone = backbone
        dim = getattr(backbone, "feature_dim", None)
        if dim is None:
            raise PriorkitError("backbone must expose feature_dim (the size of features(x))")
        self.head = TEENHead(int(dim), num_classes, num_base, **head_kwargs)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Backbone features in eval mode (the test-time transform: no augmentation, no BN update)."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
            raise PriorkitError(f"x must be a non-empty batch [N, ...], got shape {list(getattr(x, 'shape', []))}")
        if not x.is_floating_point():
            raise PriorkitError(f"x must be floating point, got dtype {x.dtype}")
        check_finite("x (the inputs whose features become prototypes)", x)
        was = self.backbone.training
        self.backbone.eval()
        out = torch.cat([self.backbone.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        self.backbone.train(was)
        return out

    def fit_base(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.head.fit_base(self.embed(x), y)

    def add_session(self, x: torch.Tensor, y: torch.Tensor, *, calibrate: bool = True) -> torch.Tensor:
        return self.head.add_session(self.embed(x), y, calibrate=calibrate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(x))


SPEC = MethodSpec(
    status="implemented",
    entry="TEEN",
    missing=(
        "CIFAR-100/miniImageNet/CUB loaders and the ResNet-20/18 base-session schedules not built: the experiment's "
        "base session is a small conv net pretrained by priorkit on Fashion-MNIST classes 0-4 (zoo "
        "fmnist_conv_base5), the new classes 5-9 come in few-shot sessions"
    ),
    presets={
        "paper": {"alpha": 0.5, "tau": 16.0, "temperature": 16.0, "pool": "base", "new_mode": "cos"},
        "small": {"alpha": 0.5, "tau": 16.0, "temperature": 16.0, "pool": "base", "new_mode": "cos"},
    },
)
