"""Bad input for robust_stable_cbc's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.prototypes.robust_stable_cbc import (
    RobustStableCBC,
    cbc_recipe,
    certified_accuracy,
    component_distances,
    detection_probability,
    stable_cbc_reasoning,
)


def _m():
    return RobustStableCBC(4, 3, num_components=5, generator=torch.Generator().manual_seed(0))


def _x(n=6):
    return torch.rand(n, 4)


def _nan():
    x = _x()
    x[2, 1] = float("nan")
    return x


Y = torch.tensor([0, 1, 2, 0, 1, 2])

CASES = [
    ("forward_wrong_shape", lambda: _m()(torch.rand(6, 5)), r"x must have shape"),
    ("forward_wrong_dtype", lambda: _m()(torch.ones(6, 4, dtype=torch.long)), r"x must be floating"),
    ("forward_empty", lambda: _m()(torch.rand(0, 4)), r"x must be a non-empty"),
    ("forward_nan", lambda: _m()(_nan()), r"x holds 1 NaN"),
    ("forward_inf", lambda: _m()(_x().fill_(float("inf"))), r"x holds .* NaN or infinite"),
    ("loss_labels_out_of_range", lambda: _m().loss(_x(), Y + 3), r"y must lie in \[0, 2\]"),
    ("loss_labels_float", lambda: _m().loss(_x(), Y.float()), r"y must hold integer"),
    ("loss_labels_length", lambda: _m().loss(_x(), Y[:4]), r"y must have shape \[6\]"),
    ("loss_nan", lambda: _m().loss(_nan(), Y), r"x holds"),
    ("radius_labels_out_of_range", lambda: _m().certified_radius(_x(), Y - 1), r"y must lie"),
    ("radius_nan", lambda: _m().certified_radius(_nan(), Y), r"x holds"),
    ("recipe_not_a_cbc", lambda: cbc_recipe(torch.nn.Linear(4, 3)), r"model must be"),
    ("recipe_epochs", lambda: cbc_recipe(_m(), epochs=0), r"epochs must be"),
    ("recipe_lr", lambda: cbc_recipe(_m(), lr=-1.0), r"lr must be"),
    ("constructor_distance", lambda: RobustStableCBC(4, 3, distance="cosine"), r"distance must be one of"),
    ("constructor_unknown_key", lambda: RobustStableCBC(4, 3, sigmaa=1.0), r"unknown keyword"),
    ("distances_shape", lambda: component_distances(torch.rand(3, 4), torch.rand(5, 3)), r"components must have"),
    ("detection_sigma", lambda: detection_probability(torch.rand(3, 5), 0.0), r"sigma must be > 0"),
    ("reasoning_shape", lambda: stable_cbc_reasoning(torch.rand(3, 5), torch.rand(9, 2)), r"reasoning must have"),
    ("certified_accuracy_eps", lambda: certified_accuracy(torch.zeros(3), -1.0), r"eps must be"),
]
