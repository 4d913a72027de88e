"""MIL bags: the bag label rule, sizes and witness rates, determinism, bad input; the MIL AUC metrics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from priorkit.core.errors import PriorkitError
from priorkit.data.mil import MILBags, make_bags, mil_digits, mil_gaussian, mil_mnist1d, mil_split
from priorkit.metrics.mil import bag_auc, bag_scores, instance_auc, mil_metrics


def _toy(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.arange(n) % 5


def test_bag_label_is_one_iff_bag_holds_a_positive():
    x, y = _toy()
    bags = make_bags(x, y, positive_classes=[1, 3], num_bags=30, bag_size=(4, 9), positives_per_bag=(1, 3), seed=2)
    for b in range(bags.num_bags):
        s, e = int(bags.offsets[b]), int(bags.offsets[b + 1])
        src = bags.source_y[s:e]
        assert int(bags.bag_y[b]) == int(((src == 1) | (src == 3)).any())
        assert torch.equal(bags.instance_y[s:e], ((src == 1) | (src == 3)).long())
        assert (bags.bag_index[s:e] == b).all()
        if bags.bag_y[b]:
            assert 1 <= int(bags.instance_y[s:e].sum()) <= 3
    assert 4 <= int(bags.bag_sizes.min()) and int(bags.bag_sizes.max()) <= 9
    assert int(bags.bag_y.sum()) == 15  # pos_bag_ratio 0.5
    # x rows are the source rows
    ds = bags.instance_dataset()
    assert torch.equal(ds.y, bags.bag_y[bags.bag_index]) and torch.equal(ds.clean_y, bags.instance_y)


def test_witness_rate_and_determinism():
    x, y = _toy()
    kw = dict(positive_classes=[0], num_bags=40, bag_size=20, positives_per_bag=None, witness_rate=(0.1, 0.2))
    a, b = make_bags(x, y, seed=5, **kw), make_bags(x, y, seed=5, **kw)
    c = make_bags(x, y, seed=6, **kw)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("x", "instance_y", "offsets", "bag_y"))
    assert not torch.equal(a.x, c.x)
    w = a.witness_rate()[a.bag_y == 1]
    assert (w >= 0.1 - 1e-9).all() and (w <= 0.2 + 1e-9).all()
    assert (a.witness_rate()[a.bag_y == 0] == 0).all()


def test_reuse_walks_pool_evenly_and_refuses_without_reuse():
    x, y = _toy(50)
    bags = make_bags(x, y, positive_classes=[0], num_bags=20, bag_size=10, positives_per_bag=2, seed=0)
    # 10 negatives per pool pass: counts of each negative source row differ by at most one
    neg_rows = torch.nonzero(~torch.isin(torch.arange(50), torch.arange(0, 50, 5))).flatten()
    counts = torch.stack([(bags.x == x[r]).all(1).sum() for r in neg_rows])
    assert int(counts.max() - counts.min()) <= 1
    with pytest.raises(PriorkitError, match="reuse=True"):
        make_bags(x, y, positive_classes=[0], num_bags=20, bag_size=10, positives_per_bag=2, reuse=False)


def test_loaders_disjoint_pools_and_shapes():
    d = mil_digits(num_bags=(30, 20), seed=0)
    assert d.train.num_bags == 30 and d.test.num_bags == 20 and d.input_shape == (64,)
    train_rows = {tuple(r.tolist()) for r in d.train.x}
    assert not any(tuple(r.tolist()) in train_rows for r in d.test.x)
    g = mil_gaussian(num_bags=10, bag_size=(3, 6), dim=4, seed=1)
    assert g.train.x.shape[1] == 4 and g.train.bag_sizes.min() >= 3


def test_mnist1d_loader():
    m = mil_mnist1d(num_bags=(10, 10), bag_size=5, seed=0, channel=True)
    assert m.train.x.shape[1:] == (1, 40)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(positive_classes=[]), "positive_classes"),
        (dict(positive_classes=[7]), "do not occur"),
        (dict(bag_size=0), "bag_size"),
        (dict(bag_size=(5, 3)), "low <= high"),
        (dict(positives_per_bag=None), "exactly one"),
        (dict(witness_rate=0.2), "exactly one"),
        (dict(positives_per_bag=None, witness_rate=1.5), "witness_rate"),
        (dict(pos_bag_ratio=1.2), "pos_bag_ratio"),
        (dict(num_bags=0), "num_bags"),
    ],
)
def test_bad_input(kw, match):
    x, y = _toy()
    args = dict(positive_classes=[0], num_bags=10, bag_size=5, positives_per_bag=1) | kw
    with pytest.raises(PriorkitError, match=match):
        make_bags(x, y, **args)


def test_milbags_refuses_empty_bags_and_wrong_labels():
    x = torch.zeros(4, 2)
    iy = torch.tensor([0, 1, 0, 0])
    kw = dict(x=x, instance_y=iy, source_y=iy, bag_index=torch.tensor([0, 0, 1, 1]))
    MILBags(**kw, offsets=torch.tensor([0, 2, 4]), bag_y=torch.tensor([1, 0]))
    with pytest.raises(PriorkitError, match="no empty bag"):
        MILBags(**kw, offsets=torch.tensor([0, 2, 2, 4]), bag_y=torch.tensor([1, 0, 0]))
    with pytest.raises(PriorkitError, match="bag_y"):
        MILBags(**kw, offsets=torch.tensor([0, 2, 4]), bag_y=torch.tensor([0, 0]))
    with pytest.raises(PriorkitError, match="instance_y"):
        MILBags(**(kw | {"instance_y": iy[:3]}), offsets=torch.tensor([0, 2, 4]), bag_y=torch.tensor([1, 0]))


def test_metrics_match_brute_force():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(30, generator=g)
    offsets = torch.tensor([0, 4, 10, 11, 20, 30])
    iy = (torch.rand(30, generator=g) > 0.7).long()
    by = torch.tensor([1, 0, 1, 0, 1])
    mean = torch.stack([s[offsets[i] : offsets[i + 1]].mean() for i in range(5)])
    mx = torch.stack([s[offsets[i] : offsets[i + 1]].max() for i in range(5)])
    assert torch.allclose(bag_scores(s, offsets, "mean"), mean)
    assert torch.equal(bag_scores(s, offsets, "max"), mx)
    assert instance_auc(s, iy) == pytest.approx(roc_auc_score(iy.numpy(), s.numpy()))
    assert bag_auc(mx, by) == pytest.approx(roc_auc_score(by.numpy(), mx.numpy()))
    m = mil_metrics(s, iy, offsets, by, "max")
    assert m["bag_auc"] == pytest.approx(roc_auc_score(by.numpy(), mx.numpy()))


def test_metric_errors():
    with pytest.raises(PriorkitError, match="both positive and negative"):
        instance_auc(torch.rand(5), torch.ones(5))
    with pytest.raises(PriorkitError, match="same length"):
        bag_auc(torch.rand(3), torch.tensor([0, 1]))
    with pytest.raises(PriorkitError, match="aggregator"):
        bag_scores(torch.rand(4), torch.tensor([0, 2, 4]), "median")
    with pytest.raises(PriorkitError, match="at least one instance"):
        bag_scores(torch.rand(4), torch.tensor([0, 2, 2, 4]))
    with pytest.raises(PriorkitError, match="offsets"):
        bag_scores(torch.rand(4), torch.tensor([0, 2, 5]))
    with pytest.raises(PriorkitError, match="0/1"):
        instance_auc(torch.rand(3), torch.tensor([0, 1, 2]))


# --- a user's own data (tensors and numpy arrays alike) ---------------------------------------------------------


def _same_bags(a, b):
    fields = ("x", "instance_y", "source_y", "bag_index", "offsets", "bag_y")
    return all(getattr(a, f).dtype == getattr(b, f).dtype and torch.equal(getattr(a, f), getattr(b, f)) for f in fields)


def _user(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), np.arange(n) % 5


def test_make_bags_from_numpy_equals_tensors():
    x, y = _user()
    kw = dict(positive_classes=[1], num_bags=12, bag_size=(3, 6), positives_per_bag=(1, 2), seed=4)
    a, b = make_bags(x, y, **kw), make_bags(torch.from_numpy(x), torch.from_numpy(y), **kw)
    assert _same_bags(a, b) and a.x.dtype == torch.float32 and a.source_y.dtype == torch.long
    assert _same_bags(a, make_bags(x, y.astype(np.float32), **kw))  # integer-valued float labels


def test_mil_split_from_user_data_equals_numpy_and_names_match_loaders():
    x, y = _user()
    kw = dict(positive_classes=(2,), num_bags=(10, 8), bag_size=5, positives_per_bag=(1, 2), seed=1)
    a = mil_split((x, y), **kw)
    b = mil_split((torch.from_numpy(x), torch.from_numpy(y)), **kw)
    assert _same_bags(a.train, b.train) and _same_bags(a.test, b.test) and a.input_shape == (3,)
    assert a.train.num_bags == 10 and a.test.num_bags == 8
    xt, yt = _user(60, seed=1)
    c = mil_split((x, y), test_data=(xt, yt), **kw)
    d = mil_split((torch.from_numpy(x), y), test_data=(torch.from_numpy(xt), torch.from_numpy(yt)), **kw)
    assert _same_bags(c.test, d.test)
    test_rows = {tuple(r.tolist()) for r in torch.from_numpy(xt).float()}
    assert all(tuple(r.tolist()) in test_rows for r in c.test.x)  # test bags come from test_data only
    # the built-in names give exactly what the per-dataset loaders give
    e, f = mil_split("digits", num_bags=(6, 4), bag_size=5, seed=2), mil_digits(num_bags=(6, 4), bag_size=5, seed=2)
    assert _same_bags(e.train, f.train) and _same_bags(e.test, f.test)


@pytest.mark.parametrize(
    "data, kw, match",
    [
        ((np.zeros((10, 2)), np.arange(9) % 2), {}, r"y must have shape \[10\]"),
        ((np.zeros((10, 2)), np.arange(10) % 2 + 0.5), {}, "y must hold integer class labels"),
        ((np.zeros((10, 2)), np.arange(10) % 2 - 1), {}, "y must hold class labels >= 0"),
        ((np.full((10, 2), np.nan), np.arange(10) % 2), {}, "x holds 20 NaN"),
        ((np.zeros((10, 2)), np.zeros(10, dtype=int)), {}, "positive_classes \\[0\\] cover every class"),
        ((np.zeros((10, 2)), np.arange(10) % 2), {"positive_classes": [3]}, "positive_classes \\[3\\] do not occur"),
        ((["a", "b"], [0, 1]), {}, "x must be a tensor or an array of numbers"),
        (("x", [0, 1]), {}, "x must be a torch.Tensor or a numpy array"),
    ],
)
def test_make_bags_user_bad_input(data, kw, match):
    args = dict(positive_classes=[0], num_bags=4, bag_size=3, positives_per_bag=1) | kw
    with pytest.raises(PriorkitError, match=match):
        make_bags(*data, **args)


@pytest.mark.parametrize(
    "data, kw, match",
    [
        ((np.zeros((10, 2)), np.arange(9) % 2), {}, r"dataset\[1\] \(y\) must have shape \[10\]"),
        ((np.zeros((10, 2)), np.arange(10) % 2 + 0.5), {}, r"dataset\[1\] \(y\) must hold integer"),
        ((np.full((10, 2), np.inf), np.arange(10) % 2), {}, r"dataset\[0\] \(x\) holds 20 NaN or inf"),
        (_user(), {"test_data": (np.zeros((4, 2)), np.zeros(4, dtype=int))}, "test_data features must have"),
        (_user(), {"test_data": (np.zeros((4, 3)), np.zeros(3, dtype=int))}, r"test_data\[1\] \(y\) must have"),
        ("cifar", {}, "dataset must be one of"),
        ("digits", {"test_data": _user()}, "test_data is only for a user's own data"),
        ("mnist1d", {"test": 0.3}, "fixed test split"),
        (np.zeros((10, 2)), {}, "dataset must be a built-in dataset name"),
    ],
)
def test_mil_split_bad_input(data, kw, match):
    args = dict(positive_classes=[0], num_bags=4, bag_size=3, positives_per_bag=1) | kw
    with pytest.raises(PriorkitError, match=match):
        mil_split(data, **args)
