"""PALM: the card's property tests, loop-vs-vectorised equalities, both top-k sources, SSD+ centring, errors."""

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import priorkit.prototypes.palm as palm_mod
from priorkit.baselines.ood import class_mahalanobis_fit, class_mahalanobis_score, knn_score, ssd_fit, ssd_score
from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data.ood import shift_noise_views
from priorkit.models import MLP
from priorkit.prototypes.palm import (
    SPEC,
    PALMHook,
    PALMNet,
    assignment_weights,
    class_mask,
    ema_update,
    mle_loss,
    palm_lr,
    proto_contrastive_loss,
    sinkhorn,
    topk_mask,
)
from priorkit.train import TrainConfig, Trainer

C, M, K_TOP, D = 3, 4, 3, 8

def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)

def test_docstring_example_runs():
    res = doctest.testmod(palm_mod, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0

def test_sinkhorn_rows_sum_to_one_and_match_naive_formula():
    z, c = _unit(20, D), _unit(C * M, D, seed=1)
    q = sinkhorn(z, c, epsilon=0.05, iters=3)
    assert torch.allclose(q.sum(1), torch.ones(20), atol=1e-5)
    # naive: no max subtraction (no overflow at these values)
    naive = torch.exp(z @ c.T / 0.05).T.double()
    naive = naive / naive.sum()
    for _ in range(3):
        naive = naive / naive.sum(1, keepdim=True) / naive.shape[0]
        naive = naive / naive.sum(0, keepdim=True) / naive.shape[1]
    assert torch.allclose(q.double(), (naive * naive.shape[1]).T, rtol=1e-4, atol=1e-7)

def test_sinkhorn_does_not_overflow():
    z, c = _unit(10, D), _unit(6, D, seed=2)
    q = sinkhorn(z * 50, c, epsilon=1e-3)  # exp(5e4) overflows without the max shift
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(10), atol=1e-4)

def test_class_mask_and_topk_weights():
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    a = class_mask(y, C, M)
    owner = torch.arange(C * M) % C
    assert torch.equal(a, (y[:, None] == owner[None]).float())
    q = sinkhorn(_unit(6, D), _unit(C * M, D, seed=3))
    u = assignment_weights(q, a, k=K_TOP)
    assert ((u > 0) <= (a > 0)).all(), "weight on another class's prototype"
    assert torch.equal((u > 0).sum(1), torch.full((6,), K_TOP))
    used = u.sum(0) > 0
    assert torch.allclose(u.sum(0)[used], torch.ones(int(used.sum())), atol=1e-6)
    with pytest.raises(PriorkitError, match="labels must lie in"):
        class_mask(torch.tensor([0, 3]), C, M)
    with pytest.raises(PriorkitError, match="k must be <="):
        topk_mask(q, C * M + 1)

def test_ema_keeps_unit_norm_and_unassigned_direction():
    c, z = _unit(C * M, D), _unit(5, D, seed=4)
    u = torch.zeros(5, C * M)
    u[:, 0] = 0.2  # only prototype 0 receives samples
    new = ema_update(c, u, z, momentum=0.9)
    assert torch.allclose(new.norm(dim=1), torch.ones(C * M), atol=1e-6)
    assert torch.allclose(new[1:], c[1:], atol=1e-6)
    assert not torch.allclose(new[0], c[0], atol=1e-3)
    expect = F.normalize(0.9 * c[0] + 0.1 * (0.2 * z.sum(0)), dim=0)
    assert torch.allclose(new[0], expect, atol=1e-6)

