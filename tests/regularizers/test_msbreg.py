"""MSBReg: the card's property tests (block-diagonal Brownian Jacobian, L_SV = 0 for equal singular values, L_MC = 0
at the target centroid, unit-norm directions), the EMA target through the engine, the plug-in mode, resume and DDP."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import CheckpointMismatchError, NonFiniteError, PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.regularizers import msbreg as M
from priorkit.regularizers.msbreg import (
    MSBReg,
    MSBRegNet,
    brownian_directions,
    brownian_loss,
    byol_loss,
    dispersion_terms,
    ema_tau,
    ema_update_,
    multiview_centroid_loss,
    singular_value_loss,
)
from priorkit.train import Hook, TrainConfig, Trainer


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _isotropic(n, d, seed=0, dtype=torch.float64):
    """A centred [n, d] batch whose d singular values are all equal (orthonormal columns orthogonal to 1)."""
    a = torch.randn(n, d, generator=_g(seed), dtype=dtype)
    q, _ = torch.linalg.qr(a - a.mean(0))
    return 3.0 * q


# ------------------------------------------------------------------------------------------ multiview centroid
def test_centroid_loss_is_zero_when_each_prediction_is_its_target_centroid():
    t = torch.randn(5, 3, 8, generator=_g(1))
    c = F.normalize(F.normalize(t, dim=-1).mean(1), dim=-1)
    q = c.unsqueeze(1) * torch.rand(5, 4, 1, generator=_g(2)).add(0.5)  # any positive scale, 4 online views
    assert multiview_centroid_loss(q, t).abs() < 1e-6
    # the figure's variant: zero when the online and target centroids point the same way
    assert multiview_centroid_loss(q, t, "online").abs() < 1e-6
    assert multiview_centroid_loss(torch.randn(5, 4, 8, generator=_g(3)), t) > 0.1


def test_centroid_loss_matches_its_formula_and_stops_the_target_gradient():
    q = torch.randn(4, 3, 6, generator=_g(4), requires_grad=True)
    t = torch.randn(4, 2, 6, generator=_g(5), requires_grad=True)
    loss = multiview_centroid_loss(q, t)
    c = F.normalize(F.normalize(t.detach(), dim=-1).mean(1), dim=-1)
    want = torch.stack([2 - 2 * F.cosine_similarity(q[:, v], c, dim=-1) for v in range(3)], 1).mean()
    assert torch.allclose(loss, want, atol=1e-6)
    loss.backward()
    assert t.grad is None and q.grad is not None
    per = multiview_centroid_loss(q.detach(), t, reduction="none")
    assert per.shape == (4,) and torch.allclose(per.mean(), want.detach(), atol=1e-6)


def test_byol_loss_with_two_views_is_the_symmetrised_byol_loss():
    q, t = torch.randn(6, 2, 5, generator=_g(6)), torch.randn(6, 2, 5, generator=_g(7))

    def one(p, z):  # solo-learn's byol_loss_func
        return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()

    assert torch.allclose(byol_loss(q, t), one(q[:, 0], t[:, 1]) + one(q[:, 1], t[:, 0]), atol=1e-6)


# -------------------------------------------------------------------------------------------------- Brownian
def test_directions_have_unit_norm_and_are_fresh_per_generator():
    r = brownian_directions(64, 16, _g(0))
    assert torch.allclose(r.norm(dim=1), torch.ones(64), atol=1e-6)
    assert torch.equal(r, brownian_directions(64, 16, _g(0)))
    assert not torch.allclose(r, brownian_directions(64, 16, _g(1)))


def test_brownian_jacobian_is_block_diagonal_and_matches_the_closed_form():
    b, v, d = 5, 3, 4
    q = torch.randn(b, v, d, generator=_g(8), dtype=torch.float64)
    r = brownian_directions(b, d, _g(9)).double()
    jac = torch.autograd.functional.jacobian(lambda x: brownian_loss(x, r, reduction="none"), q)  # [B, B, V, d]
    off = jac.clone()
    off[torch.arange(b), torch.arange(b)] = 0
    assert off.abs().max() == 0  # no cross-sample terms
    hess = torch.autograd.functional.hessian(lambda x: brownian_loss(x, r), q).reshape(b, v * d, b, v * d)
    for i in range(b):
        for j in range(b):
            if i != j:
                assert hess[i, :, j].abs().max() == 0
    # d cos(q, r) / dq = (r - cos * q^) / ||q||, averaged over B * V
    qn, norm = F.normalize(q, dim=-1), q.norm(dim=-1, keepdim=True)
    cos = (qn * r.unsqueeze(1)).sum(-1, keepdim=True)
    want = (r.unsqueeze(1) - cos * qn) / norm / (b * v)
    qq = q.clone().requires_grad_(True)
    brownian_loss(qq, r).backward()
    assert torch.allclose(qq.grad, want, atol=1e-12)


def test_brownian_term_has_zero_mean_force():
    """The term is odd in r and r ~ -r, so its expected gradient is zero (a diffusion, not a drift)."""
    q, r = torch.randn(7, 2, 5, generator=_g(10)), brownian_directions(7, 5, _g(11))
    assert torch.allclose(brownian_loss(q, r), -brownian_loss(q, -r), atol=1e-7)


# ------------------------------------------------------------------------------------------- singular values
@pytest.mark.parametrize("form", ["spectrum", "vicreg_cov"])
def test_sv_loss_is_zero_for_equal_singular_values(form):
    z = _isotropic(40, 8)
    assert torch.linalg.svdvals(z).std() < 1e-9
    assert singular_value_loss(z, form) < 1e-6
    rot, _ = torch.linalg.qr(torch.randn(8, 8, generator=_g(1), dtype=torch.float64))
    aniso = (z * torch.linspace(0.2, 2.0, 8, dtype=torch.float64)) @ rot  # unequal and correlated directions
    assert singular_value_loss(aniso, form) > 1e-2


def test_sv_spectrum_form_equals_its_frobenius_identity_and_saturates_below_d():
    z = torch.randn(30, 6, generator=_g(12), dtype=torch.float64)
    zc = z - z.mean(0)
    closed = 6 * (zc.T @ zc).pow(2).sum() / zc.pow(2).sum().pow(2) - 1  # d sum p^2 - 1
    assert torch.allclose(singular_value_loss(z).double(), closed, atol=1e-5)
    # N = 5 < d = 8: the centred batch has rank 4, and the best it can do is p = 1/4 on 4 directions: d/4 - 1
    small = _isotropic(5, 4, seed=13)
    z8 = torch.cat([small, torch.zeros(5, 4, dtype=torch.float64)], 1)
    assert torch.allclose(singular_value_loss(z8).double(), torch.tensor(8 / 4 - 1.0, dtype=torch.float64), atol=1e-5)


def test_sv_gradient_is_finite_at_equal_singular_values():
    z = _isotropic(16, 4, seed=14).float().requires_grad_(True)
    singular_value_loss(z).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().max() < 1e-4  # a minimum: (near) zero gradient


def test_dispersion_terms_are_the_weighted_terms():
    q, r = torch.randn(32, 2, 4, generator=_g(15)), brownian_directions(32, 4, _g(16))
    out = dispersion_terms(q, r, lambda_b=0.3, lambda_sv=2.0)
    qn = F.normalize(q, dim=-1)
    assert torch.allclose(out["brownian"], 0.3 * brownian_loss(q, r))
    want = 2.0 * (singular_value_loss(qn[:, 0]) + singular_value_loss(qn[:, 1])) / 2
    assert torch.allclose(out["sv"], want)
    assert set(dispersion_terms(q, None, lambda_b=0.0)) == {"sv"}


# ------------------------------------------------------------------------------------------------------ EMA
def test_tau_schedule_is_byol_cosine():
    assert ema_tau(0, 100, 0.99) == pytest.approx(0.99)
    assert ema_tau(100, 100, 0.99) == pytest.approx(1.0)
    assert ema_tau(50, 100, 0.99) == pytest.approx(0.995)
    taus = [ema_tau(k, 100, 0.9) for k in range(101)]
    assert all(a <= b for a, b in zip(taus, taus[1:]))
    assert ema_tau(37, 100, 0.9, "constant") == 0.9


def test_ema_update_formula():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 0.75)
    for b, p, o in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(p, 0.75 * b + 0.25 * o)
    ema_update_(target, online, 0.0)
    assert all(torch.equal(p, o) for p, o in zip(target.parameters(), online.parameters()))


# --------------------------------------------------------------------------------------------- the engine
def _data(n=48, d=10, seed=0):
    g = _g(seed)
    y = torch.arange(n) % 3
    x = torch.randn(3, d, generator=g)[y] + 0.3 * torch.randn(n, d, generator=g)
    return IndexedTensorDataset(x, y)


def _aug(x, g):
    return x + 0.1 * torch.randn(x.shape, generator=g)


def _net(seed=0, d=10):
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(d, 16), nn.LayerNorm(16), nn.ReLU())
    return MSBRegNet(enc, 16, proj_dim=8, hidden=12)


def _fit(hook, epochs=3, seed=0, tmp=None, stop=None, resume=False, batch=16, hooks=()):
    net = _net(seed)
    cfg = TrainConfig(epochs=epochs, batch_size=batch, optimizer="adam", lr=1e-2, seed=seed, progress=False,
                      ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)  # fmt: skip
    hist = Trainer(net, _data(), recipe=hook.recipe(epochs), hooks=[hook, *hooks], config=cfg).fit(resume=resume)
    return net, hook, hist


def _target_params(hook):
    return [p.detach().clone() for p in hook.target.parameters()]


def _online_params(net):
    return [p.detach().clone() for m in (net.encoder, net.projector) for p in m.parameters()]


def test_fit_logs_every_term_and_the_target_trails_the_online_network():
    net, hook, hist = _fit(MSBReg(n_views=3, augment=_aug))
    assert {"mc", "brownian", "sv", "eff_rank", "tau"} <= set(hist[-1])
    assert all(math.isfinite(h["loss"]) for h in hist)
    tp, op = _target_params(hook), _online_params(net)
    assert len(tp) == len(op) and not all(torch.equal(a, b) for a, b in zip(tp, op))
    _, _, h2 = _fit(MSBReg(n_views=2, attraction="byol", lambda_b=0.0, lambda_sv=0.0, augment=_aug))
    assert {k for k in h2[-1] if k not in ("epoch", "loss", "eff_rank", "tau")} == {"byol"}


def test_target_is_the_ema_of_the_online_network_after_each_step():
    """One step per epoch (batch = dataset); a constant tau makes the expected target easy to write down."""

    class Spy(Hook):
        def __init__(self):
            self.online = []

        def on_step_end(self, state, batch):  # runs after MSBReg's update (hook order)
            self.online.append(_online_params(state.model))

    spy = Spy()
    hook = MSBReg(n_views=2, augment=_aug, tau_base=0.6, tau_schedule="constant")
    net0 = _net(0)
    expected = _online_params(net0)
    _, hook, _ = _fit(hook, epochs=3, batch=48, hooks=[spy])
    for online in spy.online:
        expected = [0.6 * e + 0.4 * o for e, o in zip(expected, online)]
    for a, b in zip(_target_params(hook), expected):
        assert torch.allclose(a, b, atol=1e-6)
    # tau = 0 (constant): the target is the online network with a stop-gradient (SimSiam)
    net, hook0, _ = _fit(MSBReg(n_views=2, augment=_aug, tau_base=0.0, tau_schedule="constant"))
    assert all(torch.equal(a, b) for a, b in zip(_target_params(hook0), _online_params(net)))


def test_plug_in_attraction_callable_equals_the_built_in_term():
    a, ha, _ = _fit(MSBReg(n_views=3, augment=_aug))
    per_image = lambda q, t: multiview_centroid_loss(q, t, reduction="none")  # noqa: E731
    b, hb, hist = _fit(MSBReg(n_views=3, augment=_aug, attraction=per_image))
    assert "attraction" in hist[-1]
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)
    # a scalar-returning loss (the local mean) is accepted too
    c, _, _ = _fit(MSBReg(n_views=3, augment=_aug, attraction=lambda q, t: multiview_centroid_loss(q, t)))
    for x, y in zip(a.parameters(), c.parameters()):
        assert torch.allclose(x, y, atol=1e-6)


def test_resume_is_bit_identical(tmp_path):
    net, hook, hist = _fit(MSBReg(n_views=3, augment=_aug), epochs=4, seed=1)
    _fit(MSBReg(n_views=3, augment=_aug), epochs=4, seed=1, tmp=tmp_path, stop=1)
    net2, hook2, hist2 = _fit(MSBReg(n_views=3, augment=_aug), epochs=4, seed=1, tmp=tmp_path, resume=True)
    assert len(hist2) == 4 and hist2[-1]["loss"] == hist[-1]["loss"]
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(torch.equal(a, b) for a, b in zip(_target_params(hook), _target_params(hook2)))
    assert hook.tau == hook2.tau
    bad = MSBReg(n_views=3)
    bad.target = M._Target(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointMismatchError, match="MSBReg target"):
        bad.load_state_dict(hook.state_dict())


def test_nan_input_stops_before_the_target_moves():
    data = _data()
    x = data.x.clone()
    x[3, 0] = float("nan")
    hook = MSBReg(n_views=2)
    net = _net(0)
    with pytest.raises(NonFiniteError):
        Trainer(net, IndexedTensorDataset(x, data.y), recipe=hook.recipe(1), hooks=[hook],
                config=TrainConfig(batch_size=48, optimizer="adam", lr=1e-2, progress=False)).fit()  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(_target_params(hook), _online_params(_net(0))))


def test_model_without_encoder_and_projector_is_refused():
    hook = MSBReg(n_views=2)
    with pytest.raises(PriorkitError, match="encoder` and `projector`"):
        Trainer(nn.Linear(10, 4), _data(), recipe=hook.recipe(1), hooks=[hook],
                config=TrainConfig(batch_size=16, progress=False)).fit()  # fmt: skip


def test_presets_and_net_options():
    assert M.SPEC.entry == "MSBReg" and "MSBReg" in M.__all__
    for preset in M.SPEC.presets.values():
        h = MSBReg(**preset)
        assert h.lambda_b == 0.1 and h.lambda_sv == 1.0 and h.n_views == 4
    net = MSBRegNet(nn.Linear(5, 6), 6, proj_dim=3, predictor=False, norm="none")
    x = torch.randn(2, 5)
    assert torch.equal(net(x), net.project(x)) and net.embed(x).shape == (2, 6)


# ------------------------------------------------------------------------------------------------------- DDP
def _ddp_train(out=None):
    torch.set_num_threads(1)
    hook = MSBReg(n_views=3, augment=_aug)
    strategy = "ddp" if torch.distributed.is_initialized() else "auto"
    net = _net(2)
    cfg = TrainConfig(epochs=2, batch_size=20, optimizer="adam", lr=1e-2, seed=3, progress=False, strategy=strategy)
    Trainer(net, _data(), recipe=hook.recipe(2), hooks=[hook], config=cfg).fit()  # 48 = 2 x 20 + 8: an uneven batch
    result = {"model": net.state_dict(), "target": hook.target.state_dict()}
    if out is not None:
        torch.save(result, out)
    return result


def _worker(rank, out):
    _ddp_train(out if rank == 0 else None)


@pytest.mark.slow  # two spawned processes: several seconds of start-up on a loaded machine
def test_two_process_run_equals_one_process(tmp_path):
    from priorkit.train.distributed import run_gloo

    out = str(tmp_path / "ddp.pt")
    run_gloo(_worker, 2, out)
    single, multi = _ddp_train(), torch.load(out, weights_only=True)
    for part in ("model", "target"):
        for k, v in single[part].items():
            assert torch.allclose(v, multi[part][k], atol=1e-5), (part, k)


# ------------------------------------------------------------------------------------ the experiment's parts
def test_digit_views_and_linear_probe():
    from priorkit.experiments.msbreg import digit_views, linear_probe

    x = torch.rand(10, 64, generator=_g(20))
    a, b = digit_views(x, _g(21)), digit_views(x, _g(21))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, digit_views(x, _g(22)))
    clean = digit_views(x, _g(23), max_shift=0, sigma=0.0, erase=2, scale=(1.0, 1.0))
    assert ((clean == 0) & (x != 0)).view(10, -1).sum(1).eq(4).all()  # exactly one 2x2 hole per image
    data = _data(n=90, seed=4)
    acc = linear_probe(data.x[:60], data.y[:60], data.x[60:], data.y[60:], epochs=30, lr=0.05, batch_size=30)
    assert acc > 0.95
    with pytest.raises(PriorkitError, match="test_x must have 10 features"):
        linear_probe(data.x, data.y, data.x[:, :3], data.y)
