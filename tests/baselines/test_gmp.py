"""GMP (gradual magnitude pruning, Zhu & Gupta 2018) and one-shot magnitude pruning: schedule, exact counts,
resume, 2-process DDP equality, bad input and non-finite weights."""

from types import SimpleNamespace

import pytest
import torch

from priorkit.baselines.gmp import GMP, one_shot_magnitude
from priorkit.core.errors import HookConflictError, NonFiniteError, PriorkitError
from priorkit.data import gaussian_mixture
from priorkit.models import MLP
from priorkit.sparsity._common import cubic_sparsity
from priorkit.sparsity.masks import MaskSet
from priorkit.train import TrainConfig, Trainer
from priorkit.train.distributed import run_gloo


def _zeros(hook):
    return sum(int((m.weight == 0).sum()) for m in hook.layers.values())


def test_cubic_ramp_and_exact_counts_per_layer():
    model = MLP(4, (16,), 3)
    hook = GMP(model, 0.8, start_epoch=1, end_epoch=4)
    hook.on_fit_start(None)
    assert _zeros(hook) == 0
    for epoch in range(5):
        hook.on_epoch_start(SimpleNamespace(epoch=epoch))
        want = 0.0 if epoch < 1 else cubic_sparsity(epoch + 1, 1, 4, 0.8)
        assert hook.current == pytest.approx(want)
        for m in hook.layers.values():
            assert int((m.weight == 0).sum()) == int(want * m.weight.numel())
    assert hook.current == pytest.approx(0.8)


def test_global_scope_ranks_all_layers_together():
    model = MLP(4, (16,), 3)
    layers = one_shot_magnitude(model, 0.5, scope="global")
    w = torch.cat([m.weight.flatten() for m in layers.values()])
    assert int((w == 0).sum()) == int(0.5 * w.numel())
    pairs = [(m.parametrizations.weight.original.abs(), m.parametrizations.weight[0].mask) for m in layers.values()]
    kept = torch.cat([w[keep] for w, keep in pairs])
    pruned = torch.cat([w[~keep] for w, keep in pairs])
    assert pruned.max() <= kept.min()


def test_non_finite_weights_raise_and_masks_are_unchanged():
    model = MLP(4, (8,), 3)
    hook = GMP(model, 0.5, start_epoch=0, end_epoch=2)
    hook.on_fit_start(None)
    hook.on_epoch_start(SimpleNamespace(epoch=0))
    masks = {n: m.parametrizations.weight[0].mask.clone() for n, m in hook.layers.items()}
    current = hook.current
    with torch.no_grad():
        model.head.parametrizations.weight.original[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"weight of layer 'head'"):
        hook.on_epoch_start(SimpleNamespace(epoch=1))
    assert hook.current == current
    for n, m in hook.layers.items():
        assert torch.equal(m.parametrizations.weight[0].mask, masks[n]), n
    with pytest.raises(HookConflictError, match="already masked by 'gmp'"):
        MaskSet(model, owner="other").attach()  # a second mask owner on the same layers is refused
    fresh = MLP(4, (8,), 3)
    with torch.no_grad():
        fresh.head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="weight of layer 'head'"):
        one_shot_magnitude(fresh, 0.5)


def test_bad_arguments_are_named():
    model = MLP(4, (8,), 3)
    with pytest.raises(PriorkitError, match=r"sparsity must be in \[0, 1\)"):
        GMP(model, 1.0, start_epoch=0, end_epoch=2)
    with pytest.raises(PriorkitError, match="end_epoch must be > start_epoch"):
        GMP(model, 0.5, start_epoch=3, end_epoch=2)
    with pytest.raises(PriorkitError, match="start_epoch must be an integer >= 0"):
        GMP(model, 0.5, start_epoch=-1, end_epoch=2)
    with pytest.raises(PriorkitError, match="scope must be one of"):
        GMP(model, 0.5, start_epoch=0, end_epoch=2, scope="row")
    with pytest.raises(PriorkitError, match="model must be a torch.nn.Module"):
        GMP("mlp", 0.5, start_epoch=0, end_epoch=2)
    with pytest.raises(PriorkitError, match="no prunable layers"):
        one_shot_magnitude(model, 0.5, include=lambda n, m: False)
    with pytest.raises(PriorkitError, match=r"sparsity must be in \[0, 1\)"):
        one_shot_magnitude(model, -0.1)


def _gmp_run(out=None, ckpt=None, stop=None, resume=False):
    torch.set_num_threads(1)
    data = gaussian_mixture(128, num_classes=3, dim=4, val=0.0, test=0.25, seed=0)
    torch.manual_seed(0)
    model = MLP(4, (16,), 3)
    hook = GMP(model, 0.75, start_epoch=1, end_epoch=3, scope="global")
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=2, ckpt_dir=ckpt, stop_after_epoch=stop)
    Trainer(model, data.train, hooks=[hook], config=cfg).fit(resume=resume)
    result = {"model": model.state_dict(), "hook": hook.state_dict()}
    if out is not None:
        torch.save(result, out)
    return result


def _gmp_worker(rank: int, out: str) -> None:
    _gmp_run(out if rank == 0 else None)


def _assert_same(a, b, atol=0.0):
    assert a["hook"] == b["hook"]
    for k, v in a["model"].items():
        if v.dtype == torch.bool or atol == 0.0:
            assert torch.equal(v, b["model"][k]), k
        else:
            assert torch.allclose(v, b["model"][k], atol=atol), k


def test_resume_is_bit_identical(tmp_path):
    full = _gmp_run(ckpt=str(tmp_path / "a"))
    _gmp_run(ckpt=str(tmp_path / "b"), stop=1)  # stops in the middle of the ramp
    _assert_same(full, _gmp_run(ckpt=str(tmp_path / "b"), resume=True))


def test_two_process_run_equals_one_process(tmp_path):
    single = _gmp_run()
    run_gloo(_gmp_worker, 2, str(tmp_path / "ddp.pt"))
    _assert_same(single, torch.load(tmp_path / "ddp.pt", weights_only=True), atol=1e-6)