def test_mle_loss_equals_loop():
    z, c = _unit(6, D), _unit(C * M, D, seed=5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    a, q = class_mask(y, C, M), sinkhorn(z, c)
    got = mle_loss(z, c, q, a, k=K_TOP, temperature=0.1)
    total = 0.0
    for i in range(6):
        w = [float(a[i, j] * q[i, j]) for j in range(C * M)]
        keep = sorted(range(C * M), key=lambda j: -w[j])[:K_TOP]
        w = [w[j] if j in keep else 0.0 for j in range(C * M)]
        s = sum(w)
        logits = [float(z[i] @ c[j]) / 0.1 for j in range(C * M)]
        lse = math.log(sum(math.exp(v) for v in logits))
        total += -(sum(w[j] / s * logits[j] for j in range(C * M)) - lse)
    assert abs(float(got) - total / 6) < 1e-5

def test_proto_contrastive_equals_loop_and_single_prototype():
    c = _unit(C * M, D, seed=6)
    got = proto_contrastive_loss(c, C, temperature=0.5)
    kk, total = C * M, 0.0
    for a in range(kk):
        s = [float(c[a] @ c[b]) / 0.5 - 2.0 for b in range(kk)]  # minus the self-similarity 1/0.5
        pos = [s[b] for b in range(kk) if b != a and b % C == a % C]
        neg = math.log(sum(math.exp(s[b]) for b in range(kk) if b != a))
        total += -(sum(pos) / len(pos) - neg)
    assert abs(float(got) - total / kk) < 1e-5
    one = _unit(C, D, seed=7)  # M = 1: no positives, only the dispersion term
    s = one @ one.T / 0.5 - 2.0
    expect = torch.log((torch.exp(s) * (1 - torch.eye(C))).sum(1)).mean()
    assert torch.allclose(proto_contrastive_loss(one, C), expect, atol=1e-6)
    with pytest.raises(PriorkitError, match="multiple of num_classes"):
        proto_contrastive_loss(_unit(7, D), C)

def test_pcon_reaches_z_only_through_the_ema_term():
    palm = PALMHook(C, D, M, K_TOP, momentum=0.9)
    z = _unit(12, D, seed=8).requires_grad_(True)
    terms = palm.terms(z, torch.arange(12) % C)
    (g,) = torch.autograd.grad(terms["pcon"], z)
    assert g.abs().sum() > 0
    assert not palm.prototypes.requires_grad  # detached after the step
    palm2 = PALMHook(C, D, M, K_TOP, momentum=1.0)  # no EMA step -> no path
    z2 = _unit(12, D, seed=8).requires_grad_(True)
    t2 = palm2.terms(z2, torch.arange(12) % C)
    (g2,) = torch.autograd.grad(t2["pcon"], z2, allow_unused=True, materialize_grads=True)
    assert g2.abs().sum() == 0

def test_step_keeps_prototypes_unit_norm_and_state_dict_roundtrip():
    palm = PALMHook(C, D, M, K_TOP, momentum=0.5, seed=3)
    for s in range(4):
        palm.terms(_unit(12, D, seed=10 + s), torch.arange(12) % C)
        assert torch.allclose(palm.prototypes.norm(dim=1), torch.ones(C * M), atol=1e-6)
    other = PALMHook(C, D, M, K_TOP, momentum=0.5, seed=99)
    other.load_state_dict(torch.load(_roundtrip(palm.state_dict()), weights_only=True))
    assert torch.equal(other.prototypes, palm.prototypes)

def test_topk_source_paper_vs_official():
    """The official code takes the loss's top-k indices from the pre-update EMA weights U; the paper from Q_new."""
    z = _unit(9, D, seed=11)
    y = torch.arange(9) % C
    start = _unit(C * M, D, seed=12)
    out = {}
    for src in ("paper", "official"):
        p = PALMHook(C, D, M, 2, momentum=0.5, topk_source=src)
        p.prototypes = start.clone()
        out[src] = p.terms(z, y)["mle"]
        # recompute by hand
        a, q = class_mask(y, C, M), sinkhorn(z, start)
        u = assignment_weights(q, a, 2)
        new = ema_update(start, u, z, 0.5)
        q2 = sinkhorn(z, new)
        ref = mle_loss(z, new, q2, a, 2, 0.1, topk_from=u if src == "official" else None)
        assert torch.allclose(out[src], ref, atol=1e-6)
        assert torch.allclose(p.prototypes, new, atol=1e-6)
    # the two top-k choices differ for some rows here, so the losses differ
    a, q = class_mask(y, C, M), sinkhorn(z, start)
    u = assignment_weights(q, a, 2)
    q2 = sinkhorn(z, ema_update(start, u, z, 0.5))
    assert not torch.equal(topk_mask(u, 2), topk_mask(a * q2, 2))
    assert not torch.allclose(out["paper"], out["official"])

def test_ssd_score_centring_and_brute_force():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 6, generator=g) + 2.0
    test = torch.randn(40, 6, generator=g) + 2.0
    fit = ssd_fit(train)
    f = train.double() / (train.double().norm(dim=1, keepdim=True) + 1e-10)
    mean, std = f.mean(0).numpy(), f.std(0, unbiased=False).numpy()
    ts = test.double() / (test.double().norm(dim=1, keepdim=True) + 1e-10)
    fs_train = (f.numpy() - mean) / (std + 1e-10)
    prec = np.linalg.pinv(np.cov(fs_train.T, bias=True))
    zs = (ts.numpy() - mean) / (std + 1e-10)
    want = -np.sum(zs * (prec @ zs.T).T, axis=1)
    assert np.allclose(ssd_score(fit, test).numpy(), want, atol=1e-6)
    zo = zs - mean  # the official quirk: raw mean subtracted from standardised features
    want_o = -np.sum(zo * (prec @ zo.T).T, axis=1)
    assert np.allclose(ssd_score(fit, test, official_centering=True).numpy(), want_o, atol=1e-6)
    # correct centring: the mean train score is minus the covariance rank (trace identity); the quirk breaks it
    rank = np.linalg.matrix_rank(np.cov(fs_train.T, bias=True))
    assert abs(float(ssd_score(fit, train).mean()) + rank) < 1e-6
    assert abs(float(ssd_score(fit, train, official_centering=True).mean()) + rank) > 1e-2

