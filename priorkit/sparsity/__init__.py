"""Masks, pruning schedules, sparse training and compression."""

from priorkit.sparsity.baselines import GMP, one_shot_magnitude
from priorkit.sparsity.essential_sparsity import essential_sparsity, omp_masks, sparsity_sweep
from priorkit.sparsity.pdp import PDP, PDPMask, pdp_hard_mask, pdp_soft_mask, pdp_threshold

__all__ = [
    "GMP",
    "PDP",
    "PDPMask",
    "essential_sparsity",
    "omp_masks",
    "one_shot_magnitude",
    "pdp_hard_mask",
    "pdp_soft_mask",
    "pdp_threshold",
    "sparsity_sweep",
]
