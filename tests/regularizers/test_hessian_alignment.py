import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError
from priorkit.data.domains import colored_digits
from priorkit.models import MLP
from priorkit.regularizers import hessian_alignment as ha
from priorkit.regularizers.hessian_alignment import (
    HessianAlignmentRecipe,
    hessian_gradient_product,
    hgp_penalty,
    hutchinson_diagonal,
    hutchinson_penalty,
)
from priorkit.train import TrainConfig, Trainer


def _head_problem(n=40, d=6, c=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=g)
    head = nn.Linear(d, c).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, d, generator=g, dtype=dtype))
        head.bias.copy_(torch.randn(c, generator=g, dtype=dtype))
    return feats, y, head


def _flat_loss(feats, y, c, d):
    """The head's loss as a function of the flattened (weight, bias) vector, for torch.func."""

    def f(theta):
        w, b = theta[: c * d].view(c, d), theta[c * d :]
        return F.cross_entropy(feats @ w.T + b, y)

    return f


def _theta(head):
    return torch.cat([head.weight.detach().reshape(-1), head.bias.detach()])


# ------------------------------------------------------------------------------------------- HGP
def test_hgp_equals_exact_hessian_vector_product():
    feats, y, head = _head_problem()
    loss = F.cross_entropy(head(feats), y)
    g, hg = hessian_gradient_product(loss, list(head.parameters()))
    theta = _theta(head)
    f = _flat_loss(feats, y, 3, 6)
    g_ref = torch.func.grad(f)(theta)
    _, hvp = torch.func.jvp(torch.func.grad(f), (theta,), (g_ref,))  # forward-over-reverse H g
    assert torch.allclose(g.detach(), g_ref, atol=1e-6)
    assert torch.allclose(hg.detach(), hvp, atol=1e-5, rtol=1e-5)
    _, hvp2 = torch.autograd.functional.hvp(f, theta, g_ref)
    assert torch.allclose(hg.detach(), hvp2, atol=1e-5, rtol=1e-5)


def test_hgp_is_finite_at_zero_gradient():
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = F.cross_entropy(head(feats), torch.tensor([0, 1]))  # symmetric: the gradient is exactly 0
    g, hg = hessian_gradient_product(loss, list(head.parameters()))
    assert torch.equal(g.detach(), torch.zeros(6)) and torch.isfinite(hg).all() and hg.abs().max() == 0


# ------------------------------------------------------------------------------------ Hutchinson
def test_hutchinson_converges_to_exact_diagonal_like_one_over_sqrt_s():
    feats, y, head = _head_problem(dtype=torch.float64)
    params = list(head.parameters())
    f = _flat_loss(feats, y, 3, 6)
    exact = torch.autograd.functional.hessian(f, _theta(head)).diagonal()
    loss = F.cross_entropy(head(feats), y)
    grad = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, create_graph=True)])
    errs = {}
    for s in (16, 256, 4096):
        trials = [
            (hutchinson_diagonal(grad, params, s, generator=torch.Generator().manual_seed(k)) - exact).norm()
            for k in range(6)
        ]
        errs[s] = float(torch.stack(trials).detach().pow(2).mean().sqrt())
    # error ~ 1/sqrt(S): 16x more probes -> about 4x smaller (allow 2.5x-6.5x), and it reaches the exact diagonal
    for a, b in ((16, 256), (256, 4096)):
        assert 2.5 < errs[a] / errs[b] < 6.5, errs
    assert errs[4096] < 0.02 * exact.norm()


def test_hutchinson_vectorised_equals_loop_and_gaussian_probes_work():
    feats, y, head = _head_problem()
    params = list(head.parameters())
    loss = F.cross_entropy(head(feats), y)
    grad = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, create_graph=True)])
    z = torch.randint(0, 2, (7, grad.numel()), generator=torch.Generator().manual_seed(1)).float() * 2 - 1
    a = hutchinson_diagonal(grad, params, probes=z, vectorize=True)
    b = hutchinson_diagonal(grad, params, probes=z, vectorize=False)
    assert torch.allclose(a, b, atol=1e-6)
    gauss = hutchinson_diagonal(grad, params, 5, probe="gaussian", generator=torch.Generator().manual_seed(0))
    assert gauss.shape == grad.shape and torch.isfinite(gauss).all()


