"""Bad input for st_protopnet's public entry points."""

import torch

from priorkit.models import Conv4
from priorkit.prototypes.st_protopnet import STLoss, STProtoPNet, branch_loss


def _m():
    torch.manual_seed(0)
    return STProtoPNet(Conv4(3, 8, 3, pools=2), 3, 2, 8)


def _x(n=3):
    return torch.rand(n, 3, 16, 16)


def _nan():
    x = _x()
    x[1, 0, 2, 2] = float("inf")
    return x


_Y = torch.tensor([0, 1, 2])


def _branch(labels):
    m = _m()
    out = m(_x(), full=True)
    ident = m.branch_identity
    return branch_loss("trivial", out.logits["trivial"], out.pooled["trivial"], labels, ident,
                       m.prototypes_trivial, m.last_layer_trivial.weight)  # fmt: skip


CASES = [
    ("forward wrong shape", lambda: _m()(torch.rand(3, 16, 16)), r"x must have 4 dimensions"),
    ("forward int dtype", lambda: _m()(torch.zeros(1, 3, 16, 16, dtype=torch.long)), r"x must be floating"),
    ("forward empty", lambda: _m()(torch.rand(0, 3, 16, 16)), r"x must be a non-empty"),
    ("forward inf", lambda: _m()(_nan()), r"x holds 1 NaN"),
    ("loss labels out of range", lambda: _m().loss_terms(_x(), torch.tensor([0, 1, 3])), r"labels must lie in"),
    ("branch_loss labels", lambda: _branch(torch.tensor([0, 5, 1])), r"labels must lie in"),
    ("push NaN images", lambda: _m().push(_nan(), _Y), r"images holds 1 NaN"),
    ("push labels", lambda: _m().push(_x(), _Y + 3), r"labels must lie in"),
    ("STLoss mode", lambda: STLoss("both"), r"mode must be one of"),
]
