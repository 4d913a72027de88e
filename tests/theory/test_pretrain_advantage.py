import math

import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.theory.pretrain_advantage import (
    SPEC,
    FactorClass,
    GMMClass,
    GMMParams,
    PretrainAdvantage,
    bound,
    complexity,
    em_step,
    factor_log_likelihood,
    fit_downstream,
    fit_factor_mle,
    fit_gmm_em,
    fit_latent,
    fit_supervised,
    gmm_log_likelihood,
    gmm_posterior,
    loglog_slope,
    make_factor_task,
    make_gmm_task,
    supervised_bound,
)


@pytest.fixture(scope="module")
def task():
    return make_gmm_task(seed=0)


@pytest.fixture(scope="module")
def phi(task):
    xu, _, _ = task.sample(3000, 1)
    return fit_gmm_em(xu, 4, restarts=2, max_iter=100, tol=1e-9, seed=0)


def test_em_log_likelihood_never_decreases_and_step_is_the_closed_form():
    t = make_gmm_task(sep=2.5, seed=3)  # overlapping components: many EM iterations
    x, _, _ = t.sample(500, 4)
    fit = fit_gmm_em(x, 4, restarts=3, max_iter=300, tol=0.0, seed=1)
    h = torch.tensor(fit.history, dtype=torch.float64)
    assert len(h) > 10 and bool((h[1:] - h[:-1] >= -1e-10).all())
    assert fit.log_likelihood == pytest.approx(gmm_log_likelihood(x, fit.means, fit.weights), abs=1e-12)
    # one step by hand: responsibilities, weighted means, mean responsibilities
    mu, w = x[:4].clone(), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    lj = torch.log(w) - 0.5 * torch.cdist(x, mu) ** 2
    r = torch.softmax(lj, 1)
    new_mu, new_w = em_step(x, mu, w)
    assert torch.allclose(new_mu, (r.T @ x) / r.sum(0)[:, None], atol=1e-12)
    assert torch.allclose(new_w, r.mean(0), atol=1e-12)
    assert gmm_log_likelihood(x, new_mu, new_w) >= gmm_log_likelihood(x, mu, w)


def test_posterior_is_bayes_rule_on_the_simplex(task):
    x, _, _ = task.sample(50, 2)
    post = gmm_posterior(x, task.phi.means, task.phi.weights)
    dens = torch.stack([torch.exp(-0.5 * ((x - m) ** 2).sum(1)) for m in task.phi.means], 1) * task.phi.weights
    assert torch.allclose(post, dens / dens.sum(1, keepdim=True), atol=1e-10)
    assert torch.allclose(post.sum(1), torch.ones(50, dtype=post.dtype))


def test_square_layout_is_xor_and_excess_risk_is_conditional_bayes_gap(task):
    d = torch.cdist(task.phi.means, task.phi.means)
    assert d[0, 1] == pytest.approx(4.0) and d[0, 2] == pytest.approx(4.0)  # label-changing neighbours
    assert d[0, 3] == pytest.approx(4 * math.sqrt(2)) and d[1, 2] == pytest.approx(4 * math.sqrt(2))  # same label
    x, _, y = task.sample(20000, 5)
    bayes = task.bayes_predict(x)
    assert task.excess_risk(bayes, x) == 0.0
    rnd = torch.randint(0, 2, (len(x),), generator=torch.Generator().manual_seed(0))
    ex = task.excess_risk(rnd, x)
    # same expectation as test error - Bayes error (both estimated on this sample)
    gap = float((rnd != y).double().mean() - (bayes != y).double().mean())
    assert ex > 0 and ex == pytest.approx(gap, abs=0.015)
    assert task.bayes_error(x) == pytest.approx(float((bayes != y).double().mean()), abs=0.005)


def test_downstream_risk_is_invariant_to_permuting_the_components(task, phi):
    x, _, y = task.sample(40, 7)
    xt, _, _ = task.sample(2000, 8)
    a = fit_downstream(phi, "logistic", x, y, steps=100, seed=0)
    for perm in ([3, 1, 0, 2], [1, 0, 3, 2]):
        b = fit_downstream(phi.permute(perm), "logistic", x, y, steps=100, seed=0)
        with torch.no_grad():
            assert torch.allclose(a(xt).softmax(1), b(xt).softmax(1), atol=1e-5)
        assert torch.equal(a.predict(xt), b.predict(xt))
        assert torch.allclose(b.head.weight, a.head.weight[:, perm], atol=1e-5)
    with pytest.raises(PriorkitError, match="perm must be a permutation"):
        phi.permute([0, 0, 1, 2])


def test_two_stage_beats_composed_erm_with_few_labels(task, phi):
    x, _, y = task.sample(50, 9)
    xe, _, _ = task.sample(5000, 10)
    two = fit_downstream(phi, "logistic", x, y, steps=200, seed=0)
    erm = fit_supervised(GMMClass(4), x, y, restarts=2, steps=200, seed=0)
    with torch.no_grad():
        e_two = task.excess_risk(two.predict(xe), xe)
        e_erm = task.excess_risk(erm(xe.float()).argmax(1), xe)
    assert e_two < 0.02 and e_erm > e_two + 0.1


