from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data import IndexedTensorDataset, gaussian_mixture
from priorkit.models import MLP
from priorkit.regularizers.pskd import PSKD, alpha_at, pskd_loss, pskd_targets
from priorkit.train import Batch, Hook, TrainConfig, Trainer


def test_alpha_schedule_is_linear_in_epoch():
    assert [alpha_at(t, 4, 0.8) for t in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert alpha_at(0, 4, 0.8, "constant") == 0.8
    with pytest.raises(ValueError, match="schedule must be one of"):
        alpha_at(0, 4, 0.8, "cosine")
    with pytest.raises(ValueError, match=r"alpha_T must be in \[0, 1\]"):
        alpha_at(0, 4, 1.5)


def test_targets_on_simplex_and_alpha_zero_is_cross_entropy():
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    past = torch.rand(8, 5).softmax(1)
    t = pskd_targets(y, past, 0.6)
    assert (t >= 0).all() and torch.allclose(t.sum(1), torch.ones(8))
    assert torch.allclose(pskd_loss(logits, pskd_targets(y, past, 0.0)), F.cross_entropy(logits, y))


def test_gradient_matches_closed_form():
    logits = torch.randn(6, 4, requires_grad=True)
    y, past, a = torch.randint(0, 4, (6,)), torch.rand(6, 4).softmax(1), 0.3
    pskd_loss(logits, pskd_targets(y, past, a)).backward()
    p = logits.detach().softmax(1)
    expected = (p - (1 - a) * F.one_hot(y, 4) - a * past) / 6
    assert torch.allclose(logits.grad, expected, atol=1e-6)


class _Spy(Hook):
    """Records the targets PS-KD produced and the softmax of the step it wrote."""

    def __init__(self):
        self.targets, self.probs = [], []

    def on_step_end(self, state, batch):
        self.targets.append((batch.index.clone(), batch.target.clone(), state.epoch))
        self.probs.append((batch.index.clone(), batch.output.detach().softmax(1)))


def test_epoch0_targets_are_one_hot_and_memory_holds_last_softmax():
    data = gaussian_mixture(200, num_classes=3, seed=0)
    pskd, spy = PSKD(len(data.train), 3), _Spy()
    Trainer(MLP(2, (16,), 3), data.train, hooks=[pskd, spy], config=TrainConfig(epochs=3, batch_size=32)).fit()
    for index, target, epoch in spy.targets:
        if epoch == 0:
            assert torch.equal(target, F.one_hot(data.train.y[index], 3).float())
    last = {}
    for index, probs in spy.probs:
        for i, p in zip(index.tolist(), probs):
            last[i] = p
    for i, p in last.items():
        assert torch.allclose(pskd.memory.table[i], p)


def test_bad_index_is_named():
    pskd = PSKD(10, 3)
    with pytest.raises(ValueError, match="does the dataset return its sample index"):
        pskd.memory.read(torch.tensor([12]))


def test_wrong_shapes_are_named():
    with pytest.raises(ValueError, match=r"y must have shape \[4\], got \[3\]"):
        pskd_targets(torch.zeros(3, dtype=torch.long), torch.rand(4, 5), 0.5)
    with pytest.raises(ValueError, match=r"targets must have shape \[2, 3\]"):
        pskd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# ------------------------------------------------------------------------------- bad input, NaN safety
def _batch(y, index, output=None):
    return Batch(x=torch.zeros(len(index), 2), y=y, index=index, output=output)


def test_out_of_range_labels_are_named_before_one_hot():
    hook = PSKD(6, 3)
    hook.on_epoch_start(SimpleNamespace(epoch=0, num_epochs=4))
    with pytest.raises(PriorkitError, match=r"labels \(batch.y\) must lie in \[0, 2\]"):
        hook.transform_batch(None, _batch(torch.tensor([0, 5]), torch.tensor([0, 1])))
    with pytest.raises(PriorkitError, match=r"y must lie in \[0, 3\]"):
        pskd_targets(torch.tensor([0, 4]), torch.rand(2, 4).softmax(1), 0.5)
    data = gaussian_mixture(60, num_classes=3, dim=2, seed=0)
    bad = IndexedTensorDataset(data.train.x, data.train.y + 2)
    with pytest.raises(PriorkitError, match="labels"):
        Trainer(MLP(2, (4,), 3), bad, hooks=[PSKD(len(bad), 3)], config=TrainConfig(epochs=1, batch_size=8)).fit()


def test_nan_batch_raises_and_memory_is_unchanged():
    hook = PSKD(6, 3)
    hook.memory.table[:] = torch.rand(6, 3).softmax(1)
    before = hook.memory.table.clone()
    hook.on_epoch_start(SimpleNamespace(epoch=1, num_epochs=4))
    b = hook.transform_batch(None, _batch(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])))
    b.output = torch.randn(3, 3)
    b.output[1, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"logits \(batch.output\)"):
        hook.on_step_end(None, b)
    assert torch.equal(hook.memory.table, before)
    # in a run: the NaN loss stops the step before the memory is touched (epoch 0 writes nothing early either)
    data = gaussian_mixture(60, num_classes=3, dim=2, seed=0)
    x = data.train.x.clone()
    x[3] = float("nan")
    run = PSKD(len(data.train), 3)
    with pytest.raises(NonFiniteError):
        Trainer(MLP(2, (4,), 3), IndexedTensorDataset(x, data.train.y), hooks=[run],
                config=TrainConfig(epochs=1, batch_size=100)).fit()  # fmt: skip
    assert torch.equal(run.memory.table, torch.zeros_like(run.memory.table))


def test_epoch_out_of_range_is_a_priorkit_error():
    with pytest.raises(PriorkitError, match=r"epoch must be an integer in \[0, 3\]"):
        alpha_at(4, 4)


def test_presets_construct_the_hook():
    from priorkit.regularizers import pskd

    assert pskd.SPEC.entry == "PSKD" and "PSKD" in pskd.__all__
    for preset in pskd.SPEC.presets.values():
        assert PSKD(10, 3, **preset).alpha_T == preset["alpha_T"]
