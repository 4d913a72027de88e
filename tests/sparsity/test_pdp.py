from types import SimpleNamespace

import pytest
import torch
from torch import nn

from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data import IndexedTensorDataset, gaussian_mixture
from priorkit.models import MLP
from priorkit.sparsity.pdp import PDP, PDPMask, pdp_hard_mask, pdp_soft_mask, pdp_threshold
from priorkit.train import TrainConfig, Trainer
from priorkit.train.distributed import run_gloo


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


# ---------------------------------------------------------------------- NaN safety, resume, DDP equality
def _state(hook, model):
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    return {"budgets": dict(hook.budgets), "hard": hook.hard, "model": model_state}


def test_non_finite_weights_raise_before_budgets_or_masks_change():
    model = MLP(4, (8,), 3)
    hook = PDP(model, 0.5, warmup_epochs=0, eps=0.5, tau=0.1, tau_mode="relative")
    hook.on_fit_start(None)
    with torch.no_grad():
        model.body[0].parametrizations.weight.original[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"weight of layer 'body.0'"):
        hook.on_epoch_start(SimpleNamespace(epoch=0, num_epochs=3))
    assert hook.budgets == {} and not hook.hard
    with pytest.raises(NonFiniteError, match="weight of layer"):
        hook.harden()
    assert not hook.hard and isinstance(model.body[0].parametrizations.weight[0], PDPMask)


def test_nan_batch_raises_and_masks_are_unchanged():
    data = gaussian_mixture(200, num_classes=3, dim=4, seed=0)
    model = MLP(4, (8,), 3)
    hook = PDP(model, 0.6, warmup_epochs=1, eps=0.5, tau=0.1, tau_mode="relative")
    Trainer(model, data.train, hooks=[hook], config=TrainConfig(epochs=3, batch_size=32, lr=0.05)).fit()
    before = _state(hook, model)
    x = data.train.x.clone()
    x[0] = float("nan")
    with pytest.raises(NonFiniteError):
        Trainer(model, IndexedTensorDataset(x, data.train.y), hooks=[hook],
                config=TrainConfig(epochs=1, batch_size=200)).fit()  # fmt: skip
    after = _state(hook, model)
    assert before["budgets"] == after["budgets"] and before["hard"] == after["hard"]
    for k, v in before["model"].items():
        assert torch.equal(v, after["model"][k]), k


def _pdp_run(world_out=None, ckpt=None, stop=None, resume=False):
    torch.set_num_threads(1)
    data = gaussian_mixture(128, num_classes=3, dim=4, val=0.0, test=0.25, seed=0)
    torch.manual_seed(0)
    model = MLP(4, (16,), 3)
    hook = PDP(model, 0.7, warmup_epochs=1, eps=0.5, tau=0.1, tau_mode="relative", hard_finetune_epochs=1)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=2, ckpt_dir=ckpt, stop_after_epoch=stop)
    Trainer(model, data.train, hooks=[hook], config=cfg).fit(resume=resume)
    out = {"model": model.state_dict(), "hook": hook.state_dict()}
    if world_out is not None:
        torch.save(out, world_out)
    return out


def _pdp_worker(rank: int, out: str) -> None:
    _pdp_run(out if rank == 0 else None)


def test_pdp_two_process_run_equals_one_process(tmp_path):
    single = _pdp_run()
    run_gloo(_pdp_worker, 2, str(tmp_path / "ddp.pt"))
    multi = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert single["hook"]["hard"] and multi["hook"]["hard"]
    assert single["hook"]["budgets"] == pytest.approx(multi["hook"]["budgets"], abs=1e-6)
    for k, v in single["model"].items():
        if v.dtype == torch.bool:
            assert torch.equal(v, multi["model"][k]), k
        else:
            assert torch.allclose(v, multi["model"][k], atol=1e-6), k
    for k, v in single["hook"]["masks"].items():
        assert torch.equal(v, multi["hook"]["masks"][k]), k


def test_pdp_resume_in_the_hard_phase_is_bit_identical(tmp_path):
    full = _pdp_run(ckpt=str(tmp_path / "a"))
    _pdp_run(ckpt=str(tmp_path / "b"), stop=2)  # the hard phase starts at epoch 3
    resumed = _pdp_run(ckpt=str(tmp_path / "b"), resume=True)
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert full["hook"]["budgets"] == resumed["hook"]["budgets"]
    for k, v in full["hook"]["masks"].items():
        assert torch.equal(v, resumed["hook"]["masks"][k]), k


def test_presets_construct_the_hook():
    from priorkit.sparsity import pdp

    assert pdp.SPEC.entry == "PDP" and pdp.__all__[0] == "PDP"
    for name in ("paper", "small"):
        hook = PDP(MLP(4, (8,), 3), 0.9, **pdp.SPEC.presets[name])
        assert hook.tau == pdp.SPEC.presets[name]["tau"]
