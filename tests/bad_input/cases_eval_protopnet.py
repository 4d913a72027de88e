"""Bad input for eval_protopnet's public entry points."""

import torch

from priorkit.models import Conv4
from priorkit.prototypes.eval_protopnet import EvalProtoPNet, default_schedule, sdfa_loss, visual_push


def _m():
    torch.manual_seed(0)
    return EvalProtoPNet(Conv4(3, 8, 3, pools=2), 3, 2, 6)


def _x(n=3):
    return torch.rand(n, 3, 16, 16)


def _nan():
    x = _x()
    x[0, 1, 3, 3] = float("nan")
    return x


_Y = torch.tensor([0, 1, 2])

CASES = [
    ("forward wrong shape", lambda: _m()(torch.rand(3, 16, 16)), r"x must have 4 dimensions"),
    ("forward int dtype", lambda: _m()(torch.zeros(1, 3, 16, 16, dtype=torch.long)), r"x must be floating"),
    ("forward empty", lambda: _m()(torch.rand(0, 3, 16, 16)), r"x must be a non-empty"),
    ("forward NaN", lambda: _m()(_nan()), r"x holds 1 NaN"),
    ("forward full NaN", lambda: _m()(_nan(), full=True), r"x holds 1 NaN"),
    ("loss labels out of range", lambda: _m().loss_terms(_x(), torch.tensor([0, 1, 3])), r"labels must lie in"),
    ("loss float labels", lambda: _m().loss_terms(_x(), _Y.float()), r"labels must hold integer"),
    ("sdfa labels", lambda: sdfa_loss(torch.rand(3, 6, 2, 2), torch.rand(3, 4, 4, 4), torch.rand(3, 5, 2, 2),
                                      torch.tensor([0, 1, 3]), 2), r"labels must lie in"),  # fmt: skip
    ("visual_push NaN images", lambda: visual_push(_m(), _nan(), _Y), r"images holds 1 NaN"),
    ("visual_push labels", lambda: visual_push(_m(), _x(), _Y + 3), r"labels must lie in"),
    ("schedule head", lambda: default_schedule(head="svm"), r"head must be one of"),
]
