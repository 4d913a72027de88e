"""FTWT: the card's property tests (mass rule, decoupling, cooldown, exact masking), FLOPs count, resume."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorkit.baselines.filter_pruning import StaticChannelMask, l1_filter_keep
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.sparsity.ftwt import (
    FTWT,
    FTWTGate,
    dynamic_flops,
    filter_scores,
    ftwt_mask_loss,
    ftwt_optimizer,
    gate_conv_blocks,
    mass_targets,
    uniform_targets,
)
from priorkit.train import Phase, Recipe, TrainConfig, Trainer


def test_mass_rule_keeps_the_descending_prefix_within_r():
    a = torch.tensor([[0.5, 0.1, 0.3, 0.1, 0.0]])  # shares 0.5, 0.1, 0.3, 0.1, 0
    assert mass_targets(a, 0.8).tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0]]  # 0.5 + 0.3 = 0.8 <= r + delta
    assert mass_targets(a, 0.7).tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]  # the crossing filter (0.3) is dropped
    assert mass_targets(a, 1.0).tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]  # r = 1: only dead filters
    one = torch.tensor([[0.9, 0.05, 0.05]])
    assert mass_targets(one, 0.5).sum() == 0  # a single filter above r: the code zeroes the layer
    assert mass_targets(one, 0.5, keep_crossing=True).tolist() == [[1.0, 0.0, 0.0]]
    torch.manual_seed(0)
    s = torch.rand(6, 20)
    g = mass_targets(s, 0.6)
    share = s / s.sum(1, keepdim=True)
    for i in range(6):
        kept = share[i][g[i].bool()]
        assert float(kept.sum()) <= 0.6 + 1e-5
        assert float(kept.min()) >= float(share[i][~g[i].bool()].max())  # a prefix of the descending order


def test_uniform_targets_drop_floor_pc_lowest_and_dead():
    s = torch.tensor([[0.4, 0.1, 0.3, 0.2, 0.0]])
    assert uniform_targets(s, 0.4).tolist() == [[1.0, 0.0, 1.0, 1.0, 0.0]]


def _gate(**kw):
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
    return FTWTGate(block, 3, 6, conv=block[0], **kw)


def test_masked_output_is_o_times_binary_b():
    gate = _gate()
    x = torch.randn(4, 3, 5, 5)
    out = gate(x)
    b = gate.last["b"]
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out, gate.block(x) * b[:, :, None, None])
    assert torch.equal(gate.last["g"], mass_targets(filter_scores(gate.block(x)), 0.9))


def test_decoupled_losses_train_disjoint_parameters():
    gate = _gate()
    x = torch.randn(4, 3, 5, 5)
    out = gate(x)
    ftwt_mask_loss([gate.last["z"]], [gate.last["g"]]).backward(retain_graph=True)
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in gate.block.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in gate.predictor.parameters())
    gate.zero_grad(set_to_none=True)
    out.sum().backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in gate.predictor.parameters())


def test_joint_mode_lets_the_mask_loss_reach_earlier_layers():
    torch.manual_seed(0)
    pre = nn.Conv2d(3, 3, 1)
    gate = _gate(mode="joint")
    gate(pre(torch.randn(4, 3, 5, 5)))
    ftwt_mask_loss([gate.last["z"]], [gate.last["g"]]).backward()
    assert float(pre.weight.grad.abs().sum()) > 0


def test_loss_sums_over_filters_and_averages_over_layers():
    z1, g1 = torch.randn(4, 3), (torch.rand(4, 3) > 0.5).float()
    z2, g2 = torch.randn(4, 5), (torch.rand(4, 5) > 0.5).float()
    ref = (F.binary_cross_entropy_with_logits(z1, g1, reduction="sum") / 4
           + F.binary_cross_entropy_with_logits(z2, g2, reduction="sum") / 4) / 2  # fmt: skip
    assert float(ftwt_mask_loss([z1, z2], [g1, g2])) == pytest.approx(float(ref), rel=1e-6)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip


def test_dynamic_flops_is_the_codes_count():
    model = _net()
    gates = gate_conv_blocks(model, r=0.8)
    model(torch.randn(2, 1, 4, 4))
    b1, b2 = gates[0].last["b"], gates[1].last["b"]
    hw = 16
    dyn = ((b1.sum(1) * hw * 1 * 9) + (b2.sum(1) * hw * b1.sum(1) * 9)).mean()
    d, dense = dynamic_flops(gates)
    assert d == pytest.approx(float(dyn)) and dense == 4 * hw * 9 + 8 * hw * 4 * 9


def _data():
    g = torch.Generator().manual_seed(0)
    return IndexedTensorDataset(torch.randn(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g))


def _fit(epochs=4, ckpt=None, stop=None, resume=False, cooldown=0.5):
    torch.set_num_threads(1)
    model = _net()
    gates = gate_conv_blocks(model, r=0.8)
    phase = Phase("fit", epochs=epochs, optimizer=lambda m: ftwt_optimizer(m, gates))
    cfg = TrainConfig(epochs=epochs, batch_size=16, seed=0, ckpt_dir=ckpt, stop_after_epoch=stop, progress=False)
    hist = Trainer(model, _data(), recipe=Recipe([phase]), hooks=[FTWT(gates, cooldown=cooldown)], config=cfg).fit(
        resume=resume
    )
    return model, gates, hist


def test_cooldown_freezes_the_gates():
    _, _, hist = _fit(epochs=4, cooldown=0.5)
    assert "mask_bce" in hist[0] and "mask_bce" in hist[1] and "mask_bce" not in hist[3]
    # with the cooldown at 0 the mask loss never runs: the gate parameters never move (no gradient, no decay)
    _, gates2, _ = _fit(epochs=4, cooldown=0.0)
    init = _net()
    gate_init = gate_conv_blocks(init, r=0.8)
    for g0, g in zip(gate_init, gates2):
        for p0, p in zip(g0.predictor.parameters(), g.predictor.parameters()):
            assert torch.equal(p0, p)


def test_resume_is_bit_identical(tmp_path):
    full, _, _ = _fit(ckpt=str(tmp_path / "a"))
    _fit(ckpt=str(tmp_path / "b"), stop=1)
    resumed, _, _ = _fit(ckpt=str(tmp_path / "b"), resume=True)
    for (k, v), v2 in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, v2), k


def test_l1_filter_baseline_keeps_the_largest_l1_filters():
    conv = nn.Conv2d(2, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -4.0, 2.0, 3.0]).view(4, 1, 1, 1).expand(4, 2, 1, 1))
    assert l1_filter_keep(conv, 0.5).tolist() == [False, True, False, True]
    m = StaticChannelMask(nn.Sequential(conv), l1_filter_keep(conv, 0.5))
    out = m(torch.randn(3, 2, 2, 2))
    assert bool((out[:, [0, 2]] == 0).all())
