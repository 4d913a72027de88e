import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from priorkit.core.errors import PriorkitError
from priorkit.prototypes.prob_psenn import (
    ProbPrototypeLayer,
    ProbPSENN,
    PSENNLossConfig,
    class_min_logits,
    explanation_entropy,
    gaussian_kl,
    latent_distances,
    mc_log_predictive,
    prob_psenn_loss,
    prob_psenn_recipe,
    psenn_regularizers,
    sample_prototypes,
    uncertainty_decomposition,
    uninformed_threshold,
)
from priorkit.train import TrainConfig, Trainer


def _model(prob=True, seed=0, **kw):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    dec = nn.Sequential(nn.Linear(4, 64), nn.Sigmoid())
    return ProbPSENN(enc, 4, 3, decoder=dec, prototypes_per_class=2, probabilistic=prob,
                     generator=torch.Generator().manual_seed(seed), **kw)  # fmt: skip


def test_zero_sigma_reduces_exactly_to_deterministic_psenn():
    prob = _model(True, sigma_min=0.0)
    det = _model(False)
    det.load_state_dict({k: v for k, v in prob.state_dict().items() if "rho" not in k})
    with torch.no_grad():
        prob.prototypes.rho.fill_(-200.0)  # softplus underflows to exactly 0
    assert float(prob.prototypes.sigma.detach().max()) == 0.0
    x = torch.rand(7, 64)
    a, b = prob(x, 5), det(x, 1)
    assert torch.equal(a["log_probs"], b["log_probs"].expand_as(a["log_probs"]))
    assert torch.equal(a["log_predictive"], b["log_predictive"])
    u = prob.uncertainty(x, 5)
    assert torch.allclose(u["mi"], torch.zeros(7), atol=1e-6)
    assert torch.equal(u["explanation_entropy"], torch.zeros(7))


def test_mc_predictive_is_mean_of_probabilities_and_sums_to_one():
    lp = torch.log_softmax(torch.randn(6, 5, 4), -1)
    lpbar = mc_log_predictive(lp)
    assert torch.allclose(lpbar.exp(), lp.exp().mean(0), atol=1e-6)
    assert torch.allclose(lpbar.exp().sum(1), torch.ones(5), atol=1e-6)
    out = _model()(torch.rand(9, 64), 8)
    assert torch.allclose(out["log_predictive"].exp().sum(1), torch.ones(9), atol=1e-6)


def test_mutual_information_nonnegative_and_decomposition():
    torch.manual_seed(1)
    lp = torch.log_softmax(3 * torch.randn(20, 50, 6), -1)
    u = uncertainty_decomposition(lp)
    assert bool((u["mi"] >= -1e-6).all())
    p = lp.exp()
    ent = lambda q: -(q * q.log()).sum(-1)  # noqa: E731
    assert torch.allclose(u["total"], ent(p.mean(0)), atol=1e-5)
    assert torch.allclose(u["expected"], ent(p).mean(0), atol=1e-5)
    assert torch.allclose(u["total"] - u["expected"], u["mi"])


def test_kl_zero_at_prior_and_closed_form():
    mu, sigma = torch.zeros(5, 3), torch.full((5, 3), 2.0)
    assert abs(float(gaussian_kl(mu, sigma, prior_scale=2.0))) < 1e-6
    mu, sigma = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    ref = 0.5 * (sigma**2 + mu**2 - 1 - torch.log(sigma**2)).sum()
    assert torch.allclose(gaussian_kl(mu, sigma), ref, atol=1e-5)
    iso = ProbPrototypeLayer(5, 3, family="isotropic")
    assert iso.sigma.shape == (5, 1) and torch.isfinite(iso.kl())


def test_decoded_prototype_samples_shape():
    enc = nn.Linear(64, 8)
    dec = nn.Sequential(nn.Linear(8, 64), nn.Sigmoid())
    m = ProbPSENN(enc, 8, 10, decoder=dec, prototypes_per_class=2)
    assert m.decode_prototypes(7).shape == (7, 20, 64)


