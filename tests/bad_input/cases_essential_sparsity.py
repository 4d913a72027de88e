"""Bad input for essential sparsity's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.models import MLP
from priorkit.sparsity.essential_sparsity import (
    essential_sparsity,
    knee_sharpness,
    nm_masks,
    omp_masks,
    prune_copy,
    random_masks,
    sparsity_sweep,
)


def _weights(bad=None):
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(4, 8, generator=g), "b": torch.randn(3, 4, generator=g)}
    if bad is not None:
        w["b"][0, 0] = bad
    return w


GRID = [0.0, 0.3, 0.6]

CASES = [
    ("omp_masks_nan", lambda: omp_masks(_weights(float("nan")), 0.5), r"weights\['b'\]"),
    ("omp_masks_inf", lambda: omp_masks(_weights(float("inf")), 0.5), r"weights\['b'\]"),
    ("omp_masks_empty", lambda: omp_masks({}, 0.5), r"weights must be a non-empty dict"),
    ("omp_masks_dtype", lambda: omp_masks({"a": torch.ones(3, 3, dtype=torch.long)}, 0.5), r"weights\['a'\] must be"),
    ("omp_masks_empty_tensor", lambda: omp_masks({"a": torch.zeros(0, 3)}, 0.5), r"weights\['a'\] must be a non-empty"),
    ("omp_masks_sparsity", lambda: omp_masks(_weights(), 1.0), r"sparsity must be in \[0, 1\)"),
    ("random_masks_nan", lambda: random_masks(_weights(float("nan")), 0.5), r"weights\['b'\]"),
    ("random_masks_sparsity", lambda: random_masks(_weights(), -0.5), r"sparsity must be in"),
    ("nm_masks_n", lambda: nm_masks(_weights(), 4, 4), r"n_pruned must be in \[0, M\)"),
    ("nm_masks_type", lambda: nm_masks(_weights(), 1.5, 4), r"n_pruned must be an integer"),
    ("nm_masks_nan", lambda: nm_masks(_weights(float("nan")), 2, 4), r"weights\['b'\]"),
    ("nm_masks_divisible", lambda: nm_masks({"a": torch.randn(4, 6)}, 2, 4), r"divisible by M"),
    ("essential_length", lambda: essential_sparsity(GRID, [1.0, 0.9]), r"same length"),
    ("essential_grid", lambda: essential_sparsity([0.1, 0.3], [1.0, 0.9]), r"sparsities must start at 0"),
    ("essential_grid_range", lambda: essential_sparsity([0.0, 1.2], [1.0, 0.9]), r"sparsities must be in \[0, 1\)"),
    ("essential_perf_nan", lambda: essential_sparsity(GRID, [1.0, float("nan"), 0.5]), r"perf holds"),
    ("essential_tol", lambda: essential_sparsity(GRID, [1.0, 0.9, 0.5], tol=-0.1), r"tol must be in"),
    ("knee_s_star", lambda: knee_sharpness(GRID, [1.0, 0.9, 0.5], 0.5), r"s_star must be one of"),
    ("knee_perf_inf", lambda: knee_sharpness(GRID, [1.0, float("inf"), 0.5], 0.3), r"perf holds"),
    ("prune_copy_model", lambda: prune_copy("net", 0.5), r"model must be a torch.nn.Module"),
    ("prune_copy_pruner", lambda: prune_copy(MLP(8, (8,), 4), 0.5, pruner="imp"), r"pruner must be one of"),
    ("prune_copy_sparsity", lambda: prune_copy(MLP(8, (8,), 4), 1.0), r"sparsity must be in"),
    ("prune_copy_nm", lambda: prune_copy(MLP(8, (8,), 4), 0.5, pruner="nm", nm=(2,)), r"nm must be a pair"),
    ("sweep_evaluate", lambda: sparsity_sweep(MLP(8, (8,), 4), None, GRID), r"evaluate must be a callable"),
    ("sweep_model", lambda: sparsity_sweep(None, lambda m: 1.0, GRID), r"model must be a torch.nn.Module"),
    ("sweep_grid", lambda: sparsity_sweep(MLP(8, (8,), 4), lambda m: 1.0, [0.0, 1.0]), r"sparsities must be in"),
    ("sweep_grid_empty", lambda: sparsity_sweep(MLP(8, (8,), 4), lambda m: 1.0, []), r"sparsities must hold"),
    ("sweep_nan", lambda: sparsity_sweep(MLP(8, (8,), 4), lambda m: float("nan"), GRID), r"evaluate returned nan"),
    ("sweep_pruner", lambda: sparsity_sweep(MLP(8, (8,), 4), lambda m: 1.0, GRID, pruner="x"), r"pruner must be one"),
]
