"""Self-Tuning Networks: Bilevel Optimization of Hyperparameters using Structured Best-Response Functions (STN),
MacKay, Vicol, Lorraine, Duvenaud and Grosse, ICLR 2019.

Tuning regularization hyperparameters (dropout rates, augmentation strengths) by repeated training is expensive
and gives fixed values. An STN approximates the best-response map ``lambda -> w*(lambda)`` inside one network by
gating every "hyper" layer's output with a linear function of the hyperparameters, and then alternates two kinds of
steps in one training run: weight steps on the training set with per-example perturbed hyperparameters, and
hyperparameter steps on the validation set, whose gradient reaches ``lambda`` only through that gate. The
hyperparameters follow a schedule rather than a fixed value; the paper reports lower validation/test loss than grid
search, random search and Bayesian optimization on CIFAR-10 (AlexNet, dropouts, jitters, cutout) and PTB.

Equations (card regularizers-theory.md, Sec. 4 of the paper; official code asteroidhouse/self-tuning-networks):

- hyperparameters live unconstrained: value ``v = lo + (hi - lo) sigmoid(u)`` (the "stretched sigmoid"), start
  ``u0 = logit((v0 - lo) / (hi - lo))``; discrete ones are ``floor(v)`` (cut-out length in ``[0, 25)`` gives
  0..24); dropout is capped at 0.9. The hypernet input is ``u`` itself (the code's identity ``hnet_fcn``).
- STN layer (Eq. 8-9, ``HyperLinear``), for a per-example hyper vector ``u_b`` in ``R^H``::

      y_b = s (W_e x_b + b_e) + (V_w u_b) * (W_h x_b) + (V_b u_b) * b_h

  ``W_e, b_e`` elementary and ``W_h, b_h`` hyper weights (both ``U(+-1/sqrt(fan_in))``), ``V = [V_w; V_b]`` a
  bias-free ``Linear(H -> 2 out)`` initialised ``N(0, 0.01^2)``, ``s`` a learned scalar initialised 1. The
  convolution is the same per output channel.
- perturbation (Sec. 4.3): ``u~_b = u + softplus(rho) * eps_b``, ``eps_b ~ N(0, I)``, one draw per example; its
  entropy ``H(rho) = sum_k log(softplus(rho_k) sqrt(2 pi e))``; ``softplus(rho0) = 0.5``.
- alternation (Alg. 1): ``T_train`` weight steps (train mode, perturbed ``u~``, the regularizers applied with the
  per-example constrained values, detached; loss = training CE; SGD on every network weight), then ``T_val``
  hyper steps (eval mode: no dropout, no augmentation; ``u~ = u``, or perturbed when the scales are tuned;
  loss = validation CE - ``tau`` H(rho); Adam on ``u`` and, when tuning scales, on ``rho``). The training loss is
  never differentiated with respect to ``u``, which is why discrete and augmentation hyperparameters work.
  Warm-up: ``warmup_epochs`` of weight steps only.

How it runs in the engine: one :class:`priorkit.train.Phase` of weight steps (:meth:`STN.phase`: SGD over the
model, the forward :func:`stn_forward` that feeds each example its hyper vector) and the hook :class:`STN`, which
draws the per-example hyperparameters in ``transform_batch`` (and applies the input-noise augmentation there, "in
the loader"), and performs the hyper step(s) at ``on_step_end`` on a validation batch with its own Adam, after
every ``T_train`` weight steps. The hook's state -- ``u``, ``rho``, its Adam, its random generator, the step
counter and the validation cursor -- is in its ``state_dict``, so a resumed run is bit-identical. Under DDP every
rank draws the same global perturbations / validation batch from that generator and takes its rows, and the
hyper-gradient is summed over ranks, so ``u`` stays identical on every rank (the per-example dropout masks come from
the global torch RNG, as any dropout's do).

Model protocol: a hyper-conditioned model has ``forward(x, hparams=None)`` with ``hparams`` the ``[B, H]``
unconstrained per-example vectors, and a buffer ``stn_hparams`` of shape ``[H]`` (the ``u`` used when ``hparams``
is ``None``: prediction after training). The hook writes ``u`` into that buffer after every hyper step.
:class:`StnMLP` follows it; :class:`StnLinear` / :class:`StnConv2d` build others.

Library considered: no maintained library offers STN layers or the bilevel alternation (the official repository
is research code with a private loop, Optuna/Ray Tune do black-box search); everything here is written by hand on
``torch.nn.functional``. Not built: the LSTM variants (PTB), colour-jitter and cut-out augmentations on images
(the discrete transform is provided and tested), early stopping with the non-monotone learning-rate decay.

Functional core: :func:`stretched_logit`, :func:`stretched_sigmoid`, :func:`hparam_values`, :func:`perturb`,
:func:`perturbation_entropy`, :func:`per_example_dropout`, :func:`stn_linear`, :func:`stn_conv2d`. Layers:
:class:`StnLinear`, :class:`StnConv2d`, :class:`StnMLP`; the space: :class:`Hyper`, :class:`HyperSpace`.
Entry: the hook :class:`STN`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    CheckpointMismatchError,
    NonFiniteError,
    PriorkitError,
    check_choice,
    check_finite,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.nn import distributed as D
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import Phase

__all__ = [
    "STN",
    "Hyper",
    "HyperSpace",
    "StnConv2d",
    "StnLinear",
    "StnMLP",
    "hparam_values",
    "per_example_dropout",
    "perturb",
    "perturbation_entropy",
    "stn_conv2d",
    "stn_forward",
    "stn_linear",
    "stretched_logit",
    "stretched_sigmoid",
]

SPEC = MethodSpec(
    status="implemented",
    entry="STN",
    missing="LSTM variants (PTB) and the image augmentation hyperparameters (colour jitter, cut-out) not built "
    "(the discrete floor transform is, and is tested); no early stopping / non-monotone lr decay; the digits check "
    "tunes two dropout rates and an additive Gaussian input-noise scale (range (0, 1), an assumption: the "
    "official 'inscale' is a multiplicative jitter) on an MLP, 160 epochs (CPU budget)",
    presets={
        # official CNN defaults (cnn/hypertrain.py + README): T_train 2, T_val 1, warm-up 5 epochs, Adam 3e-3 on
        # u and rho, perturbation scale 0.5, entropy weight 1e-3 (README; code default 1e-5), scales tuned;
        # weight steps SGD 0.01 momentum 0.9, batch 128, lr x0.1 at epochs 60/120/160 (phase args)
        "paper": {"train_steps": 2, "val_steps": 1, "warmup_epochs": 5, "hyper_lr": 3e-3, "scale_lr": 3e-3,
                  "perturb_scale": 0.5, "tune_scales": True, "entropy_weight": 1e-3, "val_batch_size": 128},
        # digits MLP (experiments/stn.py): the same, without the lr decay
        "small": {"train_steps": 2, "val_steps": 1, "warmup_epochs": 5, "hyper_lr": 3e-3, "scale_lr": 3e-3,
                  "perturb_scale": 0.5, "tune_scales": True, "entropy_weight": 1e-3, "val_batch_size": 128},
    },
)  # fmt: skip

KINDS = ("dropout", "input_noise", "value")
#: default ranges of the kinds (dropout capped at 0.9 as in the official code); ``value`` needs its own
DEFAULT_RANGES = {"dropout": (0.0, 0.9), "input_noise": (0.0, 1.0)}
HYPER_KEY = "stn_hparams"  # batch.extras key of the per-example unconstrained hyperparameters


# ------------------------------------------------------------------------------------------ transforms
def stretched_logit(value: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor) -> torch.Tensor:
    """``logit((v - lo) / (hi - lo))``: a value strictly inside ``(lo, hi)`` to the unconstrained space."""
    value = torch.as_tensor(value, dtype=torch.get_default_dtype())
    check_finite("value", value)
    low_t, high_t = torch.as_tensor(low, dtype=value.dtype), torch.as_tensor(high, dtype=value.dtype)
    if not bool((high_t > low_t).all()):
        raise PriorkitError(f"high must be > low, got low={low}, high={high}")
    if not bool(((value > low_t) & (value < high_t)).all()):
        raise PriorkitError(f"value must lie strictly inside (low, high) = ({low}, {high}), got {value.tolist()}")
    z = (value - low_t) / (high_t - low_t)
    return torch.log(z) - torch.log1p(-z)


def stretched_sigmoid(u: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor) -> torch.Tensor:
    """``lo + (hi - lo) sigmoid(u)``: unconstrained to ``(lo, hi)`` (differentiable)."""
    return low + (high - low) * torch.sigmoid(u)


def hparam_values(
    u: torch.Tensor, low: torch.Tensor, high: torch.Tensor, discrete: torch.Tensor | None = None
) -> torch.Tensor:
    """The constrained values of unconstrained ``u`` (``[..., H]``): the stretched sigmoid, floored where
    ``discrete`` (``[H]`` bool; integer bounds give ``low .. high - 1``), as the official ``hparam_transform``."""
    if not isinstance(u, torch.Tensor) or u.dim() == 0:
        got = list(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise PriorkitError(f"u must be a tensor [..., H], got {got}")
    h = u.shape[-1]
    check_shape("low", low, [h])
    check_shape("high", high, [h])
    check_finite("u", u)
    if discrete is not None:
        check_shape("discrete", discrete, [h])
    return _hvalues(u, low.to(u), high.to(u), discrete)


def _hvalues(u: torch.Tensor, low: torch.Tensor, high: torch.Tensor, discrete: torch.Tensor | None) -> torch.Tensor:
    v = stretched_sigmoid(u, low, high)
    if discrete is None or not bool(discrete.any()):
        return v
    # floor(v) lies in low .. high - 1 (v < high); in float32 sigmoid(u) rounds to exactly 1 for u > ~17, and the
    # floor of that rounded endpoint is mapped to the largest integer the open interval holds, high - 1
    d = torch.minimum(torch.floor(v), high - 1)
    return torch.where(discrete.to(u.device), d, v)


# ---------------------------------------------------------------------------------------- perturbation
def perturb(
    u: torch.Tensor, rho: torch.Tensor, batch: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``u + softplus(rho) * eps``, ``eps ~ N(0, I)`` of shape ``[batch, H]`` (one draw per example; carries the
    gradient to ``u`` and ``rho``). ``generator`` draws ``eps`` on the CPU (then moved to ``u``'s device)."""
    check_shape("u", u, [None])
    check_shape("rho", rho, [u.shape[0]])
    check_positive_int("batch", batch)
    check_finite("u", u.detach())
    check_finite("rho", rho.detach())
    return _perturb(u, rho, batch, generator)


