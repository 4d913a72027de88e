"""Tests for priorkit.prototypes.st_protopnet: the card's invariants, brute-force checks and bad input."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.models import Conv4
from priorkit.prototypes.protopnet_base import protopnet_recipe
from priorkit.prototypes.st_protopnet import (
    DEFAULT_COEFS,
    STLoss,
    STProtoPNet,
    branch_loss,
    closeness_cost,
    cluster_similarity,
    concat_push_results,
    cosine_similarity_maps,
    default_schedule,
    discrimination_cost,
    orthogonality_cost,
    renormalize_after_step,
    separation_similarity,
)
from priorkit.train import Batch, TrainConfig
from priorkit.train.distributed import run_gloo

C, K, D = 3, 2, 8


def _model(seed: int = 0, **kw) -> STProtoPNet:
    torch.manual_seed(seed)
    return STProtoPNet(Conv4(3, 8, C, pools=2), C, K, D, **kw)


def _data(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % C


def _unit(m: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(m, d, 1, 1, generator=g), dim=1)


# ------------------------------------------------------------------ functional core vs brute force


def test_cosine_maps_match_loop() -> None:
    g = torch.Generator().manual_seed(1)
    z, p = torch.randn(2, D, 3, 4, generator=g), torch.randn(5, D, 1, 1, generator=g)
    maps = cosine_similarity_maps(z, p, relu=False)
    for b, j, r, c in itertools.product(range(2), range(5), range(3), range(4)):
        want = F.cosine_similarity(z[b, :, r, c], p[j, :, 0, 0], dim=0)
        assert torch.allclose(maps[b, j, r, c], want, atol=1e-6)
    assert torch.equal(cosine_similarity_maps(z, p), maps.relu())


def test_cluster_and_separation_match_loop() -> None:
    g = torch.Generator().manual_seed(2)
    ident = torch.nn.functional.one_hot(torch.arange(C * K) // K, C).float()
    s = torch.randn(7, C * K, generator=g)  # negative values too: a true masked max, not max(g * mask)
    y = torch.randint(0, C, (7,), generator=g)
    clst = sum(max(float(s[i, j]) for j in range(C * K) if j // K == y[i]) for i in range(7)) / 7
    sep = sum(max(float(s[i, j]) for j in range(C * K) if j // K != y[i]) for i in range(7)) / 7
    assert cluster_similarity(s, y, ident).item() == pytest.approx(clst, abs=1e-6)
    assert separation_similarity(s, y, ident).item() == pytest.approx(sep, abs=1e-6)


def test_discrimination_and_closeness_match_loop() -> None:
    p = _unit(C * K, D, 3)
    v = p.flatten(1)
    pairs = [(a, b) for a in range(C) for b in range(C) if a != b]
    dots = {(a, b): [float(v[a * K + k] @ v[b * K + kk]) for k in range(K) for kk in range(K)] for a, b in pairs}
    discr = sum(max(dots[q]) for q in pairs) / len(pairs)
    close = -sum(min(dots[q]) for q in pairs) / len(pairs)
    assert discrimination_cost(p, C).item() == pytest.approx(discr, abs=1e-6)
    assert closeness_cost(p, C).item() == pytest.approx(close, abs=1e-6)


def test_orthogonality_zero_for_orthonormal_sets_and_matches_loop() -> None:
    q = torch.linalg.qr(torch.randn(C, D, K, generator=torch.Generator().manual_seed(4)))[0]  # [C, D, K]
    p = q.transpose(1, 2).reshape(C * K, D, 1, 1)
    assert orthogonality_cost(p, C).item() == pytest.approx(0.0, abs=1e-5)
    r = _unit(C * K, D, 5).flatten(1)
    want = sum(
        abs(float(r[c * K + a] @ r[c * K + b]) - (1.0 if a == b else 0.0))
        for c in range(C)
        for a in range(K)
        for b in range(K)
    )
    assert orthogonality_cost(r, C).item() == pytest.approx(want, abs=1e-5)


def test_closeness_decreases_when_cross_class_pair_moves_together() -> None:
    """Finite-difference: move the farthest cross-class support pair toward each other -> Close decreases,
    matching the analytic gradient's directional derivative."""
    p = _unit(C * K, D, 6).flatten(1).double()
    sims = p @ p.t()
    cls = torch.arange(C * K) // K
    cross = sims.masked_fill(cls[:, None] == cls[None, :], float("inf"))
    i, j = divmod(int(cross.argmin()), C * K)
    direction = torch.zeros_like(p)
    direction[i] = p[j] - p[i]
    direction[j] = p[i] - p[j]
    h = 1e-4
    f0 = closeness_cost(p, C)
    f1 = closeness_cost(p + h * direction, C)
    assert f1 < f0
    pg = p.clone().requires_grad_(True)
    closeness_cost(pg, C).backward()
    fd = (f1 - f0) / h
    assert float(fd) == pytest.approx(float((pg.grad * direction).sum()), rel=1e-3)


