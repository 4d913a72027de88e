"""Policy Gradient-Driven Noise Mask (PGDNM), Yavuz & Yang, 2024 (arXiv:2406.14568).

A two-stage pipeline for heterogeneous (multi-modality, multi-organ) images. In the *heating* stage a light policy
network looks at each training image and emits, per cell of a ``G x G`` grid, the two concentrations of a Beta
distribution; a mask ``m`` is sampled from it, upsampled and blurred to the image size, and the classifier is trained
on ``x * m``. The policy is trained by REINFORCE with reward ``-CE`` of the classifier on the masked batch, so masks
that made the classifier fail become less likely. Only the heated classifier is kept: the second stage fine-tunes it
normally, without masks, and the policy is never used at inference.

Equations (official code, ``create_model.py::MaskGenerator`` and ``train_one_epoch.py``; the card's notation):

- heads ``a_phi(x), b_phi(x) in R^{G^2}``; running baselines ``a_bar, b_bar`` (init ``U(0, 1)``);
- ``alpha = exp(0.9 a_bar + 0.1 a_phi(x))``, ``beta = exp(0.9 b_bar + 0.1 b_phi(x))`` per image (clamped to
  ``[1e-2, 1e2]``, the card's assumption), then ``a_bar <- 0.99 a_bar + 0.01 mean_batch(a_phi(x))`` (detached);
- ``m_j ~ Beta(alpha_j, beta_j)`` (not reparameterised); image mask = ``blur(upsample(m))``, ``x_tilde = x * mask``;
- ``S_b = log sum_j Beta(m_bj; alpha_bj, beta_bj)`` (``logprob_reduce="logsumexp"``, the code) or
  ``sum_j log Beta(...)`` (``"sum"``, textbook REINFORCE);
- the released single loss ``L = mean_b(S_b) * CE(f(x_tilde), y)``: the policy gets ``CE * grad mean(S)`` (REINFORCE
  with reward ``-CE``, no baseline; ``baseline="ema"`` subtracts an EMA of CE), the classifier gets
  ``mean(S) * grad CE`` (``classifier_scale=True``; ``False`` trains it on plain CE).

Optimizers (the newer ``_policy_gradient`` variant): classifier SGD 0.1 / momentum 0.9 / wd 1e-4 / StepLR(30, 0.1);
policy AdamW at ``0.01 x lr``, cosine to ``1e-4 x lr`` over the heating epochs. Fine-tuning: 10 epochs at 1e-3 with a
7-epoch linear warm-up. :meth:`PGDNM.recipe` builds both stages as two phases of one :class:`~priorkit.train.Recipe`.

How it runs in the engine: the policy is the hook's own network with its own optimizer (not part of the model).
``transform_batch`` runs the policy, samples and applies the mask; ``extra_loss`` adds ``(mean(S) - 1) * CE`` so that
the classifier's loss is the code's ``mean(S) * CE``; ``on_step_end`` computes the reward from the same forward's
logits and steps the policy's AdamW. Under DDP the policy runs on the all-gathered global batch on every rank (the
input is gathered, the reward is the global mean CE), so every rank takes the same policy step and a W-process run
equals a 1-process one; the masks are drawn from a generator seeded by (run seed, step), independent of the global RNG.

Libraries considered: ``torch.distributions.Beta`` draws the samples (its ``log_prob`` is re-written below in
closed form so bad values are checked once and the float32 path is explicit); torchvision's ``gaussian_blur`` is not
a dependency, so the blur (same kernel and reflect padding) is written here; no RL library offers a REINFORCE step
that plugs into a supervised loop as a hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    NonFiniteError,
    PriorkitError,
    check_batch,
    check_choice,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.nn import distributed as D
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import ForwardFn, Phase, Recipe

__all__ = [
    "PGDNM",
    "MaskPolicy",
    "beta_concentrations",
    "beta_log_prob",
    "gaussian_blur",
    "mask_log_prob",
    "mask_to_image",
    "policy_surrogate",
    "sample_mask",
    "update_base",
]

UPSAMPLE = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
REDUCE = ("logsumexp", "sum")
BASELINES = ("none", "ema")
EPS = 1e-6  # samples are kept in [EPS, 1 - EPS] so every log-density is finite

SPEC = MethodSpec(
    status="implemented",
    entry="PGDNM",
    missing="The paper's ResNet-10t policy extractor and ResNet-50 classifier are not bundled (pass features= and "
    "feature_dim=512 for a ResNet-10t trunk); RadImageNet loaders, sync-BN and AMP are not built; the policy "
    "objective of the paper's final two-optimizer version is not released, so the released root-level step "
    "(mean(S) x CE, log-sum-exp over cells, no baseline) is the default and the textbook form "
    "(logprob_reduce='sum', baseline='ema') is an option; the concentration clamp [1e-2, 1e2] and the sample "
    "clamp [1e-6, 1 - 1e-6] are assumptions. The fine-tuning warm-up is linear then constant (no StepLR after it: "
    "10 epochs never reach the reference script's first decay). The small check uses 8x8 digits in two synthetic "
    "'modalities', a 2-conv CNN and a 1-conv policy with G=4.",
    presets={
        # official README/_policy_gradient: G=64, kernel 13, sigma 6, 512-d heads, policy AdamW 0.01 x 0.1, cosine
        # to 1e-4 x 0.1; classifier SGD 0.1 (PGDNM.recipe defaults)
        "paper": {
            "grid": 64,
            "kernel": 13,
            "sigma": 6.0,
            "hidden": 512,
            "upsample": "nearest",
            "mix": 0.9,
            "base_momentum": 0.99,
            "conc_clamp": (1e-2, 1e2),
            "logprob_reduce": "logsumexp",
            "baseline": "none",
            "classifier_scale": True,
            "policy_lr": 1e-3,
            "policy_lr_min": 1e-5,
        },
        # the card's CPU check: 1-conv policy, G=4 upsampled to 8x8, blur k=3 sigma=1; policy lr 0.01 x lr (0.05)
        "small": {
            "grid": 4,
            "kernel": 3,
            "sigma": 1.0,
            "width": 16,
            "hidden": 64,
            "upsample": "nearest",
            "mix": 0.9,
            "base_momentum": 0.99,
            "conc_clamp": (1e-2, 1e2),
            "logprob_reduce": "logsumexp",
            "baseline": "none",
            "classifier_scale": True,
            "policy_lr": 5e-4,
            "policy_lr_min": 5e-6,
        },
    },
)


# --------------------------------------------------------------------------------------------- functional core
def _check_kernel(kernel: int, sigma: float) -> None:
    check_positive_int("kernel", kernel)
    if kernel % 2 == 0:
        raise PriorkitError(f"kernel must be an odd integer >= 1, got {kernel}")
    check_range("sigma", sigma, 0.0, low_inclusive=False)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur of ``[B, C, H, W]`` with reflect padding (torchvision's ``gaussian_blur``)."""
    _check_kernel(kernel, sigma)
    check_shape("x", x, [None, None, None, None])
    if kernel // 2 >= min(x.shape[-2:]):
        raise PriorkitError(
            f"kernel ({kernel}) needs images larger than {kernel // 2} pixels per side for reflect padding, "
            f"got {list(x.shape[-2:])}"
        )
    return _blur(x, kernel, float(sigma))


