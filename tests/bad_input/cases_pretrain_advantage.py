"""Bad input for the pretrain_advantage public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.theory.pretrain_advantage import (
    FactorClass,
    GMMClass,
    GMMParams,
    PretrainAdvantage,
    bound,
    complexity,
    em_step,
    fit_downstream,
    fit_factor_mle,
    fit_gmm_em,
    fit_latent,
    fit_supervised,
    gmm_posterior,
    make_factor_task,
    make_gmm_task,
    supervised_bound,
    train_erm,
)


def _x(n=12, d=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _nan(t):
    t = t.clone()
    t[1, 1] = float("nan")
    return t


def _phi(k=2, d=3):
    return GMMParams(_x(k, d), torch.full((k,), 1.0 / k, dtype=torch.float64))


def _y(*v):
    return torch.tensor(v, dtype=torch.long)


W = torch.tensor([0.5, 0.5], dtype=torch.float64)

CASES = [
    ("posterior_x_nan", lambda: gmm_posterior(_nan(_x()), _x(2), W), r"x holds 1 NaN"),
    ("posterior_x_dim", lambda: gmm_posterior(_x(4, 5), _x(2), W), r"x must have 3 features"),
    ("posterior_x_empty", lambda: gmm_posterior(torch.zeros(0, 3), _x(2), W), r"x must be a non-empty batch"),
    ("posterior_weights_sum", lambda: gmm_posterior(_x(), _x(2), W * 3), r"weights must sum to 1"),
    ("posterior_weights_shape", lambda: gmm_posterior(_x(), _x(2), torch.ones(3) / 3), r"weights must be 2 finite"),
    ("em_step_x_dtype", lambda: em_step(torch.ones(4, 3, dtype=torch.long), _x(2), W), r"x must be floating point"),
    ("em_components", lambda: fit_gmm_em(_x(), 0), r"num_components must be an integer >= 1"),
    ("em_too_few", lambda: fit_gmm_em(_x(3), 4), r"x must hold at least num_components=4"),
    ("em_restarts", lambda: fit_gmm_em(_x(), 2, restarts=0), r"restarts must be an integer >= 1"),
    ("em_tol", lambda: fit_gmm_em(_x(), 2, tol=-1.0), r"tol must be in \[0, inf\)"),
    ("gmm_class_components", lambda: GMMClass(0), r"num_components must be an integer >= 1"),
    ("factor_rank", lambda: fit_factor_mle(_x(), 3), r"rank must be < the number of features d=3"),
    ("factor_class_rank", lambda: FactorClass(0), r"rank must be an integer >= 1"),
    ("fit_latent_class", lambda: fit_latent("gmm", _x()), r"model_class must be a GMMClass or a FactorClass"),
    ("permute_bad", lambda: _phi().permute([0, 0]), r"perm must be a permutation of 0..1"),
    ("downstream_phi", lambda: fit_downstream("phi", "logistic", _x(), _y(*[0, 1] * 6)), r"phi_hat must be GMMParams"),
    ("downstream_predictor", lambda: fit_downstream(_phi(), "svm", _x(), _y(*[0, 1] * 6)), r"predictor must be one of"),
    ("downstream_labels_range", lambda: fit_downstream(_phi(), "logistic", _x(), _y(*[0, 1] * 6), num_classes=1),
     r"num_classes must be an integer >= 2"),
    ("downstream_labels_len", lambda: fit_downstream(_phi(), "logistic", _x(), _y(0, 1)), r"y must have shape \[12\]"),
    ("downstream_labels_float", lambda: fit_downstream(_phi(), "logistic", _x(), torch.zeros(12)),
     r"y must hold integer class labels"),
    ("downstream_targets_linear", lambda: fit_downstream(_phi(), "linear", _x(), _y(*[0, 1] * 6)),
     r"y must be a float vector of shape \[12\]"),
    ("downstream_x_dim", lambda: fit_downstream(_phi(), "logistic", _x(12, 4), _y(*[0, 1] * 6)),
     r"x must have 3 features"),
    ("downstream_lr", lambda: fit_downstream(_phi(), "logistic", _x(), _y(*[0, 1] * 6), lr=0.0), r"lr must be in"),
    ("downstream_steps", lambda: fit_downstream(_phi(), "logistic", _x(), _y(*[0, 1] * 6), steps=0),
     r"steps must be an integer >= 1"),
    ("supervised_class", lambda: fit_supervised(None, _x(), _y(*[0, 1] * 6)), r"model_class must be a GMMClass"),
    ("supervised_restarts", lambda: fit_supervised(GMMClass(2), _x(), _y(*[0, 1] * 6), restarts=0),
     r"restarts must be an integer >= 1"),
    ("supervised_labels_neg", lambda: fit_supervised(GMMClass(2), _x(), _y(*[0, -1] * 6), num_classes=2),
     r"y must lie in \[0, 1\]"),
    ("train_erm_loss", lambda: train_erm(torch.nn.Linear(3, 2), _x().float(), _y(*[0, 1] * 6), "hinge", steps=1,
                                         lr=0.1, weight_decay=0.0, batch_size=4, seed=0), r"loss must be one of"),
    ("bound_m", lambda: bound(10, 2, 0, 10), r"m must be an integer >= 1"),
    ("bound_delta", lambda: bound(10, 2, 10, 10, delta=1.0), r"delta must be in \(0, 1\)"),
    ("bound_complexity", lambda: bound(-1, 2, 10, 10), r"C_phi must be in \[0, inf\)"),
    ("bound_kappa", lambda: bound(10, 2, 10, 10, kappa=0.0), r"kappa must be in \(0, inf\)"),
    ("supervised_bound_n", lambda: supervised_bound(10, 0), r"n must be an integer >= 1"),
    ("complexity_class", lambda: complexity("gmm", 10), r"model_class must be a GMMClass or a FactorClass"),
    ("gmm_task_layout", lambda: make_gmm_task(layout="circle"), r"layout must be one of"),
    ("gmm_task_square_k", lambda: make_gmm_task(3, label_map=(0, 1, 0)), r"layout='square' needs num_components=4"),
    ("gmm_task_label_map", lambda: make_gmm_task(label_map=(0, 0, 0, 0)), r"label_map must give a label"),
    ("gmm_task_sep", lambda: make_gmm_task(sep=0.0), r"sep must be in \(0, inf\)"),
    ("gmm_task_excess_pred", lambda: make_gmm_task().excess_risk(_y(0, 2), torch.zeros(2, 50)),
     r"pred must lie in \[0, 1\]"),
    ("factor_task_rank", lambda: make_factor_task(dim=5, rank=5), r"rank must be < dim=5"),
    ("entry_latent", lambda: PretrainAdvantage("hmm"), r"latent must be one of"),
    ("entry_predictor", lambda: PretrainAdvantage(predictor="tree"), r"predictor must be one of"),
    ("entry_delta", lambda: PretrainAdvantage(delta=0.0), r"delta must be in"),
    ("entry_unfitted", lambda: PretrainAdvantage().predict(_x()), r"not fitted"),
]  # fmt: skip
