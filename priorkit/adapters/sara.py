"""SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation, Hu, Zhang, Yi,
Huang, Wang & Ma, ICLR 2025.

SaRA adapts a pretrained network to a new domain by re-training only its near-zero ("ineffective") weights and
nothing else: no new modules, so inference costs nothing extra. Per tensor ``W`` with pretrained value ``W0`` it
trains the vector ``p = W0[M]`` of the entries below a magnitude threshold, adds a nuclear-norm penalty on the
trainable entries of one randomly drawn large matrix per step (a low-rank constraint on the update), and half-way
through training re-selects the mask with the same threshold: trained entries that grew past it are frozen at
their trained value, the rest keep training with fresh Adam moments.

Equations (card adapters-lowrank.md, "Method"):

- selection ``M = 1[|W0| < tau]``; the effective tensor ``W(p) = W0`` on ``not M`` with ``p`` scattered into ``M``;
- objective ``L = L_task + lambda_rank * ||P_l||_*`` with ``P_l = W_l * M_l`` for one tensor ``l`` drawn
  uniformly each step among the 2-D tensors with ``min(rows, cols) > 64``; its subgradient is ``U V^T`` of the
  thin SVD of ``P_l``, restricted to ``M_l``;
- AdamW on ``p`` only (betas 0.9/0.999, eps 1e-8, decoupled decay ``p <- p (1 - lr wd)``, wd 1e-2, which pulls
  the trainable entries toward 0, not toward ``W0``), paper lr ``1e-3 exp(-350 tau)``;
- progressive re-selection after ``T_p`` updates: ``M' = M and 1[|W_current| < tau]`` (so ``M' <= M``), entries of
  ``M \\ M'`` are frozen at their trained values, Adam moments are reset.

Library parts reused: ``torch.nn.utils.parametrize`` holds the sparse vector: :class:`SaRAParametrization`'s
``right_inverse`` turns the dense weight into ``p`` (the parametrization's ``original`` *is* ``p``) and its
forward is ``W0.masked_scatter(M, p)``, whose autograd returns exactly ``grad[M]`` (the paper's unstructural
backpropagation: no dense ``.grad`` and no dense optimizer state); ``p`` is a real module parameter, so the
engine's checkpoints and any optimizer see it. ``torch.optim.AdamW`` is the paper's optimizer unchanged (its
decoupled decay is the official one); ``torch.linalg.svd`` gives ``U V^T``. PEFT was considered: SaRA has no
branch to add (it edits ``W``), and PEFT's nearest tuner, SHiRA, fixes the count ``r (m + n)`` and the indices for
the whole run, so selection, re-selection, the nuclear-norm term and the save format are written here.

Official code (sjtuplayer/SaRA, optim/adamw.py) and where this differs, on purpose:

- the nuclear-norm loss there is backpropagated into the original tensors, which are not in the optimizer, so as
  released ``lambda_rank`` has no effect on the update; here the term is a loss term whose gradient reaches
  ``p`` (the paper's intended effect), logged as ``sara_rank``;
- at construction (and at re-selection) it writes ``|W0[M]|`` into the masked slots for the forward before the
  next update, flipping the sign of small negative weights; off by default, ``official_abs_init=True`` copies it
  (value ``|p|`` in that forward, the gradient applied to the signed ``p``);
- the optimizer call after ``T_p`` updates only re-selects and skips its update (``reselect_skips_update=True``,
  the default; ``False`` re-selects right after the ``T_p``-th update and trains on);
- re-selection there rebuilds the optimizer's parameter groups with the default lr; here the same parameters are
  resized in place, so the scheduler's lr simply continues;
- the layer for the nuclear norm is drawn with Python's unseeded ``random``; here from ``(seed, step)``, so a run
  and its resumed copy draw the same layers.

``tau`` is absolute, so its meaning depends on the model's weight scale: ``threshold`` gives it directly,
``fraction`` derives it as a per-tensor or global quantile (the entries below it are trained; ties at ``tau`` are
not, the same strict rule as the threshold). :func:`magnitude_ablation` is the paper's motivating check (zeroing
the smallest weights barely changes the output).

Composition: a LoRA branch on the same layer is compatible (SaRA edits ``W``, LoRA adds ``B A x``); merge SaRA
first (:meth:`SaRA.merge`), then the LoRA branch (PEFT's ``merge_and_unload`` writes into the dense weight). Another
parametrization of a SaRA tensor is refused unless it declares ``sara_composable = True`` and comes after SaRA's.
Re-selection resizes ``p`` in place, which DDP's gradient buckets do not support: a multi-process run is refused
while a re-selection is pending (without re-selection ``p`` keeps its size and DDP all-reduces it as any parameter).
The per-tensor selected fractions are logged (``logging``, INFO) at selection and re-selection. The adapter file
(:meth:`SaRA.save`) holds the changed values plus their indices and which of them still train, since after
re-selection the mask depends on training and ``tau`` alone cannot rebuild it.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from priorkit.core.errors import (
    CheckpointMismatchError,
    HookConflictError,
    PriorkitError,
    check_choice,
    check_finite,
    check_positive_int,
    check_range,
)
from priorkit.core.spec import MethodSpec
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import Phase, Recipe

__all__ = [
    "SaRA",
    "SaRAParametrization",
    "fraction_threshold",
    "magnitude_ablation",
    "magnitude_mask",
    "nuclear_norm_term",
    "paper_lr",
    "reselect_mask",
]

_log = logging.getLogger(__name__)

INCLUDES = ("all", "weights")
SCOPES = ("tensor", "global")
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

SPEC = MethodSpec(
    status="implemented",
    entry="SaRA",
    missing="one re-selection only (the card's 'later': repeated re-selection), no memory benchmark and no SD-scale "
    "recipe; re-selection resizes p in place, so DDP is not supported; stand-in for SD UNets on style sets: a digits "
    "MLP adapted to inverted digits",
    presets={
        # finetune.sh / optim/adamw.py: tau 2e-3 absolute, lambda_rank 5e-4, T_p 2500 of 5005 steps, lr from
        # 1e-3 exp(-350 tau) (lr=None), AdamW betas (0.9, 0.999), eps 1e-8, wd 1e-2, clip 1.0, every tensor
        "paper": {
            "threshold": 2e-3,
            "rank_weight": 5e-4,
            "rank_min_dim": 64,
            "rank_layers_per_step": 1,
            "reselect_at": 2500,
            "reselect_skips_update": True,
            "lr": None,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 1e-2,
            "grad_clip": 1.0,
            "include": "all",
        },
        # the card's small check (digits MLP, ~300 steps): the smallest 10% of every tensor, re-selection at half
        # the steps, the paper's lambda_rank and optimizer settings, lr 1e-3 (tau is not absolute here)
        "small": {
            "fraction": 0.10,
            "fraction_scope": "tensor",
            "rank_weight": 5e-4,
            "rank_min_dim": 64,
            "rank_layers_per_step": 1,
            "reselect_at": 150,
            "reselect_skips_update": True,
            "lr": 1e-3,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 1e-2,
            "grad_clip": 1.0,
            "include": "all",
        },
    },
)


# --------------------------------------------------------------------------------------------- functional core
def _check_tensor(name: str, t: Any, *, dim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise PriorkitError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise PriorkitError(f"{name} must be floating point, got dtype {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise PriorkitError(f"{name} must have {dim} dimensions, got shape {list(t.shape)}")
    if t.numel() == 0:
        raise PriorkitError(f"{name} must not be empty, got shape {list(t.shape)}")
    return check_finite(name, t.detach())


def _check_threshold(name: str, value: Any) -> float:
    check_range(name, value, 0.0, low_inclusive=False)
    if not math.isfinite(float(value)):
        raise PriorkitError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_fraction(name: str, value: Any) -> float:
    return float(check_range(name, value, 0.0, 1.0, low_inclusive=False, high_inclusive=False))


def paper_lr(threshold: float) -> float:
    """The official default learning rate ``1e-3 * exp(-350 * tau)`` (optim/adamw.py; about 4.97e-4 at 2e-3)."""
    return 1e-3 * math.exp(-350.0 * _check_threshold("threshold", threshold))


def fraction_threshold(values: torch.Tensor, fraction: float) -> float:
    """The absolute threshold whose strict rule ``|v| < tau`` selects the ``floor(fraction * n)`` smallest ``|v|``
    (the ``(k+1)``-th smallest ``|v|``; entries tied with it are not selected)."""
    _check_fraction("fraction", fraction)
    v = _check_tensor("values", values).abs().flatten()
    k = math.floor(fraction * v.numel())
    return _kth_abs(v, k)


def _kth_abs(abs_values: torch.Tensor, k: int) -> float:
    return float(torch.kthvalue(abs_values.float().cpu(), k + 1).values)


def magnitude_mask(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """SaRA's selection ``M = 1[|W| < tau]`` (the "ineffective", near-zero entries)."""
    tau = _check_threshold("threshold", threshold)
    return _check_tensor("w", w).abs() < tau


