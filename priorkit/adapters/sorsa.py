"""SORSA: Singular Values and Orthonormal Regularized Singular Vectors Adaptation of Large Language Models,
Yang Cao, 2024 (arXiv 2409.00055).

SORSA fine-tunes the principal singular subspace of each adapted weight. At the start the pretrained ``W`` is split
by an SVD into a principal part, kept as three trainable tensors (the singular vectors ``U_p``, ``V_p^T`` and the
singular values ``sigma_p`` as a separate vector), and a frozen residual. During training an orthonormal
regularizer keeps ``U_p`` and ``V_p^T`` close to orthonormal, so ``sigma_p`` keeps meaning "singular values"; the
paper reports faster loss decrease than LoRA and PiSSA and better results on GSM-8K/MATH. After training the
branch is merged back, so inference costs nothing extra.

Equations (card adapters-lowrank.md, "SORSA"), for ``W`` in ``R^{m x n}`` and rank ``r <= min(m, n)``:

- init, SVD in float32: ``W = U Sigma V^T``; ``U_p = U[:, :r]``, ``sigma_p = diag(Sigma)[:r]``,
  ``V_p^T = V^T[:r, :]``; frozen residual ``W_r = W - s U_p diag(sigma_p) V_p^T`` with ``s = alpha / r``
  (``alpha=None``, the official default, gives ``s = 1``);
- forward: ``y = W_r x + s U_p diag(sigma_p) V_p^T x (+ bias)``; merge: ``W = W_r + s U_p diag(sigma_p) V_p^T``;
- regularizer: ``L_reg = (1/K) sum_layers (||U_p^T U_p - I_r||_F + ||V_p^T V_p - I_r||_F)``, ``K`` the number of
  matrices (two per adapted layer); Frobenius norms, not squared (``eps`` > 0 uses ``sqrt(||X||^2 + eps)``);
- update as released (``reg_mode="loss"``): ``gamma * L_reg`` is back-propagated into the task gradients and
  AdamW steps, i.e. AdamW on ``L_train + gamma L_reg``. The released trainer (sorsalib ``SORSATrainer``) in fact
  back-propagates ``(gamma / lr) * L_reg``, with ``lr`` the base learning rate, after gradient clipping:
  ``reg_lr_scaled=True`` gives that factor (the engine adds the term before clipping; no difference without
  clipping). ``reg_mode="decoupled"`` is an **assumption** from later versions of the paper:
  ``theta <- theta - eta_t gamma grad L_reg`` applied after the AdamW step, outside the adaptive optimizer.

What is reused and what is written here (DESIGN principle 4): SORSA is a PEFT tuner type. :class:`SorsaConfig`
subclasses ``peft.LoraConfig``, :class:`SorsaModel` subclasses ``peft.LoraModel`` and :class:`SorsaLinear`
subclasses PEFT's LoRA ``Linear`` (``lora_B`` holds ``U_p``, a new ``lora_S`` holds ``sigma_p``, ``lora_A`` holds
``V_p^T``), dispatched through LoRA's custom-module mechanism and registered with
:func:`priorkit.adapters._peft.register_tuner` when this module is imported. So ``get_peft_model``,
``save_pretrained``, ``PeftModel.from_pretrained`` (on the *original* base model: the deterministic SVD init rebuilds
the residual, then the trained factors are loaded) and ``merge_and_unload`` are PEFT's own. Written here: the SVD
init without PiSSA's ``sqrt(S)`` folding (PEFT's ``pissa_init`` folds it, so it cannot be reused), the three-factor
forward/merge, and the regularizer, which PEFT has only inside AdaLoRA's model (not callable on other layers) and
which is a priorkit hook (:class:`SorsaHook`) because a loss term belongs to the training loop, not to the layer.
LoRA and PiSSA baselines are stock PEFT (``LoraConfig(init_lora_weights=True | "pissa")``).

Functional core: :func:`svd_init`, :func:`sorsa_delta`, :func:`orthonormality`, :func:`orthonormal_reg`,
:func:`sorsa_factors`. Entry: :class:`SorsaConfig` (``get_peft_model(model, SorsaConfig(**SPEC.presets["paper"],
target_modules=...))``); train with ``priorkit.train.fit(peft_model, data, recipe, hooks=[SorsaHook.from_config(
config)])``. Only ``torch.nn.Linear`` targets are adapted (others are refused by name); with the adapter disabled
the model runs on the residual ``W_r``, as PEFT's PiSSA does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.lora import LoraConfig, LoraModel
from peft.tuners.lora.layer import VARIANT_KWARG_KEYS, LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from priorkit.adapters._peft import peft_type, register_tuner
from priorkit.core.errors import PriorkitError, check_choice, check_finite, check_positive_int, check_range
from priorkit.core.spec import MethodSpec
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook

__all__ = [
    "SorsaConfig",
    "SorsaHook",
    "SorsaLinear",
    "SorsaModel",
    "orthonormal_reg",
    "orthonormality",
    "sorsa_delta",
    "sorsa_factors",
    "svd_init",
]

REG_MODES = ("loss", "decoupled")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

SPEC = MethodSpec(
    status="implemented",
    entry="SorsaConfig",
    missing="Conv and Embedding layers are not adapted (refused); reg_mode='decoupled' follows later paper versions "
    "and is not confirmed by released code; the regularizer gradient is added before gradient clipping (the "
    "released trainer adds it after); the paper's Llama-2 / MetaMathQA runs are not reproduced (CPU check: digits "
    "MLP)",
    presets={
        # scripts/train_sorsa.sh (Llama-2-7B, MetaMathQA[:100k]): r 128, gamma 4e-4 (with lr 3e-5, AdamW, wd 0),
        # alpha None (s = 1), no dropout; the released trainer scales gamma by 1/lr; target modules: all attention
        # and MLP projections (assumption, PiSSA's setup; sorsalib's default is query/key/value)
        "paper": {
            "r": 128,
            "lora_alpha": None,
            "lora_dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "gamma": 4e-4,
            "reg_mode": "loss",
            "reg_lr_scaled": True,
        },
        # the card's CPU check: digits MLP 64-256-256-10, r 4 on both hidden Linear layers, AdamW lr 1e-3
        "small": {
            "r": 4,
            "lora_alpha": None,
            "lora_dropout": 0.0,
            "target_modules": ["body.0", "body.2"],
            "gamma": 1e-3,
            "reg_mode": "loss",
            "reg_lr_scaled": False,
        },
    },
)


# ---------------------------------------------------------------------------------------------- functional core
def _check_matrix(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise PriorkitError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.numel() == 0:
        raise PriorkitError(f"{name} must be a non-empty 2-D matrix, got shape {list(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise PriorkitError(f"{name} must be float32, float16, bfloat16 or float64, got dtype {t.dtype}")
    return check_finite(name, t)


def _check_scaling(scaling: float) -> float:
    return check_range("scaling", scaling, 0.0, math.inf, low_inclusive=False, high_inclusive=False)


def svd_init(
    weight: torch.Tensor, r: int, scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SORSA's init: ``(U_p [m, r], sigma_p [r], V_p^T [r, n], W_r [m, n])`` of ``weight`` ``[m, n]``.

    The SVD runs in float32 (float64 stays float64) and every result is cast back to ``weight``'s dtype;
    ``W_r = W - scaling * U_p diag(sigma_p) V_p^T`` is formed in the SVD's precision before the cast.
    ``sigma_p`` is in descending order. ``r`` must not exceed ``min(m, n)``.
    """
    _check_matrix("weight", weight)
    check_positive_int("r", r)
    m, n = weight.shape
    if r > min(m, n):
        raise PriorkitError(f"r must be <= min(out_features, in_features) = {min(m, n)} for weight {[m, n]}, got {r}")
    _check_scaling(scaling)
    return _svd_init(weight, r, scaling)


