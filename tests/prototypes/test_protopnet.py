import math

import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError
from priorkit.models import Conv4
from priorkit.prototypes._common import PhaseSchedule, l2_distance_maps, set_stage, train_prototype_model
from priorkit.prototypes.protopnet import ProtoPNet, add_on_layers, protopnet_loss_fn


def _model(seed=0, k=2):
    torch.manual_seed(seed)
    return ProtoPNet(Conv4(3, 4, 3, pools=2), 3, prototypes_per_class=k, prototype_dim=6)


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 3


def test_shapes_and_logit_decomposition():
    m = _model()
    x, y = _data(4)
    out = m.outputs(x)
    assert m.prototypes.shape == (6, 6, 1, 1)
    assert out.distance_maps.shape == (4, 6, 2, 2) and out.min_distances.shape == (4, 6)
    s = m.prototype_activations(x)
    assert torch.allclose(out.logits, s @ m.last_layer.weight.t(), atol=1e-6)
    assert torch.allclose(s, torch.log((out.min_distances + 1) / (out.min_distances + 1e-4)))
    assert (
        m.last_layer.bias is None
        and m.last_layer.weight[0, :2].eq(1).all()
        and m.last_layer.weight[0, 2:].eq(-0.5).all()
    )
    z = m.latent(x)
    assert (z > 0).all() and (z < 1).all()


def test_loss_terms_match_manual():
    m = _model()
    x, y = _data(6)
    with torch.no_grad():
        t = m.loss_terms(x, y)
        out = m.outputs(x)
    d = out.min_distances
    own = torch.stack([d[i, 2 * int(y[i]) : 2 * int(y[i]) + 2].min() for i in range(6)]).mean()
    oth = torch.stack(
        [min(float(d[i, j]) for j in range(6) if j // 2 != int(y[i])) * torch.ones(()) for i in range(6)]
    ).mean()
    w = m.last_layer.weight
    l1 = sum(abs(float(w[c, j])) for c in range(3) for j in range(6) if j // 2 != c)
    assert math.isclose(float(t["ce"]), float(F.cross_entropy(out.logits, y)), rel_tol=1e-6)
    assert math.isclose(float(t["clst"]), 0.8 * float(own), rel_tol=1e-5)
    assert math.isclose(float(t["sep"]), -0.08 * float(oth), rel_tol=1e-5)
    assert math.isclose(float(t["l1"]), 1e-4 * l1, rel_tol=1e-5)


def test_push_invariant_prototypes_equal_own_class_patches():
    m = _model()
    x, y = _data(24)
    res = m.push(x, y, batch_size=24)
    m.eval()
    with torch.no_grad():
        z = m.latent(x)  # the same single batch as the push: bit-identical latents
    for j in range(m.num_prototypes):
        n = int(res.image_index[j])
        r, c = res.location[j].tolist()
        assert int(y[n]) == j // 2
        assert torch.equal(m.prototypes[j, :, 0, 0], z[n, :, r, c])
        assert float(((m.prototypes[j, :, 0, 0] - z[n, :, r, c]) ** 2).sum()) == 0.0
    # the bookkeeping also holds when the image is re-encoded alone (up to float round-off)
    n = int(res.image_index[0])
    r, c = res.location[0].tolist()
    with torch.no_grad():
        assert torch.allclose(m.latent(x[n : n + 1])[0, :, r, c], m.prototypes[0, :, 0, 0], atol=1e-6)
    assert (res.rf_box[:, 2] > res.rf_box[:, 0]).all() and (res.rf_box[:, 3] <= 8).all()
    assert 1 <= res.n_unique <= 6


def test_last_layer_stage_changes_only_the_last_layer():
    m = _model()
    x, y = _data(24)
    snap = {}

    def push_fn(model):
        res = model.push(x, y)
        snap.update({k: v.clone() for k, v in model.state_dict().items()})
        return res

    sched = PhaseSchedule(epochs=1, warm_epochs=0, push_start=0, push_every=1, last_layer_epochs=2, batch_size=8)
    hist = train_prototype_model(m, x, y, protopnet_loss_fn, sched, push_fn=push_fn)
    assert [h["stage"] for h in hist] == ["joint", "push", "last_layer"]
    after = m.state_dict()
    for k, v in snap.items():
        if k == "last_layer.weight":
            assert not torch.equal(v, after[k])
        else:
            assert torch.equal(v, after[k]), k


def test_warm_stage_keeps_backbone_and_last_layer():
    m = _model()
    x, y = _data(24)
    w0 = m.last_layer.weight.detach().clone()
    bb0 = [p.detach().clone() for p in m.backbone.parameters()]
    p0 = m.prototypes.detach().clone()
    sched = PhaseSchedule(epochs=1, warm_epochs=1, push_start=5, last_layer_epochs=0, batch_size=8)
    train_prototype_model(m, x, y, protopnet_loss_fn, sched)
    assert torch.equal(m.last_layer.weight, w0)
    assert all(torch.equal(a, b) for a, b in zip(bb0, m.backbone.parameters()))
    assert not torch.equal(m.prototypes, p0)


def test_bottleneck_add_on():
    seq = add_on_layers(64, 8, "bottleneck")
    out = seq(torch.rand(2, 64, 3, 3))
    assert out.shape == (2, 8, 3, 3) and isinstance(seq[-1], torch.nn.Sigmoid)


def test_cdist_and_expansion_models_agree():
    m = _model()
    x, _ = _data(4)
    z = m.latent(x)
    assert torch.allclose(l2_distance_maps(z, m.prototypes), l2_distance_maps(z, m.prototypes, "cdist"), atol=1e-5)


def test_bad_inputs():
    with pytest.raises(PriorkitError, match="prototypes_per_class"):
        ProtoPNet(Conv4(3, 4, 3), 3, prototypes_per_class=0)
    with pytest.raises(PriorkitError, match="feature_map"):
        ProtoPNet(torch.nn.Linear(3, 3), 3)
    with pytest.raises(PriorkitError, match="add_on"):
        ProtoPNet(Conv4(3, 4, 3), 3, add_on="wide")
    with pytest.raises(PriorkitError, match="clst"):
        ProtoPNet(Conv4(3, 4, 3), 3, coefs={"clust": 0.8})
    with pytest.raises(PriorkitError, match="activation"):
        ProtoPNet(Conv4(3, 4, 3), 3, activation="exp")
    with pytest.raises(PriorkitError, match="backbone_channels"):

        class NoDim(torch.nn.Module):
            def feature_map(self, x):
                return x

        ProtoPNet(NoDim(), 3)
    m = _model()
    with pytest.raises(PriorkitError):
        m(torch.rand(3, 8, 8))
    with pytest.raises(PriorkitError, match="stage"):
        set_stage(m, "finetune", [])
    with pytest.raises(PriorkitError, match="trainable group"):
        set_stage(m, "warm", ["head"])
    x, y = _data(6)
    with pytest.raises(PriorkitError, match="labels"):
        m.push(x, y[:2])
    with pytest.raises(PriorkitError, match="lr group"):
        train_prototype_model(m, x, y, protopnet_loss_fn, PhaseSchedule(epochs=1, warm_lrs={"adapter": 1e-3}))
