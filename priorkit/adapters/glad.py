"""GLAD: Generalizable Tuning for Vision-Language Models, Peng, Wang, Liu and Chen, 2025 (arXiv 2507.13089).

GLAD ("Generalizable LoRA tuning with regulArized graDient") fine-tunes a pretrained model (CLIP in the paper)
with plain LoRA on few-shot data and regularises every update with a second gradient: the gradient of the loss
at the sharpness-aware (SAM) point ``theta + eps``. That reference gradient steers the ordinary gradient toward
a flat region, which the paper reports generalises better to novel classes, shifted domains and other datasets
than prompt-learning methods with task-specific architectures.

One step on a mini-batch (``theta`` = the trainable LoRA tensors):

- ``g = grad L(theta)``; ``eps = rho * g / ||g||_2`` (global norm over all trainable tensors);
- ``g_sam = grad L(theta + eps)``; restore ``theta`` exactly;
- combine (the card's assumption, the paper gives no rule): ``rule="project"`` (default, ProGrad-style):
  ``g~ = g`` when ``<g, g_sam> >= 0``, else ``g~ = g - lam * <g, g_sam> / ||g_sam||^2 * g_sam``;
  ``rule="blend"``: ``g~ = (1 - beta) g + beta g_sam``; ``rule="sam"``: ``g~ = g_sam`` (plain SAM-LoRA);
- the AdamW step with ``g~`` from the unperturbed ``theta``.

Guards: ``||g|| = 0`` skips the perturbation (``g~ = g``); ``||g_sam|| = 0`` gives ``<g, g_sam> = 0``, no
conflict, so ``g~ = g`` under ``project``. The step logs ``glad_cos`` (cos(g, g_sam)), ``glad_conflict`` (the
fraction of steps with ``<g, g_sam> < 0``) and ``glad_sam_ce`` (the loss at ``theta + eps``) in each epoch record.

Library parts reused: the adapter is stock HF PEFT LoRA (``get_peft_model`` + ``LoraConfig``; :func:`glad_lora`
only sets the CLIP-LoRA defaults the card assumes and names unsupported targets in a PriorkitError), so PEFT's
save/load and ``merge_and_unload`` apply unchanged; the optimiser is ``torch.optim.AdamW``; the step runs in the
priorkit engine as a ``manual=True`` :class:`~priorkit.train.Phase` that calls ``state.backward`` (Fabric), so
under DDP both gradients are all-reduced before they are used (every rank perturbs identically). Hand-written:
the two-pass step and the combination rules, because no library offers a SAM reference gradient combined with the
ordinary one (SAM packages replace the gradient, they do not project it), and the engine owns the optimiser step.

Functional core (pure functions on lists of gradient tensors): :func:`global_norm`, :func:`grad_dot`,
:func:`gradient_cosine`, :func:`sam_perturbation`, :func:`perturb_`, :func:`restore_`,
:func:`project_conflict`, :func:`blend_gradients`, :func:`combine_gradients`; base-to-novel protocol:
:func:`base_novel_split`, :func:`base_novel_accuracy`, :func:`harmonic_mean`. Entry: :func:`GLADRecipe`.

Dropout: the second pass draws new dropout masks (standard SAM); ``same_dropout_rng=True`` replays the first
pass's RNG state so both passes see the same masks (exact tests). Hooks that add loss terms (``extra_loss``) or
edit gradients (``on_after_backward``) are not called by the engine in a manual phase, so GLADRecipe refuses
them instead of silently dropping them; ``transform_batch`` and ``on_step_end`` hooks run as usual.

Example::

    >>> import torch
    >>> from priorkit.models import MLP
    >>> from priorkit.data import IndexedTensorDataset
    >>> from priorkit.train import TrainConfig, fit
    >>> from priorkit.adapters.glad import GLADRecipe, glad_lora
    >>> _ = torch.manual_seed(0)
    >>> model = glad_lora(MLP(8, (16,), 3), r=2)
    >>> data = IndexedTensorDataset(torch.randn(24, 8), torch.arange(24) % 3)
    >>> hist = fit(model, data, GLADRecipe(model, epochs=2, lr=1e-2),
    ...            config=TrainConfig(batch_size=8, progress=False))
    >>> sorted(k for k in hist[-1] if k.startswith("glad"))
    ['glad_conflict', 'glad_cos', 'glad_sam_ce']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from priorkit.core.errors import (
    NonFiniteError,
    PriorkitError,
    check_choice,
    check_finite,
    check_finite_losses,
    check_labels,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.train.config import soft_cross_entropy
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import Phase, Recipe

__all__ = [
    "GLADRecipe",
    "base_novel_accuracy",
    "base_novel_split",
    "blend_gradients",
    "combine_gradients",
    "glad_lora",
    "global_norm",
    "grad_dot",
    "gradient_cosine",
    "harmonic_mean",
    "perturb_",
    "project_conflict",
    "restore_",
    "sam_perturbation",
]

RULES = ("project", "blend", "sam")
SCHEDULES = ("cosine", "none")

_PAPER = {
    # the card: rho 0.05 (standard SAM), lam 1, rule project; the LoRA recipe is CLIP-LoRA's (Zanella & Ben Ayed,
    # CVPRW 2024), an assumption the card takes: AdamW lr 2e-4, cosine schedule, batch 32, 500 x N_shots steps
    # (TrainConfig/epochs), r 2, alpha 1, dropout 0.25 on q, k, v of both encoders (glad_lora's arguments);
    # weight decay 1e-2 is CLIP-LoRA's AdamW setting (the card names none)
    "rho": 0.05, "rule": "project", "lam": 1.0, "beta": 0.5, "lr": 2e-4, "weight_decay": 1e-2,
    "betas": (0.9, 0.999), "schedule": "cosine",
}  # fmt: skip
SPEC = MethodSpec(
    status="implemented",
    entry="GLADRecipe",
    missing="the combination rule is the card's assumption (ProGrad-style projection; the paper's exact rule is not "
    "public), blend and sam are variants; stand-in for CLIP: an MLP pretrained on digits adapted to a noise shift "
    "(no CLIP loader, no prompt-based zero-shot scoring of novel classes); the optional MiniLM text variant is not "
    "built",
    presets={
        "paper": _PAPER,
        # the digits check: 200 steps of 16 (40 epochs of 80 few-shot samples), so a larger AdamW step
        "small": {**_PAPER, "lr": 5e-3},
    },
)


# ------------------------------------------------------------------------------------------ functional core
def _check_grads(name: str, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(grads, torch.Tensor) or not isinstance(grads, Sequence):
        raise PriorkitError(f"{name} must be a list of tensors (one per trainable tensor), got {type(grads).__name__}")
    if len(grads) == 0:
        raise PriorkitError(f"{name} must hold at least one tensor, got an empty list")
    for i, t in enumerate(grads):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise PriorkitError(f"{name}[{i}] must be a floating-point tensor, got {what}")
        check_finite(f"{name}[{i}]", t)
    return list(grads)


def _check_pair(
    g: Sequence[torch.Tensor], g_sam: Sequence[torch.Tensor], first: str = "g", other: str = "g_sam"
) -> None:
    _check_grads(first, g)
    _check_grads(other, g_sam)
    if len(g) != len(g_sam):
        raise PriorkitError(f"{first} and {other} must hold the same number of tensors, got {len(g)} and {len(g_sam)}")
    for i, (a, b) in enumerate(zip(g, g_sam)):
        if a.shape != b.shape:
            raise PriorkitError(f"{other}[{i}] must have shape {list(a.shape)} (as {first}[{i}]), got {list(b.shape)}")


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Sum over tensors of ``<a_i, b_i>``, accumulated in float64 (one host sync)."""
    return float(torch.stack([(x.double() * y.double()).sum() for x, y in zip(a, b)]).sum())


