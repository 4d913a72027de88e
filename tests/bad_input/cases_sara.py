"""Bad input for SaRA's public entry points (collected by tests/test_bad_input.py)."""

import torch
from torch import nn
from torch.nn.utils import parametrize

from priorkit.adapters.sara import (
    SaRA,
    fraction_threshold,
    magnitude_ablation,
    magnitude_mask,
    nuclear_norm_term,
    paper_lr,
    reselect_mask,
)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _sara(**kw):
    kw = {"fraction": 0.2, "lr": 1e-3, **kw}
    return SaRA(_mlp(), **kw)


def _nan(shape=(4, 4), value=float("nan")):
    t = torch.randn(*shape)
    t.view(-1)[1] = value
    return t


def _nan_model():
    m = _mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    return m


def _stacked():
    m = _mlp()
    parametrize.register_parametrization(m[2], "weight", nn.Identity())
    return m


def _tied():
    m = _mlp()
    m.append(nn.Linear(8, 8))
    m.append(nn.Linear(8, 8))
    m[4].weight = m[3].weight
    return m


def _load(mutate):
    hook = _sara()
    state = hook.adapter_state_dict()
    mutate(state)
    _sara().load_adapter_state_dict(state)


def _drop(state, key):
    del state[key]


def _set(state, key, value):
    state[key] = value


