"""Bad input for explaining_prototypes' public entry points (explain and its functional core)."""

import torch

from priorkit.models import Conv4
from priorkit.prototypes.explaining_prototypes import (
    adjust_hue,
    explain,
    global_importance,
    local_importance,
    make_perturbations,
    sine_warp,
)
from priorkit.prototypes.protopnet import ProtoPNet


def _m():
    torch.manual_seed(0)
    return ProtoPNet(Conv4(3, 4, 3, pools=2), 3, prototypes_per_class=2, prototype_dim=6)


def _nan():
    x = torch.rand(2, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    return x


CASES = [
    ("explain wrong shape", lambda: explain(_m(), torch.rand(3, 8, 8)), r"images must have shape"),
    ("explain int dtype", lambda: explain(_m(), torch.zeros(2, 3, 8, 8, dtype=torch.long)), r"images must be a float"),
    ("explain empty", lambda: explain(_m(), torch.rand(0, 3, 8, 8)), r"images must be a non-empty"),
    ("explain NaN", lambda: explain(_m(), _nan()), r"images holds 1 NaN"),
    ("explain location", lambda: explain(_m(), torch.rand(2, 3, 8, 8), location="max"), r"location must be one of"),
    ("explain model", lambda: explain(torch.nn.Linear(2, 2), torch.rand(2, 3, 8, 8)), r"model must expose"),
    ("perturbations names", lambda: make_perturbations(8, names=["colour"]), r"names must be one of"),
    ("hue shift range", lambda: adjust_hue(torch.rand(1, 3, 4, 4), 0.9), r"shift"),
    ("sine_warp NaN", lambda: sine_warp(_nan(), 1.0, 0.3), r"images holds 1 NaN"),
    ("local_importance shapes", lambda: local_importance(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 2)), r"mod_maps"),
    ("global_importance negative similarity",
     lambda: global_importance(torch.rand(3, 2, 4), -torch.rand(3, 4)), r"similarity must be >= 0"),  # fmt: skip
]
