"""ISS-P: the card's property tests (exact shrink set, hard mask, alpha = 1 is dense, N:M), resume and DDP."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from priorkit.data.sr_patches import sr_patches
from priorkit.metrics.restoration import psnr, rgb_to_y
from priorkit.sparsity._common import nm_groups
from priorkit.sparsity.iss_p import ISSP, n_prune, shrink_set
from priorkit.train import Phase, Recipe, TrainConfig, Trainer
from priorkit.train.distributed import run_gloo


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 3, 3, padding=1))  # fmt: skip


def test_count_formula():
    assert n_prune(100, 0.95) == 95 and n_prune(10, 0.99) == 9 and n_prune(1000, 0.999) == 995


def test_one_step_shrinks_exactly_the_n_prune_smallest_by_alpha():
    model = _net()
    hook = ISSP(model, prune_ratio=0.9, alpha=0.95, prune_steps=10)
    hook.on_fit_start(None)
    before = {n: w.detach().clone() for n, w in hook.masks.weights().items()}
    hook.on_step_end(SimpleNamespace(step=0), None)  # the optimizer step itself is lr = 0
    for name, w in hook.masks.weights().items():
        changed = w != before[name]
        k = n_prune(w.numel(), 0.9)
        assert int(changed.sum()) == k
        assert torch.allclose(w[changed], 0.95 * before[name][changed])
        assert float(before[name].abs()[changed].max()) <= float(before[name].abs()[~changed].min())


def test_nm_shrinks_n_of_every_group():
    w = torch.randn(6, 8, 3, 3)
    sel = shrink_set(w, 0.5, nm=(3, 4))
    assert bool((nm_groups(sel.float(), 4).sum(1) == 3).all())
    flat = shrink_set(w, 0.5, nm=(1, 4), group_axis="flat")
    assert bool((flat.reshape(-1, 4).sum(1) == 1).all())


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 6, 6, generator=g)
    return TensorDataset(x, x.flip(-1))


def _fit(hook_kw=None, epochs=4, ckpt=None, stop=None, resume=False, out=None, lr=0.01):
    torch.set_num_threads(1)
    model = _net()
    hooks = [ISSP(model, **hook_kw)] if hook_kw is not None else []
    phase = Phase("fit", epochs=epochs, loss=lambda s, b: {"l1": F.l1_loss(b.output, b.y)},
                  optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=lr))  # fmt: skip
    cfg = TrainConfig(epochs=epochs, batch_size=8, seed=0, ckpt_dir=ckpt, stop_after_epoch=stop, progress=False)
    Trainer(model, _data(), recipe=Recipe([phase], loss_fn=None), hooks=hooks, config=cfg).fit(resume=resume)
    res = {"model": model.state_dict(), "hook": hooks[0].state_dict() if hooks else {}}
    if out is not None:
        torch.save(res, out)
    return model, hooks, res


def test_after_stage_1_exactly_n_prune_zeros_that_stay():
    model, hooks, _ = _fit({"prune_ratio": 0.8, "alpha": 0.95, "prune_steps": 6}, epochs=4)  # 16 steps, K_p = 6
    assert hooks[0].stage == 2
    for name, layer in hooks[0].layers.items():
        k = n_prune(layer.weight.numel(), 0.8)
        assert int((layer.weight == 0).sum()) == k, name
        assert int((hooks[0].masks.weights()[name] == 0).sum()) == k  # raw weights re-zeroed too


def test_alpha_one_is_dense_training_bit_for_bit():
    dense, _, _ = _fit(None)
    soft, hooks, _ = _fit({"prune_ratio": 0.9, "alpha": 1.0, "prune_steps": 1000})
    for (n, layer), ref in zip(hooks[0].layers.items(), [dense[0], dense[2], dense[4]]):
        assert torch.equal(layer.weight, ref.weight), n


def test_resume_is_bit_identical(tmp_path):
    kw = {"prune_ratio": 0.8, "alpha": 0.9, "prune_steps": 6}
    _, _, full = _fit(kw, ckpt=str(tmp_path / "a"))
    _fit(kw, ckpt=str(tmp_path / "b"), stop=0)  # stops in stage 1
    _, _, resumed = _fit(kw, ckpt=str(tmp_path / "b"), resume=True)
    assert full["hook"]["stage"] == resumed["hook"]["stage"] == 2
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def _ddp_worker(rank: int, out: str) -> None:
    _fit({"prune_ratio": 0.8, "alpha": 0.9, "prune_steps": 6}, out=out if rank == 0 else None)


def test_two_process_run_selects_the_same_sets(tmp_path):
    _, _, single = _fit({"prune_ratio": 0.8, "alpha": 0.9, "prune_steps": 6})
    run_gloo(_ddp_worker, 2, str(tmp_path / "ddp.pt"))
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for k, v in single["model"].items():
        if v.dtype == torch.bool:
            assert torch.equal(v, ddp["model"][k]), k
        else:
            assert torch.allclose(v, ddp["model"][k], atol=1e-5), k


def test_exclusion_globs_leave_layers_dense():
    model = _net()
    hook = ISSP(model, exclude=("0", "4"))
    assert list(hook.layers) == ["2"]


def test_sr_patches_and_psnr():
    d = sr_patches(hr_size=8, n_train=12, n_test=4, seed=0)
    x, y = d.train.tensors
    assert x.shape == (12, 3, 4, 4) and y.shape == (12, 3, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    again = sr_patches(hr_size=8, n_train=12, n_test=4, seed=0)
    assert torch.equal(again.train.tensors[1], y)
    t = torch.rand(2, 3, 4, 4)
    assert psnr(t, t) == pytest.approx(120.0)  # MSE clamped at 1e-12
    assert psnr((t + 0.1).clamp(0, 1), t) < psnr((t + 0.01).clamp(0, 1), t)
    mse = float(((t * 0.5 - t) ** 2).flatten(1).mean(1)[0])
    assert psnr(t[:1] * 0.5, t[:1]) == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert rgb_to_y(torch.ones(1, 3, 1, 1)).item() == pytest.approx(235 / 255, rel=1e-4)
