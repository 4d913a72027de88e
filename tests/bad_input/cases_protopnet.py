"""Bad input for protopnet's public entry points (ProtoPNet, protopnet_loss, the base's recipe and push)."""

import torch

from priorkit.models import Conv4
from priorkit.prototypes.protopnet import ProtoPNet, protopnet_loss
from priorkit.prototypes.protopnet_base import PhaseSchedule, protopnet_recipe


def _m():
    torch.manual_seed(0)
    return ProtoPNet(Conv4(3, 4, 3, pools=2), 3, prototypes_per_class=2, prototype_dim=6)


def _x(n=4):
    return torch.rand(n, 3, 8, 8)


def _nan():
    x = _x()
    x[0, 0, 0, 0] = float("nan")
    return x


_Y = torch.tensor([0, 1, 2, 0])

CASES = [
    ("forward wrong shape", lambda: _m()(torch.rand(3, 8, 8)), r"x must have 4 dimensions"),
    ("forward int dtype", lambda: _m()(torch.zeros(2, 3, 8, 8, dtype=torch.long)), r"x must be floating"),
    ("forward empty batch", lambda: _m()(torch.rand(0, 3, 8, 8)), r"x must be a non-empty"),
    ("forward NaN", lambda: _m()(_nan()), r"x holds 1 NaN"),
    ("loss labels out of range", lambda: _m().loss_terms(_x(), torch.tensor([0, 1, 2, 3])), r"labels must lie in"),
    ("loss float labels", lambda: _m().loss_terms(_x(), _Y.float()), r"labels must hold integer"),
    ("loss labels wrong length", lambda: _m().loss_terms(_x(), _Y[:2]), r"labels must have shape"),
    (
        "protopnet_loss labels",
        lambda: protopnet_loss(_m()(_x(), full=True), _Y + 3, _m().prototype_identity, _m().last_layer.weight),
        r"labels must lie in",
    ),
    ("push NaN images", lambda: _m().push(_nan(), _Y), r"images holds 1 NaN"),
    ("push labels out of range", lambda: _m().push(_x(), _Y + 3), r"labels must lie in"),
    ("push empty", lambda: _m().push(torch.rand(0, 3, 8, 8), _Y[:0]), r"images must be a non-empty"),
    ("recipe unknown lr group", lambda: protopnet_recipe(_m(), PhaseSchedule(warm_lrs={"neck": 1e-3}),
                                                         push_data=(_x(), _Y)), r"warm lr group"),  # fmt: skip
    ("recipe NaN push data", lambda: protopnet_recipe(_m(), PhaseSchedule(), push_data=(_nan(), _Y)),
     r"push_data images holds"),  # fmt: skip
    ("recipe push labels", lambda: protopnet_recipe(_m(), PhaseSchedule(), push_data=(_x(), _Y + 3)),
     r"push_data labels must lie"),  # fmt: skip
    ("recipe push_data type", lambda: protopnet_recipe(_m(), PhaseSchedule(), push_data=_x()), r"push_data must be"),
    ("schedule negative lr", lambda: PhaseSchedule(joint_lrs={"backbone": -1.0}), r"joint_lrs"),
    ("schedule ends off a push", lambda: PhaseSchedule(epochs=5, final_push=False), r"final_push"),
]
