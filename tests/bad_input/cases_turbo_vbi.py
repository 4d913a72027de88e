"""Bad input for Turbo-VBI's public entry points."""

import torch
from torch import nn

from priorkit.sparsity.turbo_vbi import (
    TurboVBI,
    bayesianize,
    chain_marginals,
    debayesianize,
    gamma_hyper,
    module_b,
    remove_dead_neurons,
)


def _bnet():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    bayesianize(net)
    return net


def _swapped():
    net = _bnet()
    net[0].hyper.copy_(torch.tensor([1.0, 1e-5, 1.0, 1.0], dtype=torch.float64))  # inactive looser than active
    return net


Z = torch.zeros(2, 3, dtype=torch.float64)

CASES = [
    (
        "evidence shapes",
        lambda: chain_marginals(Z, torch.zeros(2, 4, dtype=torch.float64), 0.0, 0.5),
        r"equal \[R, L\]",
    ),
    ("negative beta", lambda: chain_marginals(Z, Z, 0.0, -1.0), r"beta must be in"),
    (
        "prior kind",
        lambda: module_b(
            Z, Z + 1, hyper=(1, 1, 1, 1e-3), alpha=0.0, beta=0.5, rho_init=Z + 1, pi_init=Z + 0.5, prior="grid"
        ),
        r"prior must be one of",
    ),  # fmt: skip
    (
        "sweeps 0",
        lambda: module_b(
            Z, Z + 1, hyper=(1, 1, 1, 1e-3), alpha=0.0, beta=0.5, rho_init=Z + 1, pi_init=Z + 0.5, sweeps=0
        ),
        r"sweeps",
    ),  # fmt: skip
    ("no bayesian layers", lambda: TurboVBI(nn.Sequential(nn.Linear(2, 2)), 10), r"call bayesianize"),
    ("n_train 0", lambda: TurboVBI(_bnet(), 0), r"n_train"),
    ("beta < 0", lambda: TurboVBI(_bnet(), 10, beta=-0.1), r"beta must be in"),
    ("alpha nan", lambda: TurboVBI(_bnet(), 10, alpha=float("nan")), r"alpha must be a finite number"),
    ("unordered gammas", lambda: TurboVBI(_swapped(), 10), r"a_bar/b_bar > a/b"),
    ("t_a 0", lambda: TurboVBI(_bnet(), 10, t_a=0), r"t_a"),
    ("ratio <= 1", lambda: gamma_hyper(torch.randn(3, 3), 1.0), r"precision_ratio"),
    ("constant layer", lambda: gamma_hyper(torch.ones(3, 3)), r"Var\(w\) > 0"),
    ("bayesianize nothing", lambda: bayesianize(nn.Sequential(nn.ReLU())), r"no nn.Linear"),
    ("debayesianize nothing", lambda: debayesianize(nn.Sequential(nn.Linear(2, 2))), r"no BayesianLinear"),
    ("remove dead not sequential", lambda: remove_dead_neurons(nn.Linear(2, 2)), r"needs an nn.Sequential"),
    (
        "remove dead foldable",
        lambda: remove_dead_neurons(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))),
        r"only ReLU/Identity/Dropout",
    ),  # fmt: skip
]
