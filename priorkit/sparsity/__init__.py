"""Masks, pruning schedules, sparse training and compression (one module per method id).

Every weight mask of the family is a :class:`MaskSet` (``priorkit.sparsity.masks``): boolean parametrizations at
unstructured, N:M or channel granularity, saved in checkpoints and broadcast from rank 0 under DDP.

The pruning baselines of other papers (gradual and one-shot magnitude pruning) live in
``priorkit.baselines.gmp``.
"""

from priorkit.sparsity.essential_sparsity import (
    essential_sparsity,
    knee_sharpness,
    nm_masks,
    omp_masks,
    prune_copy,
    random_masks,
    sparsity_sweep,
)
from priorkit.sparsity.ftwt import FTWT, FTWTGate, gate_conv_blocks
from priorkit.sparsity.iss_p import ISSP
from priorkit.sparsity.masks import Granularity, MaskSet, WeightMask, attach_parametrization, keep_masks
from priorkit.sparsity.pdp import PDP, PDPMask, pdp_hard_mask, pdp_soft_mask, pdp_threshold
from priorkit.sparsity.trp import TRP, factorize_conv, trp_decompose
from priorkit.sparsity.turbo_vbi import TurboVBI, bayesianize, debayesianize, remove_dead_neurons

__all__ = [
    "TurboVBI",
    "bayesianize",
    "debayesianize",
    "remove_dead_neurons",
    "ISSP",
    "FTWT",
    "FTWTGate",
    "gate_conv_blocks",
    "TRP",
    "factorize_conv",
    "trp_decompose",
    "Granularity",
    "MaskSet",
    "WeightMask",
    "attach_parametrization",
    "keep_masks",
    "PDP",
    "PDPMask",
    "essential_sparsity",
    "knee_sharpness",
    "nm_masks",
    "omp_masks",
    "pdp_hard_mask",
    "pdp_soft_mask",
    "pdp_threshold",
    "prune_copy",
    "random_masks",
    "sparsity_sweep",
]