def _norm(a: Sequence[torch.Tensor]) -> float:
    return math.sqrt(max(_dot(a, a), 0.0))


def global_norm(tensors: Sequence[torch.Tensor]) -> float:
    """``||t||_2`` of the concatenation of all ``tensors`` (float64 accumulation)."""
    return _norm(_check_grads("tensors", tensors))


def grad_dot(g: Sequence[torch.Tensor], g_sam: Sequence[torch.Tensor]) -> float:
    """``<g, g_sam>`` over all tensors (float64 accumulation)."""
    _check_pair(g, g_sam)
    return _dot(g, g_sam)


def _cosine(g: Sequence[torch.Tensor], g_sam: Sequence[torch.Tensor]) -> float | None:
    na, nb = _norm(g), _norm(g_sam)
    return None if na == 0.0 or nb == 0.0 else _dot(g, g_sam) / (na * nb)


def gradient_cosine(g: Sequence[torch.Tensor], g_sam: Sequence[torch.Tensor]) -> float | None:
    """cos(g, g_sam) over all tensors; ``None`` when either gradient is zero (undefined)."""
    _check_pair(g, g_sam)
    return _cosine(g, g_sam)


def _perturbation(g: Sequence[torch.Tensor], rho: float, norm: float) -> list[torch.Tensor]:
    if norm == 0.0:
        return [torch.zeros_like(t) for t in g]
    return [t * (rho / norm) for t in g]


