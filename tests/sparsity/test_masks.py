"""The family's one mask mechanism: exact granularities, gradients, stacking refusals, checkpoints, DDP sync."""

import math

import pytest
import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from torch.ao.pruning.scheduler.cubic_scheduler import CubicSL
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from priorkit.baselines.gmp import GMP
from priorkit.core.errors import HookConflictError
from priorkit.models import MLP
from priorkit.sparsity._common import cubic_sparsity
from priorkit.sparsity.masks import MaskSet, WeightMask, attach_parametrization, keep_masks, nm_valid, raw_weight
from priorkit.sparsity.pdp import PDP
from priorkit.train.distributed import run_gloo


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 12), nn.Linear(12, 3))


@pytest.mark.parametrize("s", [0.0, 0.3, 0.75, 0.99])
def test_unstructured_exact_counts_per_layer_and_global(s):
    net = _conv_net()
    ms = MaskSet(net).attach()
    for scope in ("layer", "global"):
        masks = ms.compute(s, scope=scope)
        zeros = {n: int((~m).sum()) for n, m in masks.items()}
        if scope == "layer":
            assert zeros == {n: math.floor(s * m.numel()) for n, m in masks.items()}
        else:
            total = sum(m.numel() for m in masks.values())
            assert sum(zeros.values()) == math.floor(s * total)
            w = ms.weights()
            kept = torch.cat([w[n].detach().abs()[m] for n, m in masks.items()])
            pruned = torch.cat([w[n].detach().abs()[~m] for n, m in masks.items()])
            if len(pruned):
                assert pruned.max() <= kept.min()


def test_channel_granularity_zeros_whole_output_channels_by_norm():
    net = _conv_net()
    ms = MaskSet(net, granularity="channel").attach()
    ms.update(0.5)
    for name, mask in ms.masks().items():
        rows = mask.flatten(1)
        assert bool((rows.all(1) | (~rows).all(1)).all()), name  # every channel all kept or all pruned
        out = mask.shape[0]
        assert int((~rows.all(1)).sum()) == math.floor(0.5 * out)
        norms = raw_weight(ms.layers[name]).detach().flatten(1).norm(dim=1)
        assert norms[~rows.all(1)].max() <= norms[rows.all(1)].min()


def test_nm_granularity_matches_torch_ao_weight_norm_sparsifier():
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Linear(16, 8))
    ours = nn.Sequential(nn.Linear(16, 8))
    ours.load_state_dict(ref.state_dict())
    sp = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sp.prepare(ref, [{"tensor_fqn": "0.weight"}])
    sp.step()
    ao_mask = ref[0].parametrizations.weight[0].mask.bool()
    ms = MaskSet(ours, granularity="nm", n=2, m=4).attach()
    ms.update()
    assert torch.equal(ms.masks()["0"], ao_mask)
    assert nm_valid(ms.masks()["0"], 2, 4)
    # on a conv, groups run along input channels at every kernel position
    conv = nn.Conv2d(8, 4, 3)
    mask = MaskSet(nn.Sequential(conv), granularity="nm", n=1, m=4).attach().update()["0"]
    assert bool((mask.movedim(1, -1).reshape(-1, 4).sum(1) == 1).all())


@pytest.mark.parametrize("t", [0, 3, 10, 17, 40])
def test_cubic_schedule_equals_torch_ao_cubic(t):
    ours = cubic_sparsity(t, 5, 25, 0.9, initial=0.1)
    theirs = CubicSL.sparsity_compute_fn(0.1, 0.9, t, 5, 20, 1, initially_zero=False)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_masked_forward_and_gradient():
    net = _conv_net()
    ms = MaskSet(net).attach()
    ms.update(0.6)
    x = torch.randn(5, 4, 6, 6)
    net(x).square().sum().backward()
    for name, layer in ms.layers.items():
        mask = ms.masks()[name]
        assert bool((layer.weight[~mask] == 0).all())
        assert bool((raw_weight(layer).grad[~mask] == 0).all()), name
        assert bool((raw_weight(layer).grad[mask] != 0).any()), name