def _svd_init(weight: torch.Tensor, r: int, scaling: float) -> tuple[torch.Tensor, ...]:
    dtype = weight.dtype
    w = weight.detach().to(torch.float64 if dtype == torch.float64 else torch.float32)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    up, sp, vhp = u[:, :r].contiguous(), s[:r].contiguous(), vh[:r].contiguous()
    residual = w - scaling * (up * sp) @ vhp
    return up.to(dtype), sp.to(dtype), vhp.to(dtype), residual.to(dtype)


def sorsa_delta(u: torch.Tensor, sigma: torch.Tensor, vh: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """The adapted part ``scaling * U diag(sigma) V^T`` (``[m, r]``, ``[r]``, ``[r, n]`` -> ``[m, n]``)."""
    _check_matrix("u", u)
    _check_matrix("vh", vh)
    r = u.shape[1]
    if not isinstance(sigma, torch.Tensor) or sigma.shape != (r,):
        got = list(sigma.shape) if isinstance(sigma, torch.Tensor) else type(sigma).__name__
        raise PriorkitError(f"sigma must have shape [{r}] (the columns of u), got {got}")
    check_finite("sigma", sigma)
    if vh.shape[0] != r:
        raise PriorkitError(f"vh must have shape [{r}, n] (r = columns of u), got {list(vh.shape)}")
    _check_scaling(scaling)
    return scaling * (u * sigma) @ vh


def _fro(x: torch.Tensor, eps: float) -> torch.Tensor:
    sq = x.pow(2).sum()
    return torch.sqrt(sq + eps) if eps > 0 else torch.linalg.matrix_norm(x)


def _orth(x: torch.Tensor, rows: bool, eps: float) -> torch.Tensor:
    g = x @ x.T if rows else x.T @ x
    return _fro(g - torch.eye(g.shape[0], dtype=g.dtype, device=g.device), eps)


def orthonormality(x: torch.Tensor, *, rows: bool = False, eps: float = 0.0) -> torch.Tensor:
    """``||X^T X - I||_F`` (orthonormal columns, ``U_p``) or, with ``rows=True``, ``||X X^T - I||_F`` (orthonormal
    rows, ``V_p^T``); ``eps`` > 0 gives ``sqrt(||.||_F^2 + eps)`` (a smooth gradient at exact orthonormality)."""
    _check_matrix("x", x)
    check_range("eps", eps, 0.0, math.inf, high_inclusive=False)
    k, d = (x.shape[0], x.shape[1]) if rows else (x.shape[1], x.shape[0])
    if k > d:
        side = "rows" if rows else "columns"
        raise PriorkitError(
            f"x has {k} {side} of length {d}: more than {d} cannot be orthonormal (shape {list(x.shape)})"
        )
    return _orth(x, rows, eps)


def orthonormal_reg(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor]] | Sequence[tuple[torch.Tensor, ...]], eps: float = 0.0
) -> torch.Tensor:
    """SORSA's regularizer ``(1/K) sum (||U^T U - I||_F + ||V^T (V^T)^T - I||_F)`` over ``(U_p, V_p^T)`` pairs
    (``(U_p, sigma_p, V_p^T)`` triples are accepted too: ``sigma_p`` is not regularized); ``K = 2 * len(factors)``."""
    check_range("eps", eps, 0.0, math.inf, high_inclusive=False)
    if not isinstance(factors, Sequence) or isinstance(factors, torch.Tensor) or len(factors) == 0:
        raise PriorkitError(
            "factors must be a non-empty sequence of (U_p, V_p^T) pairs or (U_p, sigma_p, V_p^T) triples"
        )
    for i, f in enumerate(factors):
        if not isinstance(f, tuple | list) or len(f) not in (2, 3):
            raise PriorkitError(f"factors[{i}] must be a (U_p, V_p^T) pair or a (U_p, sigma_p, V_p^T) triple")
        u, vh = _check_matrix(f"factors[{i}] U_p", f[0]), _check_matrix(f"factors[{i}] V_p^T", f[-1])
        r = u.shape[1]
        if r > u.shape[0] or vh.shape[0] != r or r > vh.shape[1]:
            raise PriorkitError(
                f"factors[{i}]: U_p must be [m, r] and V_p^T [r, n] with r <= min(m, n), got {list(u.shape)} and "
                f"{list(vh.shape)}"
            )
    return _reg(factors, eps)


