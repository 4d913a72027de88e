"""Shared building blocks of priorkit's methods: distributed collectives, per-sample memories and more.

Every piece here is used by more than one method (or is the one copy of math a method family shares); a
method module imports it instead of writing its own.
"""

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

__all__ = [
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