def test_branch_loss_terms_and_signs() -> None:
    m = _model()
    x, y = _data()
    with torch.no_grad():
        out = m.outputs(x)
    tr = branch_loss("trivial", out.logits["trivial"], out.pooled["trivial"], y, m.branch_identity,
                     m.prototypes_trivial, m.last_layer_trivial.weight)  # fmt: skip
    sp = branch_loss("support", out.logits["support"], out.pooled["support"], y, m.branch_identity,
                     m.prototypes_support, m.last_layer_support.weight)  # fmt: skip
    assert set(tr) == {f"trivial/{k}" for k in ("ce", "clst", "sep", "orth", "discr", "l1")}
    assert set(sp) == {f"support/{k}" for k in ("ce", "clst", "sep", "orth", "close", "l1")}
    want = DEFAULT_COEFS["clst_spt"] * cluster_similarity(out.pooled["support"], y, m.branch_identity)
    assert torch.equal(sp["support/clst"], want)
    assert float(sp["support/sep"].detach()) == pytest.approx(
        0.48 * float(separation_similarity(out.pooled["support"], y, m.branch_identity))
    )
    assert float(tr["trivial/clst"]) <= 0.0  # maximised similarity: negative coefficient


# ------------------------------------------------------------------ model invariants


def test_combined_logits_equal_sum_of_branch_logits() -> None:
    m = _model().eval()
    x, _ = _data()
    with torch.no_grad():
        out = m.outputs(x)
    assert torch.allclose(m(x), out.logits["trivial"] + out.logits["support"])
    # the viz view: [W^t, W^s] [g^t; g^s] is the same prediction
    viz = m.prototype_activations(x) @ m.last_layer.weight.t()
    assert torch.allclose(viz, m(x), atol=1e-5)
    assert m.similarity_maps(x).shape[1] == 2 * C * K
    for b in ("trivial", "support"):
        assert torch.allclose(out.logits[b], out.pooled[b] @ m.head(b).weight.t())
        assert float(out.pooled[b].min()) >= 0.0 and float(out.pooled[b].max()) <= 1.0 + 1e-6


def test_upsample_doubles_the_latent() -> None:
    x, _ = _data(2)
    assert (
        _model(upsample=True).latent(x, "support").shape[-1]
        == 2 * _model(upsample=False).latent(x, "support").shape[-1]
    )


def _state(m, i):
    return SimpleNamespace(model=m, batch_in_epoch=i, world_size=1, config=TrainConfig())


def _batch(m, x, y):
    return Batch(x=x, y=y, index=torch.arange(len(y)), output=m(x, full=True))


def test_trivial_step_gives_zero_gradient_to_support_and_vice_versa() -> None:
    m = _model().train()
    x, y = _data()
    loss_fn = STLoss()
    for i, own, other in ((0, "trivial", "support"), (1, "support", "trivial")):
        m.zero_grad(set_to_none=True)
        assert loss_fn.branch_at(i) == own
        sum(loss_fn(_state(m, i), _batch(m, x, y)).values()).backward()
        for p in (m.prototypes(other), m.head(other).weight, *m.add_on(other).parameters()):
            assert p.grad is None or bool((p.grad == 0).all())
        assert m.prototypes(own).grad is not None and bool(m.prototypes(own).grad.abs().sum() > 0)
        assert m.head(own).weight.grad is not None


def test_alternation_uses_in_epoch_batch_index() -> None:
    assert [STLoss.branch_at(i) for i in range(3)] == ["trivial", "support", "trivial"]  # T S T, every epoch
    m = _model()
    x, y = _data()
    terms = STLoss(mode="sum")(_state(m, 1), _batch(m, x, y))
    assert any(k.startswith("trivial/") for k in terms) and any(k.startswith("support/") for k in terms)
    ddp = SimpleNamespace(model=m, batch_in_epoch=0, world_size=2, config=TrainConfig(strategy="ddp"))
    with pytest.raises(PriorkitError, match="mode='sum'"):
        STLoss()(ddp, _batch(m, x, y))