def test_class_mahalanobis_and_knn_rank_outliers_lower():
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([[3.0, 0, 0], [0, 3.0, 0]])
    y = torch.arange(200) % 2
    x = mu[y] + 0.3 * torch.randn(200, 3, generator=g)
    ood = torch.tensor([[0.0, 0.0, 3.0]]) + 0.3 * torch.randn(20, 3, generator=g)
    cm = class_mahalanobis_fit(x, y)
    assert class_mahalanobis_score(cm, x[:20]).min() > class_mahalanobis_score(cm, ood).max()
    assert knn_score(x, x[:20], k=5).min() > knn_score(x, ood, k=5).max()
    with pytest.raises(PriorkitError, match="k must be <="):
        knn_score(x[:3], ood, k=5)

def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf

def test_lr_schedule_matches_official_formula():
    assert palm_lr(0, 5, 20, 0.5, 10) == 0.0 and abs(palm_lr(25, 5, 20, 0.5, 10) - 0.25) < 1e-12
    assert abs(palm_lr(50, 5, 20, 0.5, 10) - 0.5) < 1e-12
    assert abs(palm_lr(100, 5, 20, 0.5, 10) - 0.5 * 1e-3) < 1e-9

def test_recipe_lr_follows_palm_lr_per_step():
    hook = PALMHook(3, 8, 3, 2, epochs=4, lr=0.2, warmup_epochs=1, augment=_aug)
    seen = []
    net = PALMNet(MLP(16, (32,), 3), proj_dim=8)
    x, y = _data()
    rec = hook.recipe()
    from priorkit.train import Hook

    class LR(Hook):
        def on_step_end(self, state, batch):
            seen.append(state.optimizer.param_groups[0]["lr"])

    Trainer(net, _ds(x, y), recipe=rec, hooks=[hook, LR()], config=TrainConfig(batch_size=20, progress=False)).fit()
    spe = 3
    want = [palm_lr(s, spe, 4, 0.2, 1) for s in range(12)]
    assert np.allclose(seen, want, atol=1e-12)

