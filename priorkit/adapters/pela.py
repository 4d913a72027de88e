"""PELA: Learning Parameter-Efficient Models with Low-Rank Approximation, Guo, Wang, Wang, Chen and Li, CVPR 2024.

PELA makes a pre-trained network itself smaller, so that fewer parameters are loaded and fine-tuned downstream.
Every eligible ``nn.Linear`` ``W`` (``out x in``) is replaced by two factor layers initialised from its truncated
SVD, ``Linear(in -> r)`` then ``Linear(r -> out)``, with ``r = floor(in * out / (c * (in + out)))`` for a
compression ratio ``c``, so the layer keeps about ``1/c`` of its weights. A short *intermediate pre-training* on
the original pre-training data then recovers what the truncation lost: the frozen uncompressed model is the
teacher, the factorized model the student (all of its parameters train), and the loss adds to the task loss a
feature distillation over the outputs of the network's blocks, an optional logit distillation and a
weight-perturbation regulariser that keeps each product of factors near the original weight. The student is
then fine-tuned on downstream tasks with their usual recipe.

Equations (paper Sec. 3; official code guoyang9/PELA, ``DeiT/low_rank.py``, ``DeiT/engine.py``)::

    W = U S V^T (thin SVD),  F1 = S_r^{1/2} V_r^T  (r x in, no bias),  F2 = U_r S_r^{1/2}  (out x r, W's bias)
    L     = L_task + alpha * L_fd + beta * L_logit + gamma * L_wp
    L_fd  = (1 / n_b) sum_b MSE(h_b^s, h_b^t)             (outputs of the n_b user-named blocks)
    L_logit = MSE(z^s, z^t)
    L_wp  = (1 / K) sum_k (||F2_k F1_k - W_k||_max - eps)^2  (K factorized layers; ||.||_max: largest |entry|)

The official ``inf_norm`` calls ``torch.norm(delta, inf)`` on a matrix without ``dim``, which flattens it: the
largest absolute entry, not the induced infinity norm (``wp_norm="max"``, the default); ``wp_norm="fro"`` uses
the Frobenius norm instead. The official DeiT engine runs the student twice per step (once for the features,
once for the logits); here it runs once: the engine's forward gives the logits and forward hooks on the named
block modules capture the features of that same pass. The teacher runs in eval mode under ``no_grad``.

Functional core: :func:`pela_rank`, :func:`svd_factors`, :func:`pela_compress` (returns a factorized copy; the
replaced layers are :class:`PELALinear` modules, listed by :func:`pela_layers`, the replaced-layer map),
:func:`pela_decompress` (multiplies the factors back, for analysis), :func:`pela_parameters` (parameter
accounting), the losses :func:`feature_distillation_loss`, :func:`logit_distillation_loss` and
:func:`weight_perturbation_loss`, :func:`capture_outputs` (forward hooks on named modules) and the downstream
utility :func:`pela_finetune`. Entry: the hook :class:`PELA`, which builds the student from the teacher and adds
the three distillation terms to any engine run (``fit(pela.student, data, hooks=[pela])``).

Library parts reused: ``torch.linalg.svd`` (the official code calls NumPy's full SVD; the thin SVD gives the
same factors), ``nn.Linear``/``nn.Sequential`` for the factor layers (so stock PEFT LoRA can later target the
factor Linears by name), ``nn.Module.register_forward_hook`` for the block outputs, and priorkit's engine for
both stages. Not a PEFT tuner: PELA replaces ``W`` instead of adding a branch beside it, which PEFT's tuner
layers (a wrapped base layer plus an adapter) do not express; the ~150 lines of replacement are written here.

Example::

    >>> import torch
    >>> from priorkit.models import MLP
    >>> from priorkit.adapters.pela import PELA, pela_parameters
    >>> _ = torch.manual_seed(0)
    >>> teacher = MLP(40, (256, 256), 10)
    >>> pela = PELA(teacher, blocks=("body.1", "body.3"), ratio=2, alpha=1.0)
    >>> sorted(pela.layers)                       # the head is skipped by name
    ['body.0', 'body.2']
    >>> pela.layers["body.2"].rank                # floor(256 * 256 / (2 * 512))
    64
    >>> round(pela_parameters(pela.student)["ratio"], 2)
    0.52
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from priorkit.core.errors import (
    PriorkitError,
    check_choice,
    check_finite,
    check_positive_int,
    check_range,
)
from priorkit.core.spec import MethodSpec
from priorkit.train import Hook, Recipe, TrainConfig, fit
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch

__all__ = [
    "DEFAULT_SKIP",
    "PELA",
    "PELALinear",
    "capture_outputs",
    "feature_distillation_loss",
    "logit_distillation_loss",
    "pela_compress",
    "pela_decompress",
    "pela_finetune",
    "pela_layers",
    "pela_parameters",
    "pela_rank",
    "svd_factors",
    "weight_perturbation_loss",
]

#: module-name substrings the official code leaves dense (``DeiT/main.py``: ``name_omit``)
DEFAULT_SKIP: tuple[str, ...] = ("norm", "head", "patch_embed", "downsample")
WP_NORMS = ("max", "fro")

SPEC = MethodSpec(
    status="implemented",
    entry="PELA",
    missing="ALBEF-style multimodal feature lists (image, text and fusion hidden states as separate lists) and "
    "Swin-specific skip rules are not built (the card's 'later'); the DeiT recipe details (mixup, cutmix, "
    "repeated augmentation, EMA) belong to the user's TrainConfig/hooks and are not part of the method",
    presets={
        # DeiT-B (DeiT/main.py defaults, scripts/train_base.sh): c = 2, kd_alpha 1, kd_beta 0, inf_norm_weight 0,
        # inf_norm_eps 1e-3; 50 epochs of AdamW 5e-4 (scaled with batch), wd 0.05, cosine, 1 warm-up epoch
        "paper": {"ratio": 2.0, "alpha": 1.0, "beta": 0.0, "gamma": 0.0, "eps": 1e-3, "wp_norm": "max"},
        # Swin/main.py: the weight-perturbation term on, with eps 0
        "swin": {"ratio": 2.0, "alpha": 1.0, "beta": 0.0, "gamma": 1.0, "eps": 0.0, "wp_norm": "max"},
        # ALBEF/Pretrain.py: 0.1 * L_fd + 1 * L_wp with eps 1e-3
        "albef": {"ratio": 2.0, "alpha": 0.1, "beta": 0.0, "gamma": 1.0, "eps": 1e-3, "wp_norm": "max"},
        # the card's CPU check, variant (iii): CE + L_fd on an mnist1d MLP
        "small": {"ratio": 2.0, "alpha": 1.0, "beta": 0.0, "gamma": 0.0, "eps": 1e-3, "wp_norm": "max"},
    },
)


# --------------------------------------------------------------------------------------------- factorization
def pela_rank(in_features: int, out_features: int, ratio: float, *, name: str = "layer") -> int:
    """``r = floor(in * out / (c * (in + out)))``: the rank that keeps about ``1/c`` of the layer's weights.

    Refuses ``c <= 1`` (no saving) and ``r < 1`` (naming the layer ``name`` and the largest ``c`` that works).
    """
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    _check_ratio(ratio)
    full = in_features * out_features / (in_features + out_features)
    rank = int((in_features * out_features) // (ratio * (in_features + out_features)))  # official: float floor
    if rank < 1:
        raise PriorkitError(
            f"ratio={ratio!r} gives rank {rank} < 1 for {name} ({in_features} -> {out_features}); use a smaller "
            f"ratio (at most {full:.4g} for this layer) or add the layer to skip"
        )
    if rank >= full:  # only reachable for ratio <= 1, refused above; kept as the card's second guard
        raise PriorkitError(
            f"rank {rank} of {name} saves nothing: it must be < in*out/(in+out) = {full:.4g}; use a ratio > 1"
        )
    return rank


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio <= 1:
        raise PriorkitError(f"ratio (the compression ratio c) must be a finite number > 1, got {ratio!r}")


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F1, F2)`` with ``F1 = S_r^{1/2} V_r^T`` (``[r, in]``) and ``F2 = U_r S_r^{1/2}`` (``[out, r]``), so that
    ``F2 @ F1`` is the best rank-``r`` approximation of ``weight`` (Eckart-Young). Thin SVD in float64, returned in
    ``weight``'s dtype."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or 0 in weight.shape:
        got = list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise PriorkitError(f"weight must be a non-empty [out, in] matrix, got {got}")
    if not weight.is_floating_point():
        raise PriorkitError(f"weight must be floating point, got dtype {weight.dtype}")
    check_finite("weight", weight)
    check_positive_int("rank", rank)
    if rank > min(weight.shape):
        raise PriorkitError(f"rank must be in [1, {min(weight.shape)}] for a {list(weight.shape)} weight, got {rank}")
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = root[:, None] * vh[:rank]
    second = u[:, :rank] * root[None, :]
    return first.to(weight.dtype), second.to(weight.dtype)


class PELALinear(nn.Sequential):
    """A factorized ``nn.Linear``: ``Sequential(Linear(in -> r, bias=False), Linear(r -> out))``.

    Index 0 holds ``F1``, index 1 holds ``F2`` and the original bias (state-dict keys ``<name>.0.weight``,
    ``<name>.1.weight``, ``<name>.1.bias``, as in the official code), so PEFT LoRA can target the factors by name.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        *,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_positive_int("rank", rank)
        kw = {"device": device, "dtype": dtype}
        super().__init__(nn.Linear(in_features, rank, bias=False, **kw), nn.Linear(rank, out_features, bias, **kw))
        self.in_features, self.out_features, self.rank = in_features, out_features, rank

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, *, approximate: bool = True) -> PELALinear:
        """The factorized twin of ``linear``; ``approximate=False`` keeps default-initialised factors (the official
        ``is_approximate=False``, e.g. to load a saved factorized checkpoint) but still copies the bias."""
        w = linear.weight
        out = cls(linear.in_features, linear.out_features, rank, linear.bias is not None, device=w.device,
                  dtype=w.dtype)  # fmt: skip
        with torch.no_grad():
            if approximate:
                first, second = svd_factors(w, rank)
                out[0].weight.copy_(first)
                out[1].weight.copy_(second)
            if linear.bias is not None:
                out[1].bias.copy_(linear.bias)
        return out

    def product(self) -> torch.Tensor:
        """``F2 @ F1``, the dense ``[out, in]`` weight this layer applies (differentiable)."""
        return self[1].weight @ self[0].weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def pela_layers(model: nn.Module) -> dict[str, PELALinear]:
    """The replaced-layer map: module name -> :class:`PELALinear` (in, out, rank), in module order."""
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {n: m for n, m in model.named_modules() if isinstance(m, PELALinear)}


