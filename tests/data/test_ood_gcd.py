"""OOD and GCD split builders, the shift+noise views, and the clustering metrics."""

import doctest

import numpy as np
import pytest
import torch

import priorkit.data.gcd as gcd_mod
import priorkit.data.ood as ood_mod
import priorkit.metrics.clustering as clu_mod
from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.gcd import gcd_split
from priorkit.data.ood import far_outliers, ood_split, select_classes, shift_noise_views
from priorkit.metrics.clustering import cluster_acc, hungarian_map, split_cluster_acc


@pytest.mark.parametrize("mod", [ood_mod, gcd_mod, clu_mod])
def test_docstring_examples_run(mod):
    res = doctest.testmod(mod)
    assert res.attempted > 0 and res.failed == 0


def test_ood_split_is_disjoint_relabelled_and_deterministic():
    a = ood_split("digits", id_classes=(1, 3, 5), far=("uniform", "gaussian", "shuffled"), seed=2)
    b = ood_split("digits", id_classes=(1, 3, 5), far=("uniform", "gaussian", "shuffled"), seed=2)
    assert a.num_classes == 3 and sorted(a.train.y.unique().tolist()) == [0, 1, 2]
    assert set(a.ood["near"].y.tolist()) == set(a.ood_classes) == {0, 2, 4, 6, 7, 8, 9}
    assert sorted(a.ood) == ["far_gaussian", "far_shuffled", "far_uniform", "near"]
    for k in a.ood:
        assert torch.equal(a.ood[k].x, b.ood[k].x)
        assert a.ood[k].x.shape[1:] == a.train.x.shape[1:]
        assert float(a.ood[k].x.min()) >= a.value_range[0] and float(a.ood[k].x.max()) <= a.value_range[1]
    c = ood_split("digits", id_classes=(1, 3, 5), seed=3)
    assert not torch.equal(a.ood["far_uniform"].x, c.ood["far"].x)
    # near-OOD comes from the test split: none of its images is an ID training image
    train_rows = {tuple(r.tolist()) for r in a.train.x}
    assert not any(tuple(r.tolist()) in train_rows for r in a.ood["near"].x)


def test_ood_split_mnist1d_channel_shape():
    d = ood_split("mnist1d_channel", id_classes=(0, 1, 2, 3, 4, 5), n_far=50, seed=0)
    assert d.train.x.shape[1:] == (1, 40) and len(d.ood["far"]) == 50


def test_shuffled_outliers_keep_values_and_views_shift():
    ref = torch.arange(12.0).view(2, 6)
    out = far_outliers(4, (6,), "shuffled", seed=0, value_range=(0, 11), reference=ref)
    for row in out:
        assert sorted(row.tolist()) in (list(range(6)), list(range(6, 12)))
    img = torch.zeros(3, 64)
    img[:, 27] = 1.0  # pixel (3, 3) of an 8x8 image
    v = shift_noise_views(img, torch.Generator().manual_seed(0), max_shift=1, sigma=0.0, image_shape=(8, 8))
    assert torch.equal(v.sum(1), torch.ones(3))  # an interior pixel moves, it is not lost
    r, c = divmod(int(v[0].argmax()), 8)
    assert abs(r - 3) <= 1 and abs(c - 3) <= 1
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(shift_noise_views(img, g1, image_shape=(8, 8)), shift_noise_views(img, g2, image_shape=(8, 8)))


def test_gcd_split_partitions_and_relabels():
    g = gcd_split("digits", old_classes=(2, 4, 6), prop_labelled=0.5, seed=1)
    assert g.num_old == 3 and g.class_order[:3] == (2, 4, 6)
    assert int(g.labelled.y.max()) < 3
    n_old_train = int((g.train.y < 3).sum())
    assert abs(len(g.labelled) - n_old_train / 2) <= 3
    assert len(g.labelled) + len(g.unlabelled) == len(g.train)
    assert set(g.unlabelled.y[~g.unlabelled_old_mask].tolist()) == set(range(3, 10))
    assert torch.equal(g.train_labelled_mask, torch.arange(len(g.train)) < len(g.labelled))
    g2 = gcd_split("digits", old_classes=(2, 4, 6), prop_labelled=0.5, seed=1)
    assert torch.equal(g.labelled.x, g2.labelled.x)


