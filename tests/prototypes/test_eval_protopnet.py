"""EvalProtoPNet: SDFA (space-to-depth, self-similarity, alignment loss), SA head, orthogonality, the model."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.models import Conv4
from priorkit.prototypes.eval_protopnet import (
    EvalProtoPNet,
    cosine_distance_maps,
    default_schedule,
    eval_protopnet_loss,
    make_loss_fn,
    orthogonality_loss,
    projection_maps,
    renormalize_prototypes,
    sa_logits,
    sa_weights,
    sdfa_loss,
    self_similarity,
    space_to_depth,
    visual_push,
)
from priorkit.prototypes.protopnet_base import protopnet_recipe
from priorkit.train import Batch, TrainConfig


def _model(**kw) -> EvalProtoPNet:
    torch.manual_seed(0)
    return EvalProtoPNet(Conv4(3, 8, 3, pools=2), 3, 2, 6, **kw)


def test_space_to_depth_matches_a_loop_and_pixel_unshuffle():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 8, 12, generator=g)
    out = space_to_depth(s, (4, 3))  # r_h = 2, r_w = 4
    assert out.shape == (2, 3 * 2 * 4, 4, 3)
    for d in range(3):
        for a in range(2):
            for b in range(4):
                for i in range(4):
                    for j in range(3):
                        assert out[1, d * 8 + a * 4 + b, i, j] == s[1, d, i * 2 + a, j * 4 + b]
    sq = torch.randn(2, 5, 16, 16, generator=g)
    assert torch.equal(space_to_depth(sq, (8, 8)), F.pixel_unshuffle(sq, 2))
    with pytest.raises(PriorkitError, match="integer multiple"):
        space_to_depth(torch.zeros(1, 2, 10, 10), (4, 4))


def test_self_similarity_is_cosine_between_positions():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 4, 3, 3, generator=g)
    sim = self_similarity(f)
    assert sim.shape == (2, 9, 9)
    flat = f.flatten(2)
    for u in range(9):
        for v in range(9):
            want = F.cosine_similarity(flat[1, :, u], flat[1, :, v], dim=0)
            assert torch.allclose(sim[1, u, v], want, atol=1e-6)
    # an all-zero position gives 0 similarity, not NaN (the repo divides by the raw norm)
    f[0, :, 0, 0] = 0.0
    assert torch.isfinite(self_similarity(f)).all()


def _sdfa_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, k, c, h = 3, 2, 3, 4
    proto_maps = torch.randn(b, c * k, h, h, generator=g)
    shallow = torch.randn(b, 5, 2 * h, 2 * h, generator=g)
    deep = torch.randn(b, 7, h, h, generator=g, requires_grad=True)
    labels = torch.tensor([0, 2, 1])
    return proto_maps, shallow, deep, labels, k


def test_sdfa_loss_matches_a_brute_force_loop():
    proto_maps, shallow, deep, labels, k = _sdfa_inputs()
    tau = 0.1
    got = sdfa_loss(proto_maps, shallow, deep, labels, k, tau)
    s2d = space_to_depth(shallow, (4, 4)).flatten(2)
    t = deep.detach().flatten(2)
    vals = []
    for i in range(3):
        for j in range(k):
            proto = int(labels[i]) * k + j
            u = int(proto_maps[i, proto].flatten().argmax())
            for v in range(16):
                cs = F.cosine_similarity(s2d[i, :, u], s2d[i, :, v], dim=0)
                ct = F.cosine_similarity(t[i, :, u], t[i, :, v], dim=0)
                vals.append(max(abs(float(ct - cs)) - tau, 0.0))
    assert float(got.detach()) == pytest.approx(sum(vals) / len(vals), abs=1e-6)


def test_sdfa_loss_is_zero_within_tau_and_shallow_is_detached():
    proto_maps, shallow, _, labels, k = _sdfa_inputs()
    shallow = shallow.clone().requires_grad_(True)
    # deep = the space-to-depth shallow map itself: identical similarity matrices
    deep = space_to_depth(shallow.detach(), (4, 4)).clone().requires_grad_(True)
    loss = sdfa_loss(proto_maps, shallow, deep, labels, k, tau=0.1)
    assert float(loss.detach()) == 0.0
    # small perturbations keep |Sim_T - Sim_S| <= tau everywhere: still exactly 0
    g = torch.Generator().manual_seed(5)
    near = (deep.detach() + 1e-3 * torch.randn(deep.shape, generator=g)).requires_grad_(True)
    assert (self_similarity(near) - self_similarity(deep.detach())).abs().max() <= 0.1
    assert float(sdfa_loss(proto_maps, shallow, near, labels, k, tau=0.1).detach()) == 0.0
    # with tau = 0 the loss is positive, its gradient reaches the deep map and never the shallow one
    loss = sdfa_loss(proto_maps, shallow, near, labels, k, tau=0.0)
    loss.backward()
    assert float(loss.detach()) > 0 and near.grad is not None and near.grad.abs().sum() > 0
    assert shallow.grad is None


def test_sdfa_uses_only_own_class_prototypes():
    proto_maps, shallow, deep, labels, k = _sdfa_inputs()
    base = sdfa_loss(proto_maps, shallow, deep, labels, k)
    other = proto_maps.clone()
    for i, y in enumerate(labels.tolist()):  # scramble every other class's maps
        mask = torch.ones(other.shape[1], dtype=torch.bool)
        mask[y * k : (y + 1) * k] = False
        other[i, mask] = torch.randn(int(mask.sum()), 4, 4)
    assert torch.equal(sdfa_loss(other, shallow, deep, labels, k), base)


def test_sa_weights_sum_to_k_and_logits_are_block_sums():
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(4, 3, generator=g)
    a = sa_weights(theta)
    assert torch.allclose(a.sum(1), torch.full((4,), 3.0))
    assert torch.equal(sa_weights(torch.ones(4, 3)), torch.ones(4, 3))
    acts = torch.randn(5, 12, generator=g)
    logits = sa_logits(acts, theta)
    want = torch.stack([(acts[:, c * 3 : (c + 1) * 3] * a[c]).sum(1) for c in range(4)], 1)
    assert torch.allclose(logits, want, atol=1e-6)
    with pytest.raises(PriorkitError, match="activations"):
        sa_logits(acts[:, :10], theta)


def test_orthogonality_loss_zero_for_orthonormal_blocks_and_matches_loop():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))
    protos = torch.cat([q[:3], q[3:]]).reshape(6, 6, 1, 1)  # 2 classes x 3 orthonormal vectors
    assert float(orthogonality_loss(protos, 2)) == pytest.approx(0.0, abs=1e-5)
    p = torch.randn(6, 4, 1, 1, generator=torch.Generator().manual_seed(1))
    want = 0.0
    for c in range(2):
        b = p[c * 3 : (c + 1) * 3].reshape(3, 4)
        want += float((b @ b.t() - torch.eye(3)).abs().sum())
    assert float(orthogonality_loss(p, 2)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(PriorkitError, match="multiple"):
        orthogonality_loss(p, 4)


def test_projection_and_cosine_maps():
    g = torch.Generator().manual_seed(3)
    z = torch.rand(2, 5, 3, 3, generator=g)
    p = torch.rand(4, 5, 1, 1, generator=g) * 3
    proj = projection_maps(z, p)
    pn = p.flatten(1) / p.flatten(1).norm(dim=1, keepdim=True)
    assert torch.allclose(proj[1, 2, 0, 1], z[1, :, 0, 1] @ pn[2], atol=1e-6)
    cos = cosine_distance_maps(z, p)
    assert torch.allclose(cos[1, 2, 0, 1], -F.cosine_similarity(z[1, :, 0, 1], pn[2], dim=0), atol=1e-6)
    # the projection is invariant to the prototypes' scale
    assert torch.allclose(projection_maps(z, p * 7), proj, atol=1e-5)


def test_model_shapes_paths_and_loss_terms():
    m = _model()
    x = torch.rand(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    out = m.outputs(x)
    assert out.shallow.shape == (4, 8, 8, 8) and out.deep.shape == (4, 8, 4, 4)
    assert out.proto_maps.shape == (4, 6, 4, 4) and out.logits.shape == (4, 3)
    assert torch.allclose(m(x), out.logits, atol=1e-6)
    assert torch.allclose(out.activations @ m.class_weights().t(), out.logits, atol=1e-5)
    assert torch.allclose(m.similarity_maps(x).flatten(2).amax(2), m.prototype_activations(x))
    terms = m.loss_terms(x, y)
    assert set(terms) == {"ce", "clst", "sep", "orth", "align"}
    assert set(m.loss_terms(x, y, align=False)) == {"ce", "clst", "sep", "orth"}
    assert set(_model(align=False).loss_terms(x, y)) == {"ce", "clst", "sep", "orth"}
    # weighted by the official coefficients
    raw = eval_protopnet_loss(out, y, m.prototype_identity, m.prototypes, {"align": 1.0})
    assert torch.allclose(terms["align"], 0.5 * raw["align"])
    cm = _model(similarity="cosine")
    assert torch.allclose(cm.similarity_maps(x), -cosine_distance_maps(cm.latent(x), cm.prototypes))
    lin = _model(head="linear")
    assert torch.equal(lin.class_weights(), lin.last_layer.weight)
    assert set(lin.parameter_groups()) == {"backbone", "add_on", "prototypes", "last_layer"}


def test_warm_stage_has_no_alignment_and_training_renormalises():
    m = _model()
    x = torch.rand(12, 3, 16, 16)
    y = torch.arange(12) % 3
    loss_fn = make_loss_fn()

    def st(stage):
        return SimpleNamespace(model=m, phase=SimpleNamespace(options={"stage": stage}))

    b = Batch(x=x, y=y, index=torch.arange(12), output=m(x, full=True))
    assert "align" not in loss_fn(st("warm"), b) and "align" in loss_fn(st("joint"), b)
    assert "align" in make_loss_fn(align_in_warm=True)(st("warm"), b)
    before = {k: v.clone() for k, v in m.backbone.state_dict().items() if "running" not in k and "num_b" not in k}
    theta0 = m.sa_theta.detach().clone()
    sched = default_schedule(2, 1, batch_size=6)
    recipe = protopnet_recipe(m, sched, push_data=(x, y), loss=loss_fn, after_step=renormalize_prototypes)
    hist = recipe.fit(m, IndexedTensorDataset(x, y), TrainConfig(seed=0, progress=False))
    assert [h["phase"] for h in hist] == ["warm@0", "joint@1"] and recipe.record.last is None
    assert "align" not in hist[0] and "align" in hist[1]
    assert torch.allclose(m.prototypes.flatten(1).norm(dim=1), torch.ones(6), atol=1e-6)
    # SA theta moves by at most ~lr 1e-6 per step (4 Adam steps)
    assert (m.sa_theta.detach() - theta0).abs().max() < 1e-5
    after = m.backbone.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())  # joint epoch trained the backbone


def test_visual_push_leaves_the_model_unchanged():
    m = _model()
    m.eval()
    x = torch.rand(9, 3, 16, 16)
    y = torch.arange(9) % 3
    p0 = m.prototypes.detach().clone()
    res = visual_push(m, x, y, receptive_field="grid")
    assert torch.equal(m.prototypes.detach(), p0)
    assert (res.image_index >= 0).all()
    assert bool((y[res.image_index] == res.prototype_class).all())  # each found among its own class


def test_bad_inputs():
    with pytest.raises(PriorkitError, match="shallow_layer"):
        _model(shallow_layer="nope")
    with pytest.raises(PriorkitError, match="head"):
        _model(head="mlp")
    with pytest.raises(PriorkitError, match="similarity"):
        _model(similarity="l2")
    with pytest.raises(PriorkitError, match="add_on"):
        _model(add_on="deep")
    with pytest.raises(PriorkitError, match="feature_map"):
        EvalProtoPNet(torch.nn.Linear(3, 3), 3, 2, 6)
    with pytest.raises(PriorkitError, match="did you mean"):
        _model(coefs={"alignn": 0.3})
    with pytest.raises(PriorkitError, match="tau"):
        _model(tau=-1.0)
    proto_maps, shallow, deep, labels, k = _sdfa_inputs()
    with pytest.raises(PriorkitError, match="labels"):
        sdfa_loss(proto_maps, shallow, deep, labels + 3, k)
    with pytest.raises(PriorkitError, match="multiple of prototypes_per_class"):
        sdfa_loss(proto_maps, shallow, deep, labels, 4)
    with pytest.raises(PriorkitError, match="deep"):
        sdfa_loss(proto_maps, shallow, deep[:, :, :3], labels, k)
    with pytest.raises(PriorkitError, match="head"):
        default_schedule(head="svm")


def test_state_dict_round_trip_and_deepcopy_keep_the_shallow_hook():
    import copy

    m = _model()
    m.eval()
    x = torch.rand(3, 3, 16, 16)
    m2 = EvalProtoPNet(Conv4(3, 8, 3, pools=2), 3, 2, 6)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    assert torch.equal(m2(x), m(x))
    m3 = copy.deepcopy(m)
    s, d = m3.backbone_maps(x)
    assert s.shape == (3, 8, 8, 8) and d.shape == (3, 8, 4, 4)