def test_ppca_mle_closed_form_and_rotation_invariance():
    ft = make_factor_task(dim=12, rank=2, seed=0)
    x, _, y = ft.sample(4000, 1)
    fit = fit_factor_mle(x, 2)
    # the likelihood is maximal: perturbing loading, noise or mean lowers it
    ll = factor_log_likelihood(x, fit)
    g = torch.Generator().manual_seed(0)
    for da, dv, dm in ((0.05, 0.0, 0.0), (0.0, 0.05, 0.0), (0.0, 0.0, 0.05)):
        pert = type(fit)(fit.loading + da * torch.randn(fit.loading.shape, generator=g, dtype=torch.float64),
                         fit.mean + dm, fit.noise_var * (1 + dv))  # fmt: skip
        assert factor_log_likelihood(x, pert) < ll
    assert fit.log_likelihood == pytest.approx(ll)
    cov = fit.loading @ fit.loading.T + fit.noise_var * torch.eye(12, dtype=torch.float64)
    true = ft.phi.loading @ ft.phi.loading.T + ft.phi.noise_var * torch.eye(12, dtype=torch.float64)
    assert torch.linalg.matrix_norm(cov - true) / torch.linalg.matrix_norm(true) < 0.1
    # T = rotations: a rotated loading has the same marginal and gives the same downstream predictor
    c, s = math.cos(0.7), math.sin(0.7)
    rot = fit.rotate(torch.tensor([[c, -s], [s, c]], dtype=torch.float64))
    assert factor_log_likelihood(x, rot) == pytest.approx(ll, abs=1e-9)
    a = fit_downstream(fit, "linear", x[:30], y[:30], steps=300, lr=0.05, weight_decay=0.0, seed=0)
    b = fit_downstream(rot, "linear", x[:30], y[:30], steps=300, lr=0.05, weight_decay=0.0, seed=0)
    assert torch.allclose(a.predict(x[:200]), b.predict(x[:200]), atol=2e-3)


def test_engine_least_squares_matches_the_closed_form():
    ft = make_factor_task(dim=10, rank=3, seed=1)
    x, _, y = ft.sample(60, 2)
    fit = fit_latent(FactorClass(3), x)
    model = fit_downstream(fit, "linear", x, y, steps=500, lr=0.1, weight_decay=0.0, batch_size=60, seed=0)
    feats = torch.cat([fit.represent(x), torch.ones(60, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(feats, y.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(model.predict(x).double(), feats @ coef, atol=2e-3)


def test_rate_matches_formula_and_decreases_in_m_and_n():
    got = bound(200.0, 4.0, 1000, 50, kappa=2.0, L=1.5, delta=0.1)
    want = 2.0 * 1.5 * math.sqrt((200 + math.log(10)) / 1000) + math.sqrt(4 / 50) + 1.5 * math.sqrt(math.log(10) / 50)
    assert got == pytest.approx(want, rel=1e-12)
    assert supervised_bound(204.0, 50, 1.5, 0.1) == pytest.approx(
        math.sqrt(204 / 50) + 1.5 * math.sqrt(math.log(10) / 50), rel=1e-12
    )
    ms, ns = [10, 100, 1000, 10**5], [5, 50, 500, 5000]
    assert all(bound(200, 4, a, 50) > bound(200, 4, b, 50) for a, b in zip(ms, ms[1:]))
    assert all(bound(200, 4, 1000, a) > bound(200, 4, 1000, b) for a, b in zip(ns, ns[1:]))
    c = complexity(GMMClass(4), 50)
    assert c == {"C_phi": 200.0, "C_psi": 4.0, "C_composed": 204.0}
    assert complexity(FactorClass(3), 50) == {"C_phi": 150.0, "C_psi": 3.0, "C_composed": 50.0}
    # m >> n and C_composed > C_psi: the two-stage rate is below the supervised one
    assert bound(c["C_phi"], c["C_psi"], 10**6, 100) < supervised_bound(c["C_composed"], 100)


def test_loglog_slope_recovers_a_power_law():
    xs = [10, 20, 50, 100, 500]
    assert loglog_slope(xs, [3.0 * v**-0.5 for v in xs]) == pytest.approx(-0.5)
    assert loglog_slope(xs, [0.0, 0.0, 1.0, None, 2.0]) is None  # fewer than 3 positive points


def test_entry_fits_predicts_and_gives_rates(task):
    xu, _, _ = task.sample(2000, 11)
    x, _, y = task.sample(30, 12)
    assert PretrainAdvantage(**SPEC.presets["paper"]).model_class == GMMClass(4, 5, 500, 1e-10)
    est = PretrainAdvantage(**{**SPEC.presets["small"], "restarts": 2, "max_iter": 50, "steps": 100})
    with pytest.raises(PriorkitError, match="not fitted"):
        est.predict(x)
    est.fit(xu, x, y)
    assert isinstance(est.phi, GMMParams) and (est.m, est.n) == (2000, 30)
    assert est.predict(x).shape == (30,)
    c = complexity(GMMClass(4), 50)
    assert est.rate() == pytest.approx(bound(c["C_phi"], c["C_psi"], 2000, 30))
    assert est.supervised_rate() == pytest.approx(supervised_bound(c["C_composed"], 30))
