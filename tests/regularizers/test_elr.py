import pytest
import torch
import torch.nn.functional as F

from priorkit.regularizers.elr import ELR, clamped_softmax, elr_regularizer, elr_update
from priorkit.train import Batch


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
