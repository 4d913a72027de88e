"""T-JEPA: Augmentation-Free Self-Supervised Learning for Tabular Data, Thimonier, De Melo Costa, Popineau,
Rimmel and Doan, ICLR 2025.

T-JEPA pretrains a tabular transformer without labels and without augmentations: each row is split into a
*context* subset of features and several *target* subsets, and a predictor learns to produce, from the context
encoder's latents of the context features, the latents that an EMA copy of the encoder (the target encoder) gives
the target features when it sees the whole row. The target encoder's output on a full row, flattened, is the
representation a downstream model (MLP, linear probe, GBDT, ...) is trained on. Learned "regularization tokens"
(``[REG]``) prepended to every row are what the paper finds critical against representation collapse.

Equations (paper Sec. 3; official code jose-melo/t-jepa):

- tokens: numeric feature ``j`` -> ``x_j w_j + b_j`` (``w_j, b_j`` in ``R^h``), categorical ``j`` -> ``E_j[x_j] +
  b_j``; ``R`` learned ``[REG]`` vectors (no bias) in front; the sinusoidal encoding (base 100, interleaved
  sin/cos) of the token position is added to all ``R + D`` tokens.
- encoder ``E``: post-norm transformer (ReLU FFN), then dropout -> LayerNorm -> Linear(h, h) -> dropout -> LayerNorm.
- masks (one size draw per batch): ``k_ctx = lo_c + round((hi_c - lo_c) u)`` with ``lo_c = round(D c_min)``,
  ``hi_c = round(D c_max)``, likewise ``k_tgt``, redrawn until ``k_ctx + k_tgt <= D``; per row a random
  permutation gives the context (its first ``k_ctx`` features) and each of the ``M`` target sets is ``k_tgt``
  features drawn from the rest (disjoint from the context, possibly overlapping each other).
- ``H = sg(E_xi(all tokens))`` gathered at the ``M`` target sets -> ``[M B, k_tgt, h]``; ``Z = E_theta(context
  tokens)``; predictor: Linear(h -> p) + fixed sin-cos embedding (base 10,000) of the context features; per target
  set ``k_tgt`` copies of a learned mask token + the sin-cos embedding of the target features; transformer, the
  same tail, LayerNorm, mask-token outputs, Linear(p -> h).
- loss ``L = mean (P - H)^2`` (MSE over every element); AdamW on ``theta`` and the predictor (no weight decay on
  biases and 1-D parameters), linear warm-up then cosine learning rate, cosine weight-decay schedule, gradients of
  the context encoder clamped element-wise to ``[-c, c]``; after each step ``xi <- m xi + (1 - m) theta`` with ``m``
  linear from 0.996 to 1 over all steps.

Functional core: :func:`mask_bounds`, :func:`draw_mask_sizes`, :func:`sample_masks`, :func:`momentum_at`,
:func:`lr_at`, :func:`wd_at`, :func:`ema_update`, :func:`jepa_loss`, :func:`param_groups`,
:func:`collapse_stats`; model parts :class:`TJEPATokenizer`, :class:`TJEPAEncoder`, :class:`TJEPAPredictor` and the
whole :class:`TJEPA` (context encoder, EMA target encoder, predictor; ``forward(x)`` exports the embedding). Entry:
:class:`TJEPAHook`, which builds the model, draws the masks, sets the schedules, clamps the gradients and updates
the EMA target inside the engine, and gives the pretraining :meth:`TJEPAHook.recipe`. The target encoder is a
frozen sub-module of the model, so the engine's checkpoint holds it and a resumed run ends where an uninterrupted
one would; the masks come from a generator seeded by ``(seed, step)`` over the *global* batch, so a W-process run
draws what a 1-process run draws.

Libraries considered: solo-learn has the momentum (BYOL-style) base class but no JEPA predictor or tabular
tokenizer; I-JEPA's code is for image patches and not a package; the transformer layers are PyTorch's
``nn.TransformerEncoderLayer`` (post-norm, as the official fork), and the collapse detectors come from
:mod:`priorkit.metrics.ssl`. The tokenizer, mask collator, predictor and schedules are written here.

Choices where the card leaves room or the code has quirks:

- Index quirk (card, "Implementation notes"): the released code's mask indices run over ``0..D-1`` but index the
  token sequence that begins with the ``R`` ``[REG]`` tokens, so index 0 is a ``[REG]`` token and the last feature
  is never a context or target token. Here feature ``j`` is token ``R + j`` and the ``R`` ``[REG]`` tokens are
  always part of the context encoder's input (their outputs are not passed to the predictor, whose positions are
  feature positions); ``index_quirk=True`` reproduces the code exactly (context = the tokens at the drawn indices).
- Step 0 of the code runs with AdamW's default learning rate (1e-3) and weight decay (1e-2), because its schedulers
  are first stepped after the first optimizer step; here step ``s`` uses ``lr_at(s)`` and ``wd_at(s)`` from the
  start (from step 1 on the two agree). The momentum of the ``s``-th update is ``momentum_at(s)`` as in the code
  (the schedule reaches 1.0 at ``s = total``).
- The code draws the per-row permutations from NumPy's global generator; here every random number of a step comes
  from one seeded generator, so masks are reproducible and resumable.
- The gradient clamp acts on the context encoder's gradients after backward (after the DDP all-reduce; the code's
  parameter hooks clamp before it), so a multi-process run equals a single-process one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    PriorkitError,
    check_batch,
    check_finite,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.metrics.ssl import effective_rank, embedding_std
from priorkit.nn.views import dataset_rows, view_generator
from priorkit.train.engine import RunState, rank_slice
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import Phase, Recipe

__all__ = [
    "TJEPA",
    "TJEPAEncoder",
    "TJEPAHook",
    "TJEPAPredictor",
    "TJEPATokenizer",
    "collapse_stats",
    "draw_mask_sizes",
    "ema_update",
    "jepa_loss",
    "lr_at",
    "mask_bounds",
    "momentum_at",
    "param_groups",
    "sample_masks",
    "wd_at",
]

#: scripts/launch_tjepa.sh (Jannis) with the parser's defaults for what it does not set (src/configs.py)
PAPER: dict[str, Any] = {
    "hidden": 64,
    "layers": 16,
    "heads": 2,
    "ffn": 64,
    "dropout": 0.0018542257314766695,
    "num_reg": 1,
    "pred_dim": 16,
    "pred_layers": 16,
    "pred_heads": 4,
    "pred_ffn": 256,
    "pred_dropout": 0.0019307456645321797,
    "ctx_share": (0.13628349247854785, 0.36819012681604135),
    "tgt_share": (0.1556321308543076, 0.6222278244105446),
    "num_targets": 4,
    "epochs": 300,
    "lr": 0.0003658682841082736,
    "start_lr": 0.0,
    "final_lr": 0.0,
    "warmup_epochs": 10,
    "weight_decay": 0.0,
    "final_weight_decay": 0.0,
    "ema": (0.996, 1.0),
    "grad_clamp": 1.0,
}

SPEC = MethodSpec(
    status="implemented",
    entry="TJEPAHook",
    missing="the per-feature MLP predictor variant, feature-type / feature-index embeddings (off in the paper's "
    "runs), several context blocks per row (num_encs > 1), the official early stopping on the train loss and the "
    "in-training probe; GBDT / ResNet / FT-Transformer / DCNv2 / AutoInt downstream models (the experiment uses an "
    "MLP and a linear probe); categorical-heavy benchmark tables (categorical tokens are built and tested, the "
    "experiment's tables are numeric)",
    presets={
        # the official Jannis run (batch 512 in the TrainConfig); 16 + 16 layers
        "paper": PAPER,
        # the card's CPU check: h=32, 3 encoder layers, predictor 2 layers / dim 16, batch 256 (TrainConfig);
        # dropout off: the paper's ~0.002 changes almost nothing but its Bernoulli draws cost about a quarter of
        # a CPU step
        "small": {
            **PAPER,
            "hidden": 32,
            "layers": 3,
            "ffn": 64,
            "dropout": 0.0,
            "pred_layers": 2,
            "pred_ffn": 64,
            "pred_dropout": 0.0,
            "epochs": 100,
        },
    },
)


# ----------------------------------------------------------------------------------------------------- masks
def mask_bounds(num_features: int, share_min: float, share_max: float, name: str = "share") -> tuple[int, int]:
    """``(round(D share_min), round(D share_max))``: the range of a mask's size (the code's ``MaskCollator``);
    the lower end must be at least 1 and not above the upper end."""
    check_positive_int("num_features", num_features)
    check_range(f"{name} min", share_min, 0.0, 1.0, low_inclusive=False)
    check_range(f"{name} max", share_max, 0.0, 1.0, low_inclusive=False)
    if share_min > share_max:
        raise PriorkitError(f"{name} must be (min, max) with min <= max, got ({share_min}, {share_max})")
    lo, hi = round(num_features * share_min), round(num_features * share_max)
    if lo < 1:
        raise PriorkitError(
            f"{name} min {share_min} gives round({num_features} * {share_min}) = 0 features: raise it to at least "
            f"{0.5 / num_features:.3g} (num_features={num_features})"
        )
    return lo, hi


def _check_shares(num_features: int, ctx_share: Sequence[float], tgt_share: Sequence[float]) -> tuple[tuple, tuple]:
    for name, sh in (("ctx_share", ctx_share), ("tgt_share", tgt_share)):
        if not isinstance(sh, Sequence) or len(sh) != 2:
            raise PriorkitError(f"{name} must be a (min, max) pair of shares in (0, 1], got {sh!r}")
    c = mask_bounds(num_features, ctx_share[0], ctx_share[1], "ctx_share")
    t = mask_bounds(num_features, tgt_share[0], tgt_share[1], "tgt_share")
    if c[0] + t[0] > num_features:
        raise PriorkitError(
            f"ctx_share and tgt_share: the smallest context ({c[0]}) and target ({t[0]}) sizes exceed "
            f"num_features={num_features}; lower the minimum shares"
        )
    return c, t


def draw_mask_sizes(
    num_features: int,
    ctx_share: Sequence[float],
    tgt_share: Sequence[float],
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """One batch's ``(k_ctx, k_tgt)``: ``lo + round((hi - lo) u)`` for each, redrawn until ``k_ctx + k_tgt <= D``."""
    (lc, hc), (lt, ht) = _check_shares(num_features, ctx_share, tgt_share)
    for _ in range(100_000):
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        k_ctx = lc + int(torch.round((hc - lc) * u[0]))
        k_tgt = lt + int(torch.round((ht - lt) * u[1]))
        if k_ctx + k_tgt <= num_features:
            return k_ctx, k_tgt
    raise PriorkitError(f"could not draw mask sizes with k_ctx + k_tgt <= {num_features}")  # pragma: no cover