# ------------------------------------------------------------------------------ penalties, invariants
def _domains(same=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
    head = nn.Linear(8, 3)
    xs = [torch.randn(12, 5, generator=g) for _ in range(3)]
    ys = [torch.randint(0, 3, (12,), generator=g) for _ in range(3)]
    if same:
        xs, ys = [xs[0]] * 3, [ys[0]] * 3
    losses = [F.cross_entropy(head(body(x)), y) for x, y in zip(xs, ys)]
    return body, head, losses


@pytest.mark.parametrize("detach_mean", [True, False])
def test_penalties_vanish_on_identical_domain_batches(detach_mean):
    _, head, losses = _domains(same=True)
    params = list(head.parameters())
    hgp = hgp_penalty(losses, params, alpha=1.0, beta=1.0, detach_mean=detach_mean)
    assert float(hgp) < 1e-12
    hut = hutchinson_penalty(losses, params, alpha=1.0, beta=1.0, num_probes=20, shared_probes=True,
                             detach_mean=detach_mean, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert float(hut) < 1e-12
    # independent probes (the official estimator): only the estimator's noise is left, and it shrinks with S
    noise = [float(hutchinson_penalty(losses, params, alpha=1.0, beta=0.0, num_probes=s, detach_mean=detach_mean,
                                      generator=torch.Generator().manual_seed(0))) for s in (4, 400)]  # fmt: skip
    assert noise[1] < noise[0] / 10


def test_penalties_are_positive_on_different_domains_and_match_the_formula():
    _, head, losses = _domains()
    params = list(head.parameters())
    gs, hgs = zip(*[hessian_gradient_product(v, params) for v in losses])
    g_bar = torch.stack(gs).mean(0)
    _, hg_bar = hessian_gradient_product(torch.stack(losses).mean(), params)
    want = [0.3 * (hg - hg_bar).pow(2).sum() + 0.7 * (g - g_bar).pow(2).sum() for g, hg in zip(gs, hgs)]
    got = hgp_penalty(losses, params, alpha=0.3, beta=0.7, reduction="sum")
    assert float(got) > 0
    assert torch.allclose(got, torch.stack(want).sum(), rtol=1e-5)
    assert torch.allclose(hgp_penalty(losses, params, alpha=0.3, beta=0.7), got / 3, rtol=1e-6)


@pytest.mark.parametrize("kind", ["hgp", "hutchinson"])
def test_gradients_reach_the_featurizer(kind):
    body, head, losses = _domains()
    params = list(head.parameters())
    if kind == "hgp":
        p = hgp_penalty(losses, params, alpha=1.0, beta=1.0)
    else:
        p = hutchinson_penalty(losses, params, alpha=1.0, beta=1.0, num_probes=8)
    grads = torch.autograd.grad(p, list(body.parameters()) + params)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


def test_detach_mean_controls_the_gradient_through_the_mean():
    def grads(alpha, beta, detach):
        _, head, losses = _domains()
        params = list(head.parameters())
        return torch.autograd.grad(hgp_penalty(losses, params, alpha=alpha, beta=beta, detach_mean=detach), params)

    # beta only: with the identity m the mean's path contributes -2 sum_e (g_e - g_bar) d g_bar = 0 (the
    # deviations sum to 0), so both flags give the same gradient for the gradient term ...
    a, b = grads(0.0, 1.0, True), grads(0.0, 1.0, False)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
    # ... while H_bar g_bar is not linear in the domains: the two flags differ on the Hessian term
    a, b = grads(1.0, 0.0, True), grads(1.0, 0.0, False)
    assert any(not torch.allclose(x, y, atol=1e-7) for x, y in zip(a, b))


def test_bias_option_changes_theta():
    _, head, losses = _domains()
    with_b = hgp_penalty(losses, list(head.parameters()), alpha=1.0, beta=1.0)
    without = hgp_penalty(losses, [head.weight], alpha=1.0, beta=1.0)
    assert float(without) < float(with_b)
    model = MLP(4, (5,), 2)
    assert len(ha._head_params(model, "head", include_bias=False)) == 1
    assert len(ha._head_params(model, "head", include_bias=True)) == 2


# -------------------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def data():
    return colored_digits(seed=0)


def _fit(data, tmp=None, stop=None, resume=False, **kw):
    torch.manual_seed(0)
    model = MLP(128, (16,), 2)
    args = dict(steps=6, anneal_steps=2, steps_per_epoch=2, per_domain=16, lr=1e-3, penalty_weight=100.0,
                rescale=True, l2=1e-3)  # fmt: skip
    args.update(kw)
    cfg = TrainConfig(seed=0, progress=False, ckpt_dir=tmp, stop_after_epoch=stop)
    trainer = Trainer(model, None, recipe=HessianAlignmentRecipe(data, **args), config=cfg)
    return model, trainer, trainer.fit(resume=resume)


def test_recipe_logs_named_terms_and_schedules_the_weight(data):
    seen = []

    def spy(lgs, ys, losses, params):
        seen.append((len(lgs), [len(y) for y in ys], len(params)))
        return hgp_penalty(losses, params, alpha=1.0, beta=1.0)

    _, _, hist = _fit(data, penalty=spy)
    assert seen and all(s == (2, [16, 16], 2) for s in seen)
    assert [h["phase"] for h in hist] == ["anneal", "penalty", "penalty"]
    for h in hist:
        assert {"erm", "penalty", "l2", "penalty_raw"} <= set(h)
    # weight 1 while annealing; after the jump the terms are w*P / w = P (rescale), erm / w
    assert hist[0]["penalty"] == pytest.approx(hist[0]["penalty_raw"], rel=1e-5)
    assert hist[2]["penalty"] == pytest.approx(hist[2]["penalty_raw"], rel=1e-5)
    assert hist[2]["erm"] < 0.05


@pytest.mark.parametrize("penalty", ["hgp", "hutchinson", None])
def test_recipe_resume_is_bit_identical(data, tmp_path, penalty):
    kw = dict(penalty=penalty, num_probes=4, reset_adam=True)
    full, _, _ = _fit(data, **kw)
    _fit(data, tmp=str(tmp_path), stop=1, **kw)
    resumed, _, _ = _fit(data, tmp=str(tmp_path), resume=True, **kw)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_reset_adam_uses_a_fresh_optimizer(data):
    _, keep, _ = _fit(data, reset_adam=False)
    _, reset, _ = _fit(data, reset_adam=True)
    assert sorted(keep.state.optimizers) == ["adam"]
    assert sorted(reset.state.optimizers) == ["adam", "adam_reset"]
    assert reset.state.optimizers["adam_reset"].state_dict()["state"][0]["step"] == 4


def test_full_batch_per_domain_and_the_irm_baseline(data):
    from types import SimpleNamespace

    from priorkit.experiments.hessian_alignment import irm_penalty

    recipe = HessianAlignmentRecipe(data, per_domain=None, steps=2)
    ph = recipe.phases[0]
    state = SimpleNamespace(world_size=1, config=SimpleNamespace(seed=0), epoch=0, device=torch.device("cpu"))
    batch = ph.make_batch(state, torch.tensor(ph.batches(state)[0]))
    smallest = min(len(d) for d in data.train)
    assert torch.equal(torch.bincount(batch.extras["domain"]), torch.full((2,), smallest))
    # DomainBed's IRM penalty: g(even rows) * g(odd rows) w.r.t. a dummy scale; equal halves give g^2 >= 0
    logits = torch.randn(4, 2).repeat_interleave(2, dim=0)
    y = torch.tensor([0, 1, 1, 0]).repeat_interleave(2)
    scale = torch.ones((), requires_grad=True)
    g = torch.autograd.grad(F.cross_entropy(logits[::2] * scale, y[::2]), [scale])[0]
    assert torch.allclose(irm_penalty(logits, y), g * g)


def test_presets_build_recipes(data):
    for name, preset in ha.SPEC.presets.items():
        p = dict(preset, per_domain=8, steps=4, anneal_steps=min(preset["anneal_steps"], 2))
        recipe = HessianAlignmentRecipe(data, **p)
        assert recipe.epochs >= 1, name
    assert ha.SPEC.entry == "HessianAlignmentRecipe" and "HessianAlignmentRecipe" in ha.__all__


def test_bad_inputs_are_named(data):
    _, head, losses = _domains()
    with pytest.raises(PriorkitError, match="losses must hold one loss per source domain"):
        hgp_penalty(losses[:1], list(head.parameters()))
    with pytest.raises(PriorkitError, match="reduction must be one of"):
        hutchinson_penalty(losses, list(head.parameters()), reduction="max")
    with pytest.raises(PriorkitError, match="head 'classifier' matches no parameter"):
        _fit(data, head="classifier")
    assert math.isfinite(float(hgp_penalty(losses, list(head.parameters()))))