def sam_perturbation(g: Sequence[torch.Tensor], rho: float = 0.05) -> list[torch.Tensor]:
    """SAM's ascent step ``eps = rho * g / ||g||_2`` (global norm); all zeros when ``||g|| = 0``."""
    check_range("rho", rho, 0.0)
    g = _check_grads("g", g)
    return _perturbation(g, rho, _norm(g))


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], eps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Add ``eps`` to ``params`` in place; returns copies of the original values for :func:`restore_`."""
    _check_pair(params, eps, "params", "eps")
    backup = [p.detach().clone() for p in params]
    for p, e in zip(params, eps):
        p.add_(e)
    return backup


@torch.no_grad()
def restore_(params: Sequence[torch.Tensor], backup: Sequence[torch.Tensor]) -> None:
    """Copy ``backup`` back into ``params`` (bit-exact undo of :func:`perturb_`, no ``theta + eps - eps``)."""
    if len(params) != len(backup):
        raise PriorkitError(f"backup must hold {len(params)} tensors (one per parameter), got {len(backup)}")
    for i, (p, b) in enumerate(zip(params, backup)):
        if p.shape != b.shape:
            raise PriorkitError(f"backup[{i}] must have shape {list(p.shape)}, got {list(b.shape)}")
        p.copy_(b)


def _project(g: Sequence[torch.Tensor], g_sam: Sequence[torch.Tensor], lam: float) -> tuple[list[torch.Tensor], bool]:
    dot = _dot(g, g_sam)
    if dot >= 0.0:
        return list(g), False
    coef = lam * dot / _dot(g_sam, g_sam)  # dot < 0 implies ||g_sam|| > 0
    return [a - coef * b for a, b in zip(g, g_sam)], True


def project_conflict(g: Sequence[torch.Tensor], g_sam: Sequence[torch.Tensor], lam: float = 1.0) -> list[torch.Tensor]:
    """The default rule: ``g`` itself when ``<g, g_sam> >= 0``, else ``g`` minus ``lam`` times its projection
    on ``g_sam`` (``lam = 1`` makes the result orthogonal to ``g_sam``)."""
    check_range("lam", lam, 0.0, 1.0)
    _check_pair(g, g_sam)
    return _project(g, g_sam, lam)[0]


def blend_gradients(g: Sequence[torch.Tensor], g_sam: Sequence[torch.Tensor], beta: float = 0.5) -> list[torch.Tensor]:
    """``(1 - beta) * g + beta * g_sam`` (``beta = 1`` is SAM, ``beta = 0`` the plain gradient)."""
    check_range("beta", beta, 0.0, 1.0)
    _check_pair(g, g_sam)
    return [(1.0 - beta) * a + beta * b for a, b in zip(g, g_sam)]


def _combine(
    g: Sequence[torch.Tensor], g_sam: Sequence[torch.Tensor], rule: str, lam: float, beta: float
) -> tuple[list[torch.Tensor], bool]:
    if rule == "project":
        return _project(g, g_sam, lam)
    conflict = _dot(g, g_sam) < 0.0
    if rule == "blend":
        return [(1.0 - beta) * a + beta * b for a, b in zip(g, g_sam)], conflict
    return list(g_sam), conflict


def combine_gradients(
    g: Sequence[torch.Tensor],
    g_sam: Sequence[torch.Tensor],
    rule: str = "project",
    *,
    lam: float = 1.0,
    beta: float = 0.5,
) -> list[torch.Tensor]:
    """``g~`` from the ordinary and the SAM gradient by ``rule`` in ``("project", "blend", "sam")``."""
    check_choice("rule", rule, RULES)
    check_range("lam", lam, 0.0, 1.0)
    check_range("beta", beta, 0.0, 1.0)
    _check_pair(g, g_sam)
    return _combine(g, g_sam, rule, lam, beta)[0]


# ---------------------------------------------------------------------------------------- base-to-novel
def harmonic_mean(base: float, novel: float) -> float:
    """``HM = 2 b n / (b + n)`` of base and novel accuracy (0 when both are 0)."""
    b, n = check_range("base", base, 0.0, 1.0), check_range("novel", novel, 0.0, 1.0)
    return 0.0 if b + n == 0 else 2.0 * b * n / (b + n)


def base_novel_split(num_classes: int) -> tuple[list[int], list[int]]:
    """The CoOp/CoCoOp protocol's classes: the first ``ceil(C / 2)`` are base, the rest novel."""
    check_positive_int("num_classes", num_classes, 2)
    k = -(-num_classes // 2)
    return list(range(k)), list(range(k, num_classes))


def base_novel_accuracy(logits: torch.Tensor, y: torch.Tensor, base: Sequence[int]) -> dict[str, float]:
    """Base-to-novel accuracies: samples of ``base`` classes are classified among the base classes only, the
    others among the remaining (novel) classes only; returns ``{"base", "novel", "hm"}``."""
    check_shape("logits", logits, [None, None])
    n, c = logits.shape
    if n == 0:
        raise PriorkitError("logits must be a non-empty batch, got shape [0, C]")
    check_finite("logits", logits)
    check_labels("y", y, c, length=n)
    base_set = sorted({int(b) for b in base})
    if not base_set or base_set[0] < 0 or base_set[-1] >= c or len(base_set) == c:
        raise PriorkitError(f"base must be a non-empty proper subset of the classes [0, {c - 1}], got {list(base)}")
    novel_set = [k for k in range(c) if k not in base_set]
    is_base = torch.zeros(c, dtype=torch.bool, device=logits.device)
    is_base[base_set] = True
    out = {}
    for side, classes, rows in (("base", base_set, is_base[y]), ("novel", novel_set, ~is_base[y])):
        if not bool(rows.any()):
            raise PriorkitError(f"y holds no sample of the {side} classes {classes}")
        cols = torch.tensor(classes, device=logits.device)
        pred = cols[logits[rows][:, cols].argmax(1)]
        out[side] = float((pred == y[rows]).float().mean())
    out["hm"] = harmonic_mean(out["base"], out["novel"])
    return out


# --------------------------------------------------------------------------------------------- PEFT helper
def glad_lora(
    model: nn.Module,
    target_modules: str | Sequence[str] = "all-linear",
    *,
    r: int = 2,
    lora_alpha: float = 1.0,
    lora_dropout: float = 0.25,
    **lora_kwargs: Any,
) -> nn.Module:
    """Stock PEFT LoRA with the CLIP-LoRA settings the card assumes (r 2, alpha 1, dropout 0.25) on
    ``target_modules`` (PEFT's matching; ``"all-linear"`` is every ``nn.Linear`` of a plain module). Returns the
    ``PeftModel`` (only LoRA tensors trainable). A target type LoRA does not support is a PriorkitError."""
    from peft import LoraConfig, get_peft_model

    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("r", r)
    check_range("lora_alpha", lora_alpha, 0.0, low_inclusive=False)
    check_range("lora_dropout", lora_dropout, 0.0, 1.0, high_inclusive=False)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise PriorkitError("target_modules must name at least one module (or be 'all-linear')")
    cfg = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets, **lora_kwargs)
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise PriorkitError(
            f"target_modules={targets!r}: PEFT LoRA cannot wrap it ({e}); LoRA supports nn.Linear, nn.Embedding, "
            "nn.Conv1d/2d/3d, transformers Conv1D and nn.MultiheadAttention"
        ) from e


