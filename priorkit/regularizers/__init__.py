"""Loss-level and target-level training methods: each module's ``__all__`` is its public surface."""

from priorkit.regularizers.drm import DRM, drm_loss, entropy_select, steer_step
from priorkit.regularizers.elr import ELR, clamped_softmax, elr_regularizer, elr_update
from priorkit.regularizers.hessian_alignment import HessianAlignmentRecipe, hgp_penalty, hutchinson_penalty
from priorkit.regularizers.msbreg import MSBReg, MSBRegNet, dispersion_terms
from priorkit.regularizers.ovor import OVOR, VirtualOutliers, synthesize_outliers, vor_loss
from priorkit.regularizers.pgdnm import PGDNM, MaskPolicy, mask_to_image, policy_surrogate
from priorkit.regularizers.pskd import PSKD, alpha_at, pskd_loss, pskd_targets
from priorkit.regularizers.stn import (
    STN,
    Hyper,
    HyperSpace,
    StnLinear,
    StnMLP,
    per_example_dropout,
    perturbation_entropy,
)
from priorkit.regularizers.tjepa import TJEPA, TJEPAHook, jepa_loss

__all__ = [
    "STN",
    "Hyper",
    "HyperSpace",
    "StnLinear",
    "StnMLP",
    "per_example_dropout",
    "perturbation_entropy",
    "PGDNM",
    "MaskPolicy",
    "mask_to_image",
    "policy_surrogate",
    "TJEPA",
    "TJEPAHook",
    "jepa_loss",
    "HessianAlignmentRecipe",
    "hgp_penalty",
    "hutchinson_penalty",
    "OVOR",
    "VirtualOutliers",
    "synthesize_outliers",
    "vor_loss",
    "MSBReg",
    "MSBRegNet",
    "dispersion_terms",
    "DRM",
    "drm_loss",
    "entropy_select",
    "steer_step",
    "ELR",
    "PSKD",
    "alpha_at",
    "clamped_softmax",
    "elr_regularizer",
    "elr_update",
    "pskd_loss",
    "pskd_targets",
]