def test_cluster_metrics_against_brute_force():
    from itertools import permutations

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    p = rng.integers(0, 4, 60)
    best = max(np.mean(np.array(perm)[p] == y) for perm in permutations(range(4)))
    assert abs(cluster_acc(y, p) - best) < 1e-12
    m = hungarian_map(y, p)
    assert sorted(m) == [0, 1, 2, 3] and sorted(m.values()) == [0, 1, 2, 3]
    old = y < 2
    res = split_cluster_acc(y, p, old)
    hit = np.array([m[int(a)] for a in p]) == y
    assert res == {"all": hit.mean(), "old": hit[old].mean(), "new": hit[~old].mean()}
    # more clusters than classes: the extra cluster's samples count as errors
    assert cluster_acc(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 1])) == 0.75


def test_bad_inputs():
    with pytest.raises(PriorkitError, match="dataset must be one of"):
        ood_split("cifar10")
    with pytest.raises(PriorkitError, match="id_classes must be distinct"):
        ood_split("digits", id_classes=(1, 1, 2))
    with pytest.raises(PriorkitError, match="far must be one of"):
        ood_split("digits", far=("svhn",))
    with pytest.raises(PriorkitError, match="needs a non-empty reference"):
        far_outliers(3, (4,), "shuffled")
    with pytest.raises(PriorkitError, match="prop_labelled must be in"):
        gcd_split("digits", prop_labelled=1.0)
    with pytest.raises(PriorkitError, match="old_classes must be"):
        gcd_split("digits", old_classes=(0, 10))
    with pytest.raises(PriorkitError, match="same length"):
        cluster_acc(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(PriorkitError, match="old_mask must be a boolean"):
        split_cluster_acc(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(PriorkitError, match="integer"):
        cluster_acc(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))
    assert len(select_classes(IndexedTensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, 2, 1])), [1])) == 2


# --- a user's own data (tensors and numpy arrays alike) ---------------------------------------------------------


def _user(n=150, classes=5, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), np.arange(n) % classes


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def test_ood_split_from_user_tensors_equals_numpy():
    x, y = _user()
    kw = dict(id_classes=(0, 2, 4), far=("uniform", "shuffled"), seed=3)
    a = ood_split((x, y), **kw)
    b = ood_split((torch.from_numpy(x), torch.from_numpy(y)), **kw)
    c = ood_split(IndexedTensorDataset(torch.from_numpy(x).float(), torch.from_numpy(y)), **kw)
    for d in (b, c):
        assert _same(a.train.x, d.train.x) and _same(a.train.y, d.train.y) and _same(a.test.x, d.test.x)
        assert sorted(a.ood) == sorted(d.ood) == ["far_shuffled", "far_uniform", "near"]
        assert all(_same(a.ood[k].x, d.ood[k].x) and _same(a.ood[k].y, d.ood[k].y) for k in a.ood)
    assert a.train.x.dtype == torch.float32 and a.train.y.dtype == torch.long
    assert a.num_classes == 3 and a.ood_classes == (1, 3) and a.input_shape == (6,) and a.meta["dataset"] == "user"
    assert set(a.ood["near"].y.tolist()) == {1, 3} and sorted(a.train.y.unique().tolist()) == [0, 1, 2]
    # an explicit held-out test set, numpy and tensors alike
    xt, yt = _user(50, seed=1)
    e = ood_split((x, y), test_data=(xt, yt), **kw)
    f = ood_split((torch.from_numpy(x), y), test_data=(torch.from_numpy(xt), torch.from_numpy(yt)), **kw)
    assert len(e.train) == 90 and len(e.test) == 30 and len(e.ood["near"]) == 20
    assert _same(e.test.x, f.test.x) and _same(e.ood["far_shuffled"].x, f.ood["far_shuffled"].x)


def test_ood_and_gcd_split_of_builtin_data_passed_as_user_data_match_the_name():
    from priorkit.data.datasets import load_digits

    s = load_digits(val=0.0, test=0.3, seed=1)
    a, b = ood_split("digits", id_classes=(1, 3, 5), seed=1), ood_split(s, id_classes=(1, 3, 5), seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.ood["far"].x, b.ood["far"].x)
    assert a.ood_classes == b.ood_classes and a.value_range == b.value_range
    g, h = gcd_split("digits", old_classes=(2, 4), seed=1), gcd_split(s, old_classes=(2, 4), seed=1)
    assert torch.equal(g.labelled.x, h.labelled.x) and torch.equal(g.test.y, h.test.y)
    assert g.class_order == h.class_order and g.num_classes == h.num_classes == 10


