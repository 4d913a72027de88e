"""Bad input for prob_psenn's public entry points (collected by tests/test_bad_input.py)."""

import torch
from torch import nn

from priorkit.prototypes.prob_psenn import (
    ProbPSENN,
    PSENNLossConfig,
    prob_psenn_loss,
    prob_psenn_recipe,
    sample_prototypes,
    uninformed_threshold,
)


def _m():
    torch.manual_seed(0)
    return ProbPSENN(nn.Linear(6, 3), 3, 3, generator=torch.Generator().manual_seed(0))


def _nan():
    x = torch.rand(4, 6)
    x[1, 2] = float("nan")
    return x


def _loss(y):
    m, x = _m(), torch.rand(4, 6)
    return prob_psenn_loss(m, x, y, m(x, 2), PSENNLossConfig(), 10)


CASES = [
    ("forward_nan", lambda: _m()(_nan(), 2), r"x holds 1 NaN"),
    ("forward_inf", lambda: _m()(torch.full((4, 6), float("inf")), 2), r"x holds .* NaN or infinite"),
    ("forward_empty", lambda: _m()(torch.rand(0, 6), 2), r"x must be a non-empty"),
    ("forward_dtype", lambda: _m()(torch.ones(4, 6, dtype=torch.long), 2), r"x must be floating"),
    ("forward_not_tensor", lambda: _m()("x", 2), r"x must be a torch.Tensor"),
    ("forward_num_samples", lambda: _m()(torch.rand(4, 6), 0), r"num_samples must be"),
    ("uncertainty_nan", lambda: _m().uncertainty(_nan(), 3), r"x holds"),
    ("threshold_quantile", lambda: uninformed_threshold(_m(), torch.rand(4, 6), quantile=1.5), r"quantile must be"),
    ("loss_labels_length", lambda: _loss(torch.tensor([0, 1])), r"y must have shape"),
    ("loss_config_ce", lambda: PSENNLossConfig(ce="mean"), r"ce must be one of"),
    ("loss_config_beta", lambda: PSENNLossConfig(beta=-1.0), r"beta must be"),
    ("recipe_model", lambda: prob_psenn_recipe(nn.Linear(2, 2)), r"model must be a ProbPSENN"),
    ("recipe_epochs", lambda: prob_psenn_recipe(_m(), epochs=0), r"epochs must be"),
    ("recipe_num_samples", lambda: prob_psenn_recipe(_m(), num_samples=0), r"num_samples must be"),
    ("sample_sigma_shape", lambda: sample_prototypes(torch.rand(3, 4), torch.rand(2, 4), 2), r"sigma must have"),
]
CASES += [
    ("loss_labels_out_of_range", lambda: _loss(torch.tensor([0, 1, 2, 3])), r"y must lie in \[0, 2\]"),
    ("loss_labels_float", lambda: _loss(torch.zeros(4)), r"y must hold integer"),
]
