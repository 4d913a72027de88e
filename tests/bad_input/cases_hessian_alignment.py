"""Bad input for Hessian alignment's public entry points (collected by tests/test_bad_input.py)."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.regularizers.hessian_alignment import (
    HessianAlignmentRecipe,
    hessian_gradient_product,
    hgp_penalty,
    hutchinson_diagonal,
    hutchinson_penalty,
)


def _setup(n_domains=2, nan=False):
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    other = nn.Linear(4, 3)
    x = torch.randn(n_domains, 6, 4)
    if nan:
        x[0, 0, 0] = float("nan")
    y = torch.randint(0, 3, (n_domains, 6))
    losses = [F.cross_entropy(head(x[k]), y[k]) for k in range(n_domains)]
    return head, other, losses


def _hgp(**kw):
    head, _, losses = _setup()
    return hgp_penalty(losses, list(head.parameters()), **kw)


def _hutch(**kw):
    head, _, losses = _setup()
    return hutchinson_penalty(losses, list(head.parameters()), **kw)


def _grad():
    head, _, losses = _setup()
    params = list(head.parameters())
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[0], params, create_graph=True)]), params


def _diag(**kw):
    g, params = _grad()
    return hutchinson_diagonal(g, params, **kw)


@functools.cache
def _data():
    from priorkit.data.domains import colored_digits

    return colored_digits(seed=0)


def _recipe(**kw):
    return HessianAlignmentRecipe(_data(), **kw)


def _fit(**kw):
    from priorkit.models import MLP
    from priorkit.train import TrainConfig, fit

    torch.manual_seed(0)
    args = dict(steps=1, per_domain=4)
    args.update(kw)
    fit(MLP(128, (4,), 2), None, HessianAlignmentRecipe(_data(), **args), config=TrainConfig(progress=False))


_H, _O, _L = _setup()

CASES = [
    ("hgp_one_domain", lambda: hgp_penalty(_setup(1)[2], list(_setup(1)[0].parameters())), r"at least 2, got 1"),
    ("hgp_losses_tensor", lambda: hgp_penalty(torch.ones(2), list(_H.parameters())), r"losses must be a list"),
    (
        "hgp_loss_not_scalar",
        lambda: hgp_penalty([torch.ones(2, requires_grad=True)] * 2, [_H.weight]),
        r"losses\[0\] must be a scalar tensor",
    ),  # fmt: skip
    ("hgp_loss_no_grad", lambda: hgp_penalty([torch.tensor(1.0)] * 2, [_H.weight]), r"losses\[0\] must require grad"),
    ("hgp_loss_nan", lambda: hgp_penalty(_setup(nan=True)[2], list(_setup()[0].parameters())), r"losses\[0\]"),
    ("hgp_params_empty", lambda: hgp_penalty(_setup()[2], []), r"params must hold at least one"),
    ("hgp_params_tensor", lambda: hgp_penalty(_setup()[2], _H.weight), r"params must be a list"),
    ("hgp_params_frozen", lambda: hgp_penalty(_setup()[2], [torch.zeros(3)]), r"params\[0\] must be a floating"),
    (
        "hgp_params_unrelated",
        lambda: hgp_penalty(_setup()[2], list(_setup()[1].parameters())),
        r"params \[0, 1\] do not reach losses\[0\]",
    ),  # fmt: skip
    ("hgp_alpha", lambda: _hgp(alpha=-1.0), r"alpha must be in \[0, inf\)"),
    ("hgp_beta", lambda: _hgp(beta=float("nan")), r"beta must be in"),
    ("hgp_reduction", lambda: _hgp(reduction="max"), r"reduction must be one of \['mean', 'sum'\]"),
    ("hgp_eps", lambda: _hgp(eps=-1e-3), r"eps must be in"),
    ("hutch_probes", lambda: _hutch(num_probes=0), r"num_probes must be an integer >= 1"),
    ("hutch_probe_kind", lambda: _hutch(probe="uniform"), r"probe must be one of \['rademacher', 'gaussian'\]"),
    ("hutch_reduction", lambda: _hutch(reduction="none"), r"reduction must be one of"),
    ("hutch_one_domain", lambda: hutchinson_penalty(_setup(1)[2], [_setup(1)[0].weight]), r"at least 2"),
    (
        "diag_grad_shape",
        lambda: hutchinson_diagonal(torch.zeros(3, requires_grad=True), list(_H.parameters())),
        r"grad must be the flattened head gradient of shape \[15\]",
    ),  # fmt: skip
    ("diag_grad_no_graph", lambda: hutchinson_diagonal(torch.zeros(15), list(_H.parameters())), r"grad must carry"),
    ("diag_probes_shape", lambda: _diag(probes=torch.ones(4, 7)), r"probes must have shape \[S, 15\]"),
    ("diag_num_probes", lambda: _diag(num_probes=-2), r"num_probes must be an integer >= 1"),
    ("diag_probe_kind", lambda: _diag(probe="sphere"), r"probe must be one of"),
    ("hgp_product_loss", lambda: hessian_gradient_product(torch.ones(2), [_H.weight]), r"loss must be a scalar"),
    (
        "hgp_product_eps",
        lambda: hessian_gradient_product(_setup()[2][0], list(_setup()[0].parameters()), eps=-1.0),
        r"eps must be in",
    ),  # fmt: skip
    ("recipe_data", lambda: HessianAlignmentRecipe([1, 2]), r"data must be a priorkit.data.domains.DomainData"),
    ("recipe_penalty", lambda: _recipe(penalty="fishr"), r"penalty must be one of \['hgp', 'hutchinson'\]"),
    ("recipe_penalty_type", lambda: _recipe(penalty=3), r"penalty must be one of .* None or a callable"),
    ("recipe_head", lambda: _recipe(head=""), r"head must be a non-empty parameter-name prefix"),
    ("recipe_alpha", lambda: _recipe(alpha=-1.0), r"alpha must be in"),
    ("recipe_probes", lambda: _recipe(num_probes=0), r"num_probes must be an integer >= 1"),
    ("recipe_probe_kind", lambda: _recipe(probe="x"), r"probe must be one of"),
    ("recipe_reduction", lambda: _recipe(reduction="avg"), r"reduction must be one of"),
    ("recipe_weight", lambda: _recipe(penalty_weight=-1.0), r"penalty_weight must be in"),
    ("recipe_l2", lambda: _recipe(l2=-0.1), r"l2 must be in"),
    ("recipe_lr", lambda: _recipe(lr=0.0), r"lr must be in \(0, inf\)"),
    ("recipe_steps", lambda: _recipe(steps=0), r"steps must be an integer >= 1"),
    ("recipe_anneal", lambda: _recipe(steps=10, anneal_steps=20), r"anneal_steps must be in \[0, steps=10\]"),
    ("recipe_anneal_neg", lambda: _recipe(anneal_steps=-1), r"anneal_steps must be an integer >= 0"),
    ("recipe_per_domain", lambda: _recipe(per_domain=10_000), r"per_domain \(10000\) exceeds the smallest"),
    ("recipe_per_domain_zero", lambda: _recipe(per_domain=0), r"per_domain must be an integer >= 1"),
    (
        "recipe_steps_per_epoch",
        lambda: _recipe(steps=10, anneal_steps=4, steps_per_epoch=3),
        r"steps_per_epoch \(3\) must divide steps \(10\) and anneal_steps \(4\)",
    ),  # fmt: skip
    ("recipe_seed", lambda: _recipe(seed=-1), r"seed must be an integer >= 0"),
    ("recipe_fit_head", lambda: _fit(head="classifier"), r"head 'classifier' matches no parameter"),
    ("recipe_fit_bias_only", lambda: _fit(head="head.bias", include_bias=False), r"has no trainable parameter"),
    (
        "recipe_fit_penalty_scalar",
        lambda: _fit(penalty=lambda lg, y, losses, p: torch.ones(2)),
        r"a penalty callable must return a scalar tensor",
    ),  # fmt: skip
]