def _perturb(u: torch.Tensor, rho: torch.Tensor, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    eps = torch.randn(batch, u.shape[0], generator=generator, dtype=u.dtype)
    return u + F.softplus(rho) * eps.to(u.device)


def perturbation_entropy(rho: torch.Tensor) -> torch.Tensor:
    """Entropy of the diagonal Gaussian ``N(u, diag(softplus(rho)^2))``: ``sum_k log(softplus(rho_k) sqrt(2 pi e))``."""
    check_shape("rho", rho, [None])
    check_finite("rho", rho.detach())
    return torch.log(F.softplus(rho) * math.sqrt(2 * math.pi * math.e)).sum()


def _inv_softplus(x: float) -> float:
    return math.log(math.expm1(x))


# ------------------------------------------------------------------------------------------- dropout
def per_example_dropout(
    x: torch.Tensor, p: torch.Tensor, *, training: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Dropout with one rate per example: row ``b`` keeps each unit with probability ``1 - p_b`` and is scaled by
    ``1 / (1 - p_b)``; ``p`` is ``[B]`` in ``[0, 1)`` and is detached (the rates get no gradient). Identity when
    not ``training``."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise PriorkitError(f"x must be a tensor [B, ...] with at least 2 dims, got {getattr(x, 'shape', type(x))}")
    check_shape("p", p, [x.shape[0]])
    check_finite("p", p.detach())
    if bool(((p < 0) | (p >= 1)).any()):
        raise PriorkitError(f"p must lie in [0, 1), got [{float(p.min())}, {float(p.max())}]")
    return _dropout(x, p, training, generator)


def _dropout(x: torch.Tensor, p: torch.Tensor, training: bool, generator: torch.Generator | None) -> torch.Tensor:
    if not training:
        return x
    keep = (1.0 - p.detach()).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    if generator is None:
        r = torch.rand_like(x)
    else:
        r = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x * (r < keep).to(x.dtype) / keep


# ------------------------------------------------------------------------------------------ STN layers
def _check_hparams(hparams: torch.Tensor, batch: int, num_hparams: int) -> None:
    if not isinstance(hparams, torch.Tensor) or hparams.dim() != 2 or tuple(hparams.shape) != (batch, num_hparams):
        got = list(hparams.shape) if isinstance(hparams, torch.Tensor) else type(hparams).__name__
        raise PriorkitError(f"hparams must have shape [batch, num_hparams] = [{batch}, {num_hparams}], got {got}")


def stn_linear(
    x: torch.Tensor,
    hparams: torch.Tensor,
    w_e: torch.Tensor,
    b_e: torch.Tensor | None,
    w_h: torch.Tensor,
    b_h: torch.Tensor | None,
    v: torch.Tensor,
    s: torch.Tensor,
) -> torch.Tensor:
    """``s (W_e x + b_e) + (V_w u) * (W_h x) + (V_b u) * b_h`` for ``x`` ``[B, in]`` and ``hparams`` ``u``
    ``[B, H]``; ``v`` is ``[2 out, H]`` (rows ``:out`` gate the weights, ``out:`` the bias)."""
    out = w_e.shape[0]
    _check_hparams(hparams, x.shape[0], v.shape[1])
    check_shape("v", v, [2 * out, None])
    y = F.linear(x, w_e, b_e) * s
    g = F.linear(hparams, v)
    y = y + g[:, :out] * F.linear(x, w_h)
    if b_h is not None:
        y = y + g[:, out:] * b_h
    return y


def stn_conv2d(
    x: torch.Tensor,
    hparams: torch.Tensor,
    w_e: torch.Tensor,
    b_e: torch.Tensor | None,
    w_h: torch.Tensor,
    b_h: torch.Tensor | None,
    v: torch.Tensor,
    s: torch.Tensor,
    **conv: Any,
) -> torch.Tensor:
    """The STN convolution, gated per output channel: ``s conv(x; W_e, b_e) + (V_w u) * conv(x; W_h) +
    (V_b u) * b_h`` (gates broadcast over the spatial axes); ``conv`` are ``F.conv2d``'s stride, padding, ..."""
    out = w_e.shape[0]
    _check_hparams(hparams, x.shape[0], v.shape[1])
    check_shape("v", v, [2 * out, None])
    y = F.conv2d(x, w_e, b_e, **conv) * s
    g = F.linear(hparams, v)[:, :, None, None]
    y = y + g[:, :out] * F.conv2d(x, w_h, None, **conv)
    if b_h is not None:
        y = y + g[:, out:] * b_h.view(1, -1, 1, 1)
    return y


class _StnBase(nn.Module):
    """Parameters shared by the linear and the convolutional STN layer (official ``HyperLinear`` init)."""

    def _build(self, shape: tuple[int, ...], fan_in: int, out: int, num_hparams: int, bias: bool) -> None:
        check_positive_int("num_hparams", num_hparams)
        self.num_hparams = num_hparams
        bound = 1.0 / math.sqrt(fan_in)
        self.elem_weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.hnet_weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        if bias:
            self.elem_bias = nn.Parameter(torch.empty(out).uniform_(-bound, bound))
            self.hnet_bias = nn.Parameter(torch.empty(out).uniform_(-bound, bound))
        else:
            self.register_parameter("elem_bias", None)
            self.register_parameter("hnet_bias", None)
        self.hnet = nn.Linear(num_hparams, 2 * out, bias=False)  # V = [V_w; V_b]
        nn.init.normal_(self.hnet.weight, std=0.01)
        self.elem_scalar = nn.Parameter(torch.ones(1))  # s


class StnLinear(_StnBase):
    """The STN linear layer. ``forward(x, hparams)``; ``hparams=None`` gives the elementary path only
    (``s (W_e x + b_e)``), as the official layer does."""

    def __init__(self, in_features: int, out_features: int, num_hparams: int, bias: bool = True) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self._build((out_features, in_features), in_features, out_features, num_hparams, bias)

    def forward(self, x: torch.Tensor, hparams: torch.Tensor | None = None) -> torch.Tensor:
        if hparams is None:
            return F.linear(x, self.elem_weight, self.elem_bias) * self.elem_scalar
        return stn_linear(x, hparams, self.elem_weight, self.elem_bias, self.hnet_weight, self.hnet_bias,
                          self.hnet.weight, self.elem_scalar)  # fmt: skip


class StnConv2d(_StnBase):
    """The STN convolution (official ``HyperConv2d``): gates per output channel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_hparams: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        for n, val in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size),
                       ("stride", stride), ("dilation", dilation), ("groups", groups)):  # fmt: skip
            check_positive_int(n, val)
        check_positive_int("padding", padding, 0)
        if in_channels % groups or out_channels % groups:
            raise PriorkitError(f"in_channels and out_channels must be divisible by groups={groups}")
        self.conv = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self._build(shape, in_channels // groups * kernel_size * kernel_size, out_channels, num_hparams, bias)

    def forward(self, x: torch.Tensor, hparams: torch.Tensor | None = None) -> torch.Tensor:
        if hparams is None:
            return F.conv2d(x, self.elem_weight, self.elem_bias, **self.conv) * self.elem_scalar
        return stn_conv2d(x, hparams, self.elem_weight, self.elem_bias, self.hnet_weight, self.hnet_bias,
                          self.hnet.weight, self.elem_scalar, **self.conv)  # fmt: skip


# ------------------------------------------------------------------------------------- the hyper space
@dataclass(frozen=True)
class Hyper:
    """One tuned hyperparameter: ``kind`` ``dropout`` (applied by the model), ``input_noise`` (additive Gaussian
    noise of that std on the inputs, applied by the hook) or ``value`` (the model reads it). Range ``(low, high)``
    (defaults per kind: dropout ``(0, 0.9)``, input noise ``(0, 1)``); ``init`` strictly inside it. ``discrete``
    floors the value: integer ``low`` and ``high`` give the integers ``low .. high - 1``, and ``init`` is one of
    them."""

    name: str
    kind: str = "dropout"
    init: float = 0.05
    low: float | None = None
    high: float | None = None
    discrete: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PriorkitError(f"Hyper name must be a non-empty string, got {self.name!r}")
        check_choice(f"Hyper({self.name!r}).kind", self.kind, KINDS)
        lo, hi = DEFAULT_RANGES.get(self.kind, (None, None))
        lo = lo if self.low is None else check_range(f"Hyper({self.name!r}).low", self.low)
        hi = hi if self.high is None else check_range(f"Hyper({self.name!r}).high", self.high)
        if lo is None or hi is None:
            raise PriorkitError(f"Hyper({self.name!r}): kind 'value' needs low and high")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise PriorkitError(f"Hyper({self.name!r}): low < high (finite) needed, got low={lo}, high={hi}")
        if self.kind == "dropout" and (lo < 0 or hi > 1):
            raise PriorkitError(f"Hyper({self.name!r}): a dropout range must lie in [0, 1], got ({lo}, {hi})")
        if self.kind == "input_noise" and lo < 0:
            raise PriorkitError(f"Hyper({self.name!r}): an input-noise std range must have low >= 0, got {lo}")
        if self.discrete:
            if lo != int(lo) or hi != int(hi):
                raise PriorkitError(
                    f"Hyper({self.name!r}): a discrete range needs integer low and high, got ({lo}, {hi})"
                )
            check_range(f"Hyper({self.name!r}).init", self.init, lo, hi - 1)
            if self.init != int(self.init):
                raise PriorkitError(f"Hyper({self.name!r}): a discrete init must be an integer, got {self.init}")
        else:
            check_range(f"Hyper({self.name!r}).init", self.init, lo, hi, low_inclusive=False, high_inclusive=False)
        object.__setattr__(self, "low", float(lo))
        object.__setattr__(self, "high", float(hi))


class HyperSpace:
    """The ordered hyperparameters of a run (index ``k`` is column ``k`` of every ``[B, H]`` tensor)."""

    def __init__(self, hypers: Sequence[Hyper]) -> None:
        hypers = list(hypers)
        if not hypers or not all(isinstance(h, Hyper) for h in hypers):
            raise PriorkitError("HyperSpace needs a non-empty sequence of Hyper objects")
        names = [h.name for h in hypers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PriorkitError(f"HyperSpace: hyperparameter names must be unique, repeated: {dup}")
        self.hypers = tuple(hypers)
        self.names = tuple(names)
        self.low = torch.tensor([h.low for h in hypers], dtype=torch.float32)
        self.high = torch.tensor([h.high for h in hypers], dtype=torch.float32)
        self.discrete = torch.tensor([h.discrete for h in hypers])

    @property
    def size(self) -> int:
        return len(self.hypers)

    def index(self, name: str, kind: str | None = None) -> int:
        """Column of ``name`` (refused when unknown, or not of ``kind`` when given)."""
        check_choice("hyperparameter name", name, list(self.names))
        k = self.names.index(name)
        if kind is not None and self.hypers[k].kind != kind:
            raise PriorkitError(f"hyperparameter {name!r} is of kind {self.hypers[k].kind!r}, not {kind!r}")
        return k

    def of_kind(self, kind: str) -> list[int]:
        check_choice("kind", kind, KINDS)
        return [k for k, h in enumerate(self.hypers) if h.kind == kind]

    def init_unconstrained(self) -> torch.Tensor:
        """``u0``: the stretched logit of every start value (of ``init + 0.5`` for a discrete one: the middle of the
        integer's floor bin, so that the start maps back to ``init``; the official code's ``s_logit(init)`` sits on
        the bin's edge, where float rounding gives ``init - 1``)."""
        start = torch.tensor([h.init + 0.5 if h.discrete else h.init for h in self.hypers], dtype=torch.float64)
        return stretched_logit(start, self.low.double(), self.high.double()).float()

    def values(self, u: torch.Tensor) -> torch.Tensor:
        """Constrained values of ``u`` (``[..., H]``)."""
        return hparam_values(u, self.low.to(u.device), self.high.to(u.device), self.discrete)

    def _values(self, u: torch.Tensor) -> torch.Tensor:
        return _hvalues(u, self.low.to(u), self.high.to(u), self.discrete)


# ------------------------------------------------------------------------------------------- the model
class StnMLP(nn.Module):
    """MLP whose hidden layers are :class:`StnLinear` (ReLU, then per-example dropout with the rates named in
    ``dropout``, one per hidden layer or ``None`` for none) and whose classifier is a plain ``nn.Linear``.

    ``forward(x, hparams=None)``: ``hparams`` ``[B, H]`` unconstrained; ``None`` uses the buffer ``stn_hparams``
    (``u`` after training) for every row. Dropout acts in train mode only.
    """

    def __init__(
        self,
        space: HyperSpace,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        dropout: Sequence[str | None] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(space, HyperSpace):
            raise PriorkitError(f"space must be a HyperSpace, got {type(space).__name__}")
        check_positive_int("in_features", in_features)
        check_positive_int("num_classes", num_classes)
        hidden = list(hidden)
        if not hidden:
            raise PriorkitError("hidden must name at least one hidden width (the STN layers)")
        dropout = [None] * len(hidden) if dropout is None else list(dropout)
        if len(dropout) != len(hidden):
            raise PriorkitError(f"dropout must name one rate (or None) per hidden layer ({len(hidden)}), got {dropout}")
        self.space = space
        self.drop_index = [None if n is None else space.index(n, "dropout") for n in dropout]
        layers, d = [], in_features
        for w in hidden:
            check_positive_int("hidden width", w)
            layers.append(StnLinear(d, w, space.size))
            d = w
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(d, num_classes)
        self.in_features = in_features
        self.register_buffer(HYPER_KEY, space.init_unconstrained())

    def forward(self, x: torch.Tensor, hparams: torch.Tensor | None = None) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise PriorkitError(f"StnMLP expects {self.in_features} input features, got {x.shape[1]}")
        if hparams is None:
            hparams = self.stn_hparams.expand(x.shape[0], -1)
        else:
            _check_hparams(hparams, x.shape[0], self.space.size)
        values = self.space._values(hparams.detach()) if self.training else None
        for layer, k in zip(self.layers, self.drop_index):
            x = F.relu(layer(x, hparams))
            if k is not None and self.training:
                x = _dropout(x, values[:, k], True, None)
        return self.head(x)


def stn_forward(net: nn.Module, batch: Batch) -> torch.Tensor:
    """The weight phase's forward: ``net(batch.x, batch.extras["stn_hparams"])`` (set by the :class:`STN` hook)."""
    h = batch.extras.get(HYPER_KEY)
    if h is None:
        raise PriorkitError("stn_forward needs batch.extras['stn_hparams']: put the STN hook in the run's hooks")
    return net(batch.x, h)


# -------------------------------------------------------------------------------------------- the hook
class STN(Hook):
    """Self-Tuning Networks as a hook: per-example perturbed hyperparameters for the weight steps, and ``val_steps``
    hyper steps on a validation batch (own Adam) after every ``train_steps`` weight steps past ``warmup_epochs``.

    ``val_x``/``val_y``: the validation set (un-augmented). Use with ``Recipe([stn.phase(epochs)])`` and a model
    following the protocol of the module docstring (e.g. :class:`StnMLP` on the same ``space``). ``seed`` seeds the
    hook's generator (perturbations, input noise, validation order). Presets: ``STN(space, vx, vy,
    **SPEC.presets["paper"])``. ``hyper_lr = 0`` (and ``scale_lr = 0``) freezes the hyperparameters at their start.
    """

    def __init__(
        self,
        space: HyperSpace,
        val_x: torch.Tensor,
        val_y: torch.Tensor,
        *,
        train_steps: int = 2,
        val_steps: int = 1,
        warmup_epochs: int = 5,
        hyper_lr: float = 3e-3,
        scale_lr: float = 3e-3,
        perturb_scale: float = 0.5,
        tune_scales: bool = True,
        entropy_weight: float = 1e-3,
        val_batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        if not isinstance(space, HyperSpace):
            raise PriorkitError(f"space must be a HyperSpace, got {type(space).__name__}")
        if not isinstance(val_x, torch.Tensor) or val_x.dim() < 2 or val_x.shape[0] == 0:
            raise PriorkitError(f"val_x must be a non-empty tensor [N, ...], got {getattr(val_x, 'shape', val_x)}")
        if not val_x.is_floating_point():
            raise PriorkitError(f"val_x must be floating point, got dtype {val_x.dtype}")
        check_finite("val_x", val_x)
        if not isinstance(val_y, torch.Tensor) or val_y.is_floating_point() or tuple(val_y.shape) != (len(val_x),):
            got = f"{val_y.dtype} {list(val_y.shape)}" if isinstance(val_y, torch.Tensor) else type(val_y).__name__
            raise PriorkitError(f"val_y must be integer class labels of shape [{len(val_x)}] (len(val_x)), got {got}")
        if int(val_y.min()) < 0:
            raise PriorkitError(f"val_y must hold class indices >= 0, got min {int(val_y.min())}")
        check_positive_int("train_steps", train_steps)
        check_positive_int("val_steps", val_steps)
        check_positive_int("warmup_epochs", warmup_epochs, 0)
        check_range("hyper_lr", hyper_lr, 0.0)
        check_range("scale_lr", scale_lr, 0.0)
        check_range("perturb_scale", perturb_scale, 0.0, low_inclusive=False)
        check_range("entropy_weight", entropy_weight, 0.0)
        check_positive_int("val_batch_size", val_batch_size)
        if not isinstance(tune_scales, bool):
            raise PriorkitError(f"tune_scales must be a bool, got {tune_scales!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PriorkitError(f"seed must be an integer, got {seed!r}")
        self.space = space
        self.val_x, self.val_y = val_x, val_y.long()
        self.train_steps, self.val_steps, self.warmup_epochs = train_steps, val_steps, warmup_epochs
        self.hyper_lr, self.scale_lr, self.perturb_scale = float(hyper_lr), float(scale_lr), float(perturb_scale)
        self.tune_scales, self.entropy_weight = tune_scales, float(entropy_weight)
        self.val_batch_size = min(val_batch_size, len(val_x))
        self.noise_index = space.of_kind("input_noise")
        self.claims = self.shares = ("batch.x",) if self.noise_index else ()
        self.u = nn.Parameter(space.init_unconstrained())
        self.rho = nn.Parameter(torch.full((space.size,), _inv_softplus(perturb_scale)))
        groups = [{"params": [self.u], "lr": self.hyper_lr}]
        if tune_scales:
            groups.append({"params": [self.rho], "lr": self.scale_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.generator = torch.Generator().manual_seed(seed)
        self.since = 0  # weight steps since the last hyper step (past warm-up)
        self.hyper_steps = 0
        self.val_order = torch.randperm(len(val_x), generator=self.generator)
        self.val_pos = 0

    # ----------------------------------------------------------------------------------------- reading
    def values(self) -> dict[str, float]:
        """The current constrained hyperparameters by name."""
        v = self.space.values(self.u.detach().cpu())
        return {n: float(x) for n, x in zip(self.space.names, v)}

    def scales(self) -> dict[str, float]:
        """The current perturbation scales ``softplus(rho)`` by name."""
        return {n: float(x) for n, x in zip(self.space.names, F.softplus(self.rho.detach().cpu()))}

    def phase(
        self,
        epochs: int,
        *,
        lr: float = 0.01,
        momentum: float = 0.9,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        name: str = "stn",
    ) -> Phase:
        """The weight-step phase: SGD (``lr``, ``momentum``; x``gamma`` at the epoch ``milestones``) on every
        model weight, forward :func:`stn_forward`, the recipe's cross-entropy."""
        check_range("lr", lr, 0.0, low_inclusive=False)
        check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
        check_range("gamma", gamma, 0.0, 1.0, low_inclusive=False)
        ms = list(milestones)
        for m in ms:
            check_positive_int("milestone", m)

        def opt(model: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum)

        sched = (lambda o, n: torch.optim.lr_scheduler.MultiStepLR(o, ms, gamma)) if ms else None
        return Phase(name, epochs=epochs, optimizer=opt, scheduler=sched, forward=stn_forward)

    # ------------------------------------------------------------------------------------------- hooks
    def on_fit_start(self, state: RunState) -> None:
        buf = getattr(state.model, HYPER_KEY, None)
        if not isinstance(buf, torch.Tensor) or tuple(buf.shape) != (self.space.size,):
            got = list(buf.shape) if isinstance(buf, torch.Tensor) else type(buf).__name__
            raise PriorkitError(
                f"STN: the model needs a buffer 'stn_hparams' of shape [{self.space.size}] (the HyperSpace size) "
                f"and forward(x, hparams); got {got} (use StnMLP or register the buffer)"
            )
        dev = state.device
        if self.u.device != dev:
            self.u.data, self.rho.data = self.u.data.to(dev), self.rho.data.to(dev)
        self._write_model(state.model)

    def _rows(self, state: RunState | None, local: int) -> tuple[int, int]:
        """``(global batch, offset of this rank's rows)`` (the engine's contiguous rank slices)."""
        if state is None or state.world_size == 1 or not state.global_indices:
            return local, 0
        g = len(state.global_indices)
        return g, state.rank * -(-g // state.world_size)

    def transform_batch(self, state: RunState, batch: Batch) -> Batch:
        b = len(batch)
        g, off = self._rows(state, b)
        with torch.no_grad():
            h = _perturb(self.u.detach(), self.rho.detach(), g, self.generator)[off : off + b]
            batch.extras[HYPER_KEY] = h
            if self.noise_index:
                x = batch.x
                noise = torch.randn((g, *x.shape[1:]), generator=self.generator, dtype=x.dtype)[off : off + b]
                v = self.space._values(h)[:, self.noise_index].to(x.dtype)  # [B, K] stds
                std = v.sum(dim=1).view(-1, *([1] * (x.dim() - 1)))  # several noise hyperparameters add up
                batch.x = x + std * noise.to(x.device)
        return batch

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        if state.epoch < self.warmup_epochs:
            return
        self.since += 1
        if self.since < self.train_steps:
            return
        self.since = 0
        for _ in range(self.val_steps):
            self.hyper_step(state)

    def _val_batch(self) -> torch.Tensor:
        """The next global validation batch (a fresh shuffle after every pass, as a loader's epochs)."""
        n, bs = len(self.val_x), self.val_batch_size
        if self.val_pos + bs > n:
            self.val_order = torch.randperm(n, generator=self.generator)
            self.val_pos = 0
        idx = self.val_order[self.val_pos : self.val_pos + bs]
        self.val_pos += bs
        return idx

    def hyper_step(self, state: RunState) -> dict[str, float]:
        """One hyperparameter step on the next validation batch: model in eval mode, loss = validation CE
        (- ``entropy_weight`` H(rho) when tuning scales); the gradient reaches ``u`` (and ``rho``) only through the
        hypernet path; no weight is changed and no weight gradient is written."""
        model = state.model
        idx = self._val_batch()
        g = len(idx)
        world, rank = (state.world_size, state.rank) if state.world_size > 1 else (1, 0)
        per = -(-g // world)
        local = idx[rank * per : (rank + 1) * per]
        if self.tune_scales:
            h = _perturb(self.u, self.rho, g, self.generator)[rank * per : rank * per + len(local)]
        else:
            h = self.u.expand(len(local), -1)
        dev = state.device
        was = model.training
        model.eval()
        try:
            with torch.enable_grad():
                out = model(self.val_x[local].to(dev), h)
                ce = F.cross_entropy(out, self.val_y[local].to(dev), reduction="sum") / g
                params = [self.u, self.rho] if self.tune_scales else [self.u]
                grads = [gr.detach() for gr in torch.autograd.grad(ce, params)]
        finally:
            model.train(was)
        ce_total = D.all_reduce_sum(ce.detach())
        if not bool(torch.isfinite(ce_total)):
            raise NonFiniteError(f"STN: the validation loss is {float(ce_total)}; the hyperparameters were not updated")
        grads = [D.all_reduce_sum(gr) for gr in grads]
        ent = perturbation_entropy(self.rho)
        if self.tune_scales and self.entropy_weight > 0:
            (g_ent,) = torch.autograd.grad(-self.entropy_weight * ent, [self.rho])
            grads[1] = grads[1] + g_ent
        self.optimizer.zero_grad(set_to_none=True)
        for p, gr in zip(params, grads):
            p.grad = gr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.hyper_steps += 1
        self._write_model(model)
        logged = {"stn_val_ce": float(ce_total), "stn_entropy": float(ent.detach())}
        logged.update({f"stn_{k}": v for k, v in self.values().items()})
        if self.tune_scales:
            logged.update({f"stn_scale_{k}": v for k, v in self.scales().items()})
        state.log(**logged)
        return logged

    @torch.no_grad()
    def _write_model(self, model: nn.Module) -> None:
        getattr(model, HYPER_KEY).copy_(self.u.detach())

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "u": self.u.detach().cpu().clone(),
            "rho": self.rho.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "since": self.since,
            "hyper_steps": self.hyper_steps,
            "val_order": self.val_order.clone(),
            "val_pos": self.val_pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"u", "rho", "optimizer", "generator", "since", "hyper_steps", "val_order", "val_pos"}
        if set(state) != keys:
            raise CheckpointMismatchError(f"STN state must hold {sorted(keys)}, got {sorted(state)}")
        h = self.space.size
        if tuple(state["u"].shape) != (h,) or tuple(state["rho"].shape) != (h,):
            raise CheckpointMismatchError(
                f"STN state holds {state['u'].shape[0]} hyperparameters, this hook's space has {h}"
            )
        if tuple(state["val_order"].shape) != (len(self.val_x),):
            raise CheckpointMismatchError(
                f"STN state's validation order has {state['val_order'].shape[0]} rows, val_x has {len(self.val_x)}"
            )
        with torch.no_grad():
            self.u.copy_(state["u"])
            self.rho.copy_(state["rho"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.since, self.hyper_steps = int(state["since"]), int(state["hyper_steps"])
        self.val_order, self.val_pos = state["val_order"].clone(), int(state["val_pos"])
