"""Bad input for the intrinsic-dimension (SAID / DID) entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.adapters.said import (
    SubspaceModel,
    d90_from_curve,
    dense_projection,
    fastfood_params,
    fastfood_project,
    fit_subspace,
    fwht,
    occam_bound,
    search_d90,
    tensor_seed,
)
from priorkit.data import IndexedTensorDataset
from priorkit.models import MLP


def _mlp():
    torch.manual_seed(0)
    return MLP(6, (16,), 3)


def _sub(d=12, *args, **kwargs):
    kwargs.setdefault("short_tensors", "pad")
    return SubspaceModel(_mlp(), d, *args, **kwargs)


def _data(n=8):
    return IndexedTensorDataset(torch.randn(n, 6), torch.arange(n) % 3)


def _ff(d=8):
    return fastfood_params(100, d, 0, "w")


def _nan_curve():
    return d90_from_curve({4: float("nan")}, 1.0)


CASES = [
    ("said_mode", lambda: _sub(12, "lora"), r"mode must be one of \['said', 'did'\]"),
    ("said_projection", lambda: _sub(12, "did", "sparse"), r"projection must be one of \['fastfood', 'dense'\]"),
    ("said_d_zero", lambda: _sub(0), r"d must be an integer >= 1"),
    ("said_d_float", lambda: _sub(12.5), r"d must be an integer >= 1"),
    ("said_d_not_above_m", lambda: _sub(2, "said"), r"d=2 must exceed m=2 per-layer scales"),
    ("said_d_above_ll", lambda: SubspaceModel(_mlp(), 12, "did"), r"tensor 'head.bias' has 3 entries .* d=12 > LL"),
    ("said_head_too_big", lambda: _sub(40, train_head_directly=True), r"d=40 must exceed .*51 head parameters"),
    ("said_seed", lambda: _sub(12, "said", "fastfood", "0"), r"seed must be an integer"),
    ("said_groups", lambda: _sub(12, groups="block"), r"groups must be one of \['module', 'tensor'\]"),
    ("said_short_tensors", lambda: _sub(12, short_tensors="wrap"), r"short_tensors must be one of"),
    ("said_dense_norm", lambda: _sub(12, "did", "dense", dense_norm="l1"), r"dense_norm must be one of"),
    ("said_exclude_str", lambda: _sub(12, exclude="head"), r"exclude must be a sequence of parameter-name prefixes"),
    ("said_exclude_unknown", lambda: _sub(12, exclude=("neck",)), r"exclude entry 'neck' matches no parameter"),
    ("said_exclude_all", lambda: _sub(12, exclude=("body", "head")), r"no parameter is left to reparameterise"),
    ("said_head_unknown", lambda: _sub(80, train_head_directly=True, head="fc"), r"head='fc' matches no parameter"),
    ("said_head_flag", lambda: _sub(80, train_head_directly="yes"), r"train_head_directly must be True or False"),
    ("said_model", lambda: SubspaceModel(lambda x: x, 12), r"model must be a torch.nn.Module"),
    ("said_model_empty", lambda: SubspaceModel(torch.nn.ReLU(), 12), r"model \(ReLU\) has no parameters"),
    ("fwht_length", lambda: fwht(torch.randn(2, 6)), r"x's last axis must have a power-of-two length"),
    ("fwht_empty", lambda: fwht(torch.randn(2, 0)), r"x's last axis must have a power-of-two length"),
    ("fwht_dtype", lambda: fwht(torch.ones(4, dtype=torch.long)), r"x must be floating point"),
    ("fwht_scalar", lambda: fwht(torch.tensor(1.0)), r"x must be a tensor with at least one axis"),
    ("fastfood_numel", lambda: fastfood_params(0, 4, 0, "w"), r"numel must be an integer >= 1"),
    ("fastfood_d", lambda: fastfood_params(10, -1, 0, "w"), r"d must be an integer >= 1"),
    ("fastfood_short", lambda: fastfood_params(10, 40, 0, "b"), r"tensor 'b' has 10 entries"),
    ("fastfood_z_shape", lambda: fastfood_project(torch.randn(5), _ff()), r"z must be a vector of length d=8"),
    ("fastfood_z_dtype", lambda: fastfood_project(torch.ones(8, dtype=torch.long), _ff()), r"z must be floating"),
    ("dense_too_big", lambda: dense_projection([200_000], ["w"], 2000, 0), r"projection='dense' would hold"),
    ("dense_lengths", lambda: dense_projection([10, 20], ["w"], 4, 0), r"numels and names must be equally long"),
    ("tensor_seed_type", lambda: tensor_seed(1.5, "w"), r"seed must be an integer"),
    ("occam_error", lambda: occam_bound(1.5, 10, 100), r"train_error must be in \[0, 1\]"),
    ("occam_error_nan", lambda: occam_bound(float("nan"), 10, 100), r"train_error must be in"),
    ("occam_d", lambda: occam_bound(0.1, 0, 100), r"d must be an integer >= 1"),
    ("occam_n", lambda: occam_bound(0.1, 10, 0), r"n must be an integer >= 1"),
    ("occam_delta", lambda: occam_bound(0.1, 10, 100, delta=1.0), r"delta must be in \(0, 1\)"),
    ("d90_empty", lambda: d90_from_curve({}, 1.0), r"curve must hold at least one"),
    ("d90_nan", _nan_curve, r"curve's metric at d=4 must be a finite number"),
    ("d90_fraction", lambda: d90_from_curve({4: 0.5}, 1.0, fraction=1.5), r"fraction must be in \(0, 1\]"),
    ("d90_full_inf", lambda: d90_from_curve({4: 0.5}, float("inf")), r"full_metric must be a finite number"),
    ("search_grid_empty", lambda: search_d90(lambda d: 1.0, [], 1.0), r"grid must be a non-empty sequence"),
    ("search_grid_order", lambda: search_d90(lambda d: 1.0, [8, 4], 1.0), r"grid must be strictly increasing"),
    ("search_grid_zero", lambda: search_d90(lambda d: 1.0, [0, 4], 1.0), r"grid's d must be an integer >= 1"),
    ("search_eval_nan", lambda: search_d90(lambda d: float("nan"), [4], 1.0), r"evaluate\(4\) must be a finite number"),
    ("fit_lrs_empty", lambda: fit_subspace(_mlp(), 12, _data(), lrs=()), r"lrs must be a non-empty sequence"),
    ("fit_lrs_negative", lambda: fit_subspace(_mlp(), 12, _data(), lrs=(-1e-3,)), r"lrs entry must be in \(0, inf\)"),
    ("fit_no_val", lambda: fit_subspace(_mlp(), 12, _data(), lrs=(1e-3, 1e-2)), r"val is None but lrs holds several"),
    ("fit_config", lambda: fit_subspace(_mlp(), 12, _data(), lrs=(1e-3,), config={}), r"config must be a TrainConfig"),
]
