"""Turbo-VBI: the card's property tests (chain marginals by enumeration, i.i.d. case, ARD update, KL, neuron
removal), Module A/B wiring and resume."""

import itertools
import math

import pytest
import torch
from torch import nn

from priorkit.data.datasets import IndexedTensorDataset
from priorkit.sparsity.turbo_vbi import (
    BayesianLinear,
    TurboVBI,
    bayesianize,
    chain_marginals,
    debayesianize,
    extrinsic_message,
    gaussian_kl,
    module_b,
    remove_dead_neurons,
    runs_per_row,
)
from priorkit.train import TrainConfig, Trainer


def _brute(nu1, nu0, alpha, beta):
    n = len(nu1)
    z, marg = 0.0, torch.zeros(n, dtype=torch.float64)
    for s in itertools.product([0, 1], repeat=n):
        st = [2 * v - 1 for v in s]
        logp = sum(alpha * st[i] + (nu1[i] if s[i] else nu0[i]) for i in range(n))
        logp += sum(beta * st[i] * st[i + 1] for i in range(n - 1))
        p = math.exp(logp)
        z += p
        marg += p * torch.tensor(s, dtype=torch.float64)
    return marg / z


@pytest.mark.parametrize("n", [1, 2, 7, 12])
def test_chain_marginals_equal_enumeration(n):
    g = torch.Generator().manual_seed(n)
    nu1, nu0 = torch.randn(1, n, generator=g, dtype=torch.float64), torch.randn(1, n, generator=g, dtype=torch.float64)
    got = chain_marginals(nu1, nu0, -0.4, 0.7)[0]
    assert torch.allclose(got, _brute(nu1[0].tolist(), nu0[0].tolist(), -0.4, 0.7), atol=1e-10)


def test_beta_zero_is_the_iid_sigmoid():
    nu1, nu0 = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(chain_marginals(nu1, nu0, 0.3, 0.0), torch.sigmoid(0.6 + nu1 - nu0))


def test_all_active_support_gives_the_ard_update():
    m_e, v_e = torch.randn(4, 6, dtype=torch.float64), torch.rand(4, 6, dtype=torch.float64) + 0.1
    a, b = 1.0, 0.05
    rho0 = torch.full_like(m_e, 3.0)
    # pi clamped at 1 - 1e-6 after the first sweep; one sweep from pi = 1 is exactly ARD's q(rho) mean
    rho, _ = module_b(m_e, v_e, hyper=(a, b, 1.0, 1e-5), alpha=50.0, beta=0.0, rho_init=rho0,
                      pi_init=torch.ones_like(m_e), sweeps=1)  # fmt: skip
    s2 = 1.0 / (1.0 / v_e + rho0)
    mu = s2 * m_e / v_e
    assert torch.allclose(rho, (a + 0.5) / (b + 0.5 * (mu * mu + s2)))


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, ls2, rho = torch.tensor([0.3, -1.0]), torch.tensor([-2.0, -0.5]), torch.tensor([4.0, 0.5])
    q = torch.distributions.Normal(mu, (0.5 * ls2).exp())
    p = torch.distributions.Normal(torch.zeros(2), rho.rsqrt())
    w = q.sample((200_000,))
    mc = (q.log_prob(w) - p.log_prob(w)).mean(0).sum()
    assert float(gaussian_kl(mu, ls2, rho)) == pytest.approx(float(mc), abs=0.01)


def test_extrinsic_message_divides_the_prior_out():
    mu, var, rho = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5]), torch.tensor([1.0, 3.0])
    m_e, v_e = extrinsic_message(mu, var, rho)
    assert float(v_e[0]) == pytest.approx(1.0) and float(m_e[0]) == pytest.approx(2.0)
    assert float(v_e[1]) == 0.5 and float(m_e[1]) == 2.0  # 1/var - rho <= 0: the posterior itself


def test_remove_dead_neurons_keeps_the_function():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight[[1, 4]] = 0.0
        net[2].weight[2] = 0.0
    x = torch.randn(7, 5)
    before = net(x)
    removed = remove_dead_neurons(net)
    assert removed == [2, 1] and net[0].out_features == 4 and net[2].in_features == 4 and net[4].in_features == 3
    assert torch.allclose(net(x), before, atol=1e-6)
    assert bool(net[0].weight.bool().any(dim=1).all())


def test_runs_per_row():
    m = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    assert runs_per_row(m) == 2.0


def test_bayesian_layer_is_mean_in_eval_and_bayesianize_roundtrip():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    ref = net(x)
    layers = bayesianize(net)
    net.eval()
    assert torch.allclose(net(x), ref)
    var = float(layers["0"].mu.detach().var())
    assert layers["0"].hyper.tolist() == pytest.approx([1.0, var, 1.0, var / 1e3])
    net.train()
    assert not torch.equal(net(x), ref)  # local reparameterisation noise
    masks = debayesianize(net)
    assert isinstance(net[0], nn.Linear) and set(masks) == {"0", "2"}


def _data():
    g = torch.Generator().manual_seed(0)
    return IndexedTensorDataset(torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g))


def _fit(epochs=4, ckpt=None, stop=None, resume=False):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    bayesianize(net)
    hook = TurboVBI(net, 48, t_a=1, t_b=3)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, seed=0, ckpt_dir=ckpt, stop_after_epoch=stop,
                      progress=False)  # fmt: skip
    hist = Trainer(net, _data(), hooks=[hook], config=cfg).fit(resume=resume)
    return net, hook, hist


def test_module_b_runs_every_t_a_epochs_and_kl_is_logged():
    net, hook, hist = _fit(epochs=2)
    assert all("kl" in h for h in hist)
    pi = hook.layers["0"].support
    assert float(pi.min()) >= 1e-6 and float(pi.max()) <= 1 - 1e-6
    assert not torch.allclose(pi, torch.full_like(pi, pi.flatten()[0].item()))  # refreshed from the data


def test_resume_is_bit_identical(tmp_path):
    full, _, _ = _fit(ckpt=str(tmp_path / "a"))
    _fit(ckpt=str(tmp_path / "b"), stop=1)
    resumed, _, _ = _fit(ckpt=str(tmp_path / "b"), resume=True)
    for (k, v), v2 in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, v2), k


def test_layer_kl_uses_its_prior_precision():
    layer = BayesianLinear(torch.randn(3, 2), None, log_sigma2=-3.0)
    layer.prior_rho.fill_(2.0)
    assert float(layer.kl()) == pytest.approx(float(gaussian_kl(layer.mu, layer.log_sigma2, torch.full((3, 2), 2.0))))
