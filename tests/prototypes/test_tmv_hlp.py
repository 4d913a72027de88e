"""TMV-HLP: the card's property tests (CCA constraint, row-stochastic P, alpha -> 0, prototypes keep their class,
permutation equivariance), brute-force hypergraph checks, errors and the docstring example."""

import doctest
import itertools

import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError
from priorkit.data.zeroshot import digits_zeroshot
from priorkit.prototypes import tmv_hlp as tm


def _views(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 3, generator=g, dtype=torch.float64)
    v1 = latent @ torch.randn(3, 6, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, 6, generator=g)
    v2 = latent @ torch.randn(3, 4, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, 4, generator=g)
    v3 = latent @ torch.randn(3, 5, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, 5, generator=g)
    return [v1, v2, v3]


def _constraint(cca, views, i):
    x = cca.standardise(i, views[i])
    s = x.t() @ x / x.shape[0] + cca.ridge * torch.eye(x.shape[1], dtype=x.dtype)
    return cca.weights[i].t() @ s @ cca.weights[i]


def test_cca_constraint_two_views_per_view():
    views = _views()[:2]
    cca = tm.multiview_cca(views, 3, ridge=1e-4)
    for i in range(2):
        assert torch.allclose(_constraint(cca, views, i), torch.eye(3, dtype=torch.float64), atol=1e-6)


def test_cca_constraint_multi_view_holds_jointly():
    views = _views()
    cca = tm.multiview_cca(views, 3, ridge=1e-4)
    total = sum(_constraint(cca, views, i) for i in range(3))
    assert torch.allclose(total / 3, torch.eye(3, dtype=torch.float64), atol=1e-6)
    assert bool((cca.eigenvalues[:-1] >= cca.eigenvalues[1:]).all())


def test_cca_recovers_shared_signal():
    views = _views()
    cca = tm.multiview_cca(views, 1)
    e = [cca.standardise(i, v) @ cca.weights[i] for i, v in enumerate(views)]
    corr = torch.corrcoef(torch.cat(e, 1).t())
    assert corr[0, 1] > 0.9 and corr[0, 2] > 0.9  # same sign across views: one solution vector


def test_propagation_matrix_row_stochastic_and_alpha_zero_is_identity():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(20, 20, generator=g, dtype=torch.float64)
    w = w + w.t()
    p = tm.propagation_matrix(w)
    assert torch.allclose(p.sum(1), torch.ones(20, dtype=torch.float64))
    y = F.one_hot(torch.randint(0, 3, (20,), generator=g), 3).double()
    assert torch.allclose(tm.propagate(p, y, 0.0), y)
    # closed form equals the fixed point of F <- alpha P F + Y
    f = tm.propagate(p, y, 0.5)
    assert torch.allclose(f, 0.5 * p @ f + y, atol=1e-10)


def _clusters(n_per=15, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(c, 8, generator=g, dtype=torch.float64), dim=1) * 4
    x = torch.cat([centres[k] + 0.3 * torch.randn(n_per, 8, generator=g, dtype=torch.float64) for k in range(c)])
    return F.normalize(torch.cat([x, centres]), dim=1), torch.arange(c).repeat_interleave(n_per)


def test_prototypes_keep_their_own_class():
    nodes, y_inst = _clusters()
    n = len(y_inst)
    edges, _ = tm.hyperedges([nodes], k=5)
    p = tm.propagation_matrix(tm.hypergraph_affinity(nodes, edges))
    y0 = torch.zeros(len(nodes), 3, dtype=torch.float64)
    y0[n + torch.arange(3), torch.arange(3)] = 1
    f = tm.propagate(p, y0, 0.99)
    assert torch.equal(f[n:].argmax(1), torch.arange(3))
    assert (f[:n].argmax(1) == y_inst).double().mean() > 0.95


def test_hyperedges_and_affinity_brute_force():
    g = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=1)
    edges, pairs = tm.hyperedges([a, b], k=2)
    assert edges.shape == (2 * 6 + 2 * 7, 3) and pairs.shape == (26, 2)
    nodes = torch.cat([a, b])
    for e, (i, j) in zip(edges, pairs):
        u = int(e[0])
        lo, hi = (0, 6) if j == 0 else (6, 13)
        cand = [v for v in range(lo, hi) if v != u]
        sims = sorted(cand, key=lambda v: -float(nodes[u] @ nodes[v]))[:2]
        assert set(e[1:].tolist()) == set(sims)
        assert (u < 6) == (i == 0)
    aff = tm.hypergraph_affinity(nodes, edges, sigma=0.7)
    ref = torch.zeros(13, 13, dtype=torch.float64)
    for e in edges.tolist():
        ws = [torch.exp(-((nodes[x] - nodes[y]).norm() ** 2) / (2 * 0.49)) for x, y in itertools.combinations(e, 2)]
        w = sum(ws) / len(ws)
        for x in e:
            for y in e:
                if x != y:
                    ref[x, y] += w / len(e)
    assert torch.allclose(aff, ref, atol=1e-10)


def test_permuting_instances_permutes_predictions():
    words = torch.randn(10, 12, generator=torch.Generator().manual_seed(0))
    d = digits_zeroshot((7, 8, 9), words=words)
    xt, xs, ys = d.unseen_x[:150], d.seen_x[:400], d.seen_y[:400]
    out = tm.tmv_hlp(xs, ys, xt, d.views, d.seen, d.unseen, k=8)
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(1))
    out_p = tm.tmv_hlp(xs, ys, xt[perm], d.views, d.seen, d.unseen, k=8)
    assert torch.allclose(out_p.scores, out.scores[perm], atol=1e-6)
    # N-shot seeds: a labelled target node scores its own class highest
    lab = tm.tmv_hlp(xs, ys, xt, d.views, d.seen, d.unseen, k=8, labelled=(torch.tensor([0, 1]), d.unseen_y[:2]))
    pos = {c: j for j, c in enumerate(d.unseen)}
    assert [int(lab.scores[i].argmax()) for i in range(2)] == [pos[int(c)] for c in d.unseen_y[:2]]


def test_bad_input_errors():
    views = _views()
    with pytest.raises(PriorkitError, match="at least 2 views"):
        tm.multiview_cca(views[:1])
    with pytest.raises(PriorkitError, match="dim must be <="):
        tm.multiview_cca(views, 9)
    with pytest.raises(PriorkitError, match="alpha"):
        tm.propagate(torch.eye(3, dtype=torch.float64), torch.eye(3), 1.0)
    with pytest.raises(PriorkitError, match="non-negative"):
        tm.propagation_matrix(-torch.ones(3, 3))
    with pytest.raises(PriorkitError, match="k must be"):
        tm.hyperedges([torch.randn(3, 2)], k=5)
    with pytest.raises(PriorkitError, match="weighting"):
        tm.hypergraph_affinity(torch.randn(3, 2), torch.tensor([[0, 1]]), weighting="max")
    d = digits_zeroshot((7, 8, 9), words=torch.randn(10, 4))
    with pytest.raises(PriorkitError, match="disjoint"):
        tm.tmv_hlp(d.seen_x, d.seen_y, d.unseen_x, d.views, d.seen, (6, 7))
    with pytest.raises(PriorkitError, match="view"):
        tm.tmv_hlp(d.seen_x, d.seen_y, d.unseen_x, d.views, d.seen, d.unseen, use_views=("low", "pixels"))


def test_docstring_example_runs():
    res = doctest.testmod(tm)
    assert res.attempted > 0 and res.failed == 0
