"""Bad input for MSBReg's public entry points (collected by tests/test_bad_input.py)."""

from types import SimpleNamespace

import torch
from torch import nn

from priorkit.regularizers.msbreg import (
    MSBReg,
    MSBRegNet,
    _Target,
    brownian_directions,
    brownian_loss,
    byol_loss,
    dispersion_terms,
    ema_tau,
    ema_update_,
    multiview_centroid_loss,
    singular_value_loss,
)
from priorkit.train import Batch


def _q(b=4, v=2, d=3, seed=0):
    return torch.randn(b, v, d, generator=torch.Generator().manual_seed(seed))


def _nan(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[1] = value
    return t


def _loss(x, n_views=2, b=4, out_dim=None):
    """MSBReg.loss on a hand-made state: a linear online net (encoder = projector input) and its target."""
    net = MSBRegNet(nn.Linear(3, 5), 5, proj_dim=out_dim or 4, hidden=6)
    hook = MSBReg(n_views=n_views)
    hook.target = _Target(nn.Linear(3, 5), nn.Linear(5, 4))
    cfg = SimpleNamespace(seed=0)
    state = SimpleNamespace(net=net, model=net, global_indices=list(range(b)), world_size=1, rank=0, step=0,
                            config=cfg, device=torch.device("cpu"), log=lambda **k: None)  # fmt: skip
    return hook.loss(state, Batch(x=x, y=torch.zeros(b, dtype=torch.long), index=torch.arange(b)))


def _no_target():
    return MSBReg().state_dict()


def _load(state):
    hook = MSBReg()
    hook.target = _Target(nn.Linear(3, 5), nn.Linear(5, 4))
    hook.load_state_dict(state)


CASES = [
    ("mc_q_dtype", lambda: multiview_centroid_loss(torch.ones(4, 2, 3, dtype=torch.long), _q()), r"q must be a float"),
    ("mc_q_shape", lambda: multiview_centroid_loss(torch.randn(4, 3), _q()), r"q must have shape \[\*, \*, \*\]"),
    ("mc_t_batch", lambda: multiview_centroid_loss(_q(), _q(b=5)), r"t must have shape \[4, \*, 3\]"),
    ("mc_t_dim", lambda: multiview_centroid_loss(_q(), _q(d=7)), r"t must have shape \[4, \*, 3\]"),
    ("mc_empty", lambda: multiview_centroid_loss(_q(b=0), _q(b=0)), r"q must be a non-empty"),
    ("mc_nan", lambda: multiview_centroid_loss(_nan(_q()), _q()), r"q holds 1 NaN"),
    ("mc_t_inf", lambda: multiview_centroid_loss(_q(), _nan(_q(), float("inf"))), r"t holds 1 NaN"),
    ("mc_variant", lambda: multiview_centroid_loss(_q(), _q(), "mean"), r"variant must be one of"),
    ("mc_reduction", lambda: multiview_centroid_loss(_q(), _q(), reduction="sum"), r"reduction must be one of"),
    ("byol_one_view", lambda: byol_loss(_q(v=1), _q(v=1)), r"byol_loss needs two views"),
    ("byol_t_shape", lambda: byol_loss(_q(), _q(d=4)), r"t must have shape"),
    ("dirs_n", lambda: brownian_directions(0, 3), r"n must be an integer >= 1"),
    ("dirs_dim", lambda: brownian_directions(3, 2.5), r"dim must be an integer >= 1"),
    ("brownian_r_shape", lambda: brownian_loss(_q(), torch.randn(4, 5)), r"r must have shape \[4, 3\]"),
    ("brownian_r_nan", lambda: brownian_loss(_q(), _nan(torch.randn(4, 3))), r"r holds 1 NaN"),
    ("brownian_r_dtype", lambda: brownian_loss(_q(), torch.ones(4, 3, dtype=torch.long)), r"r must be a float"),
    ("brownian_q_nan", lambda: brownian_loss(_nan(_q()), torch.randn(4, 3)), r"q holds 1 NaN"),
    ("sv_form", lambda: singular_value_loss(torch.randn(5, 3), "nuclear"), r"form must be one of"),
    ("sv_one_row", lambda: singular_value_loss(torch.randn(1, 3)), r"z must hold at least 2 embeddings"),
    ("sv_shape", lambda: singular_value_loss(torch.randn(5, 3, 2)), r"z must have shape \[\*, \*\]"),
    ("sv_nan", lambda: singular_value_loss(_nan(torch.randn(5, 3))), r"z holds 1 NaN"),
    ("sv_dtype", lambda: singular_value_loss(torch.ones(5, 3, dtype=torch.int32)), r"z must be a float"),
    ("disp_no_r", lambda: dispersion_terms(_q(), None), r"r \(the Brownian directions"),
    ("disp_lambda_b", lambda: dispersion_terms(_q(), None, lambda_b=-1.0), r"lambda_b must be in \[0, inf\)"),
    ("disp_lambda_sv", lambda: dispersion_terms(_q(), None, lambda_sv=float("nan")), r"lambda_sv must be in"),
    ("disp_form", lambda: dispersion_terms(_q(), None, lambda_b=0, sv_form="x"), r"sv_form must be one of"),
    ("tau_step", lambda: ema_tau(11, 10), r"step must be an integer in \[0, 10\]"),
    ("tau_total", lambda: ema_tau(0, 0), r"total_steps must be an integer >= 1"),
    ("tau_base", lambda: ema_tau(0, 10, 1.5), r"tau_base must be in \[0, 1\]"),
    ("tau_schedule", lambda: ema_tau(0, 10, 0.99, "linear"), r"schedule must be one of"),
    ("ema_tau", lambda: ema_update_(nn.Linear(2, 2), nn.Linear(2, 2), -0.1), r"tau must be in \[0, 1\]"),
    ("ema_mismatch", lambda: ema_update_(nn.Linear(2, 2), nn.Linear(2, 3), 0.5), r"same parameters"),
    ("hook_views", lambda: MSBReg(n_views=0), r"n_views must be an integer >= 1"),
    ("hook_byol_views", lambda: MSBReg(n_views=1, attraction="byol"), r"n_views must be an integer >= 2"),
    ("hook_target_views", lambda: MSBReg(n_views=2, target_views=3), r"target_views must be in \[1, n_views=2\]"),
    ("hook_attraction", lambda: MSBReg(attraction="simclr"), r"attraction must be one of"),
    ("hook_centroid", lambda: MSBReg(centroid="median"), r"centroid must be one of"),
    ("hook_lambda_b", lambda: MSBReg(lambda_b=-0.1), r"lambda_b must be in"),
    ("hook_lambda_sv", lambda: MSBReg(lambda_sv=-1), r"lambda_sv must be in"),
    ("hook_sv_form", lambda: MSBReg(sv_form="nuclear"), r"sv_form must be one of"),
    ("hook_tau", lambda: MSBReg(tau_base=2.0), r"tau_base must be in \[0, 1\]"),
    ("hook_tau_schedule", lambda: MSBReg(tau_schedule="step"), r"tau_schedule must be one of"),
    ("hook_augment", lambda: MSBReg(augment=3), r"augment must be a callable"),
    ("hook_epochs", lambda: MSBReg().recipe(0), r"epochs must be an integer >= 1"),
    ("hook_no_target", _no_target, r"no target network yet"),
    ("hook_x_rows", lambda: _loss(torch.randn(6, 3)), r"batch.x must hold n_views \* batch = 2 \* 4"),
    ("hook_pred_dim", lambda: _loss(torch.randn(8, 3), out_dim=6), r"predictions have dim 6 but target"),
    ("hook_x_nan", lambda: _loss(_nan(torch.randn(8, 3))), r"predictions .*holds \d+ NaN"),
    ("hook_load_keys", lambda: _load({"target": {"w": torch.zeros(1)}, "tau": 0.9}), r"MSBReg target in the checkpo"),
    (
        "hook_load_shapes",
        lambda: _load(
            {"target": {k: torch.zeros(1) for k in _Target(nn.Linear(3, 5), nn.Linear(5, 4)).state_dict()}, "tau": 0.9}
        ),
        r"other shapes",
    ),  # fmt: skip
    ("net_encoder", lambda: MSBRegNet("mlp", 5), r"encoder must be a torch.nn.Module"),
    ("net_feat_dim", lambda: MSBRegNet(nn.Linear(3, 5), 0), r"feat_dim must be an integer >= 1"),
    ("net_norm", lambda: MSBRegNet(nn.Linear(3, 5), 5, norm="groupnorm"), r"norm must be one of"),
    ("net_proj_dim", lambda: MSBRegNet(nn.Linear(3, 5), 5, proj_dim=-2), r"proj_dim must be an integer >= 1"),
]