def sample_masks(
    batch_size: int,
    num_features: int,
    k_ctx: int,
    k_tgt: int,
    num_targets: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature indices of the context ``[B, k_ctx]`` and of the ``M`` target sets ``[M, B, k_tgt]``.

    Per row a random permutation: the context is its first ``k_ctx`` features; each target set is ``k_tgt``
    features of the remaining ones in a fresh random order (disjoint from the context, not from each other).
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_features", num_features)
    check_positive_int("k_ctx", k_ctx)
    check_positive_int("k_tgt", k_tgt)
    check_positive_int("num_targets", num_targets)
    if k_ctx + k_tgt > num_features:
        raise PriorkitError(f"k_ctx + k_tgt must be <= num_features ({num_features}), got {k_ctx} + {k_tgt}")
    perm = torch.rand(batch_size, num_features, generator=generator).argsort(dim=1)
    ctx, rest = perm[:, :k_ctx], perm[:, k_ctx:]
    tgt = [
        rest.gather(1, torch.rand(rest.shape, generator=generator).argsort(dim=1)[:, :k_tgt])
        for _ in range(num_targets)
    ]
    return ctx, torch.stack(tgt)


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, i]]``: ``[B, T, h]`` at ``[B, k]`` -> ``[B, k, h]``."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ------------------------------------------------------------------------------------------------- schedules
def _check_step(step: int, total_steps: int) -> None:
    check_positive_int("total_steps", total_steps)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        raise PriorkitError(f"step must be an integer in [0, {total_steps}], got {step!r}")