def pela_compress(
    model: nn.Module,
    ratio: float = 2.0,
    skip: Sequence[str] | None = None,
    *,
    min_out: int = 10,
    approximate: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Replace every eligible ``nn.Linear`` of ``model`` by its SVD-initialised :class:`PELALinear`.

    A layer stays dense when its name contains one of ``skip`` (default :data:`DEFAULT_SKIP`, the official
    ``name_omit``) or its ``out_features < min_out`` (official: 10, "for some head matrix"). An explicit ``skip``
    entry that matches no ``nn.Linear`` name is refused (a typo would silently compress the layer). Returns a
    factorized deep copy (``inplace=True``: ``model`` itself). Linears inside ``nn.MultiheadAttention`` (whose
    weights torch reads directly) are refused: name them in ``skip``.
    """
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_ratio(ratio)
    check_positive_int("min_out", min_out)
    if pela_layers(model):
        raise PriorkitError("model already holds PELALinear layers (compressed twice?); compress the dense model")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise PriorkitError(
            f"model ({type(model).__name__}) has no nn.Linear layer: PELA factorizes nn.Linear only "
            "(convolutions, embeddings and other layer types are not supported)"
        )
    if skip is None:
        patterns: tuple[str, ...] = DEFAULT_SKIP
    else:
        if isinstance(skip, str) or not all(isinstance(s, str) and s for s in skip):
            raise PriorkitError(f"skip must be a sequence of non-empty name substrings, got {skip!r}")
        patterns = tuple(skip)
        dead = [s for s in patterns if not any(s in n for n in linears)]
        if dead:
            raise PriorkitError(f"skip entries {dead} match no nn.Linear name; the model's Linears: {sorted(linears)}")
    chosen = {n: m for n, m in linears.items() if not any(s in n for s in patterns) and m.out_features >= min_out}
    if not chosen:
        raise PriorkitError(
            f"no nn.Linear left to factorize after skip={list(patterns)} and min_out={min_out}; "
            f"the model's Linears: {sorted(linears)}"
        )
    for name in chosen:
        parent, _ = _parent(model, name)
        if isinstance(parent, nn.MultiheadAttention):
            raise PriorkitError(
                f"{name} is a projection of nn.MultiheadAttention, which reads its weight directly and cannot take "
                f"a factorized layer; add {name!r} to skip (or use an attention module built from nn.Linear)"
            )
    ranks = {n: pela_rank(m.in_features, m.out_features, ratio, name=n) for n, m in chosen.items()}
    target = model if inplace else copy.deepcopy(model)
    for name, rank in ranks.items():
        parent, child = _parent(target, name)
        setattr(parent, child, PELALinear.from_linear(target.get_submodule(name), rank, approximate=approximate))
    return target


def pela_decompress(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Multiply every :class:`PELALinear` back into one ``nn.Linear`` (``W = F2 F1``, the bias of ``F2``): the
    dense model the factorized one computes, for analysis (e.g. ``||F2 F1 - W||``)."""
    layers = pela_layers(model)
    if not layers:
        raise PriorkitError("model holds no PELALinear layer: nothing to decompress (was it built by pela_compress?)")
    target = model if inplace else copy.deepcopy(model)
    for name, layer in pela_layers(target).items():
        w = layer[0].weight
        dense = nn.Linear(layer.in_features, layer.out_features, layer[1].bias is not None, device=w.device,
                          dtype=w.dtype)  # fmt: skip
        with torch.no_grad():
            dense.weight.copy_(layer.product())
            if layer[1].bias is not None:
                dense.bias.copy_(layer[1].bias)
        parent, child = _parent(target, name)
        setattr(parent, child, dense)
    return target


def pela_parameters(model: nn.Module) -> dict[str, Any]:
    """Parameter accounting: ``total`` parameters, ``dense_total`` (the same model with every factorized layer
    dense again), their ``ratio``, ``trainable``, and per factorized layer ``in``, ``out``, ``rank``, ``params``
    (``r (in + out)`` plus the bias) and ``dense_params`` (``in * out`` plus the bias)."""
    layers = {}
    for name, m in pela_layers(model).items():
        b = m.out_features if m[1].bias is not None else 0
        layers[name] = {
            "in": m.in_features,
            "out": m.out_features,
            "rank": m.rank,
            "params": m.rank * (m.in_features + m.out_features) + b,
            "dense_params": m.in_features * m.out_features + b,
        }
    total = sum(p.numel() for p in model.parameters())
    dense = total + sum(v["dense_params"] - v["params"] for v in layers.values())
    return {
        "total": total,
        "dense_total": dense,
        "ratio": total / dense if dense else 1.0,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "layers": layers,
    }


# --------------------------------------------------------------------------------------------------- losses
def _check_pair(name: str, a: Any, b: Any) -> None:
    for side, t in ((f"student {name}", a), (f"teacher {name}", b)):
        if not isinstance(t, torch.Tensor):
            raise PriorkitError(f"{side} must be a torch.Tensor, got {type(t).__name__}")
        if t.numel() == 0:
            raise PriorkitError(f"{side} must be non-empty, got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise PriorkitError(f"{side} must be floating point, got dtype {t.dtype}")
    if a.shape != b.shape:
        raise PriorkitError(f"student {name} has shape {list(a.shape)} but teacher {name} has {list(b.shape)}")
    check_finite(f"student {name}", a)
    check_finite(f"teacher {name}", b)


def feature_distillation_loss(
    student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``L_fd = (1 / n_b) sum_b MSE(h_b^s, h_b^t)`` over paired block outputs (the teacher's are detached)."""
    if isinstance(student_features, torch.Tensor) or isinstance(teacher_features, torch.Tensor):
        raise PriorkitError("student_features and teacher_features must be sequences of block outputs, not tensors")
    s, t = list(student_features), list(teacher_features)
    if not s:
        raise PriorkitError("student_features must hold at least one block output, got none")
    if len(s) != len(t):
        raise PriorkitError(f"student_features has {len(s)} block outputs but teacher_features has {len(t)}")
    for i, (a, b) in enumerate(zip(s, t)):
        _check_pair(f"feature {i}", a, b)
    return sum(F.mse_loss(a, b.detach()) for a, b in zip(s, t)) / len(s)


def logit_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``L_logit = MSE(z^s, z^t)`` (the teacher's logits are detached)."""
    _check_pair("logits", student_logits, teacher_logits)
    return F.mse_loss(student_logits, teacher_logits.detach())


def weight_perturbation_loss(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], eps: float = 1e-3, norm: str = "max"
) -> torch.Tensor:
    """``L_wp = (1/K) sum_k (||F2_k F1_k - W_k|| - eps)^2`` over ``pairs`` of ``(W [out, in], F1 [r, in],
    F2 [out, r])``; ``norm="max"`` is the largest absolute entry (official), ``"fro"`` the Frobenius norm."""
    check_range("eps", eps, 0.0)
    check_choice("wp_norm", norm, WP_NORMS)
    pairs = list(pairs)
    if not pairs:
        raise PriorkitError("pairs must hold at least one (W, F1, F2) triple of a factorized layer, got none")
    total = None
    for k, triple in enumerate(pairs):
        if not isinstance(triple, tuple | list) or len(triple) != 3:
            raise PriorkitError(f"pairs[{k}] must be a (W, F1, F2) triple, got {type(triple).__name__}")
        w, f1, f2 = triple
        for nm, t in (("W", w), ("F1", f1), ("F2", f2)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or 0 in t.shape:
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise PriorkitError(f"pairs[{k}] {nm} must be a non-empty matrix, got {got}")
            check_finite(f"pairs[{k}] {nm}", t)
        if f1.shape[0] != f2.shape[1] or w.shape != (f2.shape[0], f1.shape[1]):
            raise PriorkitError(
                f"pairs[{k}]: W {list(w.shape)}, F1 {list(f1.shape)}, F2 {list(f2.shape)} do not fit "
                "(W [out, in], F1 [r, in], F2 [out, r])"
            )
        delta = f2 @ f1 - w.detach()
        size = delta.abs().amax() if norm == "max" else torch.linalg.matrix_norm(delta, ord="fro")
        term = (size - eps) ** 2
        total = term if total is None else total + term
    return total / len(pairs)


# ------------------------------------------------------------------------------------------ block outputs
@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Forward hooks on the modules ``names`` of ``model``: inside the block, every forward of one of them appends
    its output to ``out[name]``; the hooks are removed on exit."""
    modules = _resolve(model, names, "names")
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [m.register_forward_hook(_recorder(out[n])) for n, m in modules.items()]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def _recorder(store: list[torch.Tensor]) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        store.append(output)

    return hook


def _resolve(model: nn.Module, names: Sequence[str], arg: str) -> dict[str, nn.Module]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise PriorkitError(f"{arg} must be a sequence of module names, got {names!r}")
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known or not n]
    if missing:
        near = sorted(k for k in known if k)[:20]
        raise PriorkitError(f"{arg} {missing} name no module of {type(model).__name__}; modules include: {near}")
    if len(set(names)) != len(names):
        raise PriorkitError(f"{arg} must not repeat a module name, got {list(names)}")
    return {n: known[n] for n in names}


def _single(name: str, side: str, outs: list[Any]) -> torch.Tensor:
    if len(outs) != 1:
        raise PriorkitError(
            f"block {name!r} of the {side} ran {len(outs)} times in one forward; PELA needs each named block to "
            "run exactly once per forward (name a module that is not shared or reused)"
        )
    out = outs[0]
    if not isinstance(out, torch.Tensor):
        raise PriorkitError(
            f"block {name!r} of the {side} returns {type(out).__name__}; name a module returning a tensor"
        )
    return out


# ----------------------------------------------------------------------------------------------- the stage
class PELA(Hook):
    """PELA's intermediate pre-training as an engine hook; ``self.student`` is the model to train.

    Builds ``student = pela_compress(teacher, ratio, skip)`` (a copy), freezes ``teacher`` (eval mode, no
    gradients) and adds ``alpha * L_fd``, ``beta * L_logit`` and ``gamma * L_wp`` (named ``fd``, ``logit``,
    ``wp``; a term with weight 0 is not computed) to the run's loss, whose base term is the task loss (the
    engine's cross-entropy). ``blocks`` names the modules whose outputs are distilled (Transformer blocks; for an
    MLP its hidden activations); they must exist under the same names in teacher and student and run once per
    forward. The student's features come from the engine's own forward (hooks registered in ``transform_batch``,
    read and removed in ``extra_loss``), so it runs once per step. Stateless across steps (the teacher is fixed).
    Usage: ``pela = PELA(teacher, blocks, **SPEC.presets["paper"]); fit(pela.student, data, hooks=[pela])``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        blocks: Sequence[str] = (),
        *,
        ratio: float = 2.0,
        skip: Sequence[str] | None = None,
        min_out: int = 10,
        alpha: float = 1.0,
        beta: float = 0.0,
        gamma: float = 0.0,
        eps: float = 1e-3,
        wp_norm: str = "max",
    ) -> None:
        for nm, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma), ("eps", eps)):
            check_range(nm, v, 0.0)
            if not math.isfinite(float(v)):
                raise PriorkitError(f"{nm} must be finite, got {v!r}")
        check_choice("wp_norm", wp_norm, WP_NORMS)
        if alpha > 0 and not blocks:
            raise PriorkitError("blocks must name at least one module when alpha > 0 (the features of L_fd)")
        self.alpha, self.beta, self.gamma, self.eps, self.wp_norm = alpha, beta, gamma, eps, wp_norm
        self.blocks = tuple(blocks)
        _resolve(teacher, self.blocks, "blocks")
        self.student = pela_compress(teacher, ratio, skip, min_out=min_out).requires_grad_(True)
        self.layers = pela_layers(self.student)
        self._student_blocks = _resolve(self.student, self.blocks, "blocks")
        teacher.requires_grad_(False).eval()
        self.teacher = teacher
        self._handles: list[Any] = []
        self._feats: dict[str, list[torch.Tensor]] = {}

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return [(self.teacher.get_submodule(n).weight, m[0].weight, m[1].weight) for n, m in self.layers.items()]

    def _release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def on_fit_start(self, state: RunState) -> None:
        if not any(m is self.student for m in state.model.modules()):
            raise PriorkitError(
                "PELA: the run must train the hook's own student (fit(pela.student, data, hooks=[pela]))"
            )
        self.teacher.to(state.device).eval()

    def transform_batch(self, state: RunState, batch: Batch) -> Batch:
        self._release()  # a step that failed before extra_loss leaves its hooks behind
        if self.alpha > 0:
            self._feats = {n: [] for n in self.blocks}
            self._handles = [
                m.register_forward_hook(_recorder(self._feats[n])) for n, m in self._student_blocks.items()
            ]
        return batch

    def extra_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        self._release()
        terms: dict[str, torch.Tensor] = {}
        if self.alpha > 0 or self.beta > 0:
            self.teacher.eval()
            with torch.no_grad(), capture_outputs(self.teacher, self.blocks if self.alpha > 0 else ()) as tf:
                logits_t = self.teacher(batch.x)
            if self.alpha > 0:
                fs = [_single(n, "student", self._feats.get(n, [])) for n in self.blocks]
                ft = [_single(n, "teacher", tf[n]) for n in self.blocks]
                terms["fd"] = self.alpha * feature_distillation_loss(fs, ft)
            if self.beta > 0:
                terms["logit"] = self.beta * logit_distillation_loss(batch.output, logits_t)
        self._feats = {}
        if self.gamma > 0:
            terms["wp"] = self.gamma * weight_perturbation_loss(self._pairs(), self.eps, self.wp_norm)
        return terms

    def on_epoch_end(self, state: RunState) -> None:
        self._release()
        self._feats = {}


# ---------------------------------------------------------------------------------------------- downstream
def pela_finetune(
    student: nn.Module,
    train: Dataset,
    *,
    config: TrainConfig,
    num_classes: int | None = None,
    head: str = "head",
    recipe: Recipe | None = None,
    hooks: Sequence[Hook] = (),
) -> list[dict[str, Any]]:
    """Downstream fine-tuning of a factorized model through the engine (the task's usual recipe; all parameters
    train). With ``num_classes`` the module ``head`` (an ``nn.Linear`` or :class:`PELALinear`) is replaced by a
    fresh dense ``Linear(in, num_classes)`` first, seeded by ``config.seed``. Returns the engine's history."""
    if not pela_layers(student):
        raise PriorkitError("student holds no PELALinear layer: fine-tune a model built by pela_compress or PELA")
    if num_classes is not None:
        check_positive_int("num_classes", num_classes)
        old = _resolve(student, (head,), "head")[head]
        if not isinstance(old, nn.Linear | PELALinear):
            raise PriorkitError(f"head {head!r} must be an nn.Linear or PELALinear, got {type(old).__name__}")
        w = old[0].weight if isinstance(old, PELALinear) else old.weight
        torch.manual_seed(config.seed)
        parent, child = _parent(student, head)
        setattr(parent, child, nn.Linear(old.in_features, num_classes, device=w.device, dtype=w.dtype))
    student.requires_grad_(True)  # all parameters train (a PELA stage may have left the model frozen)
    return fit(student, train, recipe, hooks=hooks, config=config)
