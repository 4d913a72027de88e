"""Bad input for PGDNM's public entry points (collected by tests/test_bad_input.py)."""

from types import SimpleNamespace

import torch
from torch import nn

from priorkit.regularizers.pgdnm import (
    PGDNM,
    MaskPolicy,
    beta_concentrations,
    beta_log_prob,
    gaussian_blur,
    mask_log_prob,
    mask_to_image,
    policy_surrogate,
    sample_mask,
    update_base,
)
from priorkit.train import Batch


def _nan(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[1] = value
    return t


def _state(phase="heat"):
    return SimpleNamespace(
        step=0, config=SimpleNamespace(seed=0), phase=SimpleNamespace(name=phase, epochs=1), phase_epoch=0,
        device=torch.device("cpu"), log=lambda **kw: None,
    )  # fmt: skip


def _batch(x, n=None):
    n = x.shape[0] if n is None else n
    return Batch(x=x, y=torch.zeros(n, dtype=torch.long), index=torch.arange(n))


def _transform(x):
    torch.manual_seed(0)
    return PGDNM(1, grid=4).transform_batch(_state(), _batch(x))


def _extra(output):
    torch.manual_seed(0)
    hook = PGDNM(1, grid=4)
    b = hook.transform_batch(_state(), _batch(torch.rand(4, 1, 8, 8)))
    b.output = output
    return hook.extra_loss(_state(), b)


C = torch.full((2, 4), 2.0)
M = torch.full((2, 4), 0.5)

CASES = [
    # the hook
    ("hook_in_channels", lambda: PGDNM(0), r"in_channels must be an integer >= 1"),
    ("hook_grid", lambda: PGDNM(1, grid=0), r"grid must be an integer >= 1"),
    ("hook_kernel_even", lambda: PGDNM(1, kernel=4), r"kernel must be an odd integer"),
    ("hook_sigma", lambda: PGDNM(1, sigma=0.0), r"sigma must be in \(0, inf\)"),
    ("hook_upsample", lambda: PGDNM(1, upsample="linear"), r"upsample must be one of \['nearest'"),
    ("hook_mix", lambda: PGDNM(1, mix=1.5), r"mix must be in \[0, 1\]"),
    ("hook_base_momentum", lambda: PGDNM(1, base_momentum=-0.1), r"base_momentum must be in \[0, 1\]"),
    ("hook_conc_clamp_order", lambda: PGDNM(1, conc_clamp=(1.0, 0.1)), r"conc_clamp must satisfy 0 < low < high"),
    ("hook_conc_clamp_type", lambda: PGDNM(1, conc_clamp=3.0), r"conc_clamp must be a pair"),
    ("hook_reduce", lambda: PGDNM(1, logprob_reduce="mean"), r"logprob_reduce must be one of \['logsumexp', 'sum'\]"),
    ("hook_baseline", lambda: PGDNM(1, baseline="mean"), r"baseline must be one of \['none', 'ema'\]"),
    ("hook_baseline_momentum", lambda: PGDNM(1, baseline_momentum=1.0), r"baseline_momentum must be in \[0, 1\)"),
    ("hook_classifier_scale", lambda: PGDNM(1, classifier_scale="yes"), r"classifier_scale must be True or False"),
    ("hook_policy_lr", lambda: PGDNM(1, policy_lr=0.0), r"policy_lr must be in \(0, inf\)"),
    ("hook_policy_lr_min", lambda: PGDNM(1, policy_lr=1e-3, policy_lr_min=1e-2), r"policy_lr_min must be in \[0, "),
    ("hook_heat_phase", lambda: PGDNM(1, heat_phase=""), r"heat_phase must be a phase name"),
    ("hook_features_type", lambda: PGDNM(1, features="resnet10t", feature_dim=512), r"features must be a torch.nn"),
    ("hook_feature_dim_alone", lambda: PGDNM(1, feature_dim=512), r"feature_dim is only given together with"),
    ("hook_feature_dim", lambda: PGDNM(1, features=nn.Flatten(), feature_dim=0), r"feature_dim must be an integer"),
    ("hook_x_channels", lambda: _transform(torch.rand(4, 3, 8, 8)), r"batch.x must be float images \[batch, 1, H, W\]"),
    ("hook_x_dims", lambda: _transform(torch.rand(4, 64)), r"batch.x must be float images"),
    ("hook_x_int", lambda: _transform(torch.ones(4, 1, 8, 8, dtype=torch.long)), r"batch.x must be float images"),
    ("hook_x_nan", lambda: _transform(_nan(torch.rand(4, 1, 8, 8))), r"batch.x holds NaN"),
    ("hook_x_small", lambda: _transform(torch.rand(4, 1, 1, 1)), r"kernel \(3\) needs images larger than 1 pixels"),
    ("hook_single_image", lambda: _transform(torch.rand(1, 1, 8, 8)), r"BatchNorm needs a global batch of at least 2"),
    (
        "hook_bad_features",
        lambda: PGDNM(1, features=nn.Flatten(), feature_dim=10).transform_batch(
            _state(), _batch(torch.rand(4, 1, 8, 8))
        ),
        r"features must give \[batch, 10\] \(feature_dim\), got \[4, 64\]",
    ),
    ("hook_output_shape", lambda: _extra(torch.randn(3, 5)), r"batch.output must be logits \[batch=4, classes\]"),
    ("hook_output_type", lambda: _extra((torch.randn(4, 5),)), r"batch.output must be logits"),
    (
        "hook_no_heat_phase",
        lambda: PGDNM(1).on_fit_start(SimpleNamespace(recipe=SimpleNamespace(phases=[SimpleNamespace(name="fit")]))),
        r"phase named 'heat' \(heat_phase\) but the recipe's phases are \['fit'\]",
    ),
    # the recipe
    ("recipe_heat_epochs", lambda: PGDNM.recipe(-1, 10), r"heat_epochs must be an integer >= 0"),
    ("recipe_finetune_epochs", lambda: PGDNM.recipe(10, 1.5), r"finetune_epochs must be an integer >= 0"),
    ("recipe_lr", lambda: PGDNM.recipe(10, 10, lr=0.0), r"lr must be in \(0, inf\)"),
    ("recipe_finetune_lr", lambda: PGDNM.recipe(10, 10, finetune_lr=-1.0), r"finetune_lr must be in \(0, inf\)"),
    ("recipe_momentum", lambda: PGDNM.recipe(10, 10, momentum=1.0), r"momentum must be in \[0, 1\)"),
    ("recipe_weight_decay", lambda: PGDNM.recipe(10, 10, weight_decay=-1e-4), r"weight_decay must be in \[0, inf\)"),
    ("recipe_step_size", lambda: PGDNM.recipe(10, 10, step_size=0), r"step_size must be an integer >= 1"),
    ("recipe_gamma", lambda: PGDNM.recipe(10, 10, gamma=0.0), r"gamma must be in \(0, 1\]"),
    ("recipe_warmup", lambda: PGDNM.recipe(10, 10, warmup_epochs=-1), r"warmup_epochs must be an integer >= 0"),
    ("recipe_warmup_start", lambda: PGDNM.recipe(10, 10, warmup_start=0.0), r"warmup_start must be in \(0, 1\]"),
    ("recipe_same_names", lambda: PGDNM.recipe(1, 1, finetune_phase="heat"), r"heat_phase and finetune_phase must"),
    # the policy
    ("policy_pool", lambda: MaskPolicy(1, 4, pool=0), r"pool must be an integer >= 1"),
    ("policy_width", lambda: MaskPolicy(1, 4, width=0), r"width must be an integer >= 1"),
    # functional core
    ("blur_shape", lambda: gaussian_blur(torch.rand(8, 8), 3, 1.0), r"x must have shape \[\*, \*, \*, \*\]"),
    ("blur_kernel", lambda: gaussian_blur(torch.rand(1, 1, 8, 8), 2, 1.0), r"kernel must be an odd integer"),
    ("blur_too_large", lambda: gaussian_blur(torch.rand(1, 1, 4, 4), 9, 1.0), r"kernel \(9\) needs images larger"),
    ("mask_cells_shape", lambda: mask_to_image(torch.rand(16), (8, 8), kernel=3, sigma=1.0), r"cells must have shape"),
    ("mask_cells_square", lambda: mask_to_image(torch.rand(2, 15), (8, 8), kernel=3, sigma=1.0), r"G\*G columns"),
    ("mask_size", lambda: mask_to_image(torch.rand(2, 16), (8,), kernel=3, sigma=1.0), r"size must be \(H, W\)"),
    ("mask_size_zero", lambda: mask_to_image(torch.rand(2, 16), (0, 8), kernel=3, sigma=1.0), r"size must be \(H, W\)"),
    (
        "mask_upsample",
        lambda: mask_to_image(torch.rand(2, 16), (8, 8), kernel=3, sigma=1.0, upsample="cubic"),
        r"upsample must be one of",
    ),
    ("conc_shape", lambda: beta_concentrations(C, C[:1], C[:1], C[:1]), r"b must have shape \[2, 4\]"),
    ("conc_base_shape", lambda: beta_concentrations(C, C, C, C[:1]), r"base_a must have shape \[1, 4\]"),
    ("conc_nan", lambda: beta_concentrations(_nan(C), C, C[:1], C[:1]), r"a holds 1 NaN"),
    ("conc_empty", lambda: beta_concentrations(C[:0], C[:0], C[:1], C[:1]), r"a must be a non-empty batch"),
    ("conc_mix", lambda: beta_concentrations(C, C, C[:1], C[:1], mix=-0.1), r"mix must be in \[0, 1\]"),
    ("conc_clamp", lambda: beta_concentrations(C, C, C[:1], C[:1], clamp=(0.0, 1.0)), r"conc_clamp must satisfy"),
    ("base_shape", lambda: update_base(C, C), r"base must have shape \[1, 4\]"),
    ("base_momentum", lambda: update_base(C[:1], C, momentum=2.0), r"momentum must be in \[0, 1\]"),
    ("base_nan", lambda: update_base(C[:1], _nan(C, float("inf"))), r"head holds 1 NaN or infinite"),
    ("sample_nonpositive", lambda: sample_mask(C, C * 0, seed=0), r"c0 must hold concentrations > 0"),
    ("sample_shape", lambda: sample_mask(C, C[:, :2], seed=0), r"c0 must have shape \[2, 4\]"),
    ("sample_seed", lambda: sample_mask(C, C, seed=1.5), r"seed must be an integer"),
    ("sample_nan", lambda: sample_mask(_nan(C), C, seed=0), r"c1 holds 1 NaN"),
    ("logprob_range", lambda: beta_log_prob(M * 2, C, C), r"m must lie in \(0, 1\)"),
    ("logprob_shape", lambda: beta_log_prob(M, C[:1], C), r"c1 must have shape \[2, 4\]"),
    ("logprob_int", lambda: beta_log_prob(torch.ones(2, 4, dtype=torch.long), C, C), r"m must be floating point"),
    ("logprob_conc", lambda: beta_log_prob(M, -C, C), r"c1 must hold concentrations > 0"),
    ("logprob_reduce", lambda: mask_log_prob(M, C, C, reduce="max"), r"logprob_reduce must be one of"),
    ("logprob_dims", lambda: mask_log_prob(M[0], C[0], C[0]), r"m must have shape \[\*, \*\]"),
    ("surrogate_shape", lambda: policy_surrogate(torch.rand(2, 3), 1.0), r"log_prob must have shape \[\*\]"),
    ("surrogate_empty", lambda: policy_surrogate(torch.rand(0), 1.0), r"log_prob must be a non-empty batch"),
    ("surrogate_ce", lambda: policy_surrogate(torch.rand(3), torch.rand(3)), r"ce must be a finite scalar"),
    ("surrogate_ce_nan", lambda: policy_surrogate(torch.rand(3), float("nan")), r"ce must be a finite scalar"),
    ("surrogate_baseline", lambda: policy_surrogate(torch.rand(3), 1.0, baseline=float("nan")), r"baseline must be"),
]
