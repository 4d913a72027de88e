"""Bad input for TRP's public entry points."""

import torch
from torch import nn

from priorkit.sparsity.trp import (
    TRP,
    energy_rank,
    factorize_conv,
    nuclear_subgradient,
    project_low_rank,
    to_matrix,
    trp_decompose,
    value_rank,
)


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3))


CASES = [
    ("scheme", lambda: to_matrix(torch.randn(4, 2, 3, 3), "nd"), r"scheme must be one of"),
    ("not a conv weight", lambda: to_matrix(torch.randn(4, 2)), r"Conv2d weight \[N, C, kh, kw\]"),
    ("energy 0", lambda: energy_rank(torch.ones(3), 0.0), r"energy"),
    ("energy > 1", lambda: project_low_rank(torch.randn(4, 2, 3, 3), 1.5), r"energy"),
    ("negative threshold", lambda: value_rank(torch.ones(3), -1.0), r"threshold"),
    ("rank too big", lambda: nuclear_subgradient(torch.randn(4, 2, 3, 3), 5), r"rank must be <= 4"),
    ("rank 0", lambda: factorize_conv(nn.Conv2d(2, 4, 3), 0), r"rank"),
    ("factorize linear", lambda: factorize_conv(nn.Linear(2, 2), 1), r"conv must be an nn.Conv2d"),
    ("grouped conv", lambda: factorize_conv(nn.Conv2d(4, 4, 3, groups=2), 1), r"groups=1"),
    ("hook model", lambda: TRP("net"), r"model must be a torch.nn.Module"),
    ("hook period", lambda: TRP(_net(), period=0), r"period"),
    ("hook lambda", lambda: TRP(_net(), nuclear_weight=-1.0), r"nuclear_weight"),
    ("hook does nothing", lambda: TRP(_net(), trp=False, nuclear_weight=0.0), r"nuclear_weight > 0"),
    ("no targets", lambda: TRP(nn.Sequential(nn.Conv2d(1, 2, 3))), r"no target conv"),
    ("threshold kind", lambda: trp_decompose(_net(), threshold="rank"), r"threshold must be one of"),
    ("ranks unknown layer", lambda: trp_decompose(_net(), ranks={"0": 1}), r"not TRP targets"),
]