def test_zero_pruned_and_remove_bakes_zeros():
    net = _conv_net()
    ms = MaskSet(net, owner="t").attach()
    ms.update(0.5)
    masks = ms.masks()
    ms.zero_pruned_()
    for name, w in ms.weights().items():
        assert bool((w[~masks[name]] == 0).all())
    ms.remove()
    for name, layer in ms.layers.items():
        assert not parametrize.is_parametrized(layer)
        assert int((layer.weight == 0).sum()) >= int((~masks[name]).sum())


def test_checkpoint_round_trip_carries_masks():
    net = _conv_net()
    MaskSet(net, owner="t").attach().update(0.7)
    state = net.state_dict()
    fresh = _conv_net()
    ms = MaskSet(fresh, owner="t").attach()
    fresh.load_state_dict(state)
    assert ms.sparsity() == pytest.approx(MaskSet(net, owner="t").sparsity())
    x = torch.randn(3, 4, 6, 6)
    assert torch.equal(net(x), fresh(x))


def test_stacking_is_refused_unless_composable():
    net = nn.Sequential(nn.Linear(6, 4))
    spectral_norm(net[0])
    with pytest.raises(HookConflictError, match="composable"):
        MaskSet(net).attach()

    net = MLP(6, (8,), 3)
    pdp = PDP(net, 0.5, warmup_epochs=0, eps=0.5)
    pdp.on_fit_start(None)
    with pytest.raises(HookConflictError, match="PDPMask"):
        MaskSet(net).attach()

    class Scale(nn.Module):
        composable = True

        def forward(self, w):
            return 2 * w

    net = nn.Sequential(nn.Linear(6, 4))
    attach_parametrization(net[0], Scale())
    ms = MaskSet(net, owner="t").attach()  # both declare composable: allowed
    ms.update(0.5)
    assert int((net[0].weight == 0).sum()) == 12
    with pytest.raises(HookConflictError, match="already masked by 't'"):
        MaskSet(net, owner="other").attach()
    with pytest.raises(HookConflictError, match="2 parametrizations"):
        ms.remove()


def test_gmp_channel_granularity_runs_through_the_hook():
    net = MLP(6, (16,), 3)
    hook = GMP(net, 0.5, start_epoch=0, end_epoch=1, granularity="channel")
    hook.on_fit_start(None)
    from types import SimpleNamespace

    hook.on_epoch_start(SimpleNamespace(epoch=0))
    for mask in hook.masks.masks().values():
        rows = mask.flatten(1)
        assert int((~rows.all(1)).sum()) == math.floor(0.5 * mask.shape[0])


def test_keep_masks_functional_core_per_layer_budgets():
    scores = {"a": torch.rand(10, 4), "b": torch.rand(6, 4)}
    masks = keep_masks(scores, {"a": 0.5, "b": 0.25})
    assert int((~masks["a"]).sum()) == 20 and int((~masks["b"]).sum()) == 6


def _sync_worker(rank: int, out: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    ms = MaskSet(net, owner="t").attach()
    g = torch.Generator().manual_seed(100 + rank)  # every rank draws a different random mask
    masks = {n: torch.rand(m.shape, generator=g) > 0.5 for n, m in ms.masks().items()}
    ms.set(masks)  # broadcast from rank 0
    mine = ms.masks()
    gathered = [None, None]
    torch.distributed.all_gather_object(gathered, {n: m.tolist() for n, m in mine.items()})
    if rank == 0:
        torch.save({"same": gathered[0] == gathered[1], "rank0": {n: m.tolist() for n, m in masks.items()}}, out)


def test_two_process_masks_are_broadcast_from_rank_0(tmp_path):
    out = str(tmp_path / "sync.pt")
    run_gloo(_sync_worker, 2, out)
    res = torch.load(out, weights_only=False)
    assert res["same"]


def test_weight_mask_is_bool_and_reports_density():
    wm = WeightMask(torch.tensor([[1.0, 0.0]]), owner="x")
    assert wm.mask.dtype == torch.bool and "density=0.5000" in repr(wm)
