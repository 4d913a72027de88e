"""Loss-level and target-level training methods."""

from priorkit.regularizers.elr import ELR, elr_regularizer, elr_update
from priorkit.regularizers.pskd import PSKD, alpha_at, pskd_loss, pskd_targets

__all__ = ["ELR", "PSKD", "alpha_at", "elr_regularizer", "elr_update", "pskd_loss", "pskd_targets"]
