"""Bad input for PALM's public entry points (collected by tests/test_bad_input.py)."""

import torch
import torch.nn.functional as F

from priorkit.baselines.ood import class_mahalanobis_fit, energy_score, knn_score, ssd_fit, ssd_score
from priorkit.models import MLP
from priorkit.prototypes.palm import PALMHook, PALMNet, embed, mle_loss, sinkhorn


def _z(n=6, d=8):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)


def _nan(t):
    t = t.clone()
    t[1, 2] = float("nan")
    return t


def _hook():
    return PALMHook(3, 8, num_protos=2, k=1)


CASES = [
    ("palm_z_shape", lambda: _hook().terms(torch.randn(6, 5), torch.zeros(6, dtype=torch.long)), r"z must have shape"),
    ("palm_z_dtype", lambda: _hook().terms(torch.ones(6, 8, dtype=torch.long), torch.zeros(6, dtype=torch.long)),
     r"z must be a floating"),
    ("palm_z_empty", lambda: _hook().terms(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)), r"z is empty"),
    ("palm_z_nan", lambda: _hook().terms(_nan(_z()), torch.zeros(6, dtype=torch.long)), r"z"),
    ("palm_z_inf", lambda: _hook().terms(_z() * float("inf"), torch.zeros(6, dtype=torch.long)), r"z"),
    ("palm_labels_range", lambda: _hook().terms(_z(), torch.full((6,), 3)), r"labels must lie in"),
    ("palm_labels_dtype", lambda: _hook().terms(_z(), torch.zeros(6)), r"labels must be an integer"),
    ("palm_labels_shape", lambda: _hook().terms(_z(), torch.zeros(5, dtype=torch.long)), r"labels must have shape"),
    ("palm_k", lambda: PALMHook(3, 8, num_protos=2, k=3), r"k must be <= num_protos"),
    ("palm_momentum", lambda: PALMHook(3, 8, momentum=1.5), r"momentum"),
    ("palm_augment", lambda: PALMHook(3, 8, augment=3), r"augment"),
    ("palmnet_feat_dim", lambda: PALMNet(torch.nn.Linear(4, 4)), r"feat_dim"),
    ("embed_empty", lambda: embed(PALMNet(MLP(4, (8,), 2)), torch.zeros(0, 4)), r"x must be"),
    ("sinkhorn_epsilon", lambda: sinkhorn(_z(), _z(4), epsilon=0.0), r"epsilon"),
    ("sinkhorn_shape", lambda: sinkhorn(_z(), _z(4, 5)), r"prototypes"),
    ("mle_q_shape", lambda: mle_loss(_z(), _z(4), torch.rand(6, 3), torch.ones(6, 4)), r"q must have shape"),
    ("ssd_fit_empty", lambda: ssd_fit(torch.zeros(1, 4)), r"train_features"),
    ("ssd_fit_nan", lambda: ssd_fit(_nan(torch.rand(5, 4))), r"train_features"),
    ("ssd_fit_dtype", lambda: ssd_fit(torch.ones(5, 4, dtype=torch.long)), r"train_features"),
    ("ssd_score_shape", lambda: ssd_score(ssd_fit(torch.rand(5, 4)), torch.rand(3, 5)), r"features"),
    ("ssd_score_nan", lambda: ssd_score(ssd_fit(torch.rand(5, 4)), _nan(torch.rand(3, 4))), r"features"),
    ("cmaha_labels", lambda: class_mahalanobis_fit(torch.rand(5, 4), torch.zeros(4, dtype=torch.long)), r"labels"),
    ("knn_k", lambda: knn_score(torch.rand(3, 4), torch.rand(2, 4), k=5), r"k must be <="),
    ("knn_nan", lambda: knn_score(torch.rand(6, 4), _nan(torch.rand(3, 4)), k=2), r"features"),
    ("energy_nan", lambda: energy_score(_nan(torch.rand(3, 4))), r"logits"),
    ("energy_temperature", lambda: energy_score(torch.rand(3, 4), temperature=0.0), r"temperature"),
]
