"""FSCIL session builder and incremental metrics."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import priorkit.data.incremental as inc_mod
import priorkit.metrics.incremental as met_mod
from priorkit.core.errors import PriorkitError
from priorkit.data.incremental import load_incremental, make_incremental
from priorkit.metrics.incremental import average_accuracy, harmonic_mean, performance_drop, session_metrics


def _arrays() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(100) % 10
    yt = torch.arange(50) % 10
    return torch.randn(100, 3, generator=g), y, torch.randn(50, 3, generator=g), yt


def test_sessions_layout_and_determinism() -> None:
    x, y, xt, yt = _arrays()
    order = [3, 1, 4, 0, 9, 2, 6, 5, 8, 7]
    d = make_incremental(x, y, xt, yt, base_classes=4, way=3, shot=2, class_order=order, seed=5)
    assert d.num_sessions == 3 and d.num_classes == 10 and d.class_order == tuple(order)
    assert len(d.base_train) == 40 and set(d.base_train.y.tolist()) == {0, 1, 2, 3}
    for s, sup in enumerate(d.sessions, start=1):
        assert sorted(set(sup.y.tolist())) == d.session_classes(s)
        assert torch.bincount(sup.y).max() == 2 and len(sup) == 6
        # every shot is a genuine training example of that original class
        for xi, yi in zip(sup.x, sup.y):
            orig = order[int(yi)]
            assert any(torch.equal(xi, xj) for xj in x[y == orig])
    # remapped test labels point at the right original class
    torch.testing.assert_close(torch.tensor(order)[d.test.y], yt)
    assert int(d.test_upto(1).y.max()) == 6 and len(d.test_upto(0)) == 20
    again = make_incremental(x, y, xt, yt, base_classes=4, way=3, shot=2, class_order=order, seed=5)
    assert all(torch.equal(a.x, b.x) for a, b in zip(d.sessions, again.sessions))
    other = d.redraw(6)
    assert torch.equal(other.base_train.x, d.base_train.x) and torch.equal(other.test.x, d.test.x)
    assert any(not torch.equal(a.x, b.x) for a, b in zip(d.sessions, other.sessions))


@pytest.mark.parametrize("name", ["digits", "gaussian_mixture"])
def test_load_incremental(name: str) -> None:
    d = load_incremental(name, base_classes=6 if name == "digits" else 10, way=2, shot=5, seed=1)
    assert d.num_classes == (10 if name == "digits" else 20)
    assert all(len(s) == 10 for s in d.sessions)
    shuffled = load_incremental(name, base_classes=6 if name == "digits" else 10, shuffle_classes=True, seed=1)
    assert sorted(shuffled.class_order) == sorted(d.class_order)


def test_metrics_values() -> None:
    y = torch.tensor([0, 0, 1, 2, 2, 3])
    pred = torch.tensor([0, 1, 1, 2, 0, 3])
    m = session_metrics(pred, y, num_base=2)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["base_acc"] == pytest.approx(2 / 3) and m["new_acc"] == pytest.approx(2 / 3)
    assert m["new_to_base"] == pytest.approx(1 / 3)
    assert m["hm"] == pytest.approx(2 / 3)
    assert harmonic_mean(1.0, 0.5) == pytest.approx(2 / 3) and harmonic_mean(0.0, 0.0) == 0.0
    logits = torch.nn.functional.one_hot(pred, 4).float()
    assert session_metrics(logits, y, 2) == m
    base_only = session_metrics(torch.tensor([0, 1]), torch.tensor([0, 0]), 2)
    assert base_only["base_acc"] == 0.5 and math.isnan(base_only["new_acc"])
    assert performance_drop([0.9, 0.7, 0.6]) == pytest.approx(0.3)
    assert average_accuracy([0.9, 0.6]) == pytest.approx(0.75)


def test_docstring_examples_run() -> None:
    for mod in (inc_mod, met_mod):
        r = doctest.testmod(mod, verbose=False)
        assert r.attempted > 0 and r.failed == 0


def test_bad_input() -> None:
    x, y, xt, yt = _arrays()
    with pytest.raises(PriorkitError, match="way"):
        make_incremental(x, y, xt, yt, base_classes=5, way=3, shot=2)
    with pytest.raises(PriorkitError, match="shot"):
        make_incremental(x, y, xt, yt, base_classes=4, way=3, shot=20)
    with pytest.raises(PriorkitError, match="class_order"):
        make_incremental(x, y, xt, yt, base_classes=4, way=3, shot=2, class_order=[0, 1])
    with pytest.raises(PriorkitError, match="dataset"):
        load_incremental("cifar")
    d = make_incremental(x, y, xt, yt, base_classes=4, way=3, shot=2)
    with pytest.raises(PriorkitError, match="session"):
        d.test_upto(3)
    with pytest.raises(PriorkitError, match="num_base"):
        session_metrics(torch.tensor([0]), torch.tensor([0]), 0)
    with pytest.raises(PriorkitError, match="pred"):
        session_metrics(torch.tensor([0, 1]), torch.tensor([0]), 1)
    with pytest.raises(PriorkitError, match="base_acc"):
        harmonic_mean(1.5, 0.5)


def test_make_incremental_accepts_numpy_arrays():
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 10)
    d = make_incremental(rng.normal(size=(60, 3)), y, rng.normal(size=(60, 3)), y, base_classes=4, way=2, shot=2)
    assert d.num_sessions == 2 and len(d.sessions[0]) == 4
    with pytest.raises(PriorkitError, match="y_train"):
        make_incremental(rng.normal(size=(60, 3)), y.astype(float), rng.normal(size=(60, 3)), y, base_classes=4,
                         way=2, shot=2)  # fmt: skip
