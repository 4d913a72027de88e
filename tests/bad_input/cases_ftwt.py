"""Bad input for FTWT's public entry points."""

import torch
from torch import nn

from priorkit.baselines.filter_pruning import StaticChannelMask, l1_filter_keep
from priorkit.sparsity.ftwt import (
    FTWT,
    FTWTGate,
    dynamic_flops,
    filter_scores,
    ftwt_mask_loss,
    gate_conv_blocks,
    mass_targets,
    uniform_targets,
)


def _gate(**kw):
    return FTWTGate(nn.Conv2d(3, 4, 1), 3, 4, **kw)


CASES = [
    ("scores not a map", lambda: filter_scores(torch.randn(2, 3)), r"o must be a feature map"),
    ("r 0", lambda: mass_targets(torch.rand(2, 3), 0.0), r"r must be in"),
    ("r > 1", lambda: mass_targets(torch.rand(2, 3), 1.5), r"r must be in"),
    ("scores 3-D", lambda: mass_targets(torch.rand(2, 3, 1), 0.5), r"scores must be \[B, C\]"),
    ("p 1", lambda: uniform_targets(torch.rand(2, 3), 1.0), r"p must be in"),
    ("loss lengths", lambda: ftwt_mask_loss([torch.zeros(2, 3)], []), r"one target per gate"),
    ("gt_type", lambda: _gate(gt_type="topk"), r"gt_type must be one of"),
    ("mode", lambda: _gate(mode="coupled"), r"mode must be one of"),
    ("pool 0", lambda: _gate(pool=0), r"pool"),
    ("uniform p 1", lambda: _gate(gt_type="uniform", r=1.0), r"r must be in"),
    ("wrong channels", lambda: FTWTGate(nn.Conv2d(3, 4, 1), 3, 5)(torch.randn(1, 3, 2, 2)), r"do not match"),
    ("not sequential", lambda: gate_conv_blocks(nn.Conv2d(1, 2, 1)), r"needs an nn.Sequential"),
    ("no conv", lambda: gate_conv_blocks(nn.Sequential(nn.Linear(2, 2))), r"no Conv2d"),
    ("hook gates", lambda: FTWT([]), r"non-empty list of FTWTGate"),
    ("hook cooldown", lambda: FTWT([_gate()], cooldown=2.0), r"cooldown"),
    ("flops before forward", lambda: dynamic_flops([_gate(conv=nn.Conv2d(3, 4, 1))]), r"have run a forward"),
    ("l1 keep 0", lambda: l1_filter_keep(nn.Conv2d(1, 2, 1), 0.0), r"keep must be in"),
    ("static mask dtype", lambda: StaticChannelMask(nn.Identity(), torch.ones(3)), r"1-D bool tensor"),
]