def _aug(t, gen):
    return shift_noise_views(t, gen, sigma=0.05)

def _data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(3, 16, generator=g)[y] + 0.3 * torch.randn(60, 16, generator=g)
    return x, y

def _ds(x, y):
    from priorkit.data.datasets import IndexedTensorDataset

    return IndexedTensorDataset(x, y)

def _tiny_run(seed, epochs=15, tmp=None, stop=None, resume=False):
    x, y = _data()
    torch.manual_seed(seed)
    net = PALMNet(MLP(16, (32,), 3), proj_dim=8)
    hook = PALMHook(3, 8, num_protos=3, k=2, momentum=0.9, seed=seed, epochs=epochs, lr=0.1, warmup_epochs=1,
                    augment=_aug)  # fmt: skip
    cfg = TrainConfig(epochs=epochs, batch_size=20, seed=seed, progress=False,
                      ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)  # fmt: skip
    hist = Trainer(net, _ds(x, y), recipe=hook.recipe(), hooks=[hook], config=cfg).fit(resume=resume)
    return net, hook, hist

def test_train_palm_is_deterministic_and_learns():
    net, loss, hist = _tiny_run(0)
    net2, loss2, _ = _tiny_run(0)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(loss.prototypes, loss2.prototypes)
    assert hist[-1]["mle"] < hist[0]["mle"]
    assert torch.allclose(loss.prototypes.norm(dim=1), torch.ones(9), atol=1e-6)

def test_resume_is_bit_identical(tmp_path):
    net, hook, _ = _tiny_run(1, epochs=4)
    _tiny_run(1, epochs=4, tmp=tmp_path, stop=1)
    net2, hook2, hist2 = _tiny_run(1, epochs=4, tmp=tmp_path, resume=True)
    assert len(hist2) == 4
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(hook.prototypes, hook2.prototypes)

def test_nan_row_raises_and_leaves_prototypes_unchanged():
    hook = PALMHook(C, D, M, K_TOP, momentum=0.5, seed=3)
    z = _unit(12, D, seed=4)
    z[5, 2] = float("nan")
    before = hook.prototypes.clone()
    with pytest.raises(NonFiniteError, match="z"):
        hook.terms(z, torch.arange(12) % C)
    assert torch.equal(hook.prototypes, before)
    with pytest.raises(PriorkitError, match="labels"):
        hook.terms(_unit(12, D), torch.full((12,), C))
    assert torch.equal(hook.prototypes, before)

def test_spec_presets_build_the_hook():
    assert SPEC.entry == "PALMHook" and SPEC.presets["small"]["momentum"] == 0.99
    for preset in SPEC.presets.values():
        PALMHook(5, 32, **preset)

def test_bad_inputs():
    with pytest.raises(PriorkitError, match="k must be <= num_protos"):
        PALMHook(3, 8, num_protos=2, k=3)
    with pytest.raises(PriorkitError, match="topk_source must be one of"):
        PALMHook(3, 8, topk_source="code")
    with pytest.raises(PriorkitError, match="momentum must be in"):
        PALMHook(3, 8, momentum=1.5)
    p = PALMHook(3, 8, num_protos=2, k=1)
    with pytest.raises(PriorkitError, match="z must have shape"):
        p.terms(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(PriorkitError, match="labels must have shape"):
        p.terms(_unit(4, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(PriorkitError, match="epsilon must be in"):
        sinkhorn(_unit(2, 8), _unit(2, 8), epsilon=0.0)
    with pytest.raises(PriorkitError, match="feat_dim is needed"):
        PALMNet(torch.nn.Linear(4, 4))
