"""Bad input for nb_vs_lr's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.prototypes.nb_vs_lr import (
    GaussianNB,
    fit_logistic,
    fit_logistic_sgd,
    learning_curve,
    nb_statistics,
    simulate,
    simulator_params,
)

X = torch.rand(12, 4, generator=torch.Generator().manual_seed(0))
Y = torch.arange(12) % 3


def _nan():
    x = X.clone()
    x[3, 2] = float("nan")
    return x


CASES = [
    ("nb_fit_nan", lambda: GaussianNB(3).fit(_nan(), Y), r"x holds NaN"),
    ("nb_fit_inf", lambda: GaussianNB(3).fit(X.clone().fill_(float("inf")), Y), r"x holds NaN or infinite"),
    ("nb_fit_labels_out_of_range", lambda: GaussianNB(2).fit(X, Y), r"y: labels must lie in \[0, 1\]"),
    ("nb_fit_labels_float", lambda: GaussianNB(3).fit(X, Y.float()), r"y must hold integer"),
    ("nb_fit_wrong_shape", lambda: GaussianNB(3).fit(X[0], Y), r"x must have shape"),
    ("nb_fit_empty", lambda: GaussianNB(3).fit(X[:0], Y[:0]), r"x must be a non-empty"),
    ("nb_fit_x_dtype", lambda: GaussianNB(3).fit(X.long(), Y), r"x must be floating"),
    ("nb_partial_fit_nan", lambda: GaussianNB(3).fit(X, Y).partial_fit(_nan(), Y), r"x holds NaN"),
    ("nb_predict_unfitted", lambda: GaussianNB(3).predict(X), r"not fitted"),
    ("nb_predict_wrong_width", lambda: GaussianNB(3).fit(X, Y).predict(X[:, :2]), r"x must have shape"),
    ("nb_eps_mode", lambda: GaussianNB(3, eps_mode="rel"), r"eps_mode must be one of"),
    ("nb_statistics_classes", lambda: nb_statistics(X, Y, 1), r"num_classes must be"),
    ("lr_C", lambda: fit_logistic(X, Y, C=0.0), r"C must be"),
    ("sgd_nan", lambda: fit_logistic_sgd(_nan(), Y, 3, epochs=1), r"x holds NaN"),
    ("sgd_labels", lambda: fit_logistic_sgd(X, Y + 3, 3, epochs=1), r"y: labels must lie"),
    ("sgd_eval_pair", lambda: fit_logistic_sgd(X, Y, 3, eval_x=X), r"eval_x and eval_y"),
    ("sgd_eval_nan", lambda: fit_logistic_sgd(X, Y, 3, eval_x=_nan(), eval_y=Y), r"eval_x holds NaN"),
    ("sgd_eval_width", lambda: fit_logistic_sgd(X, Y, 3, eval_x=X[:, :2], eval_y=Y), r"eval_x must have shape"),
    ("sgd_epochs", lambda: fit_logistic_sgd(X, Y, 3, epochs=0), r"epochs must be"),
    ("simulator_mode", lambda: simulator_params(10, 2, "medium"), r"mode must be one of"),
    ("simulate_K", lambda: simulate(10, 1, 5), r"K must be"),
    ("learning_curve_grid", lambda: learning_curve(lambda a, b: None, X, Y, X, Y, [10, 4]), r"increasing"),
]
