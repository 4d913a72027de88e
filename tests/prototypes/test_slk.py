import doctest

import pytest
import torch

import priorkit.prototypes.slk as slk_mod
from priorkit.baselines.fewshot import simpleshot
from priorkit.core.errors import PriorkitError
from priorkit.prototypes.slk import bound_update, entropy_energy, knn_affinity, slk


def _task(seed=0, shot=2, way=3, q=6, d=8, noise=0.6):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(way, d, generator=g)
    xs = centers.repeat_interleave(shot, 0) + noise * torch.randn(way * shot, d, generator=g)
    xq = centers.repeat_interleave(q, 0) + noise * torch.randn(way * q, d, generator=g)
    return xs.double(), torch.arange(way).repeat_interleave(shot), xq.double(), torch.arange(way).repeat_interleave(q)


def test_docstring_example_runs():
    assert doctest.testmod(slk_mod).failed == 0


def test_lambda_zero_bound_step_is_softmax():
    a = torch.randn(10, 4, dtype=torch.float64)
    res = bound_update(a, knn_affinity(torch.randn(10, 3, dtype=torch.float64)), 0.0, max_iter=1)
    assert torch.allclose(res.assignments, torch.softmax(-a, 1))


@pytest.mark.parametrize("clamp", [False, True])
def test_bound_energy_never_increases_for_symmetric_psd_affinity(clamp):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    w = torch.exp(-(torch.cdist(x, x) ** 2))  # Gaussian kernel: symmetric PSD
    a = torch.randn(20, 4, generator=g, dtype=torch.float64)
    c = torch.eye(4, dtype=torch.float64)[:3] if clamp else None
    energies = [
        float(entropy_energy(bound_update(a, w, 0.8, max_iter=t, tol=0.0, clamp=c).assignments, a, w, 0.4))
        for t in range(1, 30)
    ]
    assert all(e2 <= e1 + 1e-9 for e1, e2 in zip(energies, energies[1:]))


def test_rows_on_simplex_and_supports_clamped():
    xs, ys, xq, _ = _task(noise=2.0)
    for mode in ("kmeans", "ms", "bo"):
        out = slk(xs, ys, xq, lam=0.7, mode=mode)
        assert torch.allclose(out.assignments.sum(1), torch.ones(len(xs) + len(xq), dtype=torch.float64))
        assert (out.assignments >= 0).all()
        assert torch.equal(out.assignments[: len(xs)].argmax(1), ys)


def test_query_permutation_permutes_predictions():
    xs, ys, xq, _ = _task(seed=3, noise=1.5)
    perm = torch.randperm(len(xq), generator=torch.Generator().manual_seed(0))
    a = slk(xs, ys, xq, lam=0.7).labels
    b = slk(xs, ys, xq[perm], lam=0.7).labels
    assert torch.equal(a[perm], b)


def test_batch_equals_per_task_loop():
    tasks = [_task(seed=s, noise=1.5) for s in range(4)]
    xs, ys, xq = (torch.stack([t[i] for t in tasks]) for i in range(3))
    for mode in ("kmeans", "ms"):
        batch = slk(xs, ys, xq, lam=0.5, mode=mode)
        for i, t in enumerate(tasks):
            one = slk(t[0], t[1], t[2], lam=0.5, mode=mode)
            assert torch.equal(one.labels, batch.labels[i])
            assert torch.allclose(one.assignments, batch.assignments[i], atol=1e-10)


def test_lambda_zero_is_hard_kmeans_brute_force():
    xs, ys, xq, _ = _task(seed=5, noise=1.5)
    x = torch.cat([xs, xq])
    c = torch.stack([xs[ys == k].mean(0) for k in range(3)])
    lab = torch.cdist(x, c).argmin(1)
    lab[: len(xs)] = ys
    for _ in range(100):
        c = torch.stack([x[lab == k].mean(0) for k in range(3)])
        new = torch.cdist(x, c).argmin(1)
        new[: len(xs)] = ys
        if torch.equal(new, lab):
            break
        lab = new
    assert torch.equal(slk(xs, ys, xq, lam=0.0).labels, lab[len(xs) :])


def test_simpleshot_is_nearest_class_mean():
    xs, ys, xq, _ = _task(seed=2)
    c = torch.stack([xs[ys == k].mean(0) for k in range(3)])
    assert torch.equal(simpleshot(xs, ys, xq), torch.cdist(xq, c).argmin(1))


def test_bad_input():
    xs, ys, xq, _ = _task()
    with pytest.raises(PriorkitError, match="mode"):
        slk(xs, ys, xq, mode="kmodes")
    with pytest.raises(PriorkitError, match="lam"):
        slk(xs, ys, xq, lam=-1.0)
    with pytest.raises(PriorkitError, match="support_y"):
        slk(xs, ys + 1, xq)
    with pytest.raises(PriorkitError, match="knn"):
        knn_affinity(xs, knn=1)
