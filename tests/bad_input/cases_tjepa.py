"""Bad input for T-JEPA's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.regularizers.tjepa import (
    TJEPA,
    TJEPAEncoder,
    TJEPAHook,
    TJEPAPredictor,
    TJEPATokenizer,
    collapse_stats,
    draw_mask_sizes,
    ema_update,
    jepa_loss,
    lr_at,
    mask_bounds,
    momentum_at,
    param_groups,
    sample_masks,
    wd_at,
)

TINY = {"hidden": 8, "layers": 1, "heads": 2, "ffn": 8, "pred_dim": 8, "pred_layers": 1, "pred_heads": 2,
        "pred_ffn": 8}  # fmt: skip
_MODEL = TJEPA(6, categories={0: 3}, **TINY)


def _x(b=3, d=6):
    return torch.zeros(b, d)


def _nan(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[1] = value
    return t


def _masks(b=3):
    return torch.tensor([[1, 2]] * b), torch.tensor([[[3, 4]] * b])


def _fwd(x=None, ctx=None, tgt=None):
    c, t = _masks()
    return _MODEL(_x() if x is None else x, c if ctx is None else ctx, t if tgt is None else tgt)


CASES = [
    # the hook (entry) and its model settings
    ("hook_num_features", lambda: TJEPAHook(0), r"num_features must be an integer >= 1"),
    ("hook_ctx_share_pair", lambda: TJEPAHook(10, ctx_share=0.3), r"ctx_share must be a \(min, max\) pair"),
    ("hook_ctx_share_order", lambda: TJEPAHook(10, ctx_share=(0.5, 0.2)), r"ctx_share must be \(min, max\) with min"),
    ("hook_ctx_share_range", lambda: TJEPAHook(10, ctx_share=(0.2, 1.5)), r"ctx_share max must be in \(0, 1\]"),
    ("hook_tgt_share_zero", lambda: TJEPAHook(10, tgt_share=(0.01, 0.5)), r"tgt_share min 0.01 gives round"),
    ("hook_shares_too_big", lambda: TJEPAHook(10, ctx_share=(0.6, 0.7), tgt_share=(0.5, 0.6)), r"smallest context"),
    ("hook_num_targets", lambda: TJEPAHook(10, num_targets=0), r"num_targets must be an integer >= 1"),
    ("hook_epochs", lambda: TJEPAHook(10, epochs=0), r"epochs must be an integer >= 1"),
    ("hook_lr", lambda: TJEPAHook(10, lr=0.0), r"lr must be in \(0, inf\)"),
    ("hook_warmup", lambda: TJEPAHook(10, warmup_epochs=-1), r"warmup_epochs must be an integer >= 0"),
    ("hook_weight_decay", lambda: TJEPAHook(10, weight_decay=-1.0), r"weight_decay must be in \[0, inf\)"),
    ("hook_ema_pair", lambda: TJEPAHook(10, ema=0.99), r"ema must be a \(start, end\) pair"),
    ("hook_ema_range", lambda: TJEPAHook(10, ema=(0.9, 1.2)), r"ema end must be in \[0, 1\]"),
    ("hook_ema_order", lambda: TJEPAHook(10, ema=(0.99, 0.9)), r"ema must rise"),
    ("hook_grad_clamp", lambda: TJEPAHook(10, grad_clamp=0.0), r"grad_clamp must be in \(0, inf\)"),
    ("hook_collapse_rows", lambda: TJEPAHook(10, collapse_rows=1), r"collapse_rows must be an integer >= 2"),
    ("hook_phase_name", lambda: TJEPAHook(10, phase_name=""), r"phase_name must be a non-empty string"),
    ("hook_heads", lambda: TJEPAHook(10, hidden=10, heads=4), r"hidden must be even and divisible by heads"),
    ("hook_hidden_odd", lambda: TJEPAHook(10, hidden=9, heads=1), r"hidden must be even"),
    ("hook_pred_heads", lambda: TJEPAHook(10, pred_dim=6, pred_heads=4), r"pred_dim must be even and divisible"),
    ("hook_num_reg", lambda: TJEPAHook(10, num_reg=-1), r"num_reg must be an integer >= 0"),
    ("hook_dropout", lambda: TJEPAHook(10, dropout=1.0), r"dropout must be in \[0, 1\)"),
    ("hook_quirk", lambda: TJEPAHook(10, index_quirk="yes"), r"index_quirk must be True or False"),
    ("hook_categories_col", lambda: TJEPAHook(10, categories={12: 3}), r"categories keys must be column indices"),
    ("hook_categories_card", lambda: TJEPAHook(10, categories={1: 0}), r"categories\[1\] \(cardinality\)"),
    # parts
    ("tokenizer_hidden", lambda: TJEPATokenizer(4, 0), r"hidden must be an integer >= 1"),
    ("encoder_layers", lambda: TJEPAEncoder(4, hidden=8, heads=2, layers=0), r"layers must be an integer >= 1"),
    ("predictor_positions", lambda: TJEPAPredictor(0, 8), r"num_positions must be an integer >= 1"),
    ("predictor_ffn", lambda: TJEPAPredictor(4, 8, pred_dim=8, heads=2, ffn=0), r"pred_ffn must be an integer"),
    # the model's forward / embed
    ("forward_x_type", lambda: _MODEL([[0.0] * 6]), r"x must be a torch.Tensor of rows \[batch, 6\]"),
    ("forward_x_shape", lambda: _MODEL(torch.zeros(3, 5)), r"x must have shape \[\*, 6\], got \[3, 5\]"),
    ("forward_x_empty", lambda: _MODEL(torch.zeros(0, 6)), r"x must be a non-empty batch"),
    ("forward_x_dtype", lambda: _MODEL(torch.zeros(3, 6, dtype=torch.long)), r"x must be floating point"),
    ("forward_x_nan", lambda: _MODEL(_nan(_x())), r"x holds 1 NaN or infinite"),
    ("forward_x_inf", lambda: _MODEL(_nan(_x(), float("inf"))), r"x holds 1 NaN or infinite"),
    ("forward_x_category", lambda: _MODEL(torch.full((3, 6), 3.0)), r"x\[:, 0\] is categorical"),
    ("forward_x_category_frac", lambda: _MODEL(torch.full((3, 6), 0.5)), r"x\[:, 0\] is categorical"),
    ("forward_ctx_dtype", lambda: _fwd(ctx=torch.ones(3, 2)), r"ctx must be an int64 tensor of feature indices"),
    ("forward_ctx_range", lambda: _fwd(ctx=torch.tensor([[1, 6]] * 3)), r"ctx must hold feature indices in \[0, 5\]"),
    ("forward_tgt_dims", lambda: _fwd(tgt=torch.tensor([[3, 4]] * 3)), r"tgt must be an int64 tensor"),
    ("forward_tgt_neg", lambda: _fwd(tgt=torch.tensor([[[3, -1]] * 3])), r"tgt must hold feature indices"),
    ("forward_tgt_only", lambda: _MODEL(_x(), None, _masks()[1]), r"ctx must be an int64 tensor"),
    ("forward_batch", lambda: _fwd(ctx=torch.tensor([[1, 2]] * 2)), r"must have batch 3 \(the rows of x\)"),
    ("forward_too_many", lambda: _fwd(tgt=torch.tensor([[[3, 4, 5, 0, 1]] * 3])), r"k_ctx \+ k_tgt must be <="),
    ("forward_ctx_empty", lambda: _fwd(ctx=torch.zeros(3, 0, dtype=torch.long)), r"ctx must be non-empty"),
    ("embed_nan", lambda: _MODEL.embed(_nan(_x())), r"x holds 1 NaN"),
    ("embed_batch_size", lambda: _MODEL.embed(_x(), batch_size=0), r"batch_size must be an integer >= 1"),
    # functional core
    ("mask_bounds_order", lambda: mask_bounds(10, 0.5, 0.2), r"share must be \(min, max\) with min <= max"),
    ("mask_bounds_zero", lambda: mask_bounds(10, 0.0, 0.2), r"share min must be in \(0, 1\]"),
    ("mask_bounds_features", lambda: mask_bounds(0, 0.1, 0.2), r"num_features must be an integer >= 1"),
    ("draw_sizes_shape", lambda: draw_mask_sizes(10, (0.2,), (0.2, 0.4)), r"ctx_share must be a \(min, max\) pair"),
    ("sample_masks_sum", lambda: sample_masks(4, 6, 3, 4), r"k_ctx \+ k_tgt must be <= num_features \(6\)"),
    ("sample_masks_k", lambda: sample_masks(4, 6, 0, 4), r"k_ctx must be an integer >= 1"),
    ("sample_masks_batch", lambda: sample_masks(0, 6, 2, 2), r"batch_size must be an integer >= 1"),
    ("momentum_step", lambda: momentum_at(5, 4), r"step must be an integer in \[0, 4\]"),
    ("momentum_total", lambda: momentum_at(0, 0), r"total_steps must be an integer >= 1"),
    ("momentum_start", lambda: momentum_at(0, 4, start=1.5), r"ema start must be in \[0, 1\]"),
    ("lr_step", lambda: lr_at(-1, 4, 1, 1e-3), r"step must be an integer in \[0, 4\]"),
    ("lr_warmup", lambda: lr_at(0, 4, -1, 1e-3), r"warmup_steps must be an integer >= 0"),
    ("lr_ref", lambda: lr_at(0, 4, 1, -1e-3), r"ref_lr must be in \[0, inf\)"),
    ("wd_final", lambda: wd_at(0, 4, 0.1, -0.1), r"final_weight_decay must be in \[0, inf\)"),
    ("ema_momentum", lambda: ema_update([torch.zeros(2)], [torch.zeros(2)], 1.5), r"momentum must be in \[0, 1\]"),
    ("ema_pairs", lambda: ema_update([torch.zeros(2)], [torch.zeros(3)], 0.9), r"target and online must pair"),
    (
        "loss_shape",
        lambda: jepa_loss(torch.zeros(4, 2, 8), torch.zeros(4, 3, 8)),
        r"target must have shape \[4, 2, 8\]",
    ),
    ("loss_dims", lambda: jepa_loss(torch.zeros(4, 8), torch.zeros(4, 8)), r"pred must have shape \[\*, \*, \*\]"),
    ("loss_empty", lambda: jepa_loss(torch.zeros(0, 2, 8), torch.zeros(0, 2, 8)), r"pred must be non-empty"),
    ("loss_nan", lambda: jepa_loss(torch.zeros(2, 2, 2), _nan(torch.zeros(2, 2, 2))), r"target holds 1 NaN"),
    ("param_groups_model", lambda: param_groups(torch.nn.Linear(2, 2)), r"model must be a TJEPA"),
    ("param_groups_wd", lambda: param_groups(_MODEL, -1.0), r"weight_decay must be in \[0, inf\)"),
    ("collapse_dims", lambda: collapse_stats(torch.zeros(4)), r"emb must be a \[N, tokens, h\] or \[N, d\] tensor"),
    ("collapse_rows", lambda: collapse_stats(torch.zeros(1, 4)), r"emb must have at least 2 rows"),
    ("collapse_nan", lambda: collapse_stats(_nan(torch.zeros(3, 4))), r"emb holds 1 NaN"),
    ("collapse_dtype", lambda: collapse_stats(torch.zeros(3, 4, dtype=torch.long)), r"emb must be floating point"),
]
