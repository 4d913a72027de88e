import math

import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.models import Conv4
from priorkit.prototypes.protopnet import ProtoPNet, add_on_layers
from priorkit.prototypes.protopnet_base import PhaseSchedule, l2_distance_maps, protopnet_recipe, set_stage
from priorkit.train import TrainConfig
from priorkit.train.distributed import run_gloo


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


def _fit(model, x, y, sched, tmp=None, stop=None, resume=False, push_data=None, **kw):
    recipe = protopnet_recipe(model, sched, push_data=push_data or (x, y), **kw)
    cfg = TrainConfig(seed=0, progress=False, ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)
    hist = recipe.fit(model, IndexedTensorDataset(x, y), cfg, resume=resume)
    return hist, recipe


def test_last_layer_stage_changes_only_the_last_layer():
    m = _model()
    x, y = _data(24)
    snap = {}

    def push_fn(model, images, labels):
        res = model.push(images, labels)
        snap.update({k: v.clone() for k, v in model.state_dict().items()})
        return res

    sched = PhaseSchedule(epochs=1, warm_epochs=0, push_start=0, push_every=1, last_layer_epochs=2, batch_size=8)
    hist, recipe = _fit(m, x, y, sched, push_fn=push_fn)
    assert [p.options["stage"] for p in recipe.phases] == ["joint", "push", "last_layer"]
    assert any("push/n_unique" in h for h in hist) and recipe.record.last is not None
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
    sched = PhaseSchedule(epochs=1, warm_epochs=1, push_start=5, last_layer_epochs=0, batch_size=8, pushes=False)
    _fit(m, x, y, sched)
    assert torch.equal(m.last_layer.weight, w0)
    assert all(torch.equal(a, b) for a, b in zip(bb0, m.backbone.parameters()))
    assert not torch.equal(m.prototypes, p0)


def test_joint_lr_follows_the_repos_steplr_across_pushes():
    m = _model()
    x, y = _data(16)
    sched = PhaseSchedule(epochs=5, warm_epochs=1, push_start=2, push_every=2, last_layer_epochs=1, batch_size=8,
                          joint_step_size=2, joint_gamma=0.5)  # fmt: skip
    seen = []

    def loss(state, batch):
        if state.phase.options["stage"] == "joint" and state.batch_in_epoch == 0:
            seen.append(state.optimizer.param_groups[0]["lr"])
        return state.model.loss_from_outputs(batch.output, batch.y)

    _fit(m, x, y, sched, loss=loss)
    assert seen == pytest.approx([1e-4 * sched.joint_lr_factor(k) for k in range(4)])


SCHED = dict(epochs=4, warm_epochs=1, push_start=2, push_every=2, last_layer_epochs=1, batch_size=8)


def _state(m, recipe):
    return [*m.state_dict().values(), *(v for v in recipe.record.last.state_dict().values() if torch.is_tensor(v))]


@pytest.mark.parametrize("stop", [2, 3])  # 2: the joint epoch right before a push; 3: the last-layer epoch after it
def test_resume_after_a_push_is_bit_identical(tmp_path, stop):
    x, y = _data(16)
    full, rf = _model(), None
    _, rf = _fit(full, x, y, PhaseSchedule(**SCHED))
    part = _model()
    _fit(part, x, y, PhaseSchedule(**SCHED), tmp=tmp_path, stop=stop)
    resumed = _model(seed=5)
    _, rr = _fit(resumed, x, y, PhaseSchedule(**SCHED), tmp=tmp_path, resume=True)
    assert rr.record.epochs == rf.record.epochs
    for a, b in zip(_state(full, rf), _state(resumed, rr)):
        assert torch.equal(a, b)


class _NoBN(torch.nn.Module):
    """A BatchNorm-free backbone: per-rank BatchNorm statistics would differ from one process's (use
    SyncBatchNorm for that); the DDP test is about the engine and the sharded push."""

    feature_dim = 5

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(4))
        self.head = torch.nn.Linear(5, 3)  # a classifier the prototype head does not use

    def feature_map(self, x):
        return self.body(x)


def _ddp_model():
    torch.manual_seed(0)
    return ProtoPNet(_NoBN(), 3, prototypes_per_class=2, prototype_dim=6)


def _ddp_worker(rank, out):
    torch.set_num_threads(1)
    x, y = _data(16)
    m = _ddp_model()
    _, rec = _fit(m, x, y, PhaseSchedule(**SCHED), push_fn=lambda mm, a, b: mm.push(a, b, batch_size=3))
    if rank == 0:
        torch.save({"model": m.state_dict(), "push": rec.record.last.state_dict()}, out)


def test_ddp_two_processes_equal_one_with_a_sharded_push(tmp_path):
    x, y = _data(16)
    m = _ddp_model()
    _, rec = _fit(m, x, y, PhaseSchedule(**SCHED), push_fn=lambda mm, a, b: mm.push(a, b, batch_size=3))
    out = str(tmp_path / "ddp.pt")
    run_gloo(_ddp_worker, 2, out)
    multi = torch.load(out, weights_only=True)
    for k, v in m.state_dict().items():
        assert torch.allclose(v, multi["model"][k], atol=1e-6), k
    one = rec.record.last.state_dict()
    for k in ("image_index", "location", "prototype_class", "rf_box", "high_act_box"):
        assert torch.equal(one[k], multi["push"][k]), k
    assert torch.allclose(one["distance"], multi["push"]["distance"], atol=1e-6)


def test_nan_batch_raises_and_leaves_the_state():
    m = _model()
    x, y = _data(16)
    _fit(m, x, y, PhaseSchedule(epochs=1, warm_epochs=0, last_layer_epochs=0, batch_size=8))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="^x holds 1 NaN"):
        _fit(m, bad, y, PhaseSchedule(epochs=1, warm_epochs=0, batch_size=16, pushes=False), push_data=(x, y))
    with pytest.raises(PriorkitError, match="images"):
        m.push(bad, y)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


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
        protopnet_recipe(m, PhaseSchedule(epochs=1, warm_lrs={"adapter": 1e-3}), push_data=(x, y))
    with pytest.raises(PriorkitError, match="labels"):
        m.loss_terms(x, y + 5)
