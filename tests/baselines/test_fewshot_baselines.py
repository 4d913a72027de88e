"""Few-shot / zero-shot baselines: SimpleShot is the nearest class mean, DAP-style nearest prototype scores."""

import doctest

import numpy as np
import pytest
import torch

import priorkit.baselines.fewshot as fsb
from priorkit.baselines.fewshot import nearest_prototype, simpleshot
from priorkit.core.errors import NonFiniteError, PriorkitError


def _task(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, ys = torch.randn(9, 4, generator=g), torch.arange(3).repeat_interleave(3)
    return xs, ys, torch.randn(7, 4, generator=g)


def test_simpleshot_is_nearest_class_mean_single_and_batched():
    xs, ys, xq = _task()
    c = torch.stack([xs[ys == k].mean(0) for k in range(3)])
    want = torch.cdist(xq, c).argmin(1)
    assert torch.equal(simpleshot(xs, ys, xq), want)
    assert torch.equal(simpleshot(xs[None].repeat(2, 1, 1), ys[None].repeat(2, 1), xq[None].repeat(2, 1, 1))[1], want)
    assert torch.equal(simpleshot(xs.numpy(), ys.numpy(), xq.numpy()), want)


def test_nearest_prototype_metrics():
    p, c = torch.randn(5, 3), torch.randn(4, 3)
    assert torch.allclose(nearest_prototype(p, c), -torch.cdist(p.double(), c.double()))
    cos = nearest_prototype(np.asarray(p), c, "cosine")
    assert cos.shape == (5, 4) and float(cos.abs().max()) <= 1 + 1e-9


def test_bad_input():
    xs, ys, xq = _task()
    with pytest.raises(PriorkitError, match="support_y"):
        simpleshot(xs, ys + 1, xq)
    with pytest.raises(PriorkitError, match="query"):
        simpleshot(xs, ys, xq[:, :2])
    bad = xq.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="query"):
        simpleshot(xs, ys, bad)
    with pytest.raises(PriorkitError, match="metric"):
        nearest_prototype(xq, xs, "l1")
    with pytest.raises(PriorkitError, match="prototypes"):
        nearest_prototype(xq, xs[:, :2])


def test_docstring_example_runs():
    assert doctest.testmod(fsb).failed == 0