def _short_schedule(**kw):
    base = dict(epochs=3, warm_epochs=1, push_start=2, push_every=2, last_layer_epochs=1, batch_size=4)
    base.update(kw)
    return default_schedule(**base)


def _fit(m, x, y, sched, after=renormalize_after_step, eval_fn=None, tmp=None, stop=None, resume=False, **kw):
    kw.setdefault("push_data", (x, y))
    recipe = protopnet_recipe(m, sched, loss=STLoss(), after_step=after, **kw)
    cfg = TrainConfig(seed=0, progress=False, ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)
    hist = recipe.fit(m, IndexedTensorDataset(x, y), cfg, eval_fn=eval_fn, resume=resume)
    return hist, recipe


def test_schedule_unit_norm_after_every_step_warm_freezes_last_layers_and_push() -> None:
    m = _model()
    x, y = _data()
    w0 = {b: m.head(b).weight.detach().clone() for b in ("trivial", "support")}
    bb0 = [p.detach().clone() for p in m.backbone.parameters()]
    norms: list[float] = []
    seen: dict = {}

    def after(model, stage):
        renormalize_after_step(model, stage)
        for b in ("trivial", "support"):
            norms.extend(model.prototypes(b).flatten(1).norm(dim=1).tolist())

    def eval_fn(state):
        model, stage = state.model, state.phase.options["stage"]
        if stage == "warm":
            seen["warm_W_same"] = all(torch.equal(model.head(b).weight, w0[b]) for b in w0)
            seen["warm_bb_same"] = all(torch.equal(p, q) for p, q in zip(model.backbone.parameters(), bb0))
        if stage == "joint" and state.epoch == 2:  # joint optimiser omits the last layers (as the code)
            seen["joint_W_same"] = all(torch.equal(model.head(b).weight, w0[b]) for b in w0)
        return {}

    _, recipe = _fit(m, x, y, _short_schedule(), after=after, eval_fn=eval_fn)
    assert norms and max(abs(n - 1.0) for n in norms) < 1e-5
    assert seen == {"warm_W_same": True, "warm_bb_same": True, "joint_W_same": True}
    assert not all(torch.equal(m.head(b).weight, w0[b]) for b in w0)  # last-layer stage moved W
    assert recipe.record.epochs == [3] and set(recipe.record.last) == {"trivial", "support"}


def test_after_push_each_prototype_equals_a_normalised_own_class_patch() -> None:
    m = _model()
    x, y = _data()
    res = m.push(x, y)
    m.eval()
    with torch.no_grad():
        for b in ("trivial", "support"):
            z = F.normalize(m.latent(x, b), p=2, dim=1)
            p = m.prototypes(b)
            assert torch.allclose(p.flatten(1).norm(dim=1), torch.ones(C * K), atol=1e-5)
            r = res[b]
            for j in range(C * K):
                n, (row, col) = int(r.image_index[j]), r.location[j].tolist()
                assert int(y[n]) == j // K  # own class
                assert torch.equal(p[j, :, 0, 0], z[n, :, row, col])
                # and it is the nearest own-class cell under cosine
                own = z[y == j // K]
                best = torch.einsum("ndhw,d->nhw", own, p[j, :, 0, 0]).max()
                assert float(best) == pytest.approx(float(p[j, :, 0, 0] @ z[n, :, row, col]), abs=1e-6)
    both = concat_push_results(res["trivial"], res["support"])
    assert both.image_index.shape[0] == 2 * C * K


def test_last_layer_stage_changes_only_the_last_layers() -> None:
    m = _model()
    x, y = _data()
    snap: dict = {}

    def before_push(state):
        return None

    def push_fn(model, images, labels):
        res = model.push(images, labels)
        snap.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return res

    _fit(m, x, y, _short_schedule(), push_fn=push_fn, before_push=before_push)
    for k, v in m.state_dict().items():
        if k.startswith("last_layer"):
            assert not torch.equal(v, snap[k])
        else:
            assert torch.equal(v, snap[k]), k


def _flat_state(m, recipe):
    out = list(m.state_dict().values())
    for r in recipe.record.last.values():
        out += [v for v in r.state_dict().values() if torch.is_tensor(v)]
    return out


@pytest.mark.parametrize("stop", [2, 3])
def test_resume_after_the_push_is_bit_identical(tmp_path, stop) -> None:
    x, y = _data()
    full = _model()
    _, rf = _fit(full, x, y, _short_schedule())
    _fit(_model(), x, y, _short_schedule(), tmp=tmp_path, stop=stop)
    resumed = _model(seed=3)
    _, rr = _fit(resumed, x, y, _short_schedule(), tmp=tmp_path, resume=True)
    for a, b in zip(_flat_state(full, rf), _flat_state(resumed, rr)):
        assert torch.equal(a, b)


class _NoBN(torch.nn.Module):
    feature_dim = 6

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4))

    def feature_map(self, x):
        return self.body(x)


