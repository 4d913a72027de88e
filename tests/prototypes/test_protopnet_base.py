import math

import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.experiments._kernels import distance_kernel_gflops
from priorkit.prototypes.protopnet_base import (
    PhaseSchedule,
    class_identity,
    cluster_cost,
    distance_to_similarity,
    high_activation_box,
    init_last_layer,
    l1_off_class,
    l2_distance_maps,
    masked_min,
    min_pool,
    min_pool_with_indices,
    push_prototypes,
    separation_cost,
)


def _brute_maps(z, p):
    b, d, h, w = z.shape
    m, _, h1, w1 = p.shape
    out = torch.zeros(b, m, h - h1 + 1, w - w1 + 1, dtype=torch.float64)
    for i in range(b):
        for j in range(m):
            for r in range(h - h1 + 1):
                for c in range(w - w1 + 1):
                    out[i, j, r, c] = ((z[i, :, r : r + h1, c : c + w1].double() - p[j].double()) ** 2).sum()
    return out


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 3)])
@pytest.mark.parametrize("method", ["expansion", "cdist"])
def test_distance_maps_equal_brute_force(size, method):
    g = torch.Generator().manual_seed(0)
    z = torch.rand(2, 5, 4, 4, generator=g)
    p = torch.rand(6, 5, *size, generator=g)
    got = l2_distance_maps(z, p, method)
    assert got.shape == (2, 6, 4 - size[0] + 1, 4 - size[1] + 1)
    assert torch.allclose(got.double(), _brute_maps(z, p), atol=1e-5)
    assert (got >= 0).all()


def test_min_pool_and_similarity():
    maps = torch.tensor([[[[3.0, 1.0], [2.0, 5.0]]]])
    v, i = min_pool_with_indices(maps)
    assert v.item() == 1.0 and i.item() == 1
    assert torch.equal(min_pool(maps), v)
    d = torch.linspace(0, 10, 101)
    s = distance_to_similarity(d, "log", 1e-4)
    assert torch.all(s[1:] < s[:-1])
    assert math.isclose(float(s[0]), math.log(1 / 1e-4), rel_tol=1e-6)
    assert torch.equal(distance_to_similarity(d, "linear"), -d)
    with pytest.raises(PriorkitError, match="activation"):
        distance_to_similarity(d, "relu")


def test_identity_and_last_layer_init():
    ident = class_identity(3, 2)
    assert ident.shape == (6, 3)
    assert ident.argmax(1).tolist() == [0, 0, 1, 1, 2, 2]
    w = torch.empty(3, 6)
    init_last_layer(w, ident, -0.5)
    assert w[0, :2].eq(1).all() and w[0, 2:].eq(-0.5).all() and w[2, 4:].eq(1).all()
    with pytest.raises(PriorkitError, match="prototypes_per_class"):
        class_identity(3, 0)
    with pytest.raises(PriorkitError, match="weight"):
        init_last_layer(torch.empty(6, 3), ident)