CASES = [
    # the entry
    ("sara_model_type", lambda: SaRA("mlp", fraction=0.1, lr=1e-3), r"model must be a torch.nn.Module"),
    ("sara_neither_mode", lambda: SaRA(_mlp(), lr=1e-3), r"exactly one of threshold .* and fraction"),
    ("sara_both_modes", lambda: SaRA(_mlp(), threshold=0.1, fraction=0.1), r"exactly one of threshold"),
    ("sara_threshold_zero", lambda: SaRA(_mlp(), threshold=0.0), r"threshold must be in \(0, inf\)"),
    ("sara_threshold_negative", lambda: SaRA(_mlp(), threshold=-1e-3), r"threshold must be in \(0"),
    ("sara_threshold_nan", lambda: SaRA(_mlp(), threshold=float("nan")), r"threshold must be in"),
    ("sara_threshold_inf", lambda: SaRA(_mlp(), threshold=float("inf")), r"threshold must be a finite number"),
    ("sara_fraction_one", lambda: _sara(fraction=1.0), r"fraction must be in \(0, 1\)"),
    ("sara_fraction_zero", lambda: _sara(fraction=0.0), r"fraction must be in \(0, 1\)"),
    ("sara_fraction_nan", lambda: _sara(fraction=float("nan")), r"fraction must be in"),
    ("sara_fraction_scope", lambda: _sara(fraction_scope="layer"), r"fraction_scope must be one of"),
    ("sara_include", lambda: _sara(include="linear"), r"include must be one of \['all', 'weights'\]"),
    ("sara_rank_weight", lambda: _sara(rank_weight=-1.0), r"rank_weight must be in \[0, inf\)"),
    ("sara_rank_weight_inf", lambda: _sara(rank_weight=float("inf")), r"rank_weight must be a finite"),
    ("sara_rank_min_dim", lambda: _sara(rank_min_dim=-1), r"rank_min_dim must be an integer >= 0"),
    ("sara_rank_layers", lambda: _sara(rank_layers_per_step=0), r"rank_layers_per_step must be an integer >= 1"),
    ("sara_reselect_at", lambda: _sara(reselect_at=-5), r"reselect_at must be an integer >= 0"),
    ("sara_reselect_at_float", lambda: _sara(reselect_at=2.5), r"reselect_at must be an integer"),
    ("sara_lr_missing", lambda: SaRA(_mlp(), fraction=0.1), r"lr=None .* needs threshold"),
    ("sara_lr_negative", lambda: _sara(lr=-1e-3), r"lr must be in \(0, inf\)"),
    ("sara_betas_len", lambda: _sara(betas=(0.9,)), r"betas must be a pair"),
    ("sara_betas_range", lambda: _sara(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\)"),
    ("sara_eps", lambda: _sara(eps=-1.0), r"eps must be in \[0, inf\)"),
    ("sara_weight_decay", lambda: _sara(weight_decay=-0.1), r"weight_decay must be in \[0, inf\)"),
    ("sara_grad_clip", lambda: _sara(grad_clip=0.0), r"grad_clip must be in \(0, inf\)"),
    ("sara_seed", lambda: _sara(seed=-1), r"seed must be an integer >= 0"),
    ("sara_nan_weight", lambda: SaRA(_nan_model(), fraction=0.1, lr=1e-3), r"tensor 0.weight holds 1 NaN"),
    ("sara_stacked", lambda: SaRA(_stacked(), fraction=0.1, lr=1e-3), r"already parametrized: \['2.weight"),
    ("sara_tied", lambda: SaRA(_tied(), fraction=0.1, lr=1e-3), r"tensor 4.weight is the same tensor as 3.weight"),
    ("sara_no_tensor", lambda: SaRA(nn.ReLU(), fraction=0.1, lr=1e-3), r"include='all' selects no"),
    ("sara_no_weights", lambda: SaRA(nn.LayerNorm(3), fraction=0.1, lr=1e-3, include="weights"), r"include='weights'"),
    ("sara_recipe_epochs", lambda: _sara().recipe(0), r"epochs must be an integer >= 1"),
    ("sara_rank_draw_step", lambda: _sara().rank_draw(-1), r"step must be an integer >= 0"),
    ("sara_parametrization_name", lambda: _sara().parametrization("fc"), r"name must be one of \['0.weight'"),
    ("sara_load_type", lambda: _sara().load_adapter_state_dict([1, 2]), r"state must be a dict of tensors"),
    ("sara_load_missing", lambda: _load(lambda s: _drop(s, "0.weight.values")), r"missing \['0.weight.values'\]"),
    ("sara_load_extra", lambda: _load(lambda s: _set(s, "fc.index", torch.zeros(1))), r"unexpected \['fc.index'\]"),
    ("sara_load_shape", lambda: _load(lambda s: _set(s, "0.weight.shape", torch.tensor([6, 8]))), r"0.weight.shape"),
    (
        "sara_load_index_range",
        lambda: _load(lambda s: _set(s, "0.weight.index", s["0.weight.index"] + 1000)),
        r"integer indices in \[0, 47\]",
    ),
    (
        "sara_load_values_nan",
        lambda: _load(lambda s: s["2.weight.values"].fill_(float("nan"))),
        r"state\['2.weight.values'\] holds",
    ),
    ("sara_load_tau", lambda: _load(lambda s: _set(s, "0.bias.tau", torch.tensor(-1.0))), r"0.bias.tau'\] must be in"),
    # the functional core
    ("paper_lr_threshold", lambda: paper_lr(0.0), r"threshold must be in \(0, inf\)"),
    ("fraction_threshold_range", lambda: fraction_threshold(torch.randn(5), 1.5), r"fraction must be in \(0, 1\)"),
    ("fraction_threshold_empty", lambda: fraction_threshold(torch.zeros(0), 0.5), r"values must not be empty"),
    ("fraction_threshold_nan", lambda: fraction_threshold(_nan(), 0.5), r"values holds 1 NaN"),
    ("fraction_threshold_dtype", lambda: fraction_threshold(torch.arange(5), 0.5), r"values must be floating point"),
    ("magnitude_mask_threshold", lambda: magnitude_mask(torch.randn(3), -1.0), r"threshold must be in"),
    ("magnitude_mask_inf", lambda: magnitude_mask(_nan(value=float("inf")), 0.1), r"w holds 1 NaN or infinite"),
    ("magnitude_mask_type", lambda: magnitude_mask([0.1, 0.2], 0.1), r"w must be a torch.Tensor"),
    (
        "reselect_mask_shape",
        lambda: reselect_mask(torch.randn(3, 3), torch.ones(3, dtype=torch.bool), 0.1),
        r"mask must be a bool tensor of shape \[3, 3\]",
    ),
    ("reselect_mask_dtype", lambda: reselect_mask(torch.randn(3), torch.ones(3), 0.1), r"mask must be a bool tensor"),
    ("nuclear_norm_dims", lambda: nuclear_norm_term(torch.randn(2, 3, 4)), r"p_matrix must have 2 dimensions"),
    ("nuclear_norm_nan", lambda: nuclear_norm_term(_nan()), r"p_matrix holds 1 NaN"),
    ("nuclear_norm_empty", lambda: nuclear_norm_term(torch.zeros(0, 3)), r"p_matrix must not be empty"),
    ("ablation_frac", lambda: magnitude_ablation(_mlp(), 1.0), r"frac must be in \[0, 1\)"),
    ("ablation_frac_nan", lambda: magnitude_ablation(_mlp(), float("nan")), r"frac must be in"),
    ("ablation_scope", lambda: magnitude_ablation(_mlp(), 0.1, scope="layer"), r"scope must be one of"),
    ("ablation_include", lambda: magnitude_ablation(_mlp(), 0.1, include="x"), r"include must be one of"),
    ("ablation_model", lambda: magnitude_ablation(None, 0.1), r"model must be a torch.nn.Module"),
    ("ablation_nan", lambda: magnitude_ablation(_nan_model(), 0.1), r"tensor 0.weight holds 1 NaN"),
    ("ablation_stacked", lambda: magnitude_ablation(_stacked(), 0.1), r"magnitude_ablation: tensor\(s\) already"),
]
