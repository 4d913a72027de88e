"""Bad input for STN's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.regularizers.stn import (
    STN,
    Hyper,
    HyperSpace,
    StnConv2d,
    StnLinear,
    StnMLP,
    hparam_values,
    per_example_dropout,
    perturb,
    perturbation_entropy,
    stn_forward,
    stn_linear,
    stretched_logit,
)
from priorkit.train import Batch


def _space():
    return HyperSpace([Hyper("d1"), Hyper("noise", "input_noise")])


def _hook(**kw):
    args = {"val_x": torch.rand(8, 4), "val_y": torch.zeros(8, dtype=torch.long)}
    args.update(kw)
    return STN(_space(), args.pop("val_x"), args.pop("val_y"), **args)


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _layer_call(x, h):
    torch.manual_seed(0)
    return StnLinear(4, 3, 2)(x, h)


def _mlp_call(x, h=None):
    return StnMLP(_space(), 4, (5,), 3, dropout=("d1",))(x, h)


def _stn_linear_v():
    layer = StnLinear(4, 3, 2)
    return stn_linear(torch.rand(2, 4), torch.rand(2, 2), layer.elem_weight, layer.elem_bias, layer.hnet_weight,
                      layer.hnet_bias, torch.rand(5, 2), layer.elem_scalar)  # fmt: skip


def _load_wrong_space():
    other = STN(HyperSpace([Hyper("d1")]), torch.rand(8, 4), torch.zeros(8, dtype=torch.long))
    other.load_state_dict(_hook().state_dict())


CASES = [
    ("stn_hyper_kind", lambda: Hyper("a", "weight_decay"), r"kind must be one of"),
    ("stn_hyper_name", lambda: Hyper(""), r"name must be a non-empty string"),
    ("stn_hyper_init_out", lambda: Hyper("a", init=0.95), r"init must be in \(0, 0.9\)"),
    ("stn_hyper_init_zero", lambda: Hyper("a", init=0.0), r"init must be in \(0, 0.9\)"),
    ("stn_hyper_init_nan", lambda: Hyper("a", init=float("nan")), r"init must be in"),
    ("stn_hyper_value_range", lambda: Hyper("a", "value", 1.0), r"kind 'value' needs low and high"),
    ("stn_hyper_low_high", lambda: Hyper("a", "value", 1.0, 2.0, 0.5), r"low < high"),
    ("stn_hyper_dropout_range", lambda: Hyper("a", "dropout", 0.5, 0.0, 1.5), r"dropout range must lie in \[0, 1\]"),
    ("stn_hyper_noise_low", lambda: Hyper("a", "input_noise", 0.1, -1.0, 1.0), r"low >= 0"),
    ("stn_hyper_discrete_bounds", lambda: Hyper("a", "value", 1.0, 0.5, 4.0, True), r"integer low and high"),
    ("stn_hyper_discrete_init", lambda: Hyper("a", "value", 1.5, 0.0, 4.0, True), r"discrete init must be an int"),
    ("stn_hyper_discrete_top", lambda: Hyper("a", "value", 4.0, 0.0, 4.0, True), r"init must be in \[0, 3\]"),
    ("stn_space_empty", lambda: HyperSpace([]), r"non-empty sequence of Hyper"),
    ("stn_space_type", lambda: HyperSpace(["d1"]), r"non-empty sequence of Hyper"),
    ("stn_space_duplicate", lambda: HyperSpace([Hyper("a"), Hyper("a")]), r"must be unique"),
    ("stn_space_unknown_name", lambda: _space().index("d9"), r"hyperparameter name must be one of"),
    ("stn_space_wrong_kind", lambda: _space().index("noise", "dropout"), r"of kind 'input_noise', not 'dropout'"),
    ("stn_logit_outside", lambda: stretched_logit(torch.tensor([1.0]), 0.0, 0.9), r"strictly inside \(low, high\)"),
    ("stn_logit_nan", lambda: stretched_logit(torch.tensor([float("nan")]), 0.0, 0.9), r"value"),
    ("stn_logit_range", lambda: stretched_logit(torch.tensor([0.5]), 1.0, 0.0), r"high must be > low"),
    ("stn_values_shape", lambda: hparam_values(torch.rand(3, 2), torch.zeros(3), torch.ones(3)), r"low must have"),
    ("stn_values_nan", lambda: hparam_values(_nan(torch.rand(3, 2)), torch.zeros(2), torch.ones(2)), r"u holds"),
    ("stn_values_scalar", lambda: hparam_values(torch.tensor(1.0), torch.zeros(1), torch.ones(1)), r"u must be"),
    ("stn_perturb_rho_shape", lambda: perturb(torch.zeros(3), torch.zeros(2), 4), r"rho must have shape \[3\]"),
    ("stn_perturb_batch", lambda: perturb(torch.zeros(3), torch.zeros(3), 0), r"batch must be an integer >= 1"),
    ("stn_perturb_nan", lambda: perturb(_nan(torch.zeros(3)), torch.zeros(3), 2), r"u holds"),
    ("stn_entropy_shape", lambda: perturbation_entropy(torch.zeros(2, 2)), r"rho must have shape"),
    ("stn_entropy_inf", lambda: perturbation_entropy(torch.tensor([float("inf")])), r"rho holds"),
    ("stn_dropout_p_shape", lambda: per_example_dropout(torch.rand(4, 3), torch.rand(3)), r"p must have shape \[4\]"),
    ("stn_dropout_p_one", lambda: per_example_dropout(torch.rand(2, 3), torch.tensor([0.1, 1.0])), r"\[0, 1\)"),
    ("stn_dropout_p_negative", lambda: per_example_dropout(torch.rand(2, 3), torch.tensor([-0.1, 0.1])), r"\[0, 1\)"),
    ("stn_dropout_p_nan", lambda: per_example_dropout(torch.rand(2, 3), torch.tensor([0.1, float("nan")])), r"p"),
    ("stn_dropout_x_dim", lambda: per_example_dropout(torch.rand(4), torch.rand(4)), r"x must be a tensor \[B"),
    ("stn_layer_hparams_shape", lambda: _layer_call(torch.rand(3, 4), torch.rand(3, 5)), r"hparams must have shape"),
    ("stn_layer_hparams_rows", lambda: _layer_call(torch.rand(3, 4), torch.rand(2, 2)), r"\[3, 2\]"),
    ("stn_linear_v_shape", _stn_linear_v, r"v must have shape \[6, \*\]"),
    ("stn_layer_num_hparams", lambda: StnLinear(4, 3, 0), r"num_hparams must be an integer >= 1"),
    ("stn_conv_groups", lambda: StnConv2d(3, 4, 3, 2, groups=2), r"divisible by groups"),
    ("stn_conv_padding", lambda: StnConv2d(3, 4, 3, 2, padding=-1), r"padding must be an integer >= 0"),
    ("stn_mlp_space", lambda: StnMLP("d1", 4, (5,), 3), r"space must be a HyperSpace"),
    ("stn_mlp_dropout_kind", lambda: StnMLP(_space(), 4, (5,), 3, dropout=("noise",)), r"not 'dropout'"),
    ("stn_mlp_dropout_count", lambda: StnMLP(_space(), 4, (5, 5), 3, dropout=("d1",)), r"one rate .* per hidden"),
    ("stn_mlp_hidden", lambda: StnMLP(_space(), 4, (), 3), r"at least one hidden width"),
    ("stn_mlp_features", lambda: _mlp_call(torch.rand(2, 5)), r"expects 4 input features, got 5"),
    (
        "stn_mlp_hparams",
        lambda: _mlp_call(torch.rand(2, 4), torch.rand(2, 3)),
        r"hparams must have shape .*= \[2, 2\], got \[2, 3\]",
    ),
    (
        "stn_forward_no_hook",
        lambda: stn_forward(None, Batch(torch.rand(2, 4), torch.zeros(2), torch.arange(2))),
        r"put the STN hook",
    ),
    ("stn_hook_space", lambda: STN(None, torch.rand(8, 4), torch.zeros(8, dtype=torch.long)), r"space must be"),
    (
        "stn_hook_val_x_empty",
        lambda: _hook(val_x=torch.rand(0, 4), val_y=torch.zeros(0, dtype=torch.long)),
        r"val_x must be a non-empty",
    ),
    ("stn_hook_val_x_int", lambda: _hook(val_x=torch.zeros(8, 4, dtype=torch.long)), r"val_x must be floating"),
    ("stn_hook_val_x_nan", lambda: _hook(val_x=_nan(torch.rand(8, 4))), r"val_x holds"),
    ("stn_hook_val_y_len", lambda: _hook(val_y=torch.zeros(7, dtype=torch.long)), r"val_y must be .*\[8\]"),
    ("stn_hook_val_y_float", lambda: _hook(val_y=torch.zeros(8)), r"val_y must be integer class labels"),
    ("stn_hook_val_y_negative", lambda: _hook(val_y=-torch.ones(8, dtype=torch.long)), r"class indices >= 0"),
    ("stn_hook_train_steps", lambda: _hook(train_steps=0), r"train_steps must be an integer >= 1"),
    ("stn_hook_val_steps", lambda: _hook(val_steps=1.5), r"val_steps must be an integer >= 1"),
    ("stn_hook_warmup", lambda: _hook(warmup_epochs=-1), r"warmup_epochs must be an integer >= 0"),
    ("stn_hook_hyper_lr", lambda: _hook(hyper_lr=-1e-3), r"hyper_lr must be in \[0, inf\)"),
    ("stn_hook_scale_lr", lambda: _hook(scale_lr=float("nan")), r"scale_lr must be in"),
    ("stn_hook_perturb_scale", lambda: _hook(perturb_scale=0.0), r"perturb_scale must be in \(0, inf\)"),
    ("stn_hook_entropy_weight", lambda: _hook(entropy_weight=-1.0), r"entropy_weight must be in"),
    ("stn_hook_val_batch", lambda: _hook(val_batch_size=0), r"val_batch_size must be an integer >= 1"),
    ("stn_hook_tune_scales", lambda: _hook(tune_scales="yes"), r"tune_scales must be a bool"),
    ("stn_hook_seed", lambda: _hook(seed=1.5), r"seed must be an integer"),
    ("stn_phase_lr", lambda: _hook().phase(3, lr=0.0), r"lr must be in \(0, inf\)"),
    ("stn_phase_momentum", lambda: _hook().phase(3, momentum=1.0), r"momentum must be in \[0, 1\)"),
    ("stn_phase_milestone", lambda: _hook().phase(3, milestones=(0,)), r"milestone must be an integer >= 1"),
    ("stn_hook_load_other_space", _load_wrong_space, r"holds 2 hyperparameters, this hook's space has 1"),
    ("stn_hook_load_keys", lambda: _hook().load_state_dict({"u": torch.zeros(2)}), r"STN state must hold"),
]