def _blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    half = (kernel - 1) * 0.5
    t = torch.linspace(-half, half, kernel, dtype=x.dtype, device=x.device)
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = k1 / k1.sum()
    k2 = torch.outer(k1, k1).expand(x.shape[1], 1, kernel, kernel)
    p = kernel // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), k2, groups=x.shape[1])


def mask_to_image(
    cells: torch.Tensor, size: Sequence[int], *, kernel: int, sigma: float, upsample: str = "nearest"
) -> torch.Tensor:
    """Grid cells ``[B, G*G]`` -> image mask ``[B, 1, H, W]``: reshape, upsample to ``size``, blur."""
    check_shape("cells", cells, [None, None])
    g = math.isqrt(cells.shape[1])
    if g * g != cells.shape[1] or g == 0:
        raise PriorkitError(f"cells must have G*G columns for a square grid, got {cells.shape[1]}")
    check_choice("upsample", upsample, UPSAMPLE)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise PriorkitError(f"size must be (H, W) positive integers, got {tuple(size)!r}")
    _check_kernel(kernel, sigma)
    if kernel // 2 >= min(size):
        raise PriorkitError(f"kernel ({kernel}) needs an image size larger than {kernel // 2}, got {tuple(size)}")
    return _mask_image(cells, tuple(size), kernel, float(sigma), upsample)


