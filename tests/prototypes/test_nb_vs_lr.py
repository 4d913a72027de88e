"""nb_vs_lr: the pooled Gaussian NB head (linear form, streaming = batch, priors), LR heads, the simulator and
its Bayes error, the learning-curve helpers, the experiment's pieces (part 2 on a stand-in for Fashion-MNIST),
and bad input."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch

import priorkit.prototypes.nb_vs_lr as nbmod
from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset, Splits
from priorkit.experiments.nb_vs_lr import sim_grid
from priorkit.prototypes.nb_vs_lr import (
    GaussianNB,
    bayes_error,
    crossover,
    effective_covariance,
    fit_logistic,
    fit_logistic_sgd,
    learning_curve,
    m_grid,
    m_to_reach,
    nb_linear,
    nb_log_joint,
    nb_statistics,
    simulate,
    simulator_params,
)


def _data(n: int = 60, d: int = 5, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    return torch.randn(n, d, generator=g, dtype=torch.float64) + y.unsqueeze(1).double(), y


def test_statistics_match_brute_force_and_priors_sum_to_one() -> None:
    x, y = _data()
    x, y = x[:50], y[:50]  # unbalanced counts
    s = nb_statistics(x, y, 3)
    for c in range(3):
        xc = x[y == c]
        assert int(s.counts[c]) == len(xc)
        torch.testing.assert_close(s.means[c], xc.mean(0))
        torch.testing.assert_close(s.variances[c], xc.var(0, unbiased=False))
    torch.testing.assert_close(s.priors.sum(), torch.tensor(1.0, dtype=torch.float64))
    # brute force of the official predict: log pi_k - 1/2 sum_j (x_j - mu_kj)^2 / sigma2_j
    pooled = sum(s.priors[c] * s.variances[c] for c in range(3)) + 1e-9
    lj = nb_log_joint(x, s)
    for i in range(3):
        for c in range(3):
            want = math.log(float(s.priors[c])) - 0.5 * sum(
                float((x[i, j] - s.means[c, j]) ** 2 / pooled[j]) for j in range(x.shape[1])
            )
            assert abs(float(lj[i, c]) - want) < 1e-10


def test_pooled_nb_is_linear() -> None:
    x, y = _data()
    nb = GaussianNB(3).fit(x, y)
    w, b = nb_linear(nb.stats)
    var = nb.stats.priors @ nb.stats.variances + 1e-9
    shared = -0.5 * (x * x / var).sum(1, keepdim=True)
    torch.testing.assert_close(nb.log_joint(x), x @ w.T + b + shared, rtol=0, atol=1e-8)
    torch.testing.assert_close(nb.decision_function(x), x @ w.T + b, rtol=0, atol=1e-12)
    assert torch.equal(nb.decision_function(x).argmax(1), nb.predict(x))
    torch.testing.assert_close(nb.predict_proba(x).sum(1), torch.ones(len(x), dtype=torch.float64))


def test_incremental_equals_batch() -> None:
    x, y = _data(90)
    batch = GaussianNB(3).fit(x, y)
    stream = GaussianNB(3)
    for s in (slice(0, 7), slice(7, 40), slice(40, 90)):
        stream.partial_fit(x[s], y[s])
    # a chunk that misses a class is fine
    only = GaussianNB(3).partial_fit(x[y != 2], y[y != 2]).partial_fit(x[y == 2], y[y == 2])
    for other in (stream, only):
        for a, b in zip(batch.state_dict().values(), other.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    fresh = GaussianNB(3)
    fresh.load_state_dict(stream.state_dict())
    assert torch.equal(fresh.predict(x), batch.predict(x))


def test_unpooled_and_relative_eps() -> None:
    x, y = _data()
    quad = GaussianNB(3, pooled=False).fit(x, y)
    s = quad.stats
    var = s.variances + 1e-9
    want = s.priors.log() + torch.stack(
        [torch.distributions.Normal(s.means[c], var[c].sqrt()).log_prob(x).sum(1) for c in range(3)], 1
    )
    torch.testing.assert_close(quad.log_joint(x), want)
    rel = GaussianNB(3, eps=0.5, eps_mode="relative").fit(x, y)
    pooled = rel.stats.priors @ rel.stats.variances
    w, _ = nb_linear(rel.stats, 0.5, "relative")
    torch.testing.assert_close(w, rel.stats.means / (pooled + 0.5 * pooled.max()))


def test_nb_asymptote_matches_analytic_bayes_error() -> None:
    # n=4, K=2, easy: equal diagonal covariance and balanced classes, so NB is the Bayes rule asymptotically
    target = bayes_error(4, 2, "easy")
    assert abs(target - 0.5 * math.erfc(math.sqrt(10) / 2 / math.sqrt(2))) < 1e-12
    x, y = simulate(4, 2, 20_000, "easy", seed=0)
    xt, yt = simulate(4, 2, 20_000, "easy", seed=1)
    err = float((GaussianNB(2).fit(x, y).predict(xt) != yt).double().mean())
    se = math.sqrt(target * (1 - target) / len(yt))
    assert abs(err - target) < 4 * se + 2e-3


def test_simulator_params_and_sampling() -> None:
    means, cov = simulator_params(6, 4, "easy")
    torch.testing.assert_close(means[:, 0], torch.tensor([-1.0, 1.0, 2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(torch.diag(cov), torch.tensor([6.0, 6, 6, 1, 1, 1], dtype=torch.float64))
    _, hard = simulator_params(6, 2, "hard")
    torch.testing.assert_close(torch.diag(hard), torch.diag(cov))
    torch.testing.assert_close(hard, hard.T)
    eff = effective_covariance(hard)
    x, y = simulate(6, 2, 100_000, "hard", seed=0)
    emp = torch.cov((x[y == 0] - means[0]).T)
    assert float((emp - eff).abs().max()) < 0.1 * float(eff.abs().max())
    psd = torch.eye(3) * 2.0
    torch.testing.assert_close(effective_covariance(psd.double()), psd.double())
    # the K > 2 Monte Carlo Bayes error is within [0, 1 - 1/K] and deterministic
    e3 = bayes_error(10, 3, samples=30_000)
    assert 0 < e3 < 2 / 3 and e3 == bayes_error(10, 3, samples=30_000)


def test_learning_curve_helpers() -> None:
    assert m_grid(100, 2)[:3] == [4, 9, 14] and m_grid(100, 2)[-1] < 10_000
    assert m_grid(100, 2, stop=20) == [4, 9, 14, 19]
    grid = sim_grid()
    assert grid[0] == 4 and grid[-1] <= 2000 and all(m in m_grid(100, 2) for m in grid)
    assert grid == sorted(set(grid))
    assert m_to_reach([1, 2, 3], [0.5, 0.2, 0.1], 0.2) == 2 and m_to_reach([1], [0.5], 0.1) is None
    assert crossover([1, 2, 3, 4], [0.3, 0.2, 0.2, 0.1], [0.4, 0.3, 0.1, 0.05]) == 3
    assert crossover([1, 2], [0.1, 0.1], [0.2, 0.2]) is None
    x, y = simulate(10, 2, 200, seed=0)
    xt, yt = simulate(10, 2, 200, seed=1)
    fit = lambda a, b: GaussianNB(2).fit(a, b).predict  # noqa: E731
    c1 = learning_curve(fit, x, y, xt, yt, [4, 20, 100], repeats=3, seed=0)
    c2 = learning_curve(fit, x, y, xt, yt, [4, 20, 100], repeats=3, seed=0)
    assert c1 == c2 and len(c1["errors"][0]) == 3
    stopped = learning_curve(fit, x, y, xt, yt, [4, 20, 100], repeats=3, seed=0, target=1.0)
    assert stopped["m"] == [4]


def test_logistic_heads_learn() -> None:
    import sklearn.linear_model  # noqa: F401  (load its BLAS before limiting threads)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        _logistic_heads_learn()


def _logistic_heads_learn() -> None:
    x, y = simulate(10, 3, 100, seed=0)
    xt, yt = simulate(10, 3, 200, seed=1)
    err_lbfgs = float((fit_logistic(x, y)(xt) != yt).double().mean())
    err_sgd = float((fit_logistic_sgd(x, y, 3, eval_x=x, eval_y=y, epochs=30, lr=0.01)(xt) != yt).double().mean())
    err_nb = float((GaussianNB(3).fit(x, y).predict(xt) != yt).double().mean())
    assert max(err_lbfgs, err_sgd, err_nb) < 0.35  # chance is 0.67


def test_docstring_example_runs() -> None:
    r = doctest.testmod(nbmod, verbose=False)
    assert r.attempted > 0 and r.failed == 0


def test_bad_input() -> None:
    x, y = _data()
    with pytest.raises(PriorkitError, match="not fitted"):
        GaussianNB(3).predict(x)
    with pytest.raises(PriorkitError, match="labels"):
        GaussianNB(2).fit(x, y)
    with pytest.raises(PriorkitError, match="eps_mode"):
        GaussianNB(3, eps_mode="rel")
    with pytest.raises(PriorkitError, match="eps"):
        GaussianNB(3, eps=-1.0)
    with pytest.raises(PriorkitError, match="class"):
        GaussianNB(3).fit(x[y < 2], y[y < 2]).predict(x)
    with pytest.raises(PriorkitError, match="x"):
        GaussianNB(3).fit(x, y).predict(x[:, :2])
    with pytest.raises(PriorkitError, match="NaN"):
        GaussianNB(3).fit(torch.full_like(x, float("nan")), y)
    with pytest.raises(PriorkitError, match="mode"):
        simulator_params(10, 2, "medium")
    with pytest.raises(PriorkitError, match="K"):
        simulate(10, 1, 5)
    with pytest.raises(PriorkitError, match="C"):
        fit_logistic(x, y, C=0.0)
    with pytest.raises(PriorkitError, match="eval_x"):
        fit_logistic_sgd(x, y, 3, eval_x=x)
    xs, ys = simulate(5, 2, 10)
    with pytest.raises(PriorkitError, match="every m"):
        learning_curve(lambda a, b: None, xs, ys, xs, ys, [1])
    with pytest.raises(PriorkitError, match="increasing"):
        learning_curve(lambda a, b: None, xs, ys, xs, ys, [10, 4])


def test_partial_fit_nan_chunk_leaves_statistics_unchanged() -> None:
    x, y = _data()
    nb = GaussianNB(3).fit(x, y)
    before = nb.state_dict()
    bad = x[:10].clone()
    bad[2, 1] = float("nan")
    with pytest.raises(PriorkitError, match="x holds NaN"):
        nb.partial_fit(bad, y[:10])
    with pytest.raises(PriorkitError, match="y: labels must lie"):
        nb.partial_fit(x[:10], y[:10] + 3)
    assert all(torch.equal(v, nb.state_dict()[k]) for k, v in before.items())


def test_sgd_early_stopping_through_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = simulate(10, 3, 60, seed=0)
    calls = []
    orig = nbmod._EarlyStopping.on_epoch_end
    monkeypatch.setattr(nbmod._EarlyStopping, "on_epoch_end", lambda self, s: (calls.append(s.epoch), orig(self, s)))
    # one input point with all three labels: the error is 2/3 whatever the weights, so it never improves after
    # the first check and the run stops after 1 + patience checks
    ex, ey = torch.zeros(3, 10), torch.arange(3)
    pred = fit_logistic_sgd(x, y, 3, eval_x=ex, eval_y=ey, epochs=50, check_every=2, patience=3)
    assert pred.model.weight.shape == (3, 10)  # type: ignore[attr-defined]
    assert calls == list(range(8))  # checks after epochs 1, 3, 5, 7: the first is the best, 3 more end the run
    with pytest.raises(PriorkitError, match="eval_y: labels must lie"):
        fit_logistic_sgd(x, y, 3, eval_x=x, eval_y=y + 5)


def _fake_fashion_mnist(n_train: int = 300, n_test: int = 100) -> Splits:
    """A tiny stand-in for Fashion-MNIST (CI has no real images): 10 labels, images [N, 1, 28, 28] in [0, 1]."""
    g = torch.Generator().manual_seed(0)

    def part(n: int) -> IndexedTensorDataset:
        return IndexedTensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10)

    return Splits(part(n_train), part(n_train // 10), part(n_test), num_classes=10, input_shape=(1, 28, 28))


def test_experiment_probe_features_on_the_novel_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Part 2: pool drawn per class from the seed out of the training split, every test image of the classes
    >= source_classes, features min-max scaled on the pool, labels from 0; overlap with the backbone's pretraining
    classes and mismatched dataset / backbone are refused."""
    import priorkit.data
    import priorkit.experiments.nb_vs_lr as ex

    fake = _fake_fashion_mnist()
    monkeypatch.setattr(priorkit.data, "load_dataset", lambda name, **kw: fake)
    seen: list[torch.Tensor] = []

    def feats(x: torch.Tensor, backbone: str) -> torch.Tensor:
        seen.append(x)
        return x.flatten(1)[:, :6] * 3.0 + 1.0

    monkeypatch.setattr(ex, "_zoo_features", feats)
    c = dataclasses.replace(ex.FULL, probe_pool_per_class=7, probe_test_per_class=0)
    xp, yp, xt, yt = ex._probe_features(0, c)
    assert torch.bincount(yp).tolist() == [7] * 5 and torch.bincount(yt).tolist() == [10] * 5
    assert xp.dtype == torch.float64 and xp.shape == (35, 6) and xt.shape == (50, 6)
    assert torch.equal(xp.min(0).values, torch.zeros(6)) and torch.equal(xp.max(0).values, torch.ones(6))
    # the pool: distinct training images of the novel classes; the test set: every novel test image, in order
    train_x, train_y = torch.cat([fake.train.x, fake.val.x]), torch.cat([fake.train.y, fake.val.y])
    rows = {r.numpy().tobytes(): int(label) for r, label in zip(train_x, train_y)}
    pool_labels = [rows[r.numpy().tobytes()] for r in seen[0]]
    assert len(set(r.numpy().tobytes() for r in seen[0])) == 35 and pool_labels == (yp + 5).tolist()
    assert torch.equal(seen[1], fake.test.x[fake.test.y >= 5]) and torch.equal(yt, fake.test.y[fake.test.y >= 5] - 5)
    same = ex._probe_features(0, c)
    other = ex._probe_features(1, c)
    assert all(torch.equal(a, b) for a, b in zip((xp, yp, xt, yt), same))
    assert not torch.equal(xp, other[0]) and torch.equal(yt, other[3])
    for backbone in ("fmnist_conv_base5", "random_init"):  # classes 3-4 were in fmnist_conv_base5's pretraining
        with pytest.raises(PriorkitError, match="overlap"):
            ex._probe_features(0, dataclasses.replace(c, backbone=backbone, source_classes=3))
    imagenet = ex._probe_features(0, dataclasses.replace(c, backbone="efficientnet_lite0", source_classes=3))
    assert torch.bincount(imagenet[1]).tolist() == [7] * 7  # no Fashion-MNIST label space: nothing to overlap
    with pytest.raises(PriorkitError, match="backbone 'mlp' goes with dataset 'digits'"):
        ex._probe_features(0, dataclasses.replace(c, dataset="digits"))
    with pytest.raises(PriorkitError, match="backbone"):
        ex._probe_features(0, dataclasses.replace(c, backbone="resnet"))
    assert set(ex.EXPERIMENT.ablations) == {"random_init", "digits_mlp", "efficientnet_lite0"}
    for overrides in ex.EXPERIMENT.ablations.values():
        dataclasses.replace(ex.FULL, **overrides)  # every ablation names real config fields