# ------------------------------------------------------------------------------------------------ the step
def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    dev = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), dev


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _grads(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


def _refuse_loss_hooks(state: RunState) -> None:
    """A manual phase does not run hooks' ``extra_loss``/``on_after_backward``: refuse them, do not drop them."""
    for h in getattr(state, "hooks", ()):
        for fn in ("extra_loss", "on_after_backward"):
            if getattr(type(h), fn, None) is not getattr(Hook, fn):
                raise PriorkitError(
                    f"GLADRecipe: hook {h.name} defines {fn}, which a GLAD step (a manual phase with two "
                    "forward/backward passes) does not call; fold that term into loss_fn or run the hook without "
                    "GLAD (hooks with transform_batch / on_step_end / epoch callbacks are fine)"
                )


def GLADRecipe(  # noqa: N802  (the method contract's <Id>Recipe entry)
    model: nn.Module,
    *,
    epochs: int = 1,
    rho: float = 0.05,
    rule: str = "project",
    lam: float = 1.0,
    beta: float = 0.5,
    lr: float = 2e-4,
    weight_decay: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    schedule: str = "cosine",
    same_dropout_rng: bool = False,
    loss_fn: Callable[[Any, Any], torch.Tensor] = soft_cross_entropy,
    trainable: Sequence[str] | None = None,
    name: str = "glad",
) -> Recipe:
    """GLAD training as a one-phase recipe: ``fit(model, data, GLADRecipe(model, ...), config=TrainConfig(...))``.

    ``model`` is the (PEFT) model to train; its parameters that require grad now (PEFT: the LoRA tensors) are
    the ones GLAD trains and perturbs (``trainable`` overrides them with parameter names, or with group names for
    a model with ``parameter_groups()``). Each step: ``loss_fn(model(x), batch.target)`` -> ``g`` -> perturb by
    ``rho * g / ||g||`` -> recompute -> ``g_sam`` -> restore -> ``combine_gradients(g, g_sam, rule)`` -> AdamW
    (``lr``, ``betas``, decoupled ``weight_decay``) with the combined gradient, under a per-step cosine schedule
    to 0 over ``epochs`` (``schedule="none"``: constant). ``TrainConfig.batch_size``/``seed`` and ``grad_clip``
    (applied to ``g~``) act as usual; the config's optimizer settings are not used.
    """
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("epochs", epochs)
    check_range("rho", rho, 0.0)
    check_choice("rule", rule, RULES)
    check_range("lam", lam, 0.0, 1.0)
    check_range("beta", beta, 0.0, 1.0)
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("weight_decay", weight_decay, 0.0)
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise PriorkitError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_range("betas[0]", betas[0], 0.0, 1.0, high_inclusive=False)
    check_range("betas[1]", betas[1], 0.0, 1.0, high_inclusive=False)
    check_choice("schedule", schedule, SCHEDULES)
    if not callable(loss_fn):
        raise PriorkitError(f"loss_fn must be a callable (output, target) -> loss, got {type(loss_fn).__name__}")
    if trainable is None:
        if hasattr(model, "parameter_groups"):
            raise PriorkitError(
                "GLADRecipe: the model has parameter_groups(), whose group names the engine uses to pick the "
                "trainable tensors; pass trainable=[group names] explicitly"
            )
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise PriorkitError(
                "GLADRecipe: model has no trainable parameters (requires_grad); wrap it with glad_lora(model) or "
                "peft.get_peft_model first, or pass trainable=[parameter names]"
            )
    else:
        trainable = list(trainable)
        if not trainable or not all(isinstance(t, str) for t in trainable):
            raise PriorkitError(f"trainable must be a non-empty list of parameter or group names, got {trainable!r}")
    b1, b2 = float(betas[0]), float(betas[1])
    checked = [False]

    def opt(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            [p for p in m.parameters() if p.requires_grad], lr=lr, betas=(b1, b2), weight_decay=weight_decay
        )

    def sched(o: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
        if schedule == "none":
            return None
        if steps_per_epoch <= 0:
            raise PriorkitError("GLADRecipe: the cosine schedule needs the phase's steps per epoch (no batches plan)")
        return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs * steps_per_epoch)

    def loss_at(state: RunState, batch: Batch, scale: float, first: bool) -> torch.Tensor:
        out, target = state.net(batch.x), batch.target
        if first and isinstance(out, torch.Tensor) and out.dim() == 2 and isinstance(target, torch.Tensor):
            if target.dim() == 1 and not target.is_floating_point():  # class labels: name a bad one here
                check_labels("labels (batch.target)", target, out.shape[1], length=out.shape[0])
        loss = loss_fn(out, target)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise PriorkitError(f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
        return loss * scale if scale != 1.0 else loss

    def step(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        if not checked[0]:
            _refuse_loss_hooks(state)
            checked[0] = True
        optim = state.optimizer
        params = [p for p in state.model.parameters() if p.requires_grad]
        scale = 1.0
        if state.world_size > 1 and state.phase.rescale:  # as the engine: shards of unequal size give the mean
            scale = len(batch) * state.world_size / len(state.global_indices)
        rng = _rng_state(state.device) if same_dropout_rng else None
        optim.zero_grad(set_to_none=True)
        loss = loss_at(state, batch, scale, True)
        check_finite_losses({"ce": loss}, state.step)
        state.backward(loss)  # DDP: g is all-reduced here, so every rank perturbs identically
        g = _grads(params)
        norm = _norm(g)
        if not math.isfinite(norm):
            raise NonFiniteError(f"GLAD: the gradient g has a non-finite norm ({norm}) at step {state.step}")
        if norm == 0.0:  # no ascent direction: skip the perturbation, g~ = g
            g_tilde, conflict, cos, sam_loss = g, False, None, loss.detach()
        else:
            backup = perturb_(params, _perturbation(g, rho, norm)) if rho > 0 else None
            try:
                if rng is not None:
                    _set_rng_state(rng, state.device)
                optim.zero_grad(set_to_none=True)
                sam_loss = loss_at(state, batch, scale, False)
                check_finite_losses({"sam_ce": sam_loss}, state.step)
                state.backward(sam_loss)
                g_sam = _grads(params)
            finally:
                if backup is not None:
                    restore_(params, backup)
            if not math.isfinite(_norm(g_sam)):
                raise NonFiniteError(f"GLAD: the SAM gradient g_sam is not finite at step {state.step}")
            g_tilde, conflict = _combine(g, g_sam, rule, lam, beta)
            cos = _cosine(g, g_sam)
        for p, t in zip(params, g_tilde):
            p.grad = t
        clip = state.phase.grad_clip if state.phase.grad_clip is not None else state.config.grad_clip
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)
        optim.step()
        values: dict[str, float] = {"glad_conflict": float(conflict), "glad_sam_ce": float(sam_loss.detach()) / scale}
        if cos is not None:
            values["glad_cos"] = cos
        state.log(**values)
        return {"ce": loss.detach() / scale}

    phase = Phase(name, epochs=epochs, trainable=trainable, optimizer=opt, scheduler=sched, interval="step",
                  loss=step, manual=True)  # fmt: skip
    return Recipe([phase], loss_fn=None)