def momentum_at(step: int, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """EMA momentum of the ``step``-th (0-based) target update: ``start + step (end - start) / total_steps``
    (the code's generator; ``end`` at ``step = total_steps``)."""
    _check_step(step, total_steps)
    check_range("ema start", start, 0.0, 1.0)
    check_range("ema end", end, 0.0, 1.0)
    return start + step * (end - start) / total_steps


def lr_at(
    step: int,
    total_steps: int,
    warmup_steps: int,
    ref_lr: float,
    start_lr: float = 0.0,
    final_lr: float = 0.0,
) -> float:
    """Learning rate of step ``step``: linear from ``start_lr`` to ``ref_lr`` over ``warmup_steps``, then cosine
    from ``ref_lr`` to ``final_lr`` at ``total_steps`` (the code's ``WarmupCosineSchedule``)."""
    _check_step(step, total_steps)
    check_positive_int("warmup_steps", warmup_steps, 0)
    for name, v in (("ref_lr", ref_lr), ("start_lr", start_lr), ("final_lr", final_lr)):
        check_range(name, v, 0.0)
    if step < warmup_steps:
        return start_lr + step / max(1, warmup_steps) * (ref_lr - start_lr)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(final_lr, final_lr + (ref_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def wd_at(step: int, total_steps: int, ref_wd: float, final_wd: float) -> float:
    """Weight decay of step ``step``: cosine from ``ref_wd`` to ``final_wd`` over ``total_steps`` (the code's
    ``CosineWDSchedule``, clamped at ``final_wd``)."""
    _check_step(step, total_steps)
    check_range("weight_decay", ref_wd, 0.0)
    check_range("final_weight_decay", final_wd, 0.0)
    wd = final_wd + (ref_wd - final_wd) * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return max(final_wd, wd) if final_wd <= ref_wd else min(final_wd, wd)


@torch.no_grad()
def ema_update(target: Iterable[torch.Tensor], online: Iterable[torch.Tensor], momentum: float) -> None:
    """In place ``xi <- m xi + (1 - m) theta`` over paired tensors (the target gets no gradient)."""
    check_range("momentum", momentum, 0.0, 1.0)
    tgt, src = list(target), list(online)
    if len(tgt) != len(src) or any(a.shape != b.shape for a, b in zip(tgt, src)):
        raise PriorkitError(
            f"target and online must pair tensors of equal shapes, got {len(tgt)} and {len(src)} tensors"
        )
    if not tgt:
        return
    torch._foreach_mul_(tgt, momentum)
    torch._foreach_add_(tgt, [p.detach() for p in src], alpha=1.0 - momentum)


def jepa_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element of the predicted and target latents ``[M B, k_tgt, h]``."""
    check_shape("pred", pred, [None, None, None])
    check_shape("target", target, list(pred.shape))
    if pred.numel() == 0:
        raise PriorkitError(f"pred must be non-empty, got shape {list(pred.shape)}")
    check_finite("target", target)
    return F.mse_loss(pred, target)


def param_groups(model: TJEPA, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """AdamW groups of the context encoder and the predictor (the code's ``init_optim``): weights with
    ``weight_decay``, biases and 1-D parameters (``tjepa_wd=False``) without; the target encoder is excluded."""
    if not isinstance(model, TJEPA):
        raise PriorkitError(f"model must be a TJEPA, got {type(model).__name__}")
    check_range("weight_decay", weight_decay, 0.0)
    groups = []
    for part in (model.context, model.predictor):
        named = list(part.named_parameters())
        decay = [p for n, p in named if "bias" not in n and p.dim() != 1]
        plain = [p for n, p in named if "bias" in n or p.dim() == 1]
        groups.append({"params": decay, "weight_decay": weight_decay, "tjepa_wd": True})
        groups.append({"params": plain, "weight_decay": 0.0, "tjepa_wd": False})
    return [groups[0], groups[2], groups[1], groups[3]]


def _pairwise_mean(z: torch.Tensor) -> float:
    n = z.shape[0]
    d = torch.cdist(z, z)
    return float(d.sum() / (n * (n - 1)))


def collapse_stats(emb: torch.Tensor) -> dict[str, float]:
    """The card's collapse metrics of embeddings ``[N, R + D, h]`` (or ``[N, d]``): ``emb_std``, the mean over
    dimensions of the per-dimension std of the token-pooled embeddings; ``pair_dist``, the mean Euclidean
    distance between two rows' flattened embeddings; ``eff_rank``, the effective rank of the centred flattened
    embeddings (:func:`priorkit.metrics.ssl.effective_rank`). All are 0 / 1 under complete collapse."""
    if not isinstance(emb, torch.Tensor) or emb.dim() not in (2, 3):
        raise PriorkitError(f"emb must be a [N, tokens, h] or [N, d] tensor, got {getattr(emb, 'shape', emb)!r}")
    check_batch("emb", emb)
    if emb.shape[0] < 2:
        raise PriorkitError(f"emb must have at least 2 rows, got shape {list(emb.shape)}")
    e = emb.detach().double()
    pooled = e.mean(dim=1) if e.dim() == 3 else e
    flat = e.flatten(1)
    rank = effective_rank(flat, center=True)
    return {
        "emb_std": embedding_std(pooled, normalize=False),
        "pair_dist": _pairwise_mean(flat),
        "eff_rank": 1.0 if math.isnan(rank) else rank,
    }


# ------------------------------------------------------------------------------------------------ model parts
def _sincos_interleaved(length: int, dim: int, base: float = 100.0) -> torch.Tensor:
    """The encoder's positional encoding ``[length, dim]``: sin on even, cos on odd columns, base 100."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(base) / dim))
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.float()


def _sincos_concat(length: int, dim: int) -> torch.Tensor:
    """The predictor's fixed embedding ``[length, dim]``: ``[sin(p w), cos(p w)]``, ``w_i = 10000^(-2i/dim)``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = torch.arange(length, dtype=torch.float64).unsqueeze(1) * omega
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def _init_trunc_normal(module: nn.Module) -> None:
    """The code's ``trunc_normal`` init: Linear / Embedding weights N(0, 0.02) truncated at +-2, biases 0,
    LayerNorm 1 / 0 (attention in-projections and the tokenizer keep their own init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_width(name: str, width: int, heads: int, heads_name: str) -> None:
    check_positive_int(name, width)
    check_positive_int(heads_name, heads)
    if width % 2 or width % heads:
        raise PriorkitError(f"{name} must be even and divisible by {heads_name} ({heads}), got {width}")


class TJEPATokenizer(nn.Module):
    """Row ``[B, D]`` -> tokens ``[B, R + D, h]`` in column order after the ``R`` ``[REG]`` tokens.

    ``categories`` maps a column index to its cardinality; that column holds integer codes (as floats or ints)
    and is embedded by a table, the others are numeric (``x_j w_j + b_j``). Init as the code: Kaiming-uniform
    (``a = sqrt(5)``) for the ``[REG]`` vectors, the weights and the biases.
    """

    def __init__(
        self, num_features: int, hidden: int, num_reg: int = 1, categories: Mapping[int, int] | None = None
    ) -> None:
        super().__init__()
        check_positive_int("num_features", num_features)
        check_positive_int("hidden", hidden)
        check_positive_int("num_reg", num_reg, 0)
        cats = dict(categories or {})
        for col, card in cats.items():
            if isinstance(col, bool) or not isinstance(col, int) or not 0 <= col < num_features:
                raise PriorkitError(f"categories keys must be column indices in [0, {num_features - 1}], got {col!r}")
            check_positive_int(f"categories[{col}] (cardinality)", card)
        self.num_features, self.hidden, self.num_reg = num_features, hidden, num_reg
        self.cat_cols = sorted(cats)
        self.num_cols = [j for j in range(num_features) if j not in cats]
        self.cardinalities = [cats[c] for c in self.cat_cols]
        self.reg = nn.Parameter(torch.empty(num_reg, hidden))
        self.weight = nn.Parameter(torch.empty(len(self.num_cols), hidden))
        self.bias = nn.Parameter(torch.empty(num_features, hidden))
        self.cat_emb = nn.ModuleList(nn.Embedding(c, hidden) for c in self.cardinalities)
        for p in (self.reg, self.weight, self.bias):
            if p.numel():
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        order = torch.tensor(self.num_cols + self.cat_cols, dtype=torch.long)
        self.register_buffer("_to_columns", order.argsort(), persistent=False)
        self.register_buffer("_num_idx", torch.tensor(self.num_cols, dtype=torch.long), persistent=False)
        self.register_buffer("_cat_idx", torch.tensor(self.cat_cols, dtype=torch.long), persistent=False)

    def check_input(self, x: Any, name: str = "x") -> torch.Tensor:
        """A finite floating ``[B, D]`` batch whose categorical columns hold codes in ``[0, cardinality)``."""
        if not isinstance(x, torch.Tensor):
            raise PriorkitError(f"{name} must be a torch.Tensor of rows [batch, {self.num_features}], got {type(x)}")
        check_shape(name, x, [None, self.num_features])
        if x.shape[0] == 0:
            raise PriorkitError(f"{name} must be a non-empty batch, got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise PriorkitError(f"{name} must be floating point (categorical codes as floats), got dtype {x.dtype}")
        check_finite(name, x)
        for col, card in zip(self.cat_cols, self.cardinalities):
            codes = x[:, col]
            if bool((codes != codes.round()).any()) or float(codes.min()) < 0 or float(codes.max()) >= card:
                raise PriorkitError(
                    f"{name}[:, {col}] is categorical: it must hold integer codes in [0, {card - 1}], got values in "
                    f"[{float(codes.min()):g}, {float(codes.max()):g}]"
                )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tok = x[:, self._num_idx, None] * self.weight + self.bias[self._num_idx]
        if self.cat_cols:
            codes = x[:, self._cat_idx].long()
            cat = torch.stack([emb(codes[:, i]) for i, emb in enumerate(self.cat_emb)], dim=1)
            tok = torch.cat([tok, cat + self.bias[self._cat_idx]], dim=1)[:, self._to_columns]
        return torch.cat([self.reg.unsqueeze(0).expand(b, -1, -1), tok], dim=1)


class _Trunk(nn.Module):
    """The code's ``TabularEncoder``: post-norm transformer, dropout, LayerNorm, Linear, dropout, LayerNorm."""

    def __init__(self, dim: int, layers: int, heads: int, ffn: int, dropout: float, eps: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=ffn, dropout=dropout, activation="relu", layer_norm_eps=eps,
            batch_first=True, norm_first=False,
        )  # fmt: skip
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.drop1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(dim, eps=eps)
        self.fc = nn.Linear(dim, dim)
        self.drop2, self.norm2 = nn.Dropout(dropout), nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.drop1(self.transformer(x)))
        return self.norm2(self.drop2(self.fc(x)))


class TJEPAEncoder(nn.Module):
    """Tokenizer + positional encoding (base 100, over the ``R + D`` token positions) + trunk.

    ``forward(x)`` encodes every token; ``forward(x, keep)`` encodes only the tokens at positions ``keep``
    ``[B, k]`` (the encoding is added before gathering, as the code does) -> ``[B, k, h]``.
    """

    def __init__(
        self,
        num_features: int,
        *,
        hidden: int = 64,
        layers: int = 16,
        heads: int = 2,
        ffn: int = 64,
        dropout: float = 0.0,
        num_reg: int = 1,
        layer_norm_eps: float = 1e-5,
        categories: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__()
        _check_width("hidden", hidden, heads, "heads")
        check_positive_int("layers", layers)
        check_positive_int("ffn", ffn)
        check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.tokenizer = TJEPATokenizer(num_features, hidden, num_reg, categories)
        self.register_buffer("pe", _sincos_interleaved(num_reg + num_features, hidden), persistent=False)
        self.trunk = _Trunk(hidden, layers, heads, ffn, dropout, layer_norm_eps)
        _init_trunc_normal(self)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        tok = self.tokenizer(x) + self.pe
        if keep is not None:
            tok = _gather(tok, keep)
        return self.trunk(tok)


class TJEPAPredictor(nn.Module):
    """Context latents ``[B, k_ctx, h]`` at feature positions ``ctx`` -> predicted latents ``[M B, k_tgt, h]`` of
    the target positions ``tgt`` ``[M, B, k_tgt]`` (the code's ``TransformerPredictor``)."""

    def __init__(
        self,
        num_positions: int,
        hidden: int,
        *,
        pred_dim: int = 16,
        layers: int = 16,
        heads: int = 4,
        ffn: int = 256,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        check_positive_int("num_positions", num_positions)
        check_positive_int("hidden", hidden)
        _check_width("pred_dim", pred_dim, heads, "pred_heads")
        check_positive_int("pred_layers", layers)
        check_positive_int("pred_ffn", ffn)
        check_range("pred_dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.num_positions = num_positions
        self.embed = nn.Linear(hidden, pred_dim)
        self.register_buffer("pos", _sincos_concat(num_positions, pred_dim), persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.trunk = _Trunk(pred_dim, layers, heads, ffn, dropout, layer_norm_eps)
        self.norm = nn.LayerNorm(pred_dim)
        self.proj = nn.Linear(pred_dim, hidden)
        _init_trunc_normal(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, z: torch.Tensor, ctx: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        m, b, k_tgt = tgt.shape
        k_ctx = ctx.shape[1]
        x = self.embed(z) + self.pos[ctx]
        x = x.repeat(m, 1, 1)
        t = self.mask_token + self.pos[tgt.reshape(m * b, k_tgt)]
        out = self.norm(self.trunk(torch.cat([x, t], dim=1)))
        return self.proj(out[:, k_ctx:])


class TJEPA(nn.Module):
    """Context encoder ``context`` (trained), target encoder ``target`` (its EMA copy: frozen, no gradient) and
    ``predictor``.

    ``forward(x)`` -> the downstream representation: the target encoder on the full row, flattened to
    ``[B, (R + D) h]`` (so :func:`priorkit.train.predict` exports embeddings). ``forward(x, ctx, tgt)`` -> the
    pretraining pair ``(prediction, target)``, both ``[M B, k_tgt, h]``, for feature indices ``ctx`` ``[B, k_ctx]``
    and ``tgt`` ``[M, B, k_tgt]`` (see the module docstring for ``index_quirk``).
    """

    def __init__(
        self,
        num_features: int,
        *,
        hidden: int = 64,
        layers: int = 16,
        heads: int = 2,
        ffn: int = 64,
        dropout: float = 0.0,
        num_reg: int = 1,
        pred_dim: int = 16,
        pred_layers: int = 16,
        pred_heads: int = 4,
        pred_ffn: int = 256,
        pred_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        categories: Mapping[int, int] | None = None,
        index_quirk: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(index_quirk, bool):
            raise PriorkitError(f"index_quirk must be True or False, got {index_quirk!r}")
        self.context = TJEPAEncoder(
            num_features, hidden=hidden, layers=layers, heads=heads, ffn=ffn, dropout=dropout, num_reg=num_reg,
            layer_norm_eps=layer_norm_eps, categories=categories,
        )  # fmt: skip
        self.target = copy.deepcopy(self.context)
        self.target.requires_grad_(False)
        self.predictor = TJEPAPredictor(
            num_features, hidden, pred_dim=pred_dim, layers=pred_layers, heads=pred_heads, ffn=pred_ffn,
            dropout=pred_dropout, layer_norm_eps=layer_norm_eps,
        )  # fmt: skip
        self.num_features, self.hidden, self.num_reg, self.index_quirk = num_features, hidden, num_reg, index_quirk

    @property
    def embedding_dim(self) -> int:
        """Width of the flattened representation, ``(R + D) h``."""
        return (self.num_reg + self.num_features) * self.hidden

    def _check_masks(self, x: torch.Tensor, ctx: Any, tgt: Any) -> None:
        b, d = x.shape[0], self.num_features
        for name, t, dims in (("ctx", ctx, 2), ("tgt", tgt, 3)):
            if not isinstance(t, torch.Tensor) or t.dim() != dims or t.dtype != torch.long:
                want = "[batch, k_ctx]" if dims == 2 else "[M, batch, k_tgt]"
                got = f"{getattr(t, 'dtype', type(t).__name__)} {list(getattr(t, 'shape', []))}"
                raise PriorkitError(f"{name} must be an int64 tensor of feature indices {want}, got {got}")
            if t.numel() == 0:
                raise PriorkitError(f"{name} must be non-empty, got shape {list(t.shape)}")
            if int(t.min()) < 0 or int(t.max()) >= d:
                raise PriorkitError(f"{name} must hold feature indices in [0, {d - 1}], got [{int(t.min())}, "
                                    f"{int(t.max())}]")  # fmt: skip
        if ctx.shape[0] != b or tgt.shape[1] != b:
            raise PriorkitError(f"ctx [batch, k_ctx] and tgt [M, batch, k_tgt] must have batch {b} (the rows of x), "
                                f"got ctx {list(ctx.shape)} and tgt {list(tgt.shape)}")  # fmt: skip
        if ctx.shape[1] + tgt.shape[2] > d:
            raise PriorkitError(f"k_ctx + k_tgt must be <= num_features ({d}), got {ctx.shape[1]} + {tgt.shape[2]}")

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor | None = None, tgt: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.context.tokenizer.check_input(x)
        if ctx is None and tgt is None:
            return self.target(x).flatten(1)
        self._check_masks(x, ctx, tgt)
        m, b, k_tgt = tgt.shape
        off = 0 if self.index_quirk else self.num_reg
        with torch.no_grad():
            h = self.target(x)
            h = _gather(h.repeat(m, 1, 1), tgt.reshape(m * b, k_tgt) + off)
        if self.index_quirk:
            z = self.context(x, ctx)
        else:
            reg = torch.arange(self.num_reg, device=ctx.device).expand(b, -1)
            z = self.context(x, torch.cat([reg, ctx + off], dim=1))[:, self.num_reg :]
        return self.predictor(z, ctx, tgt), h

    @torch.no_grad()
    def embed(self, x: torch.Tensor, *, flatten: bool = True, batch_size: int = 1024) -> torch.Tensor:
        """The target encoder's representation of rows ``x`` in eval mode: ``[N, (R + D) h]`` (or
        ``[N, R + D, h]`` with ``flatten=False``)."""
        x = self.context.tokenizer.check_input(x)
        check_positive_int("batch_size", batch_size)
        was = self.training
        self.eval()
        try:
            out = torch.cat([self.target(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        finally:
            self.train(was)
        return out.flatten(1) if flatten else out


# ------------------------------------------------------------------------------------------------------ entry
class TJEPAHook(Hook):
    """T-JEPA pretraining inside the engine: builds :attr:`model` (a :class:`TJEPA`) and, in its phase, draws
    the masks of each global batch, sets the learning rate and weight decay of the step, clamps the context
    encoder's gradients and updates the EMA target after the optimizer step.

    Run: ``hook = TJEPAHook(D, **SPEC.presets["paper"]); fit(hook.model, rows, hook.recipe(), hooks=[hook],
    config=TrainConfig(batch_size=512, seed=0))`` with ``rows`` a dataset of ``(x, y[, index])`` items (``y`` is
    not used), then ``hook.model.embed(x)`` for the downstream representation. ``collapse_every > 0`` logs
    :func:`collapse_stats` of the first ``collapse_rows`` training rows every that many epochs.
    """

    claims = ("optimizer.lr", "optimizer.weight_decay")

    def __init__(
        self,
        num_features: int,
        *,
        hidden: int = PAPER["hidden"],
        layers: int = PAPER["layers"],
        heads: int = PAPER["heads"],
        ffn: int = PAPER["ffn"],
        dropout: float = PAPER["dropout"],
        num_reg: int = PAPER["num_reg"],
        pred_dim: int = PAPER["pred_dim"],
        pred_layers: int = PAPER["pred_layers"],
        pred_heads: int = PAPER["pred_heads"],
        pred_ffn: int = PAPER["pred_ffn"],
        pred_dropout: float = PAPER["pred_dropout"],
        layer_norm_eps: float = 1e-5,
        categories: Mapping[int, int] | None = None,
        index_quirk: bool = False,
        ctx_share: Sequence[float] = PAPER["ctx_share"],
        tgt_share: Sequence[float] = PAPER["tgt_share"],
        num_targets: int = PAPER["num_targets"],
        epochs: int = PAPER["epochs"],
        lr: float = PAPER["lr"],
        start_lr: float = PAPER["start_lr"],
        final_lr: float = PAPER["final_lr"],
        warmup_epochs: int = PAPER["warmup_epochs"],
        weight_decay: float = PAPER["weight_decay"],
        final_weight_decay: float = PAPER["final_weight_decay"],
        ema: Sequence[float] = PAPER["ema"],
        grad_clamp: float | None = PAPER["grad_clamp"],
        collapse_every: int = 0,
        collapse_rows: int = 1024,
        phase_name: str = "tjepa",
    ) -> None:
        _check_shares(num_features, ctx_share, tgt_share)
        check_positive_int("num_targets", num_targets)
        check_positive_int("epochs", epochs)
        check_range("lr", lr, 0.0, low_inclusive=False)
        check_range("start_lr", start_lr, 0.0)
        check_range("final_lr", final_lr, 0.0)
        check_positive_int("warmup_epochs", warmup_epochs, 0)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("final_weight_decay", final_weight_decay, 0.0)
        if not isinstance(ema, Sequence) or len(ema) != 2:
            raise PriorkitError(f"ema must be a (start, end) pair in [0, 1], got {ema!r}")
        check_range("ema start", ema[0], 0.0, 1.0)
        check_range("ema end", ema[1], 0.0, 1.0)
        if ema[0] > ema[1]:
            raise PriorkitError(f"ema must rise: (start, end) with start <= end, got {tuple(ema)}")
        if grad_clamp is not None:
            check_range("grad_clamp", grad_clamp, 0.0, low_inclusive=False)
        check_positive_int("collapse_every", collapse_every, 0)
        check_positive_int("collapse_rows", collapse_rows, 2)
        if not isinstance(phase_name, str) or not phase_name:
            raise PriorkitError(f"phase_name must be a non-empty string, got {phase_name!r}")
        self.model = TJEPA(
            num_features, hidden=hidden, layers=layers, heads=heads, ffn=ffn, dropout=dropout, num_reg=num_reg,
            pred_dim=pred_dim, pred_layers=pred_layers, pred_heads=pred_heads, pred_ffn=pred_ffn,
            pred_dropout=pred_dropout, layer_norm_eps=layer_norm_eps, categories=categories, index_quirk=index_quirk,
        )  # fmt: skip
        self.num_features = num_features
        self.ctx_share, self.tgt_share = tuple(ctx_share), tuple(tgt_share)
        self.num_targets, self.epochs = num_targets, epochs
        self.lr, self.start_lr, self.final_lr, self.warmup_epochs = lr, start_lr, final_lr, warmup_epochs
        self.weight_decay, self.final_weight_decay = weight_decay, final_weight_decay
        self.ema, self.grad_clamp = (float(ema[0]), float(ema[1])), grad_clamp
        self.collapse_every, self.collapse_rows, self.phase_name = collapse_every, collapse_rows, phase_name
        self._ctx_params = list(self.model.context.parameters())
        self._tgt_params = list(self.model.target.parameters())
        self._step: int | None = None

    # -- the step ----------------------------------------------------------------------------------------------
    def _active(self, state: RunState) -> bool:
        return state.phase.name == self.phase_name

    @staticmethod
    def _position(state: RunState) -> tuple[int, int]:
        """``(step in the phase, steps of the phase)``."""
        spe = state.steps_per_epoch
        return state.phase_epoch * spe + state.batch_in_epoch, spe * state.phase.epochs

    def transform_batch(self, state: RunState, batch: Batch) -> Batch:
        if not self._active(state):
            return batch
        step, total = self._position(state)
        warmup = self.warmup_epochs * state.steps_per_epoch
        lr = lr_at(step, total, warmup, self.lr, self.start_lr, self.final_lr)
        wd = wd_at(step, total, self.weight_decay, self.final_weight_decay)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
            if group.get("tjepa_wd", False):
                group["weight_decay"] = wd
        # the masks of the global batch (the same numbers whatever the world size), then this rank's rows
        g = view_generator(state.config.seed, state.step)
        n = len(state.global_indices)
        k_ctx, k_tgt = draw_mask_sizes(self.num_features, self.ctx_share, self.tgt_share, g)
        ctx, tgt = sample_masks(n, self.num_features, k_ctx, k_tgt, self.num_targets, g)
        rows = torch.tensor(rank_slice(list(range(n)), state.rank, state.world_size), dtype=torch.long)
        if len(rows) != len(batch):
            raise PriorkitError(f"TJEPAHook: the batch has {len(batch)} rows but this rank's share of the global "
                                f"batch has {len(rows)}")  # fmt: skip
        dev = batch.x.device if isinstance(batch.x, torch.Tensor) else state.device
        batch.extras["tjepa_ctx"] = ctx[rows].to(dev)
        batch.extras["tjepa_tgt"] = tgt[:, rows].to(dev)
        self._step = step
        state.log(lr=lr, k_ctx=k_ctx, k_tgt=k_tgt)
        return batch

    def on_after_backward(self, state: RunState) -> None:
        if self._active(state) and self.grad_clamp is not None:
            grads = [p.grad for p in self._ctx_params if p.grad is not None]
            if grads:
                torch._foreach_clamp_min_(grads, -self.grad_clamp)
                torch._foreach_clamp_max_(grads, self.grad_clamp)

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        if not self._active(state) or self._step is None:
            return
        _, total = self._position(state)
        m = momentum_at(self._step, total, *self.ema)
        ema_update(self._tgt_params, self._ctx_params, m)
        state.log(momentum=m)
        self._step = None

    def on_epoch_end(self, state: RunState) -> None:
        if not self._active(state) or not self.collapse_every:
            return
        pe = state.phase_epoch
        if (pe + 1) % self.collapse_every and pe + 1 != state.phase.epochs:
            return
        data = state.phase.data if state.phase.data is not None else state.data
        idx = torch.arange(min(len(data), self.collapse_rows))
        x, _ = dataset_rows(data, idx)
        emb = self.model.embed(x.to(state.device).float(), flatten=False)
        state.log(**collapse_stats(emb))

    # -- the recipe --------------------------------------------------------------------------------------------
    @staticmethod
    def _forward(net: nn.Module, batch: Batch) -> Any:
        if "tjepa_ctx" not in batch.extras:
            raise PriorkitError("the T-JEPA phase needs its masks: pass the TJEPAHook in hooks=[...] of the run")
        return net(batch.x, batch.extras["tjepa_ctx"], batch.extras["tjepa_tgt"])

    @staticmethod
    def _loss(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        pred, target = batch.output
        return {"jepa": jepa_loss(pred, target)}

    def recipe(self) -> Recipe:
        """One phase of ``epochs`` epochs: AdamW over :func:`param_groups` (the schedules are set by the hook);
        the loss is :func:`jepa_loss`, logged as ``jepa``."""

        def opt(model: nn.Module) -> torch.optim.Optimizer:
            if model is not self.model:
                raise PriorkitError("fit the hook's own model: fit(hook.model, data, hook.recipe(), hooks=[hook])")
            return torch.optim.AdamW(param_groups(self.model, self.weight_decay), lr=self.lr)

        phase = Phase(self.phase_name, epochs=self.epochs, optimizer=opt, forward=self._forward, loss=self._loss)
        return Recipe([phase], loss_fn=None)