def test_distances_logits_regularizers_match_loops():
    z = torch.randn(4, 3)
    p = torch.randn(2, 6, 3)
    d = latent_distances(z, p)
    for s in range(2):
        for b in range(4):
            for j in range(6):
                assert torch.isclose(d[s, b, j], ((z[b] - p[s, j]) ** 2).sum(), atol=1e-5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    lg = class_min_logits(d, labels, 3)
    for c in range(3):
        assert torch.allclose(lg[..., c], -d[..., labels == c].min(-1).values)
    r1, r2 = psenn_regularizers(z, p)
    ref1 = sum(min(float(d[s, i, j]) for i in range(4)) for s in range(2) for j in range(6)) / 12
    ref2 = sum(min(float(d[s, i, j]) for j in range(6)) for s in range(2) for i in range(4)) / 8
    assert math.isclose(float(r1), ref1, rel_tol=1e-5) and math.isclose(float(r2), ref2, rel_tol=1e-5)
    # per-example prototypes equal to the shared ones give the same distances
    pe = p.unsqueeze(1).expand(2, 4, 6, 3)
    assert torch.allclose(latent_distances(z, pe), d)


def test_explanation_entropy_matches_counting():
    d = torch.rand(10, 3, 4)
    e = explanation_entropy(d)
    for b in range(3):
        idx = d[:, b].argmin(-1).tolist()
        freqs = [idx.count(j) / 10 for j in set(idx)]
        assert math.isclose(float(e[b]), -sum(f * math.log(f) for f in freqs), rel_tol=1e-5)


def test_reparameterised_gradients_and_sampling_statistics():
    mu = torch.zeros(3, 2, requires_grad=True)
    rho = torch.zeros(3, 2, requires_grad=True)
    sigma = torch.nn.functional.softplus(rho)
    s = sample_prototypes(mu, sigma, 20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s.std(0), sigma.detach(), atol=0.02) and torch.allclose(s.mean(0), mu.detach(), atol=0.02)
    s.pow(2).mean().backward()
    assert rho.grad is not None and float(rho.grad.abs().sum()) > 0
    m = _model(per_example=True)
    out = m(torch.rand(5, 64), 3)
    assert out["prototype_samples"].shape == (3, 5, 6, 4) and out["distances"].shape == (3, 5, 6)


def test_loss_terms_and_short_training():
    torch.manual_seed(0)
    x = torch.rand(60, 64)
    y = torch.arange(60) % 3
    x[y == 1, :32] += 1.0
    x[y == 2, 32:] += 1.0
    x = x / 2
    m = _model()
    cfg = PSENNLossConfig(beta=1.0)
    terms = prob_psenn_loss(m, x, y, m(x, 4), cfg, len(x))
    assert set(terms) == {"ce", "ae", "r1", "r2", "kl"}
    hist = _fit(m, x, y, cfg, epochs=30)
    assert hist[-1]["ce"] < hist[0]["ce"]
    acc = (m.uncertainty(x, 10)["predictive"].argmax(1) == y).float().mean()
    assert float(acc) > 0.9
    thr = uninformed_threshold(m, x)
    assert thr > 0
    for mode in ("predictive",):
        t2 = prob_psenn_loss(m, x, y, m(x, 4), PSENNLossConfig(ce=mode, reg_on="mean"), len(x))
        assert torch.isfinite(sum(t2.values()))


def test_bad_inputs():
    with pytest.raises(PriorkitError, match="family"):
        ProbPrototypeLayer(4, 2, family="full")
    with pytest.raises(PriorkitError, match="head"):
        ProbPSENN(nn.Linear(4, 2), 2, 3, head="mlp")
    with pytest.raises(PriorkitError, match="num_prototypes"):
        ProbPSENN(nn.Linear(4, 2), 2, 3, head="linear")
    with pytest.raises(PriorkitError, match="init_sigma"):
        ProbPrototypeLayer(4, 2, init_sigma=0.0)
    with pytest.raises(PriorkitError, match="ce"):
        PSENNLossConfig(ce="mean")
    with pytest.raises(PriorkitError, match="beta"):
        PSENNLossConfig(beta=-1.0)
    with pytest.raises(PriorkitError, match="prototypes"):
        latent_distances(torch.rand(3, 4), torch.rand(2, 5, 3))
    with pytest.raises(PriorkitError, match="sigma"):
        sample_prototypes(torch.rand(3, 4), torch.rand(2, 4), 2)
    with pytest.raises(PriorkitError, match="decoder"):
        ProbPSENN(nn.Linear(4, 2), 2, 3).decode_prototypes()
    with pytest.raises(PriorkitError, match="num_samples"):
        ProbPrototypeLayer(4, 2).sample(0)


def test_experiment_ood_sets():
    from priorkit.experiments.prob_psenn import ambiguous, image_patches, permuted

    p = image_patches(12, 0)
    assert p.shape == (12, 64) and float(p.min()) >= 0 and float(p.max()) <= 1
    x = torch.rand(5, 64)
    xp = permuted(x, 0)
    assert torch.equal(xp.sort(1).values, x.sort(1).values) and not torch.equal(xp, x)
    y = torch.tensor([0, 1, 2, 0, 1])
    assert ambiguous(x, y, 0).shape[1] == 64


def _fit(m, x, y, cfg=None, *, epochs, **config):
    tc = TrainConfig(batch_size=20, seed=0, progress=False, **config)
    recipe = prob_psenn_recipe(m, cfg, epochs=epochs, lr=1e-2, num_samples=4)
    resume = bool(config) and "stop_after_epoch" not in config
    hist = Trainer(m, TensorDataset(x, y), recipe=recipe, config=tc).fit(resume=resume)
    return [h for h in hist if "loss" in h]


def _toy(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 64, generator=g), torch.arange(n) % 3


def test_recipe_resume_is_bit_identical(tmp_path):
    """Prototype draws are seeded by (seed, step): a resumed run draws and ends as an uninterrupted one."""
    x, y = _toy()
    full = _model()
    h_full = _fit(full, x, y, epochs=3)
    _fit(_model(), x, y, epochs=3, ckpt_dir=str(tmp_path), stop_after_epoch=0)
    resumed = _model()
    h = _fit(resumed, x, y, epochs=3, ckpt_dir=str(tmp_path))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in h] == [r["loss"] for r in h_full]


def test_recipe_refuses_nan_batch_and_bad_labels():
    x, y = _toy()
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad = x.clone()
    bad[5, 3] = float("inf")
    with pytest.raises(PriorkitError, match="x holds"):
        _fit(m, bad, y, epochs=1)
    with pytest.raises(PriorkitError, match="y must lie"):
        _fit(m, x, y + 3, epochs=1)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    with pytest.raises(PriorkitError, match="model must be"):
        prob_psenn_recipe(nn.Linear(2, 2))
    with pytest.raises(PriorkitError, match="loss_config"):
        prob_psenn_recipe(m, {"beta": 1.0})
