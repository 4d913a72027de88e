import pytest
import torch
from torch import nn

from priorkit.core.errors import PriorkitError
from priorkit.data import gaussian_mixture
from priorkit.models import MLP
from priorkit.sparsity.pdp import PDP, PDPMask, pdp_hard_mask, pdp_soft_mask, pdp_threshold
from priorkit.train import TrainConfig, Trainer


def test_mask_range_half_at_threshold_monotone_symmetric():
    w = torch.randn(64, 32) * 0.1
    tau = 1e-2
    m = pdp_soft_mask(w, 0.7, tau)
    assert ((m > 0) & (m < 1)).all()
    t = pdp_threshold(w, 0.7)
    assert torch.sigmoid((t * t - t * t) / tau) == 0.5  # m(+-t) = 0.5 by the formula the mask uses
    near = (w.abs() - t).abs().argmin()
    assert abs(float(m.flatten()[near]) - 0.5) < 0.05
    order = w.abs().flatten().argsort()
    assert (m.flatten()[order].diff() >= -1e-7).all()
    assert torch.allclose(pdp_soft_mask(-w, 0.7, tau), m)


def test_hard_mask_exact_count():
    w = torch.randn(50, 40)
    keep = pdp_hard_mask(w, 0.9)
    assert int((~keep).sum()) == int(0.9 * w.numel())
    assert w.abs()[~keep].max() <= w.abs()[keep].min()


def test_nm_every_group_keeps_n():
    w = torch.randn(8, 16)
    m = pdp_soft_mask(w, 0.0, 1e-4, mode="nm", n=1, m=4)
    assert ((m >= 0.5).view(8, 4, 4).sum(-1) == 1).all()
    assert (pdp_hard_mask(w, 0.0, mode="nm", n=1, m=4).view(8, 4, 4).sum(-1) == 1).all()
    with pytest.raises(PriorkitError, match="divisible by M"):
        pdp_soft_mask(torch.randn(4, 6), 0.0, mode="nm", n=1, m=4)


def test_no_nan_for_large_weights():
    w = torch.linspace(-10, 10, 1000).view(10, 100)
    assert torch.isfinite(pdp_soft_mask(w, 0.5, 1e-4)).all()


def test_gradient_with_detached_threshold():
    w = (torch.randn(20, 10) * 0.05).requires_grad_()
    tau = 1e-3
    (pdp_soft_mask(w, 0.5, tau) * w).sum().backward()
    m = pdp_soft_mask(w.detach(), 0.5, tau)
    assert torch.allclose(w.grad, m + 2 * w.detach() ** 2 / tau * m * (1 - m), atol=1e-5)


def test_channel_mode_zeros_whole_channels():
    w = torch.randn(10, 6, 3, 3)
    keep = pdp_hard_mask(w, 0.3, mode="channel")
    per = keep.flatten(1)
    assert ((per.all(1)) | (~per.any(1))).all() and int((~per.all(1)).sum()) == 3
    soft = pdp_soft_mask(w, 0.3, 1e-2, mode="channel")
    assert torch.allclose(soft, soft[:, :1, :1, :1].expand_as(soft))


def test_schedule_then_hard_mask_gives_target_sparsity():
    data = gaussian_mixture(400, num_classes=3, dim=8, seed=0)
    model = MLP(8, (32,), 3)
    hook = PDP(model, 0.8, warmup_epochs=1, eps=0.5, tau_mode="relative", tau=0.1)
    Trainer(model, data.train, hooks=[hook], config=TrainConfig(epochs=4, batch_size=64, lr=0.05)).fit()
    assert hook.hard
    zeros = sum(int((m.weight == 0).sum()) for m in hook.layers.values())
    total = sum(m.weight.numel() for m in hook.layers.values())
    assert zeros == pytest.approx(0.8 * total, abs=len(hook.layers))
    assert hook.ratio("body.0", 0) == 0.0 and hook.ratio("body.0", 1) == pytest.approx(0.5 * hook.budgets["body.0"])


def test_parametrize_is_used():
    model = nn.Sequential(nn.Linear(4, 4))
    hook = PDP(model, 0.5)
    hook.on_fit_start(None)
    assert isinstance(model[0].parametrizations.weight[0], PDPMask)


def test_bad_arguments():
    with pytest.raises(PriorkitError, match=r"sparsity must be in \[0, 1\)"):
        PDP(MLP(4, (4,), 2), 1.0)
    with pytest.raises(PriorkitError, match="mode must be one of"):
        PDP(MLP(4, (4,), 2), 0.5, mode="block")
