"""Bad input for SoRA's public entry points (collected by tests/test_bad_input.py)."""

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from priorkit.adapters.sora import (
    SoraConfig,
    SoraGateAdam,
    SoraHook,
    gate_l1,
    gate_threshold,
    memorization_generalization,
    prune_gated_factors,
    soft_threshold,
    sora_ranks,
    sora_recipe,
    sora_to_lora,
    sparsify_lambdas,
    sparsify_report,
)
from priorkit.models import MLP

NAN, INF = float("nan"), float("inf")


def _cfg(**kw):
    return SoraConfig(**{"r": 2, "target_modules": ["head"], **kw})


def _model(**kw):
    torch.manual_seed(0)
    return get_peft_model(MLP(8, (16,), 4), _cfg(**kw))


def _closed():
    m = _model()
    with torch.no_grad():
        m.base_model.model.head.lora_gate["default"].zero_()
    return m


def _merged():
    m = _model()
    m.merge_adapter()
    return m


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = NAN
    return t


def _param():
    return [nn.Parameter(torch.ones(3))]


CASES = [
    # SoraConfig (the entry)
    ("config_gate_init", lambda: _cfg(gate_init="zeros"), r"gate_init must be one of \['normal', 'ones'\]"),
    ("config_gate_std", lambda: _cfg(gate_std=0.0), r"gate_std must be in \(0, inf\)"),
    ("config_lambda1", lambda: _cfg(lambda1=-1.0), r"lambda1 must be in \[0, inf\)"),
    ("config_lambda1_nan", lambda: _cfg(lambda1=NAN), r"lambda1 must be in"),
    ("config_lambda2", lambda: _cfg(lambda2=-1e-3), r"lambda2 must be in \[0, inf\)"),
    ("config_lambda2_inf", lambda: _cfg(lambda2=INF), r"lambda2 must be a finite number"),
    ("config_threshold_mode", lambda: _cfg(threshold_mode="lr"), r"threshold_mode must be one of"),
    ("config_official_threshold", lambda: _cfg(official_threshold="yes"), r"official_threshold must be True or"),
    ("config_r", lambda: _cfg(r=0), r"r must be an integer >= 1"),
    ("config_init", lambda: _cfg(init_lora_weights="pissa"), r"init_lora_weights must be one of"),
    ("config_dora", lambda: _cfg(use_dora=True), r"use_dora"),
    ("config_rank_too_large", lambda: _model(r=5), r"r=5 exceeds min\(in, out\) = 4"),
    (
        "config_conv_target",
        lambda: get_peft_model(nn.Sequential(nn.Conv2d(3, 4, 3)), _cfg(target_modules=["0"])),
        r"target module '0' is Conv2d",
    ),
    # functional core
    ("soft_threshold_xi", lambda: soft_threshold(torch.ones(3), -0.1), r"xi must be in \[0, inf\)"),
    ("soft_threshold_xi_inf", lambda: soft_threshold(torch.ones(3), INF), r"xi must be a finite number"),
    ("soft_threshold_nan", lambda: soft_threshold(_nan(torch.ones(3)), 0.1), r"g holds 1 NaN"),
    ("soft_threshold_int", lambda: soft_threshold(torch.ones(3, dtype=torch.long), 0.1), r"g must be floating"),
    ("soft_threshold_list", lambda: soft_threshold([1.0, 2.0], 0.1), r"g must be a torch.Tensor"),
    ("gate_threshold_mode", lambda: gate_threshold(1e-3, 1e-3, "exact"), r"threshold_mode must be one of"),
    ("gate_threshold_lambda2", lambda: gate_threshold(-1.0, 1e-3), r"lambda2 must be in"),
    ("gate_threshold_lr", lambda: gate_threshold(1e-3, NAN, "paper"), r"lr must be in"),
    ("gate_l1_empty", lambda: gate_l1([]), r"gates must be a non-empty sequence"),
    ("gate_l1_tensor", lambda: gate_l1(torch.ones(3)), r"gates must be a non-empty sequence"),
    ("gate_l1_nan", lambda: gate_l1([torch.ones(2), _nan(torch.ones(2))]), r"gates\[1\] holds 1 NaN"),
    (
        "prune_shapes",
        lambda: prune_gated_factors(torch.ones(3, 5), torch.ones(4, 2), torch.ones(3)),
        r"shapes must be lora_a \[r, n\], lora_b \[m, r\], gate \[r\]",
    ),
    ("prune_gate_shape", lambda: prune_gated_factors(torch.ones(3, 5), torch.ones(4, 3), torch.ones(2)), r"gate \[2\]"),
    ("prune_1d", lambda: prune_gated_factors(torch.ones(3), torch.ones(4, 3), torch.ones(3)), r"lora_a must be a 2-D"),
    (
        "prune_nan",
        lambda: prune_gated_factors(torch.ones(3, 5), _nan(torch.ones(4, 3)), torch.ones(3)),
        r"lora_b holds 1 NaN",
    ),
    ("sparsify_num", lambda: sparsify_lambdas(0.0, 1e-3, 1), r"num must be an integer >= 2"),
    ("sparsify_spacing", lambda: sparsify_lambdas(0.0, 1e-3, 3, "cosine"), r"spacing must be one of"),
    ("sparsify_order", lambda: sparsify_lambdas(1e-3, 1e-4, 3), r"stop must be >= start"),
    ("sparsify_exp_zero", lambda: sparsify_lambdas(0.0, 1e-3, 3, "exp_linear"), r"start must be > 0"),
    ("memorization_zero", lambda: memorization_generalization(0.5, 0.5, 0.0, 0.5), r"best_train must be non-zero"),
    ("memorization_nan", lambda: memorization_generalization(NAN, 0.5, 1.0, 0.5), r"train must be in"),
    # optimizer and hook
    ("gate_adam_lr", lambda: SoraGateAdam(_param(), lr=-1.0), r"lr must be in \[0, inf\)"),
    ("gate_adam_mode", lambda: SoraGateAdam(_param(), threshold_mode="x"), r"threshold_mode must be one of"),
    ("gate_adam_eps", lambda: SoraGateAdam(_param(), eps=0.0), r"eps must be in \(0, inf\)"),
    ("gate_adam_lambda2", lambda: SoraGateAdam(_param(), lambda2=NAN), r"lambda2 must be in"),
    ("hook_lambda1", lambda: SoraHook(lambda1=-1.0), r"lambda1 must be in \[0, inf\)"),
    ("hook_lambda1_inf", lambda: SoraHook(lambda1=INF), r"lambda1 must be a finite number"),
    ("hook_scale", lambda: SoraHook(gate_lr_scale=0.0), r"gate_lr_scale must be in \(0, inf\)"),
    ("hook_official", lambda: SoraHook(official_threshold=1), r"official_threshold must be True or False"),
    ("hook_set_lambda2", lambda: SoraHook().set_lambda2(-1.0), r"lambda2 must be in"),
    ("hook_from_config", lambda: SoraHook.from_config(LoraConfig(r=2)), r"config must be a SoraConfig"),
    # recipe builder
    ("recipe_model", lambda: sora_recipe("model", 10, 2), r"model must be a torch.nn.Module"),
    ("recipe_epochs", lambda: sora_recipe(_model(), 10, 2, epochs=0), r"epochs must be an integer >= 1"),
    ("recipe_samples", lambda: sora_recipe(_model(), 0, 2), r"num_samples must be an integer >= 1"),
    ("recipe_lr", lambda: sora_recipe(_model(), 10, 2, lr=0.0), r"lr must be > 0"),
    ("recipe_warmup", lambda: sora_recipe(_model(), 10, 2, warmup_ratio=1.0), r"warmup_ratio must be in \[0, 1\)"),
    ("recipe_clip", lambda: sora_recipe(_model(), 10, 2, max_grad_norm=0.0), r"max_grad_norm must be in \(0, inf\)"),
    ("recipe_hook", lambda: sora_recipe(_model(), 10, 2, hook=object()), r"hook must be a SoraHook"),
    ("recipe_evaluate", lambda: sora_recipe(_model(), 10, 2, evaluate=3), r"evaluate must be a callable"),
    (
        "recipe_sparsify_needs_evaluate",
        lambda: sora_recipe(_model(), 10, 2, hook=SoraHook(), sparsify_stop=1e-2),
        r"sparsify_stop needs hook .* and evaluate",
    ),
    (
        "recipe_sparsify_epochs",
        lambda: sora_recipe(
            _model(), 10, 2, hook=SoraHook(), evaluate=lambda m: {}, sparsify_stop=1e-2, sparsify_epochs=0
        ),
        r"sparsify_epochs must be an integer >= 1",
    ),  # fmt: skip
    ("recipe_frozen", lambda: sora_recipe(MLP(8, (16,), 4).requires_grad_(False), 10, 2), r"no trainable parameters"),
    # model utilities and export
    ("ranks_no_sora", lambda: sora_ranks(MLP(8, (16,), 4)), r"model holds no SoRA layers"),
    ("ranks_not_module", lambda: sora_ranks("model"), r"model must be a torch.nn.Module"),
    ("export_not_peft", lambda: sora_to_lora(MLP(8, (16,), 4)), r"model must be a peft.PeftModel"),
    (
        "export_plain_lora",
        lambda: sora_to_lora(get_peft_model(MLP(8, (16,), 4), LoraConfig(r=2, target_modules=["head"]))),
        r"is a LoraConfig, not a SoraConfig",
    ),
    ("export_adapter", lambda: sora_to_lora(_model(), adapter_name="other"), r"adapter_name must be one of"),
    ("export_all_closed", lambda: sora_to_lora(_closed()), r"every gate of the SoRA adapter is zero"),
    ("export_merged", lambda: sora_to_lora(_merged()), r"merged into the base weights"),
    ("report_empty", lambda: sparsify_report([{"epoch": 0.0, "ce": 1.0}]), r"history holds no SoRA stage entries"),
    ("report_type", lambda: sparsify_report({"epoch": 0.0}), r"history must be the list of records"),
]