def reselect_mask(w: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Progressive re-selection ``M' = M and 1[|W_current| < tau]``: never-trained entries keep ``|W0| >= tau``, so
    ``M' <= M``; trained entries that grew past ``tau`` leave the mask (frozen at their trained value)."""
    tau = _check_threshold("threshold", threshold)
    w = _check_tensor("w", w)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != w.shape:
        got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise PriorkitError(f"mask must be a bool tensor of shape {list(w.shape)} (w's), got {got}")
    return mask & (w.abs() < tau)


def nuclear_norm_term(p_matrix: torch.Tensor) -> torch.Tensor:
    """``||P||_*`` of a 2-D tensor, differentiable with gradient ``U V^T`` (thin SVD of ``P``).

    Computed as ``<P, U V^T>`` with ``U V^T`` held constant: the value is the sum of the singular values and the
    gradient is the nuclear-norm subgradient the card names, without differentiating through the SVD."""
    _check_tensor("p_matrix", p_matrix, dim=2)
    return _nuclear(p_matrix)


def _nuclear(p_matrix: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        u, _, vh = torch.linalg.svd(p_matrix.detach(), full_matrices=False)
        g = u @ vh
    return (p_matrix * g).sum()


# ------------------------------------------------------------------------------------------- parametrization
class SaRAParametrization(nn.Module):
    """``W(p) = base`` with ``p`` scattered into ``mask`` (``base.masked_scatter(mask, p)``).

    Registered with ``torch.nn.utils.parametrize``, its ``right_inverse`` stores the dense tensor as ``base`` and
    returns ``W[mask]``, so the parametrization's ``original`` is the trainable vector ``p`` and nothing dense is a
    parameter. Buffers: ``base`` (frozen values; after re-selection it holds the frozen trained values too),
    ``mask`` (the entries ``p`` fills now), ``selected`` (the first selection: every entry that may differ from the
    pretrained tensor), ``abs_forward`` (the official first-forward ``|p|`` quirk, off unless asked for).
    """

    sara = True

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("base", weight.detach().clone())
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())
        self.register_buffer("selected", self.mask.clone())
        self.register_buffer("abs_forward", torch.tensor(False))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if bool(self.abs_forward):  # official quirk: the value |p|, the gradient passed to the signed p
            p = p + (p.abs() - p).detach()
        return self.base.masked_scatter(self.mask, p)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.base.copy_(w)
        return w.detach()[self.mask].clone()


def _inside_parametrization(module_name: str) -> bool:
    return "parametrizations" in module_name.split(".")


def _targets(model: nn.Module, include: str, who: str) -> dict[str, tuple[nn.Module, str]]:
    """The tensors ``include`` selects, by name; a parametrized or tied one is refused (SaRA must own it)."""
    out: dict[str, tuple[nn.Module, str]] = {}
    seen: dict[int, str] = {}
    stacked: list[str] = []
    for mname, mod in model.named_modules():
        if _inside_parametrization(mname):
            continue
        names = list(mod._parameters)
        if parametrize.is_parametrized(mod):
            names += [t for t in mod.parametrizations if t not in names]  # type: ignore[union-attr]
        for t in names:
            if include == "weights" and not (isinstance(mod, _WEIGHTED) and t == "weight"):
                continue
            full = f"{mname}.{t}" if mname else t
            if parametrize.is_parametrized(mod, t):
                kinds = [type(x).__name__ for x in mod.parametrizations[t]]  # type: ignore[index]
                stacked.append(f"{full} ({', '.join(kinds)})")
                continue
            par = mod._parameters.get(t)
            if par is None or not par.is_floating_point():
                continue
            if id(par) in seen:
                raise PriorkitError(
                    f"{who}: tensor {full} is the same tensor as {seen[id(par)]} (tied weights); untie them or use "
                    "include='weights' on a model without tied Linear/Conv weights"
                )
            seen[id(par)] = full
            out[full] = (mod, t)
    if stacked:
        raise HookConflictError(
            f"{who}: tensor(s) already parametrized: {stacked[:4]}; SaRA must be the first parametrization of a "
            "tensor (attach SaRA before the other method, whose parametrization must declare sara_composable = True)"
        )
    if not out:
        raise PriorkitError(f"{who}: include={include!r} selects no floating-point tensor of the model")
    return out


def _thresholds(weights: Mapping[str, torch.Tensor], threshold: float | None, fraction: float | None,
                scope: str) -> dict[str, float]:  # fmt: skip
    if threshold is not None:
        return dict.fromkeys(weights, float(threshold))
    assert fraction is not None
    if scope == "tensor":
        return {n: _kth_abs(w.abs().flatten(), math.floor(fraction * w.numel())) for n, w in weights.items()}
    flat = torch.cat([w.abs().flatten().float().cpu() for w in weights.values()])
    return dict.fromkeys(weights, _kth_abs(flat, math.floor(fraction * flat.numel())))


def magnitude_ablation(model: nn.Module, frac: float, *, scope: str = "global", include: str = "all") -> nn.Module:
    """A copy of ``model`` with the ``frac`` smallest-``|w|`` entries set to 0 (the paper's motivating analysis:
    zeroing the smallest 10-20 % of a pretrained model barely changes its output).

    ``scope='global'`` ranks every selected tensor together (like SaRA's absolute threshold), ``'tensor'`` ranks
    each tensor on its own; ``include`` as in :class:`SaRA`. The rule is strict (``|w| < tau``, see
    :func:`fraction_threshold`); ``frac=0`` returns an unchanged copy. The model itself is not modified.
    """
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_range("frac", frac, 0.0, 1.0, high_inclusive=False)
    check_choice("scope", scope, SCOPES)
    check_choice("include", include, INCLUDES)
    out = copy.deepcopy(model)
    targets = _targets(out, include, "magnitude_ablation")
    weights = {n: check_finite(f"tensor {n}", getattr(m, t).detach()) for n, (m, t) in targets.items()}
    if frac == 0:
        return out
    tau = _thresholds(weights, None, frac, scope)
    with torch.no_grad():
        for n, (m, t) in targets.items():
            m._parameters[t].masked_fill_(weights[n].abs() < tau[n], 0.0)  # type: ignore[union-attr]
    return out


# ------------------------------------------------------------------------------------------------------ entry
class SaRA(Hook):
    """SaRA on ``model``: attaches the sparse-vector parametrizations now and acts as a training hook.

    Exactly one of ``threshold`` (absolute ``tau``) and ``fraction`` (``tau`` as a quantile of ``|W0|``, per
    tensor or over all selected tensors by ``fraction_scope``). ``include``: ``'all'`` (official: every parameter
    tensor, biases and norm scales included) or ``'weights'`` (the weights of Linear/Conv layers). The hook adds the
    nuclear-norm term (``sara_rank``) of ``rank_layers_per_step`` tensors drawn from ``(seed, step)`` among the 2-D
    tensors with ``min(shape) > rank_min_dim``, and re-selects once after ``reselect_at`` updates (``None``:
    never). ``lr``/``betas``/``eps``/``weight_decay``/``grad_clip`` are the optimizer settings of
    :meth:`optimizer` and :meth:`recipe` (``lr=None``: the paper's ``1e-3 exp(-350 tau)``, threshold mode only).

    Train it through the engine: ``fit(model, data, hook.recipe(epochs), hooks=[hook])`` (AdamW on ``p`` only, a
    per-step cosine schedule without warm-up, the paper's clip); any other phase must train only SaRA's vectors
    (checked at the phase start, ``allow_others=True`` to train more, e.g. a LoRA branch on the same layer).
    State (checkpointed): masks, step count and the re-selection flag; ``p`` and the frozen values are model
    buffers and parameters, the Adam moments optimizer state. Presets: ``SaRA(model, **SPEC.presets["paper"])``.
    """

    claims = ("weight_parametrization",)

    def __init__(
        self,
        model: nn.Module,
        *,
        threshold: float | None = None,
        fraction: float | None = None,
        fraction_scope: str = "tensor",
        include: str = "all",
        rank_weight: float = 5e-4,
        rank_min_dim: int = 64,
        rank_layers_per_step: int = 1,
        reselect_at: int | None = None,
        reselect_skips_update: bool = True,
        lr: float | None = None,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        grad_clip: float | None = 1.0,
        official_abs_init: bool = False,
        allow_others: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if (threshold is None) == (fraction is None):
            raise PriorkitError(
                f"give exactly one of threshold (absolute tau > 0) and fraction (in (0, 1)), got "
                f"threshold={threshold!r}, fraction={fraction!r}"
            )
        if threshold is not None:
            threshold = _check_threshold("threshold", threshold)
        if fraction is not None:
            fraction = _check_fraction("fraction", fraction)
        check_choice("fraction_scope", fraction_scope, SCOPES)
        check_choice("include", include, INCLUDES)
        check_range("rank_weight", rank_weight, 0.0)
        if not math.isfinite(float(rank_weight)):
            raise PriorkitError(f"rank_weight must be a finite number >= 0, got {rank_weight!r}")
        check_positive_int("rank_min_dim", rank_min_dim, 0)
        check_positive_int("rank_layers_per_step", rank_layers_per_step)
        if reselect_at is not None:
            check_positive_int("reselect_at", reselect_at, 0)
        if lr is None and threshold is None:
            raise PriorkitError("lr=None means the paper's 1e-3 exp(-350 tau), which needs threshold; give lr > 0")
        self.lr = paper_lr(threshold) if lr is None else _check_threshold("lr", lr)
        if not isinstance(betas, Sequence) or len(betas) != 2:
            raise PriorkitError(f"betas must be a pair (beta1, beta2) in [0, 1), got {betas!r}")
        for i, b in enumerate(betas):
            check_range(f"betas[{i}]", b, 0.0, 1.0, high_inclusive=False)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        if grad_clip is not None:
            check_range("grad_clip", grad_clip, 0.0, low_inclusive=False)
        check_positive_int("seed", seed, 0)
        self.threshold, self.fraction, self.fraction_scope, self.include = threshold, fraction, fraction_scope, include
        self.rank_weight, self.rank_min_dim = float(rank_weight), rank_min_dim
        self.rank_layers_per_step = rank_layers_per_step
        self.reselect_at, self.reselect_skips_update = reselect_at, bool(reselect_skips_update)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay, self.grad_clip = eps, weight_decay, grad_clip
        self.official_abs_init, self.allow_others, self.seed = bool(official_abs_init), bool(allow_others), seed
        self.model = model
        self.step, self.reselected, self.merged, self._skipped = 0, False, False, False

        targets = _targets(model, include, "SaRA")
        weights = {n: check_finite(f"tensor {n}", getattr(m, t).detach()) for n, (m, t) in targets.items()}
        self.tau = _thresholds(weights, threshold, fraction, fraction_scope)
        self.tensors = targets
        for n, (m, t) in targets.items():
            par = SaRAParametrization(weights[n], weights[n].abs() < self.tau[n])
            parametrize.register_parametrization(m, t, par)
            if self.official_abs_init:
                par.abs_forward.fill_(True)
        # the official eligibility: shape only, fixed at the start
        self.rank_tensors = [n for n, w in weights.items() if w.dim() == 2 and min(w.shape) > rank_min_dim]
        self._log_fractions("selected")

    # ----------------------------------------------------------------------------------------------- access
    def _live(self) -> None:
        if self.merged:
            raise PriorkitError("SaRA was merged into the model (merge()); attach a new SaRA to train again")

    def parametrization(self, name: str) -> SaRAParametrization:
        """The :class:`SaRAParametrization` of tensor ``name``."""
        self._live()
        check_choice("name", name, list(self.tensors))
        m, t = self.tensors[name]
        return m.parametrizations[t][0]  # type: ignore[index,return-value]

    def vector(self, name: str) -> nn.Parameter:
        """The trainable vector ``p`` of tensor ``name`` (the parametrization's ``original``)."""
        self._live()
        check_choice("name", name, list(self.tensors))
        m, t = self.tensors[name]
        return m.parametrizations[t].original  # type: ignore[index,return-value]

    @property
    def params(self) -> list[nn.Parameter]:
        """Every trainable vector ``p``, in a fixed order (the optimizer's)."""
        return [self.vector(n) for n in self.tensors]

    def trainable_count(self) -> int:
        """``sum |M|``: the number of trainable entries now."""
        return sum(p.numel() for p in self.params)

    def selected_fraction(self) -> dict[str, float]:
        """Per tensor, the fraction of its entries that train now (the card asks to log it)."""
        out = {}
        for n in self.tensors:
            mask = self.parametrization(n).mask
            out[n] = float(mask.float().mean())
        return out

    def _log_fractions(self, what: str) -> dict[str, float]:
        fractions = self.selected_fraction()
        for n, f in fractions.items():
            _log.info("SaRA %s %.4g of %s (tau %.4g)", what, f, n, self.tau[n])
        return fractions

    def trainable_names(self, model: nn.Module | None = None) -> list[str]:
        """Names of the vectors ``p`` in ``model`` (default: the one SaRA was attached to; pass the wrapper when it
        was wrapped later, e.g. by PEFT), for ``Phase(trainable=...)``."""
        ids = {id(p) for p in self.params}
        return [n for n, p in (model or self.model).named_parameters() if id(p) in ids]

    # ------------------------------------------------------------------------------------------- optimizer
    def optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW on the vectors ``p`` only, with the paper's settings (a ``Phase.optimizer`` factory)."""
        return torch.optim.AdamW(
            self.params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )

    def recipe(self, epochs: int, *, name: str = "sara") -> Recipe:
        """One phase that trains only ``p``: AdamW (:meth:`optimizer`), cosine to 0 over all steps without
        warm-up (stepped every step), the gradient clip ``grad_clip``."""
        check_positive_int("epochs", epochs)

        def cosine(opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))

        phase = Phase(
            name, epochs=epochs, trainable=self.trainable_names(), optimizer=self.optimizer, scheduler=cosine,
            interval="step", grad_clip=self.grad_clip,
        )  # fmt: skip
        return Recipe([phase])

    # ----------------------------------------------------------------------------------------- the method
    def rank_draw(self, step: int) -> list[str]:
        """The tensors whose nuclear norm enters the loss at ``step`` (uniform without replacement, seeded by
        ``(seed, step)``)."""
        check_positive_int("step", step, 0)
        if not self.rank_tensors:
            return []
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        k = min(self.rank_layers_per_step, len(self.rank_tensors))
        picks = torch.randperm(len(self.rank_tensors), generator=g)[:k].sort().values.tolist()
        return [self.rank_tensors[i] for i in picks]

    def rank_loss(self, step: int) -> torch.Tensor | None:
        """``lambda_rank * sum ||P_l||_*`` over the drawn tensors (``None`` when no tensor is eligible or the
        weight is 0); ``P_l`` is rebuilt from ``p``, so the gradient reaches ``p`` (the intended effect)."""
        self._live()
        names = self.rank_draw(step) if self.rank_weight > 0 else []
        if not names:
            return None
        total = None
        for n in names:
            par, p = self.parametrization(n), self.vector(n)
            term = _nuclear(torch.zeros_like(par.base).masked_scatter(par.mask, p))
            total = term if total is None else total + term
        return self.rank_weight * total

    @torch.no_grad()
    def reselect(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """Progressive re-selection: ``M' = M and |W| < tau`` per tensor, entries leaving the mask frozen at their
        trained values, ``p`` resized in place (the same parameter objects, so the optimizer keeps them) and its
        Adam moments reset. Returns the per-tensor trainable fractions after it."""
        self._live()
        for n in self.tensors:
            par, p = self.parametrization(n), self.vector(n)
            w = par.base.masked_scatter(par.mask, p.detach())
            check_finite(f"SaRA: tensor {n} at re-selection", w)
            new = par.mask & (w.abs() < self.tau[n])
            par.base.copy_(w)
            par.mask.copy_(new)
            p.grad = None
            p.data = w[new].clone()
            if self.official_abs_init:
                par.abs_forward.fill_(True)
            if optimizer is not None:
                optimizer.state.pop(p, None)
        self.reselected = True
        return self._log_fractions("re-selected")

    def merge(self) -> nn.Module:
        """Bake every SaRA tensor into a plain dense parameter (the same parameter objects) and detach SaRA;
        returns the model. Merge SaRA before a LoRA branch on the same layer."""
        self._live()
        for m, t in self.tensors.values():
            parametrize.remove_parametrizations(m, t, leave_parametrized=True)
        self.merged = True
        return self.model

    # ------------------------------------------------------------------------------------------ save / load
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What SaRA changed, as plain tensors: per tensor the flat ``index`` of its first selection (every entry
        that may differ from the pretrained tensor), the current ``values`` there, which of them still ``train``
        (after re-selection the mask depends on training, so ``tau`` alone cannot rebuild it), its ``shape`` and
        ``tau``; plus the step count and the re-selection flag."""
        self._live()
        out: dict[str, torch.Tensor] = {}
        for n in self.tensors:
            par, p = self.parametrization(n), self.vector(n)
            w = par.base.masked_scatter(par.mask, p.detach()).flatten()
            index = torch.nonzero(par.selected.flatten()).flatten()
            out[f"{n}.index"] = index.cpu()
            out[f"{n}.values"] = w[index].cpu().clone()
            out[f"{n}.train"] = par.mask.flatten()[index].cpu().clone()
            out[f"{n}.shape"] = torch.tensor(list(par.base.shape), dtype=torch.long)
            out[f"{n}.tau"] = torch.tensor(self.tau[n], dtype=torch.float64)
        out["sara.step"] = torch.tensor(self.step, dtype=torch.long)
        out["sara.reselected"] = torch.tensor(self.reselected)
        return out

    @torch.no_grad()
    def load_adapter_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load :meth:`adapter_state_dict` into this SaRA, attached to the same pretrained model: entries outside
        the saved index keep the model's values, the saved ones get the saved values, and the saved trainable
        entries become ``p``."""
        self._live()
        if not isinstance(state, Mapping):
            raise PriorkitError(
                f"state must be a dict of tensors (SaRA.adapter_state_dict), got {type(state).__name__}"
            )
        want = {f"{n}.{k}" for n in self.tensors for k in ("index", "values", "train", "shape", "tau")}
        want |= {"sara.step", "sara.reselected"}
        missing, extra = sorted(want - set(state)), sorted(set(state) - want)
        if missing or extra:
            raise PriorkitError(
                f"state does not match this SaRA's tensors: missing {missing[:6]}, unexpected {extra[:6]}"
            )
        for n in self.tensors:
            par = self.parametrization(n)
            shape = [int(s) for s in state[f"{n}.shape"].tolist()]
            if shape != list(par.base.shape):
                raise PriorkitError(
                    f"state['{n}.shape'] is {shape} but the model's tensor {n} has {list(par.base.shape)}"
                )
            index, values, train = state[f"{n}.index"], state[f"{n}.values"], state[f"{n}.train"]
            k, numel = int(index.numel()), par.base.numel()
            ok = index.dim() == 1 and not index.is_floating_point() and values.shape == (k,) and train.shape == (k,)
            if not ok or train.dtype != torch.bool or (k and (int(index.min()) < 0 or int(index.max()) >= numel)):
                raise PriorkitError(
                    f"state['{n}.index'/'values'/'train'] must be 1-D of one length k, integer indices in "
                    f"[0, {numel - 1}] and a bool train flag; got shapes {list(index.shape)}, {list(values.shape)}, "
                    f"{list(train.shape)}"
                )
            check_finite(f"state['{n}.values']", values)
            tau = _check_threshold(f"state['{n}.tau']", float(state[f"{n}.tau"]))
            dev = par.base.device
            w = par.base.masked_scatter(par.mask, self.vector(n).detach()).flatten()
            w[index.to(dev)] = values.to(dev, w.dtype)
            sel = torch.zeros(numel, dtype=torch.bool, device=dev)
            sel[index.to(dev)] = True
            mask = torch.zeros(numel, dtype=torch.bool, device=dev)
            mask[index.to(dev)[train.to(dev)]] = True
            p = self.vector(n)
            par.base.copy_(w.view_as(par.base))
            par.selected.copy_(sel.view_as(par.selected))
            par.mask.copy_(mask.view_as(par.mask))
            par.abs_forward.fill_(False)
            p.grad = None
            p.data = w[mask].clone()
            self.tau[n] = tau
        self.step = int(state["sara.step"])
        self.reselected = bool(state["sara.reselected"])

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`adapter_state_dict` to ``path`` (loads with ``torch.load(weights_only=True)``)."""
        torch.save(self.adapter_state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        """Read a file written by :meth:`save` into this SaRA (see :meth:`load_adapter_state_dict`)."""
        self.load_adapter_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    # ------------------------------------------------------------------------------------------------- hook
    def _check_stack(self) -> None:
        for n, (m, t) in self.tensors.items():
            plist = m.parametrizations[t] if parametrize.is_parametrized(m, t) else []  # type: ignore[index]
            if not plist or not isinstance(plist[0], SaRAParametrization):
                raise HookConflictError(f"SaRA: tensor {n} lost its SaRA parametrization (removed or replaced)")
            foreign = [type(x).__name__ for x in list(plist)[1:] if not getattr(x, "sara_composable", False)]
            if foreign:
                raise HookConflictError(
                    f"SaRA: tensor {n} is also parametrized by {foreign}, which does not declare sara_composable = "
                    "True; two methods editing one weight would fight over it"
                )

    def on_phase_start(self, state: RunState) -> None:
        self._live()
        self._check_stack()
        if state.world_size > 1 and self.reselect_at is not None and not self.reselected:
            raise PriorkitError(
                f"SaRA's re-selection resizes p in place, which DDP's gradient buckets do not support; world size is "
                f"{state.world_size}: run on one process or pass reselect_at=None"
            )
        opt = state.optimizer
        if opt is None or self.allow_others:
            return
        mine = {id(p) for p in self.params}
        names = {id(p): n for n, p in self.model.named_parameters()}
        others = [names.get(id(p), "?") for g in opt.param_groups for p in g["params"] if id(p) not in mine]
        if others:
            raise PriorkitError(
                f"SaRA trains only its sparse vectors p, but phase {state.phase.name!r}'s optimizer also updates "
                f"{len(others)} other parameter(s), e.g. {others[:3]}; train with hook.recipe(epochs) or "
                "Phase(trainable=hook.trainable_names(), optimizer=hook.optimizer), or pass allow_others=True to "
                "train more (e.g. a LoRA branch)"
            )

    def on_epoch_start(self, state: RunState) -> None:
        self._live()
        state.log(sara_trainable=self.trainable_count())

    def extra_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        term = self.rank_loss(self.step)
        return {} if term is None else {"sara_rank": term}

    def on_after_backward(self, state: RunState) -> None:
        if self.reselect_skips_update and self._due():
            self.reselect(state.optimizer)  # official: this optimizer call only re-selects, no update
            for p in self.params:
                p.grad = None  # the optimizer skips a parameter without gradient (no update, no decay)
            self._skipped = True

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        if self._skipped:  # no update happened in this step
            self._skipped = False
        elif self.official_abs_init:
            for n in self.tensors:  # the official |p| forward lasts until the next update
                self.parametrization(n).abs_forward.fill_(False)
        self.step += 1
        if not self.reselect_skips_update and self._due():
            self.reselect(state.optimizer)

    def _due(self) -> bool:
        return self.reselect_at is not None and not self.reselected and self.step == self.reselect_at

    def state_dict(self) -> dict[str, Any]:
        masks = {n: self.parametrization(n).mask.clone() for n in self.tensors}
        return {"masks": masks, "tau": dict(self.tau), "step": self.step, "reselected": self.reselected}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the structure (masks, the length of every ``p``) before the engine loads the model's values."""
        self._live()
        masks = state["masks"]
        if sorted(masks) != sorted(self.tensors):
            raise CheckpointMismatchError(
                f"SaRA checkpoint tensors {sorted(masks)[:4]} differ from this SaRA's {list(self.tensors)[:4]}"
            )
        for n, mask in masks.items():
            par, p = self.parametrization(n), self.vector(n)
            if mask.shape != par.mask.shape or mask.dtype != torch.bool:
                raise CheckpointMismatchError(
                    f"SaRA checkpoint mask of {n} has shape {list(mask.shape)}, the tensor {list(par.mask.shape)}"
                )
            par.mask.copy_(mask)
            k = int(mask.sum())
            if p.numel() != k:
                p.grad = None
                p.data = torch.zeros(k, dtype=p.dtype, device=p.device)
        self.tau = {n: float(state["tau"][n]) for n in self.tensors}
        self.step, self.reselected = int(state["step"]), bool(state["reselected"])