def test_gcd_split_from_user_tensors_equals_numpy():
    x, y = _user(120, classes=4)
    kw = dict(old_classes=(3, 1), prop_labelled=0.5, seed=2)
    a = gcd_split((x, y), **kw)
    b = gcd_split((torch.from_numpy(x), torch.from_numpy(y)), **kw)
    for f in ("labelled", "unlabelled", "test"):
        assert _same(getattr(a, f).x, getattr(b, f).x) and _same(getattr(a, f).y, getattr(b, f).y)
    assert a.num_old == 2 and a.num_classes == 4 and a.class_order == (3, 1, 0, 2)
    assert int(a.labelled.y.max()) < 2 and set(a.unlabelled.y.tolist()) == {0, 1, 2, 3}
    assert len(a.labelled) + len(a.unlabelled) == 84 and len(a.test) == 36
    # integer-valued float labels (e.g. read from a CSV) are labels too
    c = gcd_split((x, y.astype(np.float64)), **kw)
    assert _same(a.labelled.x, c.labelled.x)
    # num_classes larger than the labels seen: classes without training samples are refused
    with pytest.raises(PriorkitError, match="old_classes \\[4\\] have fewer than 2 training samples"):
        gcd_split((x, y), old_classes=(4,), num_classes=6)


def _nan_x():
    x, y = _user()
    x[3, 1] = np.nan
    return x, y


@pytest.mark.parametrize("builder", [ood_split, gcd_split])
@pytest.mark.parametrize(
    "data, kw, match",
    [
        ((np.zeros((10, 2)), np.arange(9) % 3), {}, r"dataset\[1\] \(y\) must have shape \[10\]"),
        ((np.zeros((10, 2)), np.arange(10) % 3 + 0.5), {}, r"dataset\[1\] \(y\) must hold integer class labels"),
        ((np.zeros((10, 2)), np.arange(10) % 3 - 1), {}, r"dataset\[1\] \(y\) must hold class labels >= 0"),
        ((np.ones((10, 2)), np.arange(10) % 7), {"num_classes": 5}, r"dataset\[1\] \(y\) must lie in \[0, 4\]"),
        (_nan_x(), {}, r"dataset\[0\] \(x\) holds 1 NaN"),
        ((np.zeros((0, 2)), np.zeros(0, dtype=int)), {}, r"dataset\[0\] \(x\) must be a non-empty"),
        ((np.zeros((10, 2)),), {}, "dataset must be a built-in dataset name, an \\(x, y\\) pair"),
        ("svhn", {}, "dataset must be one of"),
        ("digits", {"test_data": (np.zeros((2, 64)), np.zeros(2))}, "test_data is only for a user's own data"),
        ("digits", {"num_classes": 5}, "num_classes is only for a user's own data"),
        (_user(), {"test_data": (np.zeros((5, 3)), np.zeros(5, dtype=int))}, "test_data features must have"),
        (_user(), {"test_data": (np.zeros((5, 6)), np.full(5, 0.5))}, r"test_data\[1\] \(y\) must hold integer"),
        (_user(), {"test": 1.0}, r"test must be in \(0, 1\)"),
    ],
)
def test_user_data_bad_input(builder, data, kw, match):
    with pytest.raises(PriorkitError, match=match):
        builder(data, **kw)


def test_user_data_too_few_classes_and_bad_class_choices():
    x, y = _user(60, classes=2)
    with pytest.raises(PriorkitError, match="dataset has 2 classes; an OOD split needs at least 3"):
        ood_split((x, y), id_classes=(0, 1))
    x3, y3 = _user(60, classes=3)
    with pytest.raises(PriorkitError, match=r"id_classes must be distinct classes in \[0, 2\]"):
        ood_split((x3, y3))  # the default (0, 1, 2, 3, 4) names classes the data does not have
    with pytest.raises(PriorkitError, match="id_classes must hold between 2 and 2 classes"):
        ood_split((x3, y3), id_classes=(0, 1, 2))
    with pytest.raises(PriorkitError, match="a GCD split needs at least 2"):
        gcd_split((x, np.zeros(60, dtype=int)), old_classes=(0,))
    with pytest.raises(PriorkitError, match=r"old_classes must be 1 to 1 distinct classes in \[0, 1\]"):
        gcd_split((x, y), old_classes=(0, 1))
    with pytest.raises(PriorkitError, match="constant"):
        ood_split((np.ones((60, 2)), y3), id_classes=(0, 1))
    with pytest.raises(PriorkitError, match="near-OOD samples"):  # held-out set without the OOD class
        ood_split((x3, y3), id_classes=(0, 1), test_data=(x3[:10], np.arange(10) % 2))