def _reg(factors: Sequence[Sequence[torch.Tensor]], eps: float) -> torch.Tensor:
    total = sum(_orth(f[0], False, eps) + _orth(f[-1], True, eps) for f in factors)
    return total / (2 * len(factors))


def sorsa_factors(model: nn.Module, *, trainable_only: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """``(U_p, sigma_p, V_p^T)`` of every active SORSA adapter in ``model`` (the live parameters, in module order).

    ``trainable_only`` keeps those whose tensors require gradients."""
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    out = []
    for module in model.modules():
        if not isinstance(module, SorsaLinear) or module.merged:
            continue
        for name in module.active_adapters:
            if name not in module.lora_S:
                continue
            f = (module.lora_B[name].weight, module.lora_S[name], module.lora_A[name].weight)
            if trainable_only and not all(t.requires_grad for t in f):
                continue
            out.append(f)
    return out


# ------------------------------------------------------------------------------------------------- PEFT tuner
@dataclass
class SorsaConfig(LoraConfig):
    """A ``LoraConfig`` for SORSA (PEFT tuner type ``"SORSA"``).

    ``r``: rank (``<= min(out, in)`` of every target). ``lora_alpha``: SORSA's ``alpha``; the scale is
    ``alpha / r``, and ``None`` (the official default) gives scale 1. ``lora_dropout``: dropout on the branch input.
    ``target_modules``: the ``torch.nn.Linear`` layers to adapt. ``init_lora_weights``: ``True`` runs the SVD init
    (and turns the base weight into the residual); ``False`` leaves the base weight as it is and the factors at
    random values (to load factors onto a model whose weights already are residuals).
    The regularizer settings are read by :meth:`SorsaHook.from_config` and saved with the adapter, as the official
    ``SORSATrainingArguments.gamma``: ``gamma`` (>= 0), ``reg_mode`` (``"loss"`` | ``"decoupled"``), ``reg_eps``,
    ``reg_lr_scaled`` (the released trainer's ``gamma / lr``, ``"loss"`` mode only).
    LoRA options that change the branch (DoRA, rsLoRA, ``lora_bias``, ``fan_in_fan_out``, string inits,
    ``target_parameters``) are refused.
    """

    lora_alpha: float | None = field(
        default=None, metadata={"help": "SORSA alpha: scale alpha / r; None (official default) gives scale 1"}
    )
    gamma: float = field(default=4e-4, metadata={"help": "weight of the orthonormal regularizer"})
    reg_mode: str = field(default="loss", metadata={"help": "'loss' (released code) or 'decoupled' (assumption)"})
    reg_eps: float = field(default=0.0, metadata={"help": "||X||_F -> sqrt(||X||_F^2 + eps) in the regularizer"})
    reg_lr_scaled: bool = field(default=False, metadata={"help": "released trainer: back-propagate (gamma/lr) L_reg"})

    def __post_init__(self) -> None:
        check_positive_int("r", self.r)
        if self.lora_alpha is not None:
            check_range("lora_alpha", self.lora_alpha, 0.0, math.inf, low_inclusive=False, high_inclusive=False)
        check_range("lora_dropout", self.lora_dropout, 0.0, 1.0, high_inclusive=False)
        if self.init_lora_weights not in (True, False):
            raise PriorkitError(
                f"init_lora_weights must be one of [True, False] for SORSA (True: SVD init), got "
                f"{self.init_lora_weights!r}; PiSSA and other inits are LoraConfig options"
            )
        for flag in ("use_dora", "use_rslora", "lora_bias", "fan_in_fan_out"):
            if getattr(self, flag):
                raise PriorkitError(f"{flag} must be False for SORSA (it changes the LoRA branch), got True")
        if self.target_parameters:
            raise PriorkitError("target_parameters must be empty for SORSA: only torch.nn.Linear modules are adapted")
        check_range("gamma", self.gamma, 0.0, math.inf, high_inclusive=False)
        check_choice("reg_mode", self.reg_mode, REG_MODES)
        check_range("reg_eps", self.reg_eps, 0.0, math.inf, high_inclusive=False)
        if not isinstance(self.reg_lr_scaled, bool):
            raise PriorkitError(f"reg_lr_scaled must be True or False, got {self.reg_lr_scaled!r}")
        if self.reg_lr_scaled and self.reg_mode != "loss":
            raise PriorkitError("reg_lr_scaled=True applies to reg_mode='loss' only (the released trainer)")
        super().__post_init__()
        self.peft_type = peft_type("sorsa")
        # dispatch nn.Linear targets to SorsaLinear; runs again when from_pretrained rebuilds the config
        self._register_custom_module({nn.Linear: SorsaLinear})


class SorsaLinear(LoraLinear):
    """PEFT LoRA ``Linear`` with a singular-value vector: ``y = W_r x + s * lora_B(diag(lora_S) lora_A(x))``.

    ``lora_B.weight`` is ``U_p`` ``[out, r]``, ``lora_S`` is ``sigma_p`` ``[r]``, ``lora_A.weight`` is ``V_p^T``
    ``[r, in]``; ``lora_S`` is in ``adapter_layer_names``, so PEFT trains, saves, loads and moves it.
    """

    adapter_layer_names = (*LoraLayer.adapter_layer_names, "lora_S")

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: float | None, config: LoraConfig, **kwargs: Any
    ) -> None:
        if not isinstance(config, SorsaConfig):
            raise PriorkitError(f"SorsaLinear needs a SorsaConfig, got {type(config).__name__}")
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise PriorkitError(f"SORSA adapts torch.nn.Linear layers only, got {type(base).__name__}")
        m, n = self.out_features, self.in_features
        check_positive_int("r", r)
        if r > min(m, n):
            name = kwargs.get("target_name", "")
            raise PriorkitError(
                f"r must be <= min(out_features, in_features) = {min(m, n)} for layer {name!r} ({m} x {n}), got {r}"
            )
        if "lora_S" not in self._modules:
            self.lora_S = nn.ParameterDict({})
        elif config.init_lora_weights and any(k != adapter_name for k in self.lora_S):
            raise PriorkitError(
                f"layer {kwargs.get('target_name', '')!r} already holds the SORSA adapter(s) {sorted(self.lora_S)}: "
                "its base weight is already a residual, so a second SVD-initialized adapter is refused"
            )
        alpha = float(r) if lora_alpha is None else float(lora_alpha)
        super().update_layer(adapter_name, r, lora_alpha=alpha, config=config, **kwargs)
        if adapter_name in self.lora_variant:
            raise PriorkitError(
                f"LoRA variants are not supported by SORSA, got {type(self.lora_variant[adapter_name])}"
            )
        w = base.weight
        self.lora_S[adapter_name] = nn.Parameter(torch.ones(r, dtype=w.dtype, device=w.device))
        if config.init_lora_weights:
            self.sorsa_init(adapter_name)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def sorsa_init(self, adapter_name: str) -> None:
        """SVD init (float32): factors from the top-``r`` triplets, base weight := the residual ``W_r``."""
        base = self.get_base_layer()
        w = base.weight
        if w.dtype not in _FLOAT_DTYPES:
            raise PriorkitError(
                f"SORSA's SVD init needs a float32/float16/bfloat16 base weight, got {w.dtype} (quantize after init)"
            )
        check_finite("base layer weight", w.detach())
        up, sp, vhp, residual = _svd_init(w, self.r[adapter_name], self.scaling[adapter_name])
        with torch.no_grad():
            self.lora_B[adapter_name].weight.data = up
            self.lora_A[adapter_name].weight.data = vhp
            self.lora_S[adapter_name].data = sp
            w.data = residual

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """``s * U_p diag(sigma_p) V_p^T`` (in float32 on CPU for half precision, then cast back)."""
        b, a, s = self.lora_B[adapter].weight, self.lora_A[adapter].weight, self.lora_S[adapter]
        dtype = b.dtype
        cast = b.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
        if cast:
            b, a, s = b.float(), a.float(), s.float()
        out = (b * s) @ a * self.scaling[adapter]
        return out.to(dtype) if cast else out

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """``W_r += s U_p diag(sigma_p) V_p^T`` for each active (or named) adapter."""
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.lora_S:
                continue
            weight = self.get_base_layer().weight
            delta = self.get_delta_weight(name).to(weight.dtype)
            if safe_merge:
                merged = weight.data + delta
                if not torch.isfinite(merged).all():
                    raise PriorkitError(f"merging SORSA adapter {name!r} gives NaN or infinite weights")
                weight.data = merged
            else:
                weight.data += delta
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract every merged adapter's ``s U_p diag(sigma_p) V_p^T`` again (back to ``W_r``)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.lora_S:
                weight = self.get_base_layer().weight
                weight.data -= self.get_delta_weight(name).to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise PriorkitError("adapter_names (mixed-adapter batches) is not supported by SORSA layers")
        for k in VARIANT_KWARG_KEYS:
            kwargs.pop(k, None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        out_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_S:
                continue
            a, b, s = self.lora_A[name], self.lora_B[name], self.lora_S[name]
            h = a(self.lora_dropout[name](self._cast_input_dtype(x, a.weight.dtype)))
            result = result + b(h * s) * self.scaling[name]
        return result.to(out_dtype)


class SorsaModel(LoraModel):
    """PEFT's ``LoraModel`` whose targets become :class:`SorsaLinear`; a target that is not ``torch.nn.Linear``
    is refused (stock LoRA would silently give it a plain LoRA branch)."""

    @staticmethod
    def _create_new_module(lora_config: LoraConfig, adapter_name: str, target: nn.Module, **kwargs: Any) -> nn.Module:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise PriorkitError(
                f"SORSA adapts torch.nn.Linear layers only: target_modules matched {kwargs.get('target_name')!r}, "
                f"a {type(base).__name__}; name Linear layers in target_modules"
            )
        return SorsaLinear(target, adapter_name, config=lora_config, **kwargs)


register_tuner("sorsa", SorsaConfig, SorsaModel)


# ------------------------------------------------------------------------------------------------------ hook
class SorsaHook(Hook):
    """SORSA's orthonormal regularizer in the engine, over every active SORSA adapter of the trained model.

    ``reg_mode="loss"`` (released code) adds the loss term ``sorsa_ortho = c * L_reg`` with ``c = gamma`` (or
    ``gamma / lr_0`` with ``lr_scaled``, ``lr_0`` the phase's base learning rate), so the optimizer sees
    ``grad L_train + c grad L_reg``; ``gamma = 0`` adds nothing. ``reg_mode="decoupled"`` (assumption) instead steps
    ``theta <- theta - lr_t * gamma * grad L_reg`` after every optimizer step, with each tensor's current learning
    rate. The unweighted ``L_reg`` is logged as ``sorsa_orth_err`` either way. Manual phases (their own steps)
    call no ``extra_loss``: use ``"decoupled"`` there. Stateless (nothing to checkpoint).
    """

    def __init__(self, gamma: float = 4e-4, reg_mode: str = "loss", eps: float = 0.0, lr_scaled: bool = False) -> None:
        check_range("gamma", gamma, 0.0, math.inf, high_inclusive=False)
        check_choice("reg_mode", reg_mode, REG_MODES)
        check_range("eps", eps, 0.0, math.inf, high_inclusive=False)
        if not isinstance(lr_scaled, bool):
            raise PriorkitError(f"lr_scaled must be True or False, got {lr_scaled!r}")
        if lr_scaled and reg_mode != "loss":
            raise PriorkitError("lr_scaled=True applies to reg_mode='loss' only (the released trainer)")
        self.gamma, self.reg_mode, self.eps, self.lr_scaled = float(gamma), reg_mode, float(eps), lr_scaled

    @classmethod
    def from_config(cls, config: SorsaConfig) -> SorsaHook:
        """The hook with ``config``'s ``gamma``, ``reg_mode``, ``reg_eps`` and ``reg_lr_scaled``."""
        if not isinstance(config, SorsaConfig):
            raise PriorkitError(f"config must be a SorsaConfig, got {type(config).__name__}")
        return cls(config.gamma, config.reg_mode, config.reg_eps, config.reg_lr_scaled)

    def _collect(self, model: nn.Module) -> list[tuple[torch.Tensor, ...]]:
        factors = sorsa_factors(model)
        if not factors:
            raise PriorkitError(
                "SorsaHook: the model has no active SORSA adapter; wrap it first with "
                "peft.get_peft_model(model, SorsaConfig(r=..., target_modules=[...]))"
            )
        return factors

    def on_fit_start(self, state: RunState) -> None:
        self._collect(state.model)  # refuse a model without SORSA adapters before the first step

    def _coef(self, state: RunState) -> float:
        if not self.lr_scaled:
            return self.gamma
        group = state.optimizer.param_groups[0]
        return self.gamma / float(group.get("initial_lr", group["lr"]))

    def extra_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        if self.reg_mode != "loss" or self.gamma == 0:
            return {}
        reg = _reg(self._collect(state.model), self.eps)
        state.log(sorsa_orth_err=float(reg.detach()))
        return {"sorsa_ortho": self._coef(state) * reg}

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        if self.reg_mode == "loss":
            if self.gamma == 0:
                with torch.no_grad():
                    state.log(sorsa_orth_err=float(_reg(self._collect(state.model), self.eps)))
            return
        factors = self._collect(state.model)
        params = [t for f in factors for t in (f[0], f[2]) if t.requires_grad]
        with torch.enable_grad():
            reg = _reg(factors, self.eps)
            grads = torch.autograd.grad(reg, params, allow_unused=True) if params and self.gamma > 0 else []
        state.log(sorsa_orth_err=float(reg.detach()))
        lrs = {id(p): g["lr"] for g in state.optimizer.param_groups for p in g["params"]}
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None and id(p) in lrs:
                    p.sub_(g, alpha=lrs[id(p)] * self.gamma)
