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
