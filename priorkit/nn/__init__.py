"""Shared building blocks of priorkit's methods: distributed collectives (one ``gather_with_grad``), per-sample
memories, contrastive losses (SupCon, InfoNCE, MoCo), Sinkhorn, and global-batch augmented views.

Every piece here is used by more than one method (or is the one copy of math a method family shares); a
method module imports it instead of writing its own.
"""

from priorkit.nn.contrastive import info_nce, moco_info_nce, supcon_loss, supcon_views
from priorkit.nn.distributed import (
    all_gather_cat,
    all_reduce_mean,
    all_reduce_sum,
    gather_offset,
    gather_with_grad,
    is_dist,
    rank,
    world_size,
)
from priorkit.nn.memory import PerSampleMemory
from priorkit.nn.sinkhorn import sinkhorn
from priorkit.nn.views import global_views, view_generator

__all__ = [
    "global_views",
    "info_nce",
    "moco_info_nce",
    "sinkhorn",
    "supcon_loss",
    "supcon_views",
    "view_generator",
    "PerSampleMemory",
    "all_gather_cat",
    "all_reduce_mean",
    "all_reduce_sum",
    "gather_offset",
    "gather_with_grad",
    "is_dist",
    "rank",
    "world_size",
]
