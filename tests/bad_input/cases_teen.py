"""Bad input for TEEN's public entry points: (name, callable, regex naming the argument)."""

import torch

from priorkit.models import MLP
from priorkit.prototypes import teen

NAN = float("nan")
_NEW, _BASE = torch.randn(2, 6), torch.randn(4, 6)


def _fitted():
    torch.manual_seed(0)
    m = teen.TEEN(MLP(6, (8,), 4), num_classes=6, num_base=4)
    m.fit_base(torch.randn(12, 6), torch.arange(12) % 4)
    return m


def _with_nan():
    x = torch.randn(4, 6)
    x[0, 0] = NAN
    return x


CASES = [
    ("teen_backbone_features", lambda: teen.TEEN(torch.nn.Linear(3, 3), 6, 4), "backbone"),
    ("teen_pool", lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4, pool="all"), "pool"),
    ("teen_new_mode", lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4, new_mode="l2"), "new_mode"),
    ("teen_alpha", lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4, alpha=1.5), "alpha"),
    ("teen_num_classes", lambda: teen.TEEN(MLP(6, (8,), 4), 3, 4), "num_classes"),
    ("teen_forward_before_fit", lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4)(torch.randn(2, 6)), "fit_base"),
    ("teen_session_before_base",
     lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4).add_session(torch.randn(2, 6), torch.tensor([4, 5])), "fit_base"),
    ("teen_fit_base_nan", lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4).fit_base(_with_nan(), torch.arange(4)), "x"),
    ("teen_fit_base_labels", lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4).fit_base(torch.randn(4, 6), torch.arange(4) + 1),
     "base labels"),
    ("teen_fit_base_label_dtype", lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4).fit_base(torch.randn(4, 6),
                                                                                    torch.arange(4.0)), "labels"),
    ("teen_fit_base_empty", lambda: teen.TEEN(MLP(6, (8,), 4), 6, 4).fit_base(torch.randn(0, 6),
                                                                              torch.zeros(0, dtype=torch.long)),
     "x must be a non-empty"),
    ("teen_session_nan", lambda: _fitted().add_session(_with_nan(), torch.tensor([4, 4, 5, 5])), "x"),
    ("teen_head_nan_features", lambda: teen.TEENHead(6, 6, 4).fit_base(_with_nan(), torch.arange(4)), "features"),
    ("teen_session_labels", lambda: _fitted().add_session(torch.randn(4, 6), torch.tensor([5, 5, 6, 6])),
     "next classes"),
    ("class_means_missing", lambda: teen.class_means(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), [0, 1, 2]),
     "class"),
    ("class_means_shape", lambda: teen.class_means(torch.randn(4, 2), torch.tensor([0, 1]), [0, 1]), "labels"),
    ("calibration_weights_tau", lambda: teen.calibration_weights(_NEW, _BASE, tau=-1.0), "tau"),
    ("calibration_weights_shape", lambda: teen.calibration_weights(_NEW, _BASE[:, :3]), "base_protos"),
    ("teen_calibrate_alpha", lambda: teen.teen_calibrate(_NEW, _BASE, alpha=2.0), "alpha"),
    ("cosine_logits_shape", lambda: teen.cosine_logits(torch.randn(3, 6), torch.randn(2, 5)), "prototypes"),
]
