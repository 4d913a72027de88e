"""Bad input for SORSA's public entry points (collected by tests/test_bad_input.py)."""

from types import SimpleNamespace

import torch
from peft import get_peft_model
from torch import nn

from priorkit.adapters.sorsa import (
    SorsaConfig,
    SorsaHook,
    orthonormal_reg,
    orthonormality,
    sorsa_delta,
    sorsa_factors,
    svd_init,
)


def _w(m=6, n=4):
    return torch.randn(m, n, generator=torch.Generator().manual_seed(0))


def _nan(t, value=float("nan")):
    t = t.clone()
    t[1, 1] = value
    return t


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Conv1d(1, 1, 1))


def _wrap(**kw):
    return get_peft_model(_net(), SorsaConfig(**{"r": 2, "target_modules": ["0"], **kw}))


def _hook_on(model):
    SorsaHook().on_fit_start(SimpleNamespace(model=model))


CASES = [
    # config
    ("config_r_zero", lambda: SorsaConfig(r=0, target_modules=["0"]), r"r must be an integer >= 1"),
    ("config_alpha", lambda: SorsaConfig(r=2, target_modules=["0"], lora_alpha=-1.0), r"lora_alpha must be in \(0"),
    ("config_alpha_nan", lambda: SorsaConfig(r=2, target_modules=["0"], lora_alpha=float("nan")), r"lora_alpha"),
    ("config_dropout", lambda: SorsaConfig(r=2, target_modules=["0"], lora_dropout=1.0), r"lora_dropout must be in"),
    ("config_gamma_neg", lambda: SorsaConfig(r=2, target_modules=["0"], gamma=-1e-3), r"gamma must be in \[0, inf\)"),
    ("config_gamma_nan", lambda: SorsaConfig(r=2, target_modules=["0"], gamma=float("nan")), r"gamma must be in"),
    ("config_gamma_inf", lambda: SorsaConfig(r=2, target_modules=["0"], gamma=float("inf")), r"gamma must be in"),
    ("config_reg_mode", lambda: SorsaConfig(r=2, target_modules=["0"], reg_mode="adam"), r"reg_mode must be one of"),
    ("config_reg_eps", lambda: SorsaConfig(r=2, target_modules=["0"], reg_eps=-1.0), r"reg_eps must be in"),
    (
        "config_lr_scaled_decoupled",
        lambda: SorsaConfig(r=2, target_modules=["0"], reg_mode="decoupled", reg_lr_scaled=True),
        r"reg_lr_scaled=True applies to reg_mode='loss' only",
    ),
    ("config_init", lambda: SorsaConfig(r=2, target_modules=["0"], init_lora_weights="pissa"), r"init_lora_weights"),
    ("config_dora", lambda: SorsaConfig(r=2, target_modules=["0"], use_dora=True), r"use_dora must be False"),
    ("config_rslora", lambda: SorsaConfig(r=2, target_modules=["0"], use_rslora=True), r"use_rslora must be False"),
    ("config_bias", lambda: SorsaConfig(r=2, target_modules=["0"], lora_bias=True), r"lora_bias must be False"),
    ("config_params", lambda: SorsaConfig(r=2, target_parameters=["0.weight"]), r"target_parameters must be empty"),
    # get_peft_model with the config
    ("peft_rank_too_large", lambda: _wrap(r=4), r"r must be <= min\(out_features, in_features\) = 3"),
    ("peft_rank_pattern", lambda: _wrap(rank_pattern={"0": 5}), r"r must be <= min\(out_features, in_features\)"),
    ("peft_conv_target", lambda: _wrap(target_modules=["2"]), r"torch.nn.Linear layers only.*Conv1d"),
    ("peft_adapter_names", lambda: _wrap().eval()(torch.zeros(2, 5), adapter_names=["default"] * 2), r"adapter_names"),
    # functional core
    ("svd_init_rank", lambda: svd_init(_w(), 5), r"r must be <= min\(out_features, in_features\) = 4"),
    ("svd_init_rank_zero", lambda: svd_init(_w(), 0), r"r must be an integer >= 1"),
    ("svd_init_shape", lambda: svd_init(torch.randn(6), 2), r"weight must be a non-empty 2-D matrix"),
    ("svd_init_empty", lambda: svd_init(torch.zeros(0, 4), 1), r"weight must be a non-empty 2-D matrix"),
    ("svd_init_nan", lambda: svd_init(_nan(_w()), 2), r"weight holds 1 NaN"),
    ("svd_init_inf", lambda: svd_init(_nan(_w(), float("inf")), 2), r"weight holds 1 NaN or infinite"),
    ("svd_init_int", lambda: svd_init(torch.ones(4, 4, dtype=torch.long), 2), r"weight must be float32"),
    ("svd_init_scaling", lambda: svd_init(_w(), 2, scaling=0.0), r"scaling must be in \(0, inf\)"),
    ("delta_sigma_shape", lambda: sorsa_delta(_w(6, 2), torch.ones(3), _w(2, 4)), r"sigma must have shape \[2\]"),
    ("delta_vh_shape", lambda: sorsa_delta(_w(6, 2), torch.ones(2), _w(3, 4)), r"vh must have shape \[2, n\]"),
    ("delta_nan", lambda: sorsa_delta(_nan(_w(6, 2)), torch.ones(2), _w(2, 4)), r"u holds 1 NaN"),
    ("orth_too_many_columns", lambda: orthonormality(_w(3, 5)), r"x has 5 columns of length 3"),
    ("orth_rows", lambda: orthonormality(_w(6, 4), rows=True), r"x has 6 rows of length 4"),
    ("orth_eps", lambda: orthonormality(_w(), eps=-1.0), r"eps must be in \[0, inf\)"),
    ("reg_empty", lambda: orthonormal_reg([]), r"factors must be a non-empty sequence"),
    ("reg_not_pair", lambda: orthonormal_reg([_w()]), r"factors\[0\] must be a \(U_p, V_p\^T\) pair"),
    ("reg_mismatch", lambda: orthonormal_reg([(_w(6, 2), _w(3, 6))]), r"factors\[0\]: U_p must be \[m, r\]"),
    ("reg_nan", lambda: orthonormal_reg([(_w(6, 2), _nan(_w(2, 6)))]), r"factors\[0\] V_p\^T holds 1 NaN"),
    ("factors_model", lambda: sorsa_factors("model"), r"model must be a torch.nn.Module"),
    # hook
    ("hook_gamma", lambda: SorsaHook(gamma=-0.1), r"gamma must be in \[0, inf\)"),
    ("hook_gamma_nan", lambda: SorsaHook(gamma=float("nan")), r"gamma must be in"),
    ("hook_mode", lambda: SorsaHook(reg_mode="sgd"), r"reg_mode must be one of \['loss', 'decoupled'\]"),
    ("hook_eps", lambda: SorsaHook(eps=float("inf")), r"eps must be in \[0, inf\)"),
    ("hook_lr_scaled", lambda: SorsaHook(reg_mode="decoupled", lr_scaled=True), r"lr_scaled=True applies"),
    ("hook_from_config", lambda: SorsaHook.from_config({"gamma": 1e-3}), r"config must be a SorsaConfig"),
    ("hook_no_sorsa_layer", lambda: _hook_on(_net()), r"no active SORSA adapter"),
]
