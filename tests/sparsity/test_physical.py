"""Masks turned into smaller networks: channel removal keeps the function, factorisation and CSR are exact."""

import pytest
import torch
from torch import nn

from priorkit.core.errors import PriorkitError
from priorkit.sparsity.masks import MaskSet
from priorkit.sparsity.physical import CSRLinear, factorize_linear, remove_pruned_channels


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))  # fmt: skip


@pytest.mark.parametrize("s", [0.25, 0.5, 0.75])
def test_channel_removal_keeps_the_masked_function(s):
    net = _cnn()
    masks = MaskSet(net, granularity="channel", include=lambda n, _m: n != "7").attach()
    masks.update(s)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
    n_params = sum(p.numel() for p in net.parameters())
    remove_pruned_channels(net, masks, x[:1])
    with torch.no_grad():
        assert torch.allclose(net(x), before, atol=1e-5)
    assert net[0].out_channels == 8 - int(s * 8) and net[2].in_channels == net[0].out_channels
    assert net[5].out_features == 32 - int(s * 32) and net[7].in_features == net[5].out_features
    assert sum(p.numel() for p in net.parameters()) < n_params


def test_channel_mask_masks_the_bias_so_a_pruned_channel_outputs_zero():
    lin = nn.Linear(4, 6)
    with torch.no_grad():
        lin.bias.fill_(1.0)
    masks = MaskSet(nn.Sequential(lin), granularity="channel").attach()
    masks.update(0.5)
    out = lin(torch.randn(3, 4))
    pruned = ~masks.masks()["0"].all(dim=1)
    assert bool((out[:, pruned] == 0).all()) and bool((out[:, ~pruned] != 0).any())


def test_factorize_is_exact_at_full_rank_and_the_best_rank_r_approximation():
    torch.manual_seed(0)
    lin = nn.Linear(12, 8)
    x = torch.randn(4, 12)
    assert torch.allclose(factorize_linear(lin, 8)(x), lin(x), atol=1e-5)
    f = factorize_linear(lin, 3)
    w = (f[1].weight @ f[0].weight).detach()
    s = torch.linalg.svdvals(lin.weight.detach())
    assert float(torch.linalg.matrix_norm(w - lin.weight.detach())) == pytest.approx(float(s[3:].norm()), rel=1e-4)


def test_csr_linear_equals_the_masked_dense_layer():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    masks = MaskSet(nn.Sequential(lin)).attach()
    masks.update(0.9)
    masks.remove()
    csr = CSRLinear(lin)
    x = torch.randn(2, 5, 32)
    assert torch.allclose(csr(x), lin(x), atol=1e-5)
    assert csr.nbytes < lin.weight.numel() * 4


def test_bad_input():
    net = _cnn()
    with pytest.raises(PriorkitError, match="granularity 'channel'"):
        remove_pruned_channels(net, MaskSet(net).attach(), torch.randn(1, 3, 8, 8))
    with pytest.raises(PriorkitError, match="rank must be <="):
        factorize_linear(nn.Linear(4, 3), 4)
    with pytest.raises(PriorkitError, match="nn.Linear"):
        CSRLinear(nn.Conv2d(1, 1, 1))
    lin = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    masks = MaskSet(lin, granularity="channel").attach()
    masks.set({"0": torch.zeros(2, 4, dtype=torch.bool)})
    with pytest.raises(PriorkitError, match="every output channel"):
        remove_pruned_channels(lin, masks, torch.randn(1, 4))
    with pytest.raises(PriorkitError, match="not channel-structured"):
        masks.set({"0": torch.tensor([[True, False, True, True], [True] * 4])})
