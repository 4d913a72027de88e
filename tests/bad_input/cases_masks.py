"""Bad input for the family's mask mechanism (priorkit.sparsity.masks)."""

import torch
from torch import nn

from priorkit.sparsity.masks import Granularity, MaskSet, keep_masks


def _net():
    return nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))


def _attached(**kw):
    return MaskSet(_net(), **kw).attach()


CASES = [
    ("unknown granularity", lambda: MaskSet(_net(), granularity="block"), r"granularity.*unstructured"),
    ("nm without n, m", lambda: Granularity("nm"), r"needs n and m"),
    ("n >= m", lambda: Granularity("nm", 4, 4), r"0 < n < m"),
    ("n, m for unstructured", lambda: Granularity("unstructured", 2, 4), r"only for granularity 'nm'"),
    ("nm indivisible in_features", lambda: MaskSet(_net(), granularity="nm", n=2, m=4), r"divisible by m.*'0'"),
    ("not a module", lambda: MaskSet("net"), r"model must be a torch.nn.Module"),
    ("empty owner", lambda: MaskSet(_net(), owner=""), r"owner"),
    ("sparsity 1", lambda: _attached().update(1.0), r"sparsity"),
    ("sparsity missing", lambda: _attached().update(None), r"needs a sparsity"),
    ("nm wrong sparsity", lambda: keep_masks({"a": torch.rand(4, 8)}, 0.3, "nm", n=2, m=4), r"1 - n/m"),
    ("per-layer + global", lambda: _attached().update({"0": 0.1, "1": 0.2}, scope="global"), r"scope='layer'"),
    ("per-layer missing", lambda: _attached().update({"0": 0.1}), r"no value for layer"),
    ("unknown scope", lambda: _attached().update(0.5, scope="net"), r"scope"),
    ("mask shape", lambda: _attached().set({"0": torch.ones(3, 3, dtype=torch.bool)}), r"shape \[4, 6\]"),
    ("mask dtype", lambda: _attached().set({"0": torch.ones(4, 6)}), r"bool tensor"),
    ("mask unknown layer", lambda: _attached().set({"9": torch.ones(4, 6, dtype=torch.bool)}), r"unknown layer"),
    ("not attached", lambda: MaskSet(_net()).masks(), r"not attached"),
    ("nan scores", lambda: keep_masks({"a": torch.tensor([[1.0, float("nan")]])}, 0.5), r"scores\['a'\]"),
    ("scores wrong layers", lambda: _attached().compute(0.5, {"0": torch.rand(4, 6)}), r"exactly the masked layers"),
]