def _mask_image(cells: torch.Tensor, size: tuple[int, int], kernel: int, sigma: float, mode: str) -> torch.Tensor:
    g = math.isqrt(cells.shape[1])
    m = cells.reshape(-1, 1, g, g)
    if (g, g) != size:
        m = F.interpolate(m, size=size, mode=mode)
    return _blur(m, kernel, sigma)


def beta_concentrations(
    a: torch.Tensor,
    b: torch.Tensor,
    base_a: torch.Tensor,
    base_b: torch.Tensor,
    *,
    mix: float = 0.9,
    clamp: tuple[float, float] = (1e-2, 1e2),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``clamp(exp(mix * base + (1 - mix) * head))`` for both heads (float32): the Beta's two concentrations."""
    check_shape("a", a, [None, None])
    check_shape("b", b, list(a.shape))
    check_shape("base_a", base_a, [1, a.shape[1]])
    check_shape("base_b", base_b, [1, a.shape[1]])
    for n, t in (("a", a), ("b", b), ("base_a", base_a), ("base_b", base_b)):
        check_batch(n, t)
    check_range("mix", mix, 0.0, 1.0)
    lo, hi = _check_clamp(clamp)
    return _concentrations(a, b, base_a, base_b, float(mix), (lo, hi))


def _check_clamp(clamp: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(c) for c in clamp)
    except (TypeError, ValueError):
        raise PriorkitError(f"conc_clamp must be a pair (low, high), got {clamp!r}") from None
    if not 0.0 < lo < hi < math.inf:
        raise PriorkitError(f"conc_clamp must satisfy 0 < low < high < inf, got {tuple(clamp)}")
    return lo, hi


def _concentrations(
    a: torch.Tensor, b: torch.Tensor, base_a: torch.Tensor, base_b: torch.Tensor, mix: float, clamp: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    ra = mix * base_a.float() + (1.0 - mix) * a.float()
    rb = mix * base_b.float() + (1.0 - mix) * b.float()
    return ra.exp().clamp(*clamp), rb.exp().clamp(*clamp)


def update_base(base: torch.Tensor, head: torch.Tensor, momentum: float = 0.99) -> torch.Tensor:
    """Running baseline ``momentum * base + (1 - momentum) * mean_batch(head)`` (detached), shape ``[1, G*G]``."""
    check_shape("head", head, [None, None])
    check_shape("base", base, [1, head.shape[1]])
    check_batch("head", head)
    check_range("momentum", momentum, 0.0, 1.0)
    return _update_base(base, head, float(momentum))


def _update_base(base: torch.Tensor, head: torch.Tensor, momentum: float) -> torch.Tensor:
    return momentum * base + (1.0 - momentum) * head.detach().float().mean(0, keepdim=True)


def sample_mask(c1: torch.Tensor, c0: torch.Tensor, *, seed: int) -> torch.Tensor:
    """One Beta(c1, c0) draw per entry (no gradient), from a generator seeded by ``seed`` (the global RNG is left as it
    was), kept in ``[1e-6, 1 - 1e-6]`` so that every log-density is finite."""
    check_shape("c1", c1, [None, None])
    check_shape("c0", c0, list(c1.shape))
    for n, t in (("c1", c1), ("c0", c0)):
        check_batch(n, t)
        if bool((t <= 0).any()):
            raise PriorkitError(f"{n} must hold concentrations > 0, got min {float(t.min())}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PriorkitError(f"seed must be an integer, got {seed!r}")
    return _sample(c1, c0, seed)


def _sample(c1: torch.Tensor, c0: torch.Tensor, seed: int) -> torch.Tensor:
    devices = [c1.device] if c1.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed % (2**63 - 1))
        m = torch.distributions.Beta(c1.detach(), c0.detach(), validate_args=False).sample()
    return m.clamp(EPS, 1.0 - EPS)


def beta_log_prob(m: torch.Tensor, c1: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """Elementwise Beta log-density ``(c1-1) log m + (c0-1) log(1-m) - log B(c1, c0)`` (float32)."""
    check_shape("c1", c1, list(m.shape))
    check_shape("c0", c0, list(m.shape))
    check_batch("m", m)
    if bool(((m <= 0) | (m >= 1)).any()):
        raise PriorkitError("m must lie in (0, 1) (open interval)")
    for n, t in (("c1", c1), ("c0", c0)):
        check_batch(n, t)
        if bool((t <= 0).any()):
            raise PriorkitError(f"{n} must hold concentrations > 0, got min {float(t.min())}")
    return _beta_log_prob(m, c1, c0)


def _beta_log_prob(m: torch.Tensor, c1: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    m, c1, c0 = m.float(), c1.float(), c0.float()
    return (
        (c1 - 1.0) * torch.log(m)
        + (c0 - 1.0) * torch.log1p(-m)
        + torch.lgamma(c1 + c0)
        - torch.lgamma(c1)
        - torch.lgamma(c0)
    )


def mask_log_prob(m: torch.Tensor, c1: torch.Tensor, c0: torch.Tensor, reduce: str = "logsumexp") -> torch.Tensor:
    """Per-image log-probability ``S_b`` of a mask ``[B, G*G]``: the log-sum-exp over cells of the per-cell
    log-densities (the released code) or their sum (textbook REINFORCE)."""
    check_choice("logprob_reduce", reduce, REDUCE)
    check_shape("m", m, [None, None])
    return _reduce(beta_log_prob(m, c1, c0), reduce)


def _reduce(logp: torch.Tensor, reduce: str) -> torch.Tensor:
    return torch.logsumexp(logp, dim=1) if reduce == "logsumexp" else logp.sum(dim=1)


def policy_surrogate(log_prob: torch.Tensor, ce: torch.Tensor | float, baseline: float = 0.0) -> torch.Tensor:
    """REINFORCE surrogate ``(CE - baseline) * mean_b(S_b)`` with reward ``-CE`` (CE detached): minimising it lowers
    the likelihood of masks in proportion to the loss they caused."""
    check_shape("log_prob", log_prob, [None])
    check_batch("log_prob", log_prob)
    ce_t = torch.as_tensor(ce, dtype=torch.float32)
    if ce_t.dim() != 0 or not bool(torch.isfinite(ce_t)):
        raise PriorkitError(f"ce must be a finite scalar, got {ce!r}")
    check_range("baseline", baseline)
    return (ce_t.detach().to(log_prob.device) - baseline) * log_prob.mean()


# ---------------------------------------------------------------------------------------------- the policy
def _head(d: int, hidden: int, out: int, norm: bool) -> nn.Sequential:
    # A bias right before BatchNorm does nothing in training mode (the only mode the policy runs in) and its
    # gradient is pure round-off, which AdamW would turn into full-size steps: it is left out.
    def block(i: int) -> list[nn.Module]:
        return [nn.Linear(i, hidden, bias=not norm)] + ([nn.BatchNorm1d(hidden)] if norm else []) + [nn.ReLU()]

    return nn.Sequential(*block(d), *block(hidden), nn.Linear(hidden, out))


class MaskPolicy(nn.Module):
    """The policy: a feature extractor and two MLP heads (Linear, BatchNorm, ReLU twice, then Linear to ``G*G``)
    giving ``a_phi(x), b_phi(x)`` (the Linear layers before BatchNorm carry no bias). Default extractor: one 3x3
    conv (``width`` channels), ReLU, average-pooled to ``pool x pool`` (the card's CPU policy); pass ``features`` /
    ``feature_dim`` for another (a ResNet-10t trunk)."""

    def __init__(
        self,
        in_channels: int,
        grid: int,
        *,
        width: int = 16,
        hidden: int = 64,
        pool: int = 2,
        features: nn.Module | None = None,
        feature_dim: int | None = None,
        norm: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("grid", grid)
        check_positive_int("width", width)
        check_positive_int("hidden", hidden)
        check_positive_int("pool", pool)
        if features is None:
            if feature_dim is not None:
                raise PriorkitError("feature_dim is only given together with features")
            features = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(pool), nn.Flatten()
            )
            feature_dim = width * pool * pool
        elif not isinstance(features, nn.Module):
            raise PriorkitError(f"features must be a torch.nn.Module, got {type(features).__name__}")
        else:
            check_positive_int("feature_dim", feature_dim)
        self.in_channels, self.grid, self.norm, self.feature_dim = in_channels, grid, bool(norm), feature_dim
        self.features = features
        self.alpha = _head(feature_dim, hidden, grid * grid, self.norm)
        self.beta = _head(feature_dim, hidden, grid * grid, self.norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        if f.dim() != 2 or f.shape[1] != self.feature_dim:
            raise PriorkitError(f"features must give [batch, {self.feature_dim}] (feature_dim), got {list(f.shape)}")
        return self.alpha(f), self.beta(f)


# ------------------------------------------------------------------------------------------------ the hook
def _per_sample_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() == 1:
        return F.cross_entropy(logits, target, reduction="none")
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


class PGDNM(Hook):
    """Policy-gradient noise masks as a hook acting in the heating phase (named ``heat_phase``) of a run.

    The hook owns the policy (:class:`MaskPolicy`, built from the arguments) and its AdamW; the classifier is the run's
    model. In every other phase (fine-tuning) it does nothing. Build the two stages with :meth:`PGDNM.recipe`::

        hook = PGDNM(1, **SPEC.presets["small"])
        Trainer(model, train, recipe=PGDNM.recipe(40, 10, lr=0.05, finetune_lr=0.005), hooks=[hook]).fit()

    Logged per epoch: ``pgdnm_mask_mean`` (mean cell value), ``pgdnm_log_prob`` (mean S), ``pgdnm_reward`` (-CE).
    """

    claims = ("batch.x",)
    shares = ("batch.x",)

    def __init__(
        self,
        in_channels: int,
        *,
        grid: int = 4,
        width: int = 16,
        hidden: int = 64,
        pool: int = 2,
        features: nn.Module | None = None,
        feature_dim: int | None = None,
        norm: bool = True,
        kernel: int = 3,
        sigma: float = 1.0,
        upsample: str = "nearest",
        mix: float = 0.9,
        base_momentum: float = 0.99,
        conc_clamp: tuple[float, float] = (1e-2, 1e2),
        logprob_reduce: str = "logsumexp",
        baseline: str = "none",
        baseline_momentum: float = 0.9,
        classifier_scale: bool = True,
        policy_lr: float = 1e-3,
        policy_lr_min: float = 1e-5,
        policy_weight_decay: float = 0.01,
        heat_phase: str = "heat",
    ) -> None:
        _check_kernel(kernel, sigma)
        check_choice("upsample", upsample, UPSAMPLE)
        check_range("mix", mix, 0.0, 1.0)
        check_range("base_momentum", base_momentum, 0.0, 1.0)
        self.conc_clamp = _check_clamp(conc_clamp)
        check_choice("logprob_reduce", logprob_reduce, REDUCE)
        check_choice("baseline", baseline, BASELINES)
        check_range("baseline_momentum", baseline_momentum, 0.0, 1.0, high_inclusive=False)
        if not isinstance(classifier_scale, bool):
            raise PriorkitError(f"classifier_scale must be True or False, got {classifier_scale!r}")
        check_range("policy_lr", policy_lr, 0.0, low_inclusive=False)
        check_range("policy_lr_min", policy_lr_min, 0.0, policy_lr)
        check_range("policy_weight_decay", policy_weight_decay, 0.0)
        if not isinstance(heat_phase, str) or not heat_phase:
            raise PriorkitError(f"heat_phase must be a phase name, got {heat_phase!r}")
        self.policy = MaskPolicy(
            in_channels, grid, width=width, hidden=hidden, pool=pool, features=features, feature_dim=feature_dim,
            norm=norm,
        )  # fmt: skip
        self.grid, self.kernel, self.sigma, self.upsample = grid, kernel, float(sigma), upsample
        self.mix, self.base_momentum = float(mix), float(base_momentum)
        self.logprob_reduce, self.baseline, self.baseline_momentum = logprob_reduce, baseline, float(baseline_momentum)
        self.classifier_scale, self.heat_phase = classifier_scale, heat_phase
        self.policy_lr, self.policy_lr_min = float(policy_lr), float(policy_lr_min)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=policy_lr, weight_decay=policy_weight_decay)
        g2 = grid * grid
        self.base_a, self.base_b = torch.rand(1, g2), torch.rand(1, g2)  # the code's torch.rand((1, G*G))
        self.ce_baseline: float | None = None
        self._log_prob: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------ the stages
    @staticmethod
    def recipe(
        heat_epochs: int,
        finetune_epochs: int,
        *,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        step_size: int = 30,
        gamma: float = 0.1,
        finetune_lr: float = 1e-3,
        warmup_epochs: int = 7,
        warmup_start: float = 0.01,
        finetune_data: Any = None,
        finetune_forward: ForwardFn | None = None,
        finetune_trainable: Sequence[str] | None = None,
        heat_phase: str = "heat",
        finetune_phase: str = "finetune",
    ) -> Recipe:
        """The two stages (defaults: the paper's). ``heat``: SGD(lr, momentum, weight decay) with StepLR(step_size,
        gamma) per epoch; the hook masks inputs and trains its policy here. ``finetune``: a fresh SGD at
        ``finetune_lr`` with a linear warm-up from ``warmup_start x finetune_lr`` over ``warmup_epochs`` epochs, no
        masks; ``finetune_data`` / ``finetune_forward`` / ``finetune_trainable`` retarget it (an unseen label set with
        a new head, a linear probe). Without the hook the same recipe is the conventional-training baseline."""
        check_positive_int("heat_epochs", heat_epochs, 0)
        check_positive_int("finetune_epochs", finetune_epochs, 0)
        check_range("lr", lr, 0.0, low_inclusive=False)
        check_range("finetune_lr", finetune_lr, 0.0, low_inclusive=False)
        check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0)
        check_positive_int("step_size", step_size)
        check_range("gamma", gamma, 0.0, 1.0, low_inclusive=False)
        check_positive_int("warmup_epochs", warmup_epochs, 0)
        check_range("warmup_start", warmup_start, 0.0, 1.0, low_inclusive=False)
        if heat_phase == finetune_phase:
            raise PriorkitError(f"heat_phase and finetune_phase must differ, both are {heat_phase!r}")

        def sgd(rate: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
            def make(m: nn.Module) -> torch.optim.Optimizer:
                params = [p for p in m.parameters() if p.requires_grad]
                return torch.optim.SGD(params, lr=rate, momentum=momentum, weight_decay=weight_decay)

            return make

        def step_lr(opt: torch.optim.Optimizer, steps: int) -> Any:
            return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)

        def warmup(opt: torch.optim.Optimizer, steps: int) -> Any:
            if warmup_epochs == 0:
                return None
            return torch.optim.lr_scheduler.LinearLR(opt, start_factor=warmup_start, total_iters=warmup_epochs)

        heat = Phase(heat_phase, epochs=heat_epochs, optimizer=sgd(lr), scheduler=step_lr)
        tune = Phase(
            finetune_phase, epochs=finetune_epochs, optimizer=sgd(finetune_lr), scheduler=warmup, data=finetune_data,
            forward=finetune_forward, trainable=finetune_trainable,
        )  # fmt: skip
        return Recipe([heat, tune])

    # ------------------------------------------------------------------------------------------- the hook
    def _active(self, state: RunState) -> bool:
        return state.phase.name == self.heat_phase

    def on_fit_start(self, state: RunState) -> None:
        names = [p.name for p in state.recipe.phases]
        if self.heat_phase not in names:
            raise PriorkitError(
                f"PGDNM acts in the phase named {self.heat_phase!r} (heat_phase) but the recipe's phases are {names}; "
                "build the run with PGDNM.recipe(...) or pass heat_phase= one of them"
            )
        self.policy.to(state.device)
        self.base_a, self.base_b = self.base_a.to(state.device), self.base_b.to(state.device)

    def on_epoch_start(self, state: RunState) -> None:
        if not self._active(state):
            return
        e, t = state.phase_epoch, max(1, state.phase.epochs)  # CosineAnnealingLR(T_max=heat epochs), closed form
        lr = self.policy_lr_min + (self.policy_lr - self.policy_lr_min) * (1 + math.cos(math.pi * e / t)) / 2
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def _check_x(self, x: Any) -> None:
        c = self.policy.in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c or not x.is_floating_point():
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise PriorkitError(f"PGDNM: batch.x must be float images [batch, {c}, H, W] (in_channels={c}), got {got}")
        if self.kernel // 2 >= min(x.shape[-2:]):
            raise PriorkitError(
                f"PGDNM: kernel ({self.kernel}) needs images larger than {self.kernel // 2} pixels per side, "
                f"got {list(x.shape[-2:])}"
            )
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("PGDNM: batch.x holds NaN or infinite values; the policy was not run")

    def transform_batch(self, state: RunState, batch: Batch) -> Batch:
        if not self._active(state):
            return batch
        x = batch.x
        self._check_x(x)
        xg = D.all_gather_cat(x.detach())  # the policy sees the global batch on every rank
        off = D.gather_offset(x.shape[0], x.device)
        if self.policy.norm and xg.shape[0] < 2:
            raise PriorkitError(
                "PGDNM: the policy's BatchNorm needs a global batch of at least 2 images, got 1 "
                "(use drop_last=True or a batch size that leaves no single-image batch)"
            )
        self.policy.train()
        a, b = self.policy(xg)
        c1, c0 = _concentrations(a, b, self.base_a, self.base_b, self.mix, self.conc_clamp)
        self.base_a = _update_base(self.base_a, a, self.base_momentum)
        self.base_b = _update_base(self.base_b, b, self.base_momentum)
        m = _sample(c1, c0, state.config.seed * 1_000_003 + 7919 + state.step)
        s = _reduce(_beta_log_prob(m, c1, c0), self.logprob_reduce)
        s_mean = float(s.detach().mean())
        if not math.isfinite(s_mean):
            raise NonFiniteError(
                "PGDNM: the mask log-probability is not finite (the policy's heads gave NaN/inf concentrations)"
            )
        self._log_prob = s
        cells = m[off : off + x.shape[0]]
        batch.x = x * _mask_image(cells, tuple(x.shape[-2:]), self.kernel, self.sigma, self.upsample).to(x.dtype)
        state.log(pgdnm_mask_mean=float(m.mean()), pgdnm_log_prob=s_mean)
        return batch

    def _ce_rows(self, batch: Batch) -> torch.Tensor:
        out = batch.output
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(batch):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise PriorkitError(f"PGDNM: batch.output must be logits [batch={len(batch)}, classes], got {got}")
        return _per_sample_ce(out, batch.target)

    def extra_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        if not self._active(state) or not self.classifier_scale or self._log_prob is None:
            return {}
        scale = self._log_prob.detach().mean()
        # with the phase's "ce" term the classifier's loss is the released mean(S) * CE
        return {"pgdnm_scale": (scale - 1.0) * self._ce_rows(batch).mean()}

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        if not self._active(state) or self._log_prob is None:
            return
        s, self._log_prob = self._log_prob, None
        ce = float(D.all_gather_cat(self._ce_rows(batch).detach().float()).mean())  # the global batch's CE
        if not math.isfinite(ce):
            raise NonFiniteError("PGDNM: the classifier's cross-entropy (the reward) is not finite; policy not updated")
        base = 0.0 if self.baseline == "none" or self.ce_baseline is None else self.ce_baseline
        if self.baseline == "ema" and self.ce_baseline is None:
            base = ce  # the first step has no history: zero advantage
        loss = (ce - base) * s.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.baseline == "ema":
            m = self.baseline_momentum
            self.ce_baseline = ce if self.ce_baseline is None else m * self.ce_baseline + (1 - m) * ce
        state.log(pgdnm_reward=-ce)

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "base_a": self.base_a.detach().cpu().clone(),
            "base_b": self.base_b.detach().cpu().clone(),
            "ce_baseline": torch.tensor([] if self.ce_baseline is None else [self.ce_baseline], dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        dev = next(self.policy.parameters()).device
        self.base_a, self.base_b = state["base_a"].to(dev).clone(), state["base_b"].to(dev).clone()
        cb = state["ce_baseline"]
        self.ce_baseline = float(cb[0]) if cb.numel() else None
        self._log_prob = None