def test_cluster_separation_equal_brute_force_loop():
    g = torch.Generator().manual_seed(1)
    ident = class_identity(4, 3)
    d = torch.rand(7, 12, generator=g) * 5
    y = torch.randint(0, 4, (7,), generator=g)
    cl = sum(min(float(d[i, j]) for j in range(12) if j // 3 == int(y[i])) for i in range(7)) / 7
    se = sum(min(float(d[i, j]) for j in range(12) if j // 3 != int(y[i])) for i in range(7)) / 7
    assert math.isclose(float(cluster_cost(d, y, ident)), cl, rel_tol=1e-6)
    assert math.isclose(float(separation_cost(d, y, ident)), se, rel_tol=1e-6)
    # the repo's max_dist form agrees while d <= max_dist ...
    assert math.isclose(float(cluster_cost(d, y, ident, official=True, max_dist=5.0)), cl, rel_tol=1e-6)
    # ... and is wrong once a distance exceeds it (the card's "unsafe" note)
    big = d + 10.0
    assert not math.isclose(float(cluster_cost(big, y, ident, official=True, max_dist=5.0)), cl + 10, rel_tol=1e-3)
    assert math.isclose(float(cluster_cost(big, y, ident)), cl + 10, rel_tol=1e-6)
    with pytest.raises(PriorkitError, match="max_dist"):
        cluster_cost(d, y, ident, official=True)
    with pytest.raises(PriorkitError, match="labels"):
        cluster_cost(d, torch.tensor([0, 1, 2, 3, 4, 0, 0]), ident)
    with pytest.raises(PriorkitError, match="at least one"):
        masked_min(d[:2], torch.zeros(2, 12, dtype=torch.bool))


def test_l1_gradient_zero_on_own_class():
    ident = class_identity(3, 2)
    w = torch.randn(3, 6, requires_grad=True)
    l1_off_class(w, ident).backward()
    own = ident.t() > 0
    assert torch.all(w.grad[own] == 0)
    assert torch.equal(w.grad[~own], torch.sign(w.detach()[~own]))


def test_push_projects_onto_own_class_patch_with_bookkeeping():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(10, 3, 4, 4, generator=g)
    labels = torch.arange(10) % 2
    ident = class_identity(2, 3)
    protos = torch.rand(6, 3, 1, 1, generator=g)
    old = protos.clone()
    res = push_prototypes(lambda x: x, protos, ident, images, labels, batch_size=3, receptive_field="grid")
    for j in range(6):
        n = int(res.image_index[j])
        r, c = res.location[j].tolist()
        assert int(labels[n]) == j // 3
        assert torch.equal(protos[j, :, 0, 0], images[n, :, r, c])
        # the chosen patch is the nearest own-class patch to the old prototype (brute force)
        own = images[labels == j // 3]
        dist = ((own - old[j, :, 0, 0][None, :, None, None]) ** 2).sum(1)
        assert math.isclose(float(res.distance[j]), float(dist.min()), rel_tol=1e-4, abs_tol=1e-5)
        assert res.rf_box[j].tolist() == [c, r, c + 1, r + 1]  # identity features: a 1-pixel receptive field
        x0, y0, x1, y1 = res.high_act_box[j].tolist()
        assert x0 <= c < x1 and y0 <= r < y1
    assert torch.equal(res.before, old)
    grad = push_prototypes(lambda x: x, old.clone(), ident, images, labels, receptive_field="gradient")
    assert torch.equal(grad.rf_box, res.rf_box)
    glob = push_prototypes(lambda x: x, old.clone(), ident, images, labels, class_specific=False)
    assert torch.all(glob.distance <= res.distance + 1e-6)
    with pytest.raises(PriorkitError, match="receptive_field"):
        push_prototypes(lambda x: x, old.clone(), ident, images, labels, receptive_field="exact")
    with pytest.raises(PriorkitError, match="labels"):
        push_prototypes(lambda x: x, old.clone(), ident, images, labels[:3])


def test_high_activation_box():
    heat = torch.zeros(10, 10)
    heat[2:4, 5:8] = 1.0
    assert high_activation_box(heat, 95) == (5, 2, 8, 4)


def test_schedule_plan_and_errors():
    s = PhaseSchedule(epochs=21, warm_epochs=5, push_start=10, push_every=10, last_layer_epochs=20)
    assert s.stage(4) == "warm" and s.stage(5) == "joint"
    assert s.push_epochs() == [10, 20]
    plan = s.plan()
    assert plan[10:13] == [(10, "joint"), (10, "push"), (10, "last_layer")]
    assert PhaseSchedule().push_epochs()[:2] == [10, 20]  # repo default: push_start 10, every 10 epochs
    with pytest.raises(PriorkitError, match="push_every"):
        PhaseSchedule(push_every=0)
    with pytest.raises(PriorkitError, match="joint_lrs"):
        PhaseSchedule(joint_lrs={"backbone": -1.0})


def test_kernel_benchmark_keys():
    out = distance_kernel_gflops(2, 8, 3, 3, 10, repeats=2, warmup=1, threads=1)
    assert set(out) >= {"kernel_gflops", "matmul_gflops", "kernel_ratio"}
    assert out["kernel_gflops"] > 0 and out["matmul_gflops"] > 0
    assert math.isclose(out["kernel_ratio"], out["kernel_gflops"] / out["matmul_gflops"])


def test_bad_shapes():
    with pytest.raises(PriorkitError, match="prototypes"):
        l2_distance_maps(torch.rand(2, 5, 4, 4), torch.rand(3, 4, 1, 1))
    with pytest.raises(PriorkitError, match="z"):
        l2_distance_maps(torch.rand(5, 4, 4), torch.rand(3, 5, 1, 1))
    with pytest.raises(PriorkitError, match="fit"):
        l2_distance_maps(torch.rand(1, 5, 2, 2), torch.rand(3, 5, 3, 3))
    with pytest.raises(PriorkitError, match="method"):
        l2_distance_maps(torch.rand(1, 5, 2, 2), torch.rand(3, 5, 1, 1), "cosine")


def test_min_pool_gradient_at_ties_amin_splits_min_takes_one():
    maps = torch.tensor([[[[1.0, 3.0], [1.0, 1.0]]]], requires_grad=True)  # three tied minima
    min_pool(maps).sum().backward()
    want = torch.tensor([[[[1 / 3, 0.0], [1 / 3, 1 / 3]]]])
    assert torch.allclose(maps.grad, want)  # amin: the gradient is split evenly among the tied minima
    maps.grad = None
    v, i = min_pool_with_indices(maps)
    v.sum().backward()
    g = maps.grad.flatten()
    assert g.sum() == 1.0 and int((g != 0).sum()) == 1 and g[int(i)] == 1.0  # min: all of it to one position
    # without ties both paths give the same gradient
    m2 = torch.tensor([[[[2.0, 3.0], [1.0, 4.0]]]], requires_grad=True)
    min_pool(m2).sum().backward()
    g1 = m2.grad.clone()
    m2.grad = None
    min_pool_with_indices(m2)[0].sum().backward()
    assert torch.equal(g1, m2.grad)


def test_schedule_ends_on_a_push():
    short = PhaseSchedule(epochs=5)  # the repo's push_start 10 would never push in 5 epochs
    assert short.push_epochs() == [4] and short.plan()[-2:] == [(4, "push"), (4, "last_layer")]
    assert PhaseSchedule(epochs=21, push_start=10, push_every=10).push_epochs() == [10, 20]
    assert PhaseSchedule(epochs=23, push_start=10, push_every=10).push_epochs() == [10, 20, 22]
    with pytest.raises(PriorkitError, match="final_push"):
        PhaseSchedule(epochs=5, final_push=False)
    assert PhaseSchedule(epochs=21, push_start=10, push_every=10, final_push=False).push_epochs() == [10, 20]
    assert PhaseSchedule(epochs=5, pushes=False).push_epochs() == []


def test_joint_lr_factor_is_the_repos_step_before_each_epoch():
    s = PhaseSchedule(joint_step_size=2, joint_gamma=0.5)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for k in range(7):
        sched.step()  # the repo: before joint epoch k
        assert math.isclose(opt.param_groups[0]["lr"], s.joint_lr_factor(k))


def test_push_refuses_nan_and_leaves_prototypes():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(6, 3, 4, 4, generator=g)
    images[2, 0, 1, 1] = float("nan")
    protos = torch.rand(4, 3, 1, 1, generator=g)
    old = protos.clone()
    with pytest.raises(PriorkitError, match="images"):
        push_prototypes(lambda x: x, protos, class_identity(2, 2), images, torch.arange(6) % 2)
    assert torch.equal(protos, old)
