import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data import IndexedTensorDataset, gaussian_mixture
from priorkit.models import MLP
from priorkit.regularizers.elr import ELR, clamped_softmax, elr_regularizer, elr_update
from priorkit.train import Batch, TrainConfig, Trainer


def test_update_matches_formula_and_stays_on_simplex():
    t = torch.rand(5, 4).softmax(1)
    p = clamped_softmax(torch.randn(5, 4))
    new = elr_update(t, p, 0.7)
    assert torch.allclose(new, 0.7 * t + 0.3 * p / p.sum(1, keepdim=True))
    assert torch.allclose(new.sum(1), torch.ones(5)) and (new >= 0).all()


def test_regularizer_gradient_matches_closed_form():
    z = torch.randn(3, 4, requires_grad=True)
    t = torch.rand(3, 4).softmax(1)
    p = F.softmax(z, 1)  # no clamp active for moderate logits
    elr_regularizer(p, t).backward()
    pd = p.detach()
    inner = (t * pd).sum(1, keepdim=True)
    expected = -pd * (t - inner) / (1 - inner) / 3
    assert torch.allclose(z.grad, expected, atol=1e-6)


def test_lambda_zero_is_plain_ce_and_clamp_keeps_one_hot_finite():
    hook = ELR(4, 3, lam=0.0)
    z = torch.tensor([[50.0, -50.0, -50.0]] * 4)
    b = Batch(x=z, y=torch.zeros(4, dtype=torch.long), index=torch.arange(4), target=None, output=z)
    hook.memory.table[:] = torch.tensor([1.0, 0.0, 0.0])
    assert float(hook.extra_loss(None, b)["elr"]) == 0.0
    hook3 = ELR(4, 3, lam=3.0)
    hook3.memory.table[:] = torch.tensor([1.0, 0.0, 0.0])
    assert torch.isfinite(hook3.extra_loss(None, b)["elr"])


def test_memory_is_updated_before_the_term():
    hook = ELR(2, 2, beta=0.5)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = Batch(x=z, y=torch.zeros(2, dtype=torch.long), index=torch.tensor([0, 1]), target=None, output=z)
    hook.extra_loss(None, b)
    p = clamped_softmax(z)
    assert torch.allclose(hook.memory.table, 0.5 * p / p.sum(1, keepdim=True))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        ELR(10, 2, beta=1.2)
    with pytest.raises(ValueError, match="clamp must satisfy"):
        ELR(10, 2, clamp=(0.0, 1.0))


def test_wrong_shapes_are_named():
    with pytest.raises(ValueError, match=r"targets must have shape \[3, 4\], got \[3, 5\]"):
        elr_regularizer(torch.rand(3, 4), torch.rand(3, 5))


# ------------------------------------------------------------------------- hot path, bad input, NaN safety
def _batch(z, index):
    return Batch(x=z, y=torch.zeros(len(index), dtype=torch.long), index=index, output=z)


def test_hook_term_equals_the_checked_functional_core():
    hook = ELR(10, 4, beta=0.6, lam=2.0)
    hook.memory.table[:] = torch.rand(10, 4).softmax(1)
    before = hook.memory.table.clone()
    z, idx = torch.randn(5, 4), torch.tensor([7, 1, 3, 9, 0])
    term = hook.extra_loss(None, _batch(z, idx))["elr"]
    p = clamped_softmax(z)
    rows = elr_update(before[idx], p, 0.6)
    assert torch.allclose(term, 2.0 * elr_regularizer(p, rows))
    assert torch.allclose(hook.memory.table[idx], rows)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_logits_raise_naming_logits_and_leave_memory_unchanged(bad):
    hook = ELR(6, 3)
    hook.extra_loss(None, _batch(torch.randn(6, 3), torch.arange(6)))
    before = hook.memory.table.clone()
    z = torch.randn(4, 3)
    z[2, 1] = bad
    with pytest.raises(NonFiniteError, match="logits"):
        hook.extra_loss(None, _batch(z, torch.tensor([0, 1, 2, 3])))
    assert torch.equal(hook.memory.table, before)


def test_nan_batch_in_a_run_raises_and_leaves_memory_unchanged():
    data = gaussian_mixture(120, num_classes=3, dim=4, seed=0)
    x = data.train.x.clone()
    x[5] = float("nan")
    bad = IndexedTensorDataset(x, data.train.y)
    hook = ELR(len(bad), 3)
    Trainer(MLP(4, (8,), 3), data.train, hooks=[hook], config=TrainConfig(epochs=1, batch_size=16)).fit()
    before = hook.memory.table.clone()
    with pytest.raises(NonFiniteError, match="logits"):
        Trainer(MLP(4, (8,), 3), bad, hooks=[hook], config=TrainConfig(epochs=1, batch_size=200)).fit()
    assert torch.equal(hook.memory.table, before)


def test_index_and_logit_shapes_are_checked_once_and_named():
    hook = ELR(5, 3)
    with pytest.raises(PriorkitError, match=r"index must lie in \[0, 4\] \(num_samples\), got \[0, 7\]"):
        hook.extra_loss(None, _batch(torch.randn(2, 3), torch.tensor([0, 7])))
    with pytest.raises(PriorkitError, match=r"index must lie in \[0, 4\].*got \[-1, 0\]"):
        hook.extra_loss(None, _batch(torch.randn(2, 3), torch.tensor([-1, 0])))
    with pytest.raises(PriorkitError, match=r"logits \(batch.output\) must have shape \[batch, 3\]"):
        hook.extra_loss(None, _batch(torch.randn(2, 4), torch.tensor([0, 1])))
    with pytest.raises(PriorkitError, match="index must be a 1-D integer tensor"):
        hook.extra_loss(None, _batch(torch.randn(2, 3), torch.tensor([0.0, 1.0])))
    assert torch.equal(hook.memory.table, torch.zeros(5, 3))


def test_start_epoch_delays_the_term():
    hook = ELR(4, 2, start_epoch=2)
    assert hook.extra_loss(None, _batch(torch.randn(4, 2), torch.arange(4))) == {}
    with pytest.raises(PriorkitError, match="start_epoch must be an integer >= 0"):
        ELR(4, 2, start_epoch=-1)


def test_presets_construct_the_hook():
    from priorkit.regularizers import elr

    assert elr.SPEC.entry == "ELR" and "ELR" in elr.__all__
    for name, preset in elr.SPEC.presets.items():
        hook = ELR(10, 3, **preset)
        assert (hook.beta, hook.lam) == (preset["beta"], preset["lam"]), name
