"""Sparse Low-rank Adaptation of Pre-trained Language Models (SoRA), Ning Ding, Xingtai Lv, Qiaosen Wang, Yulin
Chen, Bowen Zhou, Zhiyuan Liu, Maosong Sun, EMNLP 2023 (arXiv 2311.11696).

LoRA fixes the rank of every adapted weight in advance. SoRA starts from a larger rank ``r`` and puts a gate on
each rank component of the branch; the gates are trained with a proximal (soft-threshold) step, so components a
module does not need are driven to exactly zero. After training, zero components are dropped and the gate is folded
into ``B``: the result is an ordinary LoRA whose rank ``r'`` differs per module and whose outputs are identical. A
sparsifying scheduler that raises the threshold in stages serves as an analysis tool (memorization vs
generalization as parameters are removed).

Equations (card adapters-lowrank.md, "SoRA"), for a targeted ``W0 in R^{m x n}``:

- module: ``h = W0 x + s B (g * (A x))``, ``A in R^{r x n}``, ``B in R^{m x r}``, gate ``g in R^r``, ``s = alpha/r``;
  init (official): ``A`` Kaiming-uniform (a = sqrt 5), ``B = 0``, ``g ~ N(0, 1)``; r = 8, alpha = 16 in the scripts;
- loss (official trainer): ``L = L_task + lambda1 * sum_all |g_i| / N_gates`` (an L1 term on the mean |gate|);
- updates: ``A``, ``B`` (and any other trainable tensor) by AdamW (weight decay 0.1, linear warm-up over 6 % then
  linear decay, gradient clipping to norm 0.1 over all parameters); the gates by a separate Adam (same lr schedule,
  no weight decay), each step followed by ``g <- sign(g) * max(|g| - xi, 0)``, with ``xi = lambda2`` constant
  (``threshold_mode="official"``, what the scripts are tuned for) or ``xi = lr_t * lambda2`` (``"paper"``, the
  proximal-gradient form);
- export: ``A' = A[g != 0]``, ``B' = B[:, g != 0] diag(g[g != 0])``, scaling unchanged (``alpha' = s r'``);
- sparsifying scheduler: ``xi`` raised stage by stage along a linear / log-linear / exp-linear list from ``lambda2``
  to ``max_lambda``; per stage memorization = train metric / train metric after the main run, generalization =
  validation metric / validation metric after the main run, and the number of retained LoRA parameters.

Official-code quirks, behind flags: the released soft-threshold first shrinks gates with ``|g| > xi`` and then zeroes
gates with ``|g| < xi`` using the already-shrunk values, so ``|g| in (xi, 2 xi)`` also becomes 0 and ``|g| = xi`` is
left unchanged (``official_threshold=True``; default: the exact operator). In the released schedule script the later
stages reuse the exhausted linear schedule, so their learning rate is 0 and the stages only soft-threshold the gates
(``stage_lr=0.0``, the default; a positive value trains on during the stages at that fraction of ``lr``). The gate
Adam is ``torch.optim.Adam`` (``eps`` added after bias correction of the second moment; the released optimizer adds
it before, a difference of order ``eps``), default ``eps`` 1e-6 as in the released one (transformers' AdamW default).

What is reused and what is written here (DESIGN principle 4): SoRA is a PEFT tuner type. :class:`SoraConfig`
subclasses ``peft.LoraConfig``, :class:`SoraModel` subclasses ``peft.LoraModel`` and :class:`SoraLinear` subclasses
PEFT's LoRA ``Linear``; the gate ``lora_gate`` is listed in the layer's ``adapter_layer_names``, so PEFT trains, saves
and loads it, and it acts through LoRA's variant interface (forward, merge, unmerge), so ``get_peft_model``,
``save_pretrained``, ``PeftModel.from_pretrained``, ``merge_and_unload`` and mixed-adapter batches are PEFT's own.
Dispatch goes through LoRA's custom-module mechanism (registered in the config's ``__post_init__``, hence also when
``from_pretrained`` rebuilds the config); the type is registered with
:func:`priorkit.adapters._peft.register_tuner` when this module is imported. The export :func:`sora_to_lora` builds a
stock ``LoraConfig`` with ``rank_pattern``/``alpha_pattern``. Written here, because no library has them: the
proximal soft-threshold (:class:`SoraGateAdam`, Adam from torch plus the proximal step), the L1 term and the gate
step as an engine hook (:class:`SoraHook`), the official optimizer/schedule/clipping as a recipe builder
(:func:`sora_recipe`, engine phases) and the sparsifying stages with their report (:func:`sparsify_report`).

Functional core: :func:`soft_threshold`, :func:`gate_threshold`, :func:`gate_l1`, :func:`prune_gated_factors`,
:func:`sparsify_lambdas`, :func:`memorization_generalization`. Model utilities: :func:`sora_gates`,
:func:`sora_ranks`, :func:`sora_lora_params`, :func:`sora_to_lora`. Entry: :class:`SoraConfig`
(``peft_model = get_peft_model(model, SoraConfig(**SPEC.presets["paper"]))``, with your ``target_modules``); train
with ``hook = SoraHook.from_config(config)``, ``recipe = sora_recipe(peft_model, len(train), batch_size, hook=hook)``
and ``priorkit.train.fit(peft_model, train, recipe, hooks=[hook], config=TrainConfig(batch_size=batch_size))``;
export with ``sora_to_lora(peft_model)``. Only ``torch.nn.Linear`` targets are adapted (other layer types are
refused by name).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from peft.tuners.lora import LoraConfig, LoraModel
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer, LoraVariant
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import transpose
from torch import nn

from priorkit.adapters._peft import peft_type, register_tuner
from priorkit.core.errors import (
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
    "SoraConfig",
    "SoraGateAdam",
    "SoraHook",
    "SoraLinear",
    "SoraModel",
    "gate_l1",
    "gate_threshold",
    "memorization_generalization",
    "prune_gated_factors",
    "soft_threshold",
    "sora_gates",
    "sora_lora_params",
    "sora_ranks",
    "sora_recipe",
    "sora_to_lora",
    "sparsify_lambdas",
    "sparsify_report",
]

GATE = "lora_gate"
THRESHOLD_MODES = ("official", "paper")
GATE_INITS = ("normal", "ones")
SPACINGS = ("linear", "log_linear", "exp_linear")
INITS = (True, False, "gaussian")  # LoRA inits that keep A/B plain factors (PiSSA & co. rewrite the base weight)

SPEC = MethodSpec(
    status="implemented",
    entry="SoraConfig",
    missing="Conv and Embedding layers are not adapted (refused); the gate Adam adds eps after bias correction "
    "(torch) where the released optimizer adds it before; no 2-process DDP equality test (the gate step is "
    "deterministic given DDP's all-reduced gradients); the paper's DeBERTaV3 / GLUE runs are not reproduced (CPU "
    "check: mnist1d MLP adapted from a shifted-template source task)",
    presets={
        # scripts/run_glue_sora_no_schedule.sh (STS-B): r 8, alpha 16 (s = 2), lambda 10, lambda2 3e-4, gates
        # N(0, 1); targets = the official class default (q, k, v, attention output, both FFN linears; DeBERTa names).
        # Recipe (sora_recipe defaults): lr 8e-4, wd 0.1, warm-up 6 %, clip 0.1, 20 epochs, batch 8.
        # The exact proximal operator (the paper's); "official" below has the released thresholding.
        "paper": {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense",
                               "output.dense"],
            "gate_init": "normal",
            "lambda1": 10.0,
            "lambda2": 3e-4,
            "threshold_mode": "official",
            "official_threshold": False,
        },
        "official": {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense",
                               "output.dense"],
            "gate_init": "normal",
            "lambda1": 10.0,
            "lambda2": 3e-4,
            "threshold_mode": "official",
            "official_threshold": True,
        },
        # the card's CPU check: MLP 40-256-256-10, r 8 on all three Linear layers; lambda1 keeps the official
        # per-gate L1 pressure (10 / 576 gates in DeBERTaV3-base, here 24 gates: 10 * 24 / 576)
        "small": {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["body.0", "body.2", "head"],
            "gate_init": "normal",
            "lambda1": 10.0 * 24 / 576,
            "lambda2": 3e-4,
            "threshold_mode": "official",
            "official_threshold": False,
        },
    },
)  # fmt: skip


# ------------------------------------------------------------------------------------------ functional core
def _check_xi(name: str, xi: Any) -> float:
    check_range(name, xi, 0.0)
    if math.isinf(float(xi)):
        raise PriorkitError(f"{name} must be a finite number >= 0, got {xi!r}")
    return float(xi)


def _check_gate(name: str, g: Any) -> torch.Tensor:
    if not isinstance(g, torch.Tensor):
        raise PriorkitError(f"{name} must be a torch.Tensor, got {type(g).__name__}")
    if not g.is_floating_point():
        raise PriorkitError(f"{name} must be floating point, got dtype {g.dtype}")
    return check_finite(name, g)


def _soft_threshold(g: torch.Tensor, xi: float, official: bool) -> torch.Tensor:
    if not official:
        return torch.sign(g) * torch.clamp(g.abs() - xi, min=0.0)
    out = g.clone()
    out[g > xi] -= xi  # released order: shrink first ...
    out[g < -xi] += xi
    out[out.abs() < xi] = 0.0  # ... then zero with the shrunk values (|g| in (xi, 2 xi) dies too)
    return out


def soft_threshold(g: torch.Tensor, xi: float, *, official: bool = False) -> torch.Tensor:
    """The proximal operator of ``xi * |g|``: ``sign(g) * max(|g| - xi, 0)`` (exact zeros for ``|g| <= xi``).

    ``official=True`` reproduces the released thresholding (shrink, then zero ``|g| < xi`` on the shrunk values:
    ``|g| in (xi, 2 xi)`` also becomes 0, ``|g| == xi`` stays). Returns a new tensor."""
    _check_gate("g", g)
    return _soft_threshold(g, _check_xi("xi", xi), bool(official))


def gate_threshold(lambda2: float, lr: float, mode: str = "official") -> float:
    """The per-step threshold ``xi``: ``lambda2`` (``"official"``) or ``lr * lambda2`` (``"paper"``)."""
    _check_xi("lambda2", lambda2)
    check_choice("threshold_mode", mode, THRESHOLD_MODES)
    if mode == "official":
        return float(lambda2)
    return _check_xi("lr", lr) * float(lambda2)


def gate_l1(gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """The SoRA sparsity term before ``lambda1``: the mean absolute gate over all gates of the model."""
    if isinstance(gates, torch.Tensor) or not isinstance(gates, Sequence) or len(gates) == 0:
        raise PriorkitError("gates must be a non-empty sequence of gate tensors (the model's lora_gate entries)")
    for i, g in enumerate(gates):
        _check_gate(f"gates[{i}]", g)
    return _gate_l1(gates)


def _gate_l1(gates: Sequence[torch.Tensor]) -> torch.Tensor:
    total = sum(g.abs().sum() for g in gates)
    return total / sum(g.numel() for g in gates)


def prune_gated_factors(
    lora_a: torch.Tensor, lora_b: torch.Tensor, gate: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the rank components with a zero gate and fold the gate into ``B``: ``A' = A[g != 0]``,
    ``B' = B[:, g != 0] diag(g[g != 0])``, so ``B' A' = B diag(g) A`` exactly in exact arithmetic."""
    for name, t in (("lora_a", lora_a), ("lora_b", lora_b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise PriorkitError(f"{name} must be a 2-D tensor, got {got}")
        check_finite(name, t)
    _check_gate("gate", gate)
    r = lora_a.shape[0]
    if gate.shape != (r,) or lora_b.shape[1] != r:
        raise PriorkitError(
            f"shapes must be lora_a [r, n], lora_b [m, r], gate [r] with one r; got lora_a {list(lora_a.shape)}, "
            f"lora_b {list(lora_b.shape)}, gate {list(gate.shape)}"
        )
    keep = gate != 0
    return lora_a[keep].clone(), lora_b[:, keep] * gate[keep]


def sparsify_lambdas(start: float, stop: float, num: int, spacing: str = "linear") -> list[float]:
    """The sparsifying scheduler's thresholds, ``num`` values from ``start`` to ``stop`` (official
    ``_build_lambda_list``): ``linear``, ``log_linear`` = log(linspace(e^start, e^stop)), ``exp_linear`` =
    exp(linspace(log start, log stop)) (needs ``start > 0``). The first value is the main run's ``lambda2``."""
    _check_xi("start", start)
    _check_xi("stop", stop)
    check_positive_int("num", num, 2)
    check_choice("spacing", spacing, SPACINGS)
    if stop < start:
        raise PriorkitError(f"stop must be >= start ({start!r}), got {stop!r}")
    if spacing == "linear":
        vals = torch.linspace(start, stop, num, dtype=torch.float64)
    elif spacing == "log_linear":
        vals = torch.log(torch.linspace(math.exp(start), math.exp(stop), num, dtype=torch.float64))
    else:
        if start <= 0:
            raise PriorkitError(f"start must be > 0 for spacing='exp_linear', got {start!r}")
        vals = torch.exp(torch.linspace(math.log(start), math.log(stop), num, dtype=torch.float64))
    return [float(v) for v in vals]


def memorization_generalization(train: float, val: float, best_train: float, best_val: float) -> dict[str, float]:
    """The scheduler's report of one stage (official ``compute_metrics_in_schedule``, as ratios, 1 = unchanged):
    memorization = train / best_train, generalization = val / best_val ("best" = after the main run)."""
    for name, v in (("train", train), ("val", val), ("best_train", best_train), ("best_val", best_val)):
        check_range(name, v)
        if math.isinf(float(v)):
            raise PriorkitError(f"{name} must be finite, got {v!r}")
    for name, v in (("best_train", best_train), ("best_val", best_val)):
        if float(v) == 0:
            raise PriorkitError(f"{name} must be non-zero (it divides), got {v!r}")
    return {"memorization": float(train) / float(best_train), "generalization": float(val) / float(best_val)}


# ------------------------------------------------------------------------------------------------ PEFT tuner
@dataclass
class SoraConfig(LoraConfig):
    """``LoraConfig`` plus SoRA's gate and sparsity settings (saved with the adapter).

    - ``gate_init``: ``"normal"`` (official, ``g ~ N(0, gate_std^2)``) or ``"ones"`` (every component open: SoRA
      starts as the plain LoRA).
    - ``lambda1``: weight of the L1 term on the mean |gate| (official ``sparse_lambda``).
    - ``lambda2``: the proximal threshold (official ``sparse_lambda_2``), see ``threshold_mode``.
    - ``threshold_mode``: ``"official"`` (``xi = lambda2`` per step) or ``"paper"`` (``xi = lr_t * lambda2``).
    - ``official_threshold``: the released thresholding (effective zeroing below ``2 xi``) instead of the exact one.

    ``lora_alpha`` defaults to the official 16 (``s = 2`` at ``r = 8``). DoRA, ``lora_bias``, ``target_parameters``
    and the inits that rewrite the base weight (PiSSA, OLoRA, ...) are refused.
    """

    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (official SoRA: 16, so s = 2 at r = 8)"})
    gate_init: str = field(default="normal", metadata={"help": "gate init: 'normal' (official N(0, 1)) or 'ones'"})
    gate_std: float = field(default=1.0, metadata={"help": "std of the normal gate init"})
    lambda1: float = field(default=10.0, metadata={"help": "weight of the L1 term on the mean |gate|"})
    lambda2: float = field(default=3e-4, metadata={"help": "proximal threshold of the gate step"})
    threshold_mode: str = field(default="official", metadata={"help": "'official' (xi = lambda2) or 'paper'"})
    official_threshold: bool = field(default=False, metadata={"help": "reproduce the released thresholding"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = peft_type("sora")
        check_choice("gate_init", self.gate_init, GATE_INITS)
        check_range("gate_std", self.gate_std, 0.0, low_inclusive=False)
        check_range("lambda1", self.lambda1, 0.0)
        _check_xi("lambda2", self.lambda2)
        check_choice("threshold_mode", self.threshold_mode, THRESHOLD_MODES)
        if not isinstance(self.official_threshold, bool):
            raise PriorkitError(f"official_threshold must be True or False, got {self.official_threshold!r}")
        check_positive_int("r", self.r)
        if self.init_lora_weights not in INITS:
            raise PriorkitError(
                f"init_lora_weights must be one of {list(INITS)} for SoRA (inits that rewrite the base weight do not "
                f"fit the gated branch), got {self.init_lora_weights!r}"
            )
        if self.use_dora or self.lora_bias or self.target_parameters:
            raise PriorkitError("SoRA does not support use_dora, lora_bias or target_parameters (set them off)")
        on = [f.name for f in fields(self) if f.metadata.get("is_lora_variant") and getattr(self, f.name)]
        if on:
            raise PriorkitError(f"SoRA is its own LoRA variant and cannot be combined with {on}; set them off")
        self._register_custom_module({nn.Linear: SoraLinear})


class _SoraGate(LoraVariant):
    """The gate as a LoRA variant: PEFT's ``Linear.forward``, ``merge`` and ``unmerge`` (and mixed-adapter
    batches) call these for every SoRA adapter."""

    @staticmethod
    def init(module: SoraLinear, adapter_name: str, config: SoraConfig | None = None, **kwargs: Any) -> None:
        r = module.r[adapter_name]
        ref = module.lora_A[adapter_name].weight
        if config is not None and config.gate_init == "ones":
            g = torch.ones(r)
        else:
            std = config.gate_std if config is not None else 1.0
            g = torch.randn(r) * std  # official: torch.randn(1, r), drawn from the global generator
        module.lora_gate[adapter_name] = nn.Parameter(g.to(device=ref.device, dtype=ref.dtype))

    @staticmethod
    def merge_safe(module: SoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: SoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: SoraLinear, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight.data - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(
        module: SoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        lora_a, lora_b = module.lora_A[active_adapter], module.lora_B[active_adapter]
        gate = module.lora_gate[active_adapter]
        h = lora_a(module.lora_dropout[active_adapter](x)) * gate
        return result + lora_b(h) * module.scaling[active_adapter]


class SoraLinear(LoraLinear):
    """PEFT's LoRA ``Linear`` with a per-rank gate ``lora_gate`` (``h = W0 x + s B (g * (A x))``).

    The gate is one of the layer's ``adapter_layer_names``, so PEFT trains, saves and loads it with ``lora_A``/
    ``lora_B``; ``get_delta_weight`` (merging) is ``s B diag(g) A``."""

    adapter_layer_names = (*LoraLayer.adapter_layer_names, GATE)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig, **kwargs: Any) -> None:
        if not isinstance(config, SoraConfig):
            raise PriorkitError(f"SoraLinear needs a SoraConfig, got {type(config).__name__}")
        if not isinstance(getattr(self, GATE, None), nn.ParameterDict):
            self.lora_gate = nn.ParameterDict({})
        check_positive_int(f"r (rank of {kwargs.get('target_name') or 'the layer'})", r)
        if r > min(self.in_features, self.out_features):
            raise PriorkitError(
                f"r={r} exceeds min(in, out) = {min(self.in_features, self.out_features)} of layer "
                f"{kwargs.get('target_name') or ''} [{self.out_features} x {self.in_features}]; use a smaller r "
                "(or rank_pattern for this module)"
            )
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    @property
    def lora_variants(self) -> dict[tuple[str, ...], type[LoraVariant] | None]:
        return {(): _SoraGate}

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``s B diag(g) A`` (in the base weight's layout)."""
        lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        gate = self.lora_gate[adapter]
        dtype = lora_b.dtype
        cast = lora_b.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
        if cast:
            lora_a, lora_b, gate = lora_a.float(), lora_b.float(), gate.float()
        out = transpose((lora_b * gate) @ lora_a, self.fan_in_fan_out) * self.scaling[adapter]
        return out.to(dtype) if cast else out

    def __repr__(self) -> str:
        return "sora." + super().__repr__().removeprefix("lora.")


class SoraModel(LoraModel):
    """PEFT's ``LoraModel`` whose targets become :class:`SoraLinear`; other layer types are refused by name."""

    @staticmethod
    def _create_new_module(lora_config: LoraConfig, adapter_name: str, target: nn.Module, **kwargs: Any) -> nn.Module:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise PriorkitError(
                f"SoRA adapts torch.nn.Linear layers only; target module {kwargs.get('target_name')!r} is "
                f"{type(base).__name__} (remove it from target_modules)"
            )
        return LoraModel._create_new_module(lora_config, adapter_name, target, **kwargs)


register_tuner("sora", SoraConfig, SoraModel)


# ---------------------------------------------------------------------------------------------- model utilities
def _tuner_root(model: nn.Module) -> nn.Module:
    """The module whose ``named_modules`` give PEFT's target names (``body.0``), for a PeftModel, a tuner or a
    model with injected layers."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.base_model.model
    if isinstance(model, LoraModel):
        return model.model
    return model


def _sora_layers(model: nn.Module) -> list[tuple[str, SoraLinear]]:
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = [(n, m) for n, m in _tuner_root(model).named_modules() if isinstance(m, SoraLinear)]
    if not layers:
        raise PriorkitError("model holds no SoRA layers; build it with get_peft_model(model, SoraConfig(...))")
    return layers


def sora_gates(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """``{module name: gate}`` of every SoRA layer (the adapter ``adapter_name``, default: each layer's active)."""
    out = {}
    for name, layer in _sora_layers(model):
        keys = [adapter_name] if adapter_name is not None else layer.active_adapters
        for k in keys:
            if k in layer.lora_gate:
                out[name if len(keys) == 1 else f"{name}:{k}"] = layer.lora_gate[k]
    return out


def sora_ranks(model: nn.Module, adapter_name: str | None = None) -> dict[str, int]:
    """``{module name: r'}``, the number of non-zero gates of every SoRA layer."""
    return {n: int((g != 0).sum()) for n, g in sora_gates(model, adapter_name).items()}


def sora_lora_params(model: nn.Module, adapter_name: str | None = None) -> tuple[int, int]:
    """``(retained, full)`` LoRA parameter counts: ``sum r' (in + out)`` and ``sum r (in + out)`` (gates not
    counted; the exported LoRA has exactly ``retained``)."""
    retained = full = 0
    for _, layer in _sora_layers(model):
        keys = [adapter_name] if adapter_name is not None else layer.active_adapters
        for k in keys:
            if k in layer.lora_gate:
                g = layer.lora_gate[k]
                width = layer.in_features + layer.out_features
                retained += int((g != 0).sum()) * width
                full += g.numel() * width
    return retained, full


@torch.no_grad()
def sora_to_lora(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Export a SoRA ``PeftModel`` as a stock PEFT LoRA ``PeftModel`` with identical outputs.

    Per module, components with a zero gate are dropped and the gate is folded into ``B``
    (:func:`prune_gated_factors`); ``rank_pattern`` holds each ``r'`` and ``alpha_pattern`` ``s r'`` (``s sqrt(r')``
    with rsLoRA) so the scaling is unchanged; a module with ``r' = 0`` leaves ``target_modules``. The input model is
    not changed (the export starts from a copy of its base model, including ``modules_to_save``)."""
    from peft import LoraConfig as StockLoraConfig
    from peft import PeftModel, get_peft_model

    if not isinstance(model, PeftModel):
        raise PriorkitError(f"model must be a peft.PeftModel with a SoRA adapter, got {type(model).__name__}")
    adapter = adapter_name if adapter_name is not None else model.active_adapter
    if adapter not in model.peft_config:
        raise PriorkitError(f"adapter_name must be one of {sorted(model.peft_config)}, got {adapter!r}")
    cfg = model.peft_config[adapter]
    if not isinstance(cfg, SoraConfig):
        raise PriorkitError(f"adapter {adapter!r} is a {type(cfg).__name__}, not a SoraConfig")
    layers = [(n, m) for n, m in _sora_layers(model) if adapter in m.lora_gate]
    if any(adapter in m.merged_adapters for _, m in layers):
        raise PriorkitError("the SoRA adapter is merged into the base weights; call model.unmerge_adapter() first")
    factors, ranks, alphas = {}, {}, {}
    for name, m in layers:
        a, b = prune_gated_factors(m.lora_A[adapter].weight, m.lora_B[adapter].weight, m.lora_gate[adapter])
        if a.shape[0] == 0:
            continue
        s = m.scaling[adapter]
        factors[name] = (a, b)
        ranks[re.escape(name)] = a.shape[0]
        alphas[re.escape(name)] = s * (math.sqrt(a.shape[0]) if cfg.use_rslora else a.shape[0])
    if not factors:
        raise PriorkitError("every gate of the SoRA adapter is zero: the export would be the base model (use unload)")
    base = copy.deepcopy(model).unload()
    lora_cfg = StockLoraConfig(
        r=max(ranks.values()),
        lora_alpha=cfg.lora_alpha,
        target_modules=sorted(factors),
        rank_pattern=ranks,
        alpha_pattern=alphas,
        lora_dropout=cfg.lora_dropout,
        use_rslora=cfg.use_rslora,
        fan_in_fan_out=cfg.fan_in_fan_out,
        bias=cfg.bias,
        modules_to_save=cfg.modules_to_save,
        init_lora_weights=False,
        task_type=cfg.task_type,
        base_model_name_or_path=cfg.base_model_name_or_path,
        inference_mode=cfg.inference_mode,
    )
    lora = get_peft_model(base, lora_cfg, adapter_name=adapter)
    root = _tuner_root(lora)
    for name, (a, b) in factors.items():
        layer = root.get_submodule(name)
        layer.lora_A[adapter].weight.copy_(a)
        layer.lora_B[adapter].weight.copy_(b)
    return lora.train(model.training)


# ------------------------------------------------------------------------------------------- optimizer, hook
class SoraGateAdam(torch.optim.Adam):
    """Adam without weight decay on the gates, each step followed by the proximal soft-threshold (official
    ``SparseAdamW``): ``xi = gate_threshold(lambda2, lr, threshold_mode)`` per parameter group, applied to the
    gates that received a gradient."""

    def __init__(
        self,
        params: Any,
        lr: float = 8e-4,
        *,
        lambda2: float = 3e-4,
        threshold_mode: str = "official",
        official_threshold: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
    ) -> None:
        _check_xi("lr", lr)
        _check_xi("lambda2", lambda2)
        check_choice("threshold_mode", threshold_mode, THRESHOLD_MODES)
        check_range("eps", eps, 0.0, low_inclusive=False)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
        extra = {"lambda2": float(lambda2), "threshold_mode": threshold_mode,
                 "official_threshold": bool(official_threshold)}  # fmt: skip
        self.defaults.update(extra)
        for group in self.param_groups:
            for k, v in extra.items():
                group.setdefault(k, v)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            xi = gate_threshold(group["lambda2"], group["lr"], group["threshold_mode"])
            if xi == 0:
                continue
            for p in group["params"]:
                if p.grad is not None:
                    p.copy_(_soft_threshold(p, xi, group["official_threshold"]))
        return loss


class SoraHook(Hook):
    """SoRA's training-time part: the L1 term ``lambda1 * mean|g|`` (loss term ``sora_l1``) and the gates' own
    optimizer (:class:`SoraGateAdam`), stepped after the main optimizer on the same (clipped) gradients.

    The gates' learning rate is the main optimizer's current learning rate (its first parameter group) times
    ``gate_lr_scale``, so both follow the same schedule (official: ``sparse_lr`` = ``learning_rate``, two
    schedulers of one shape). The main optimizer must not hold the gates (:func:`sora_recipe` excludes them);
    a run where it does is refused. Logs ``gates_nonzero`` (fraction) per epoch and keeps the per-module rank
    history; its state (gate moments, current ``lambda2``, history) is checkpointed.
    """

    def __init__(
        self,
        *,
        lambda1: float = 10.0,
        lambda2: float = 3e-4,
        threshold_mode: str = "official",
        official_threshold: bool = False,
        gate_lr_scale: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
    ) -> None:
        check_range("lambda1", lambda1, 0.0)
        if math.isinf(float(lambda1)):
            raise PriorkitError(f"lambda1 must be a finite number >= 0, got {lambda1!r}")
        _check_xi("lambda2", lambda2)
        check_choice("threshold_mode", threshold_mode, THRESHOLD_MODES)
        if not isinstance(official_threshold, bool):
            raise PriorkitError(f"official_threshold must be True or False, got {official_threshold!r}")
        check_range("gate_lr_scale", gate_lr_scale, 0.0, low_inclusive=False)
        check_range("eps", eps, 0.0, low_inclusive=False)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        self.threshold_mode, self.official_threshold = threshold_mode, official_threshold
        self.gate_lr_scale, self.betas, self.eps = float(gate_lr_scale), tuple(betas), float(eps)
        self.optimizer: SoraGateAdam | None = None
        self.rank_history: list[dict[str, int]] = []
        self._gates: list[torch.Tensor] = []
        self._model: nn.Module | None = None

    @classmethod
    def from_config(cls, config: SoraConfig, **kwargs: Any) -> SoraHook:
        """The hook with the config's ``lambda1``, ``lambda2``, ``threshold_mode`` and ``official_threshold``."""
        if not isinstance(config, SoraConfig):
            raise PriorkitError(f"config must be a SoraConfig, got {type(config).__name__}")
        return cls(lambda1=config.lambda1, lambda2=config.lambda2, threshold_mode=config.threshold_mode,
                   official_threshold=config.official_threshold, **kwargs)  # fmt: skip

    def set_lambda2(self, lambda2: float) -> None:
        """Change the threshold (the sparsifying scheduler's stages)."""
        self.lambda2 = _check_xi("lambda2", lambda2)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lambda2"] = self.lambda2

    def on_fit_start(self, state: RunState) -> None:
        self._model = state.model
        self._gates = [g for g in sora_gates(state.model).values() if g.requires_grad]
        if not self._gates:
            raise PriorkitError("SoraHook: the model's SoRA gates are all frozen (requires_grad=False)")
        self.optimizer = SoraGateAdam(
            self._gates, lr=0.0, lambda2=self.lambda2, threshold_mode=self.threshold_mode,
            official_threshold=self.official_threshold, betas=self.betas, eps=self.eps,
        )  # fmt: skip

    def on_epoch_start(self, state: RunState) -> None:
        opt = state.optimizer
        if opt is None:
            return
        held = {id(p) for group in opt.param_groups for p in group["params"]}
        if any(id(g) in held for g in self._gates):
            raise HookConflictError(
                "SoraHook: the phase's optimizer also updates the SoRA gates (they would be stepped twice); build the "
                "phase with sora_recipe, or exclude every 'lora_gate' parameter from its optimizer"
            )

    def extra_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        if self.lambda1 == 0:
            return {}
        return {"sora_l1": self.lambda1 * _gate_l1(self._gates)}

    def _main_lr(self, state: RunState) -> float:
        opt = state.optimizer
        if opt is None or not opt.param_groups:
            raise PriorkitError("SoraHook: the phase has no main optimizer to take the learning rate from")
        return float(opt.param_groups[0]["lr"])

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        lr = self._main_lr(state) * self.gate_lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def on_epoch_end(self, state: RunState) -> None:
        ranks = sora_ranks(state.model)
        self.rank_history.append(ranks)
        total = sum(g.numel() for g in self._gates)
        state.log(gates_nonzero=sum(int((g != 0).sum()) for g in self._gates) / total)

    def state_dict(self) -> dict[str, Any]:
        opt = self.optimizer.state_dict() if self.optimizer is not None else {}
        return {"optimizer": opt, "lambda2": self.lambda2, "rank_history": [dict(r) for r in self.rank_history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and state["optimizer"]:
            self.optimizer.load_state_dict(state["optimizer"])
        self.set_lambda2(float(state["lambda2"]))
        self.rank_history = [dict(r) for r in state["rank_history"]]


# ----------------------------------------------------------------------------------------------- recipe builder
def _linear_schedule(warmup: int, total: int, after: float) -> Callable[[int], float]:
    """transformers' ``get_linear_schedule_with_warmup`` (0 -> 1 over ``warmup``, then 1 -> 0 at ``total``), and
    ``after`` once the main run is over (the sparsifying stages)."""

    def factor(step: int) -> float:
        if step >= total:
            return after
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def sora_recipe(
    model: nn.Module,
    num_samples: int,
    batch_size: int,
    *,
    epochs: int = 20,
    lr: float = 8e-4,
    weight_decay: float = 0.1,
    warmup_ratio: float = 0.06,
    max_grad_norm: float | None = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    drop_last: bool = False,
    hook: SoraHook | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    sparsify_stop: float | None = None,
    sparsify_num: int = 7,
    sparsify_spacing: str = "linear",
    sparsify_epochs: int = 15,
    stage_lr: float = 0.0,
) -> Recipe:
    """The official SoRA training recipe as engine phases (defaults: ``run_glue_sora_no_schedule.sh``).

    Main phase ``"sora"`` (``epochs``): AdamW (``lr``, ``weight_decay`` on matrices, 0 on biases and 1-D tensors,
    as transformers' trainer) over the model's trainable tensors except the gates, linear warm-up over
    ``warmup_ratio`` of the steps then linear decay to 0 (stepped per batch), gradient clipping to
    ``max_grad_norm`` over all parameters (gates included). Only the tensors trainable when this is called train
    (so a PeftModel's base stays frozen). The gates are stepped by ``hook`` (:class:`SoraHook`), which the run must
    also receive in ``hooks``; without a SoRA adapter (a plain LoRA baseline) the recipe works without a hook.

    With ``evaluate`` (``model -> {"train": metric, "val": metric, ...}``) the end of the main phase records those
    metrics, the per-module ranks and the retained LoRA parameters in the history. With ``sparsify_stop`` the
    sparsifying scheduler follows: ``sparsify_num - 1`` phases ``"sparsify1"``, ... of ``sparsify_epochs`` epochs,
    each with ``lambda2`` raised to the next of :func:`sparsify_lambdas` (``hook.lambda2`` to ``sparsify_stop``),
    on the same optimizers at ``stage_lr`` times ``lr`` (official 0: the exhausted schedule), each ending with the
    report entry (memorization, generalization, retained parameters; :func:`sparsify_report` collects them).
    """
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("num_samples", num_samples)
    check_positive_int("batch_size", batch_size)
    check_positive_int("epochs", epochs)
    _check_xi("lr", lr)
    if lr == 0:
        raise PriorkitError("lr must be > 0, got 0")
    _check_xi("weight_decay", weight_decay)
    check_range("warmup_ratio", warmup_ratio, 0.0, 1.0, high_inclusive=False)
    if max_grad_norm is not None:
        check_range("max_grad_norm", max_grad_norm, 0.0, low_inclusive=False)
    check_range("eps", eps, 0.0, low_inclusive=False)
    _check_xi("stage_lr", stage_lr)
    if hook is not None and not isinstance(hook, SoraHook):
        raise PriorkitError(f"hook must be a SoraHook, got {type(hook).__name__}")
    if evaluate is not None and not callable(evaluate):
        raise PriorkitError(f"evaluate must be a callable model -> {{'train': ..., 'val': ...}}, got {evaluate!r}")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise PriorkitError("model has no trainable parameters (a PeftModel trains its adapters; none found)")
    lambdas: list[float] = []
    if sparsify_stop is not None:
        if hook is None or evaluate is None:
            raise PriorkitError("sparsify_stop needs hook (the SoraHook of the run) and evaluate (train/val metrics)")
        check_positive_int("sparsify_epochs", sparsify_epochs)
        lambdas = sparsify_lambdas(hook.lambda2, sparsify_stop, sparsify_num, sparsify_spacing)
    steps = (num_samples // batch_size if drop_last else -(-num_samples // batch_size)) * epochs
    if steps == 0:
        raise PriorkitError(f"num_samples={num_samples} < batch_size={batch_size} with drop_last: no steps")
    schedule = _linear_schedule(math.ceil(steps * warmup_ratio), steps, stage_lr)

    def optimizer(m: nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for n, p in m.named_parameters():
            if p.requires_grad and f".{GATE}." not in f".{n}.":
                (no_decay if p.ndim < 2 or n.endswith("bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)

    def scheduler(opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def record(state: RunState, stage: int, stage_lambda: float | None) -> dict[str, Any]:
        m = state.model
        out: dict[str, Any] = {}
        if any(isinstance(x, SoraLinear) for x in m.modules()):
            retained, full = sora_lora_params(m)
            out.update(ranks=sora_ranks(m), retained_params=retained, full_params=full)
        if evaluate is None:
            return out
        m.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in dict(evaluate(m)).items()}
        for k in ("train", "val"):
            if k not in metrics:
                raise PriorkitError(f"evaluate must return the keys 'train' and 'val', got {sorted(metrics)}")
        out.update(metrics)
        if stage_lambda is None:
            out["sora_stage"] = 0
            out["lambda2"] = hook.lambda2 if hook is not None else None
            return out
        main = [h for h in state.history if h.get("phase") == "sora" and h.get("sora_stage") == 0]
        if not main:
            raise PriorkitError("the main phase's end entry is missing from the history (resumed from elsewhere?)")
        out.update(memorization_generalization(metrics["train"], metrics["val"], main[-1]["train"], main[-1]["val"]))
        out["lambda2"] = stage_lambda
        out["sora_stage"] = stage
        return out

    common = {"trainable": trainable, "optimizer": optimizer, "optimizer_key": "sora", "scheduler": scheduler,
              "interval": "step", "grad_clip": max_grad_norm}  # fmt: skip
    phases = [Phase("sora", epochs=epochs, on_end=lambda s: record(s, 0, None), **common)]
    for i, lam in enumerate(lambdas[1:], start=1):

        def start(s: RunState, lam: float = lam) -> None:
            hook.set_lambda2(lam)

        phases.append(Phase(f"sparsify{i}", epochs=sparsify_epochs, on_start=start,
                            on_end=lambda s, i=i, lam=lam: record(s, i, lam), **common))  # fmt: skip
    return Recipe(phases)


def sparsify_report(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The sparsifying scheduler's report from a run's history: one row per stage (stage 0 = the main run) with
    ``lambda2``, the evaluated metrics, ``memorization``/``generalization`` (stages >= 1), ``retained_params``,
    ``full_params`` and ``ranks``."""
    if isinstance(history, Mapping | str) or not isinstance(history, Sequence):
        raise PriorkitError(f"history must be the list of records fit() returns, got {type(history).__name__}")
    rows = [dict(h) for h in history if isinstance(h, Mapping) and "sora_stage" in h]
    if not rows:
        raise PriorkitError("history holds no SoRA stage entries (build the recipe with evaluate=...)")
    for r in rows:
        for k in ("epoch", "action"):
            r.pop(k, None)
    return rows
