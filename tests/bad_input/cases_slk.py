"""Bad input for SLK's public entry points: (name, callable, regex naming the argument)."""

import torch

from priorkit.prototypes import slk as S

NAN = float("nan")
_XS, _YS = torch.randn(6, 5), torch.arange(3).repeat_interleave(2)
_XQ = torch.randn(9, 5)


def _nan(x):
    x = x.clone()
    x[0, 0] = NAN
    return x


def _model_forward_before_support():
    return S.SLK()(torch.randn(3, 5))


CASES = [
    ("slk_mode", lambda: S.slk(_XS, _YS, _XQ, mode="kmodes"), "mode"),
    ("slk_lam", lambda: S.slk(_XS, _YS, _XQ, lam=-1.0), "lam"),
    ("slk_version", lambda: S.slk(_XS, _YS, _XQ, version="2021"), "version"),
    ("slk_outer_tol", lambda: S.slk(_XS, _YS, _XQ, outer_tol=-1e-4), "outer_tol"),
    ("slk_bound_tol", lambda: S.slk(_XS, _YS, _XQ, bound_tol=-1e-7), "bound_tol"),
    ("slk_labels", lambda: S.slk(_XS, _YS + 1, _XQ), "support_y"),
    ("slk_label_shape", lambda: S.slk(_XS, _YS[:4], _XQ), "support_y"),
    ("slk_nan_support", lambda: S.slk(_nan(_XS), _YS, _XQ), "support"),
    ("slk_nan_query", lambda: S.slk(_XS, _YS, _nan(_XQ)), "query"),
    ("slk_query_width", lambda: S.slk(_XS, _YS, _XQ[:, :3]), "query"),
    ("slk_entry_before_support", _model_forward_before_support, "process_support_set"),
    ("slk_entry_nan", lambda: (lambda m: (m.process_support_set(_XS, _YS), m(_nan(_XQ))))(S.SLK()), "query"),
    ("knn_affinity_knn", lambda: S.knn_affinity(_XS, knn=1), "knn"),
    ("knn_affinity_too_many", lambda: S.knn_affinity(_XS, knn=10), "knn"),
    ("estimate_sigma_shape", lambda: S.estimate_sigma(_XS, torch.ones(5, 5)), "w"),
    ("cl2n_mean_shape", lambda: S.cl2n(_XS, torch.zeros(3)), "base_mean"),
    ("cl2n_nan", lambda: S.cl2n(_nan(_XS)), "x"),
    ("shift_queries_width", lambda: S.shift_queries(_XS, _XQ[:, :2]), "query"),
    ("bound_update_lam", lambda: S.bound_update(torch.rand(4, 3), torch.eye(4), -1.0), "lam"),
    ("bound_update_w", lambda: S.bound_update(torch.rand(4, 3), torch.eye(3), 0.5), "w"),
    ("bound_update_init", lambda: S.bound_update(torch.rand(4, 3), torch.eye(4), 0.5, init=torch.eye(2)), "init"),
    (
        "mean_shift_members",
        lambda: S.mean_shift(_XS, torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, 5), 1.0),
        "members",
    ),
    ("slk_energy_mode", lambda: S.slk_energy(_XS, _XS[:3], torch.rand(6, 3), torch.eye(6), 1.0, 0.5, "x"), "mode"),
    (
        "tune_lambda_empty",
        lambda: S.tune_lambda(torch.randn(40, 5), torch.arange(4).repeat(10), None, lambdas=()),
        "lambdas",
    ),
]
