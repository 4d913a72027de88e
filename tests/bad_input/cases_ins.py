"""Bad input for INS's public entry points and the MIL baselines (collected by tests/test_bad_input.py)."""

import torch

from priorkit.baselines.mil import GatedABMIL, abmil_recipe
from priorkit.data.mil import mil_gaussian
from priorkit.prototypes.ins import (
    INS,
    INSHook,
    bag_constraint_loss,
    candidate_sets,
    confidence_update,
    mlp_encoder,
    partial_loss,
    prototype_ema,
)


def _bags():
    return mil_gaussian(n=200, num_bags=(4, 4), bag_size=4, positives_per_bag=(1, 2), dim=6, seed=0).train


def _model():
    torch.manual_seed(0)
    return INS(mlp_encoder(6, 16), feature_dim=16, low_dim=8, queue_size=32)


def _nan():
    t = torch.randn(4, 6)
    t[0, 0] = float("nan")
    return t


NAN = float("nan")
_C = candidate_sets(torch.tensor([0, 1, 1, 0]))

CASES = [
    ("step_x_w_nan", lambda: _model().step(_nan(), torch.randn(4, 6), _C), r"x_w"),
    ("step_x_s_inf", lambda: _model().step(torch.randn(4, 6), torch.full((4, 6), float("inf")), _C), r"x_s"),
    ("step_x_w_dtype", lambda: _model().step(torch.ones(4, 6, dtype=torch.long), torch.randn(4, 6), _C), r"x_w"),
    ("step_x_s_shape", lambda: _model().step(torch.randn(4, 6), torch.randn(5, 6), _C), r"x_s"),
    ("step_candidates_shape", lambda: _model().step(torch.randn(4, 6), torch.randn(4, 6), torch.ones(4, 3)),
     r"candidates"),
    ("forward_candidates", lambda: _model()(torch.randn(4, 6), torch.randn(4, 6)), r"candidates"),
    ("hook_bags", lambda: INSHook(_bags().instance_dataset()), r"bags must be"),
    ("hook_bag_head", lambda: INSHook(_bags(), bag_head="attention"), r"bag_head"),
    ("hook_phi_range", lambda: INSHook(_bags(), phi_range=(0.9, 1.5)), r"phi_range"),
    ("hook_views", lambda: INSHook(_bags(), views=3), r"views"),
    ("candidate_labels", lambda: candidate_sets(torch.tensor([0, 2])), r"instance_bag_y"),
    ("confidence_nan_write", lambda: INSHook(_bags()).confidence.write(torch.arange(2), torch.full((2, 2), NAN)),
     r"rows"),
    ("confidence_update_shape", lambda: confidence_update(torch.rand(3, 2), torch.rand(2, 2), torch.ones(3, 2), 0.9),
     r"proto_scores"),
    ("prototype_ema_labels", lambda: prototype_ema(torch.zeros(2, 3), torch.randn(2, 3), torch.tensor([0, 2])),
     r"labels"),
    ("partial_loss_shape", lambda: partial_loss(torch.randn(3, 2), torch.rand(2, 2)), r"confidence"),
    ("bag_loss_empty", lambda: bag_constraint_loss(torch.tensor([1]), logits=[torch.zeros(0, 2)]), r"non-empty"),
    ("bag_loss_labels", lambda: bag_constraint_loss(torch.tensor([3]), logits=[torch.zeros(2, 2)]), r"bag_y"),
    ("abmil_bag_empty", lambda: GatedABMIL(mlp_encoder(6, 16), 16)(torch.zeros(0, 6)), r"bag must be"),
    ("abmil_recipe_bags", lambda: abmil_recipe(torch.zeros(3), 2), r"bags must be"),
]