def _ddp_run(strategy):
    # mode="sum": the alternating mode leaves one branch without gradient per step, which DDP refuses (not built)
    torch.manual_seed(0)
    m = STProtoPNet(_NoBN(), C, K, D)
    x, y = _data()
    push = lambda mm, a, b: mm.push(a, b, batch_size=5)  # noqa: E731
    recipe = protopnet_recipe(
        m, _short_schedule(), push_data=(x, y), loss=STLoss("sum"), after_step=renormalize_after_step, push_fn=push
    )
    recipe.fit(m, IndexedTensorDataset(x, y), TrainConfig(seed=0, progress=False, strategy=strategy))
    return m


def _ddp_worker(rank, out):
    torch.set_num_threads(1)
    m = _ddp_run("ddp")
    if rank == 0:
        torch.save(m.state_dict(), out)


def test_ddp_two_processes_equal_one(tmp_path) -> None:
    single = _ddp_run("auto")
    out = str(tmp_path / "st.pt")
    run_gloo(_ddp_worker, 2, out)
    multi = torch.load(out, weights_only=True)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, multi[k], atol=1e-6), k


def test_nan_batch_raises_and_leaves_the_state() -> None:
    m = _model()
    x, y = _data()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(PriorkitError, match="^x holds"):
        _fit(m, bad, y, _short_schedule(batch_size=12), push_data=(x, y))
    with pytest.raises(PriorkitError, match="images"):
        m.push(bad, y)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------ bad input


def test_bad_input_errors() -> None:
    with pytest.raises(PriorkitError, match="mode"):
        _model(mode="both")
    with pytest.raises(PriorkitError, match="coefs"):
        _model(coefs={"clst": 0.8})
    with pytest.raises(PriorkitError, match="feature_map"):
        STProtoPNet(torch.nn.Linear(3, 3), C, K, D)
    with pytest.raises(PriorkitError, match="num_classes"):
        _model().__class__(Conv4(3, 8, C, pools=2), 1, K, D)
    with pytest.raises(PriorkitError, match="multiple"):
        orthogonality_cost(_unit(7, D), C)
    with pytest.raises(PriorkitError, match="branch"):
        _model().prototypes("middle")
    with pytest.raises(PriorkitError, match="labels"):
        cluster_similarity(torch.rand(2, C * K), torch.tensor([0, C]), _model().branch_identity)
    with pytest.raises(PriorkitError, match="prototypes"):
        cosine_similarity_maps(torch.rand(1, D, 2, 2), torch.rand(3, D + 1, 1, 1))
    with pytest.raises(PriorkitError, match="mode"):
        STLoss("both")


def test_prototype_geometry_matches_loop() -> None:
    from priorkit.prototypes.st_protopnet import prototype_geometry

    m = _model().eval()
    x, y = _data()
    geo = prototype_geometry(m, x, y)
    with torch.no_grad():
        for b in ("trivial", "support"):
            p = F.normalize(m.prototypes(b).flatten(1), dim=1)
            near = [max(float(p[i] @ p[j]) for j in range(C * K) if j // K != i // K) for i in range(C * K)]
            assert geo[b]["nearest_cross_cos"] == pytest.approx(sum(near) / len(near), abs=1e-6)
            z = F.normalize(m.latent(x, b), dim=1)
            g = torch.einsum("ndhw,md->nmhw", z, p).flatten(2).amax(2)  # [N, M] raw max cosine
            margins = []
            for j in range(C * K):
                own = [float(g[n, j]) for n in range(len(y)) if int(y[n]) == j // K]
                other = [float(g[n, j]) for n in range(len(y)) if int(y[n]) != j // K]
                margins.append(sum(own) / len(own) - sum(other) / len(other))
            assert geo[b]["margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)
