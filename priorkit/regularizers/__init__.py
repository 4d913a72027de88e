"""Loss-level and target-level training methods: each module's ``__all__`` is its public surface."""

from priorkit.regularizers.drm import DRM, drm_loss, entropy_select, steer_step
from priorkit.regularizers.elr import ELR, clamped_softmax, elr_regularizer, elr_update
from priorkit.regularizers.pskd import PSKD, alpha_at, pskd_loss, pskd_targets

__all__ = [
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
