"""The Fashion-MNIST + zoo-backbone data path of the palm and protogcd experiments, on tiny synthetic images (no
real Fashion-MNIST, no zoo build): pools, per-seed draws, view banks, standardisation, and a two-epoch run."""

import dataclasses

import pytest
import torch

import priorkit.experiments._fmnist as F
import priorkit.experiments.palm as P
import priorkit.experiments.protogcd as G


def _fake_fmnist():
    g = torch.Generator().manual_seed(0)
    y_tr, y_te = torch.arange(200) % 10, torch.arange(100) % 10
    protos = torch.rand(10, 1, 28, 28, generator=g)
    x_tr = (protos[y_tr] + 0.2 * torch.rand(200, 1, 28, 28, generator=g)).clamp(0, 1)
    x_te = (protos[y_te] + 0.2 * torch.rand(100, 1, 28, 28, generator=g)).clamp(0, 1)
    return x_tr, y_tr, x_te, y_te


def _fake_features(backbone, x, **_):  # a fixed non-negative projection, standing in for the frozen conv net
    w = torch.rand(784, 16, generator=torch.Generator().manual_seed(1 if backbone == P.RANDOM_INIT else 0))
    return x.flatten(1) @ w


@pytest.fixture
def fake_zoo(monkeypatch):
    for mod in (F, P, G):  # the shared module's view bank calls its own frozen_features
        monkeypatch.setattr(mod, "unseen_fmnist", _fake_fmnist)
        monkeypatch.setattr(mod, "frozen_features", _fake_features)
    P._pools.cache_clear()
    G._pools.cache_clear()
    yield
    P._pools.cache_clear()
    G._pools.cache_clear()


SMALL = dict(pool_per_class=8, train_per_class=6, test_pool_per_class=6, test_per_class=4, bank_views=2)


def test_palm_data_pools_draws_and_banks(fake_zoo):
    c = dataclasses.replace(P.QUICK, far=("uniform", "gaussian"), **SMALL)
    a, b, other = P.load_data(0, c), P.load_data(0, c), P.load_data(1, c)
    assert a.train.x.shape == (30, 3, 16) and a.test.shape == (20, 16) and a.num_classes == 5
    assert sorted(a.ood) == ["far_gaussian", "far_uniform", "near"] and all(len(v) == 20 for v in a.ood.values())
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, other.train.x)
    assert torch.equal(torch.bincount(a.train.y), torch.full((5,), 6))
    clean = P.clean(a.train.x)  # z-scored with the training set's own statistics
    assert torch.allclose(clean.mean(0), torch.zeros(16), atol=1e-4)
    assert torch.allclose(clean.std(0), torch.ones(16), atol=1e-4)
    bank = torch.arange(4.0).view(1, 4, 1).expand(50, 4, 2)
    picked = P.pick_view(bank, torch.Generator().manual_seed(0))[:, 0]
    assert set(picked.tolist()) == {1.0, 2.0, 3.0}  # augmented entries only, never the clean one
    with pytest.raises(Exception, match="backbone"):
        P.load_data(0, dataclasses.replace(c, backbone="mlp"))


def test_protogcd_data_split_from_pools(fake_zoo):
    c = dataclasses.replace(G.QUICK, **SMALL)
    data, views = G.load_data(0, c)
    assert data.num_old == 5 and data.num_classes == 10 and data.labelled.x.shape[1:] == (3, 16)
    assert int(data.labelled.y.max()) < 5 and len(data.labelled) == 15  # half of the 6 old samples per class
    assert set(data.unlabelled.y.tolist()) == set(range(10)) and len(data.unlabelled) == 45
    assert data.test.x.shape == (40, 16)
    again, _ = G.load_data(0, c)
    assert torch.equal(again.unlabelled.x, data.unlabelled.x) and views is P.pick_view


def test_both_experiments_run_on_the_fake_backbone(fake_zoo):
    pc = dataclasses.replace(P.QUICK, far=("uniform",), epochs=2, warmup_epochs=1, ce_reference=True, **SMALL)
    r = P.run(0, pc)
    assert {"auroc_near", "auroc_far"} <= set(r["method"]) and "input_auroc_near" in r["baseline"]
    assert "ce_id_acc" in r["baseline"]
    gc = dataclasses.replace(G.QUICK, epochs=2, ramp=1, batch_size=16, ablation=True, **SMALL)
    r = G.run(0, gc)
    assert {"all_acc", "ablation_all_acc", "test_all_acc"} <= set(r["method"]) and "all_acc" in r["baseline"]


def test_former_digits_setups_stay_reachable():
    assert set(P.EXPERIMENT.ablations) == set(G.EXPERIMENT.ablations) == {"random_init", "digits_mlp"}
    r = P.run(0, dataclasses.replace(P.FULL, **{**P.DIGITS_SETUP, "epochs": 1, "warmup_epochs": 0}))
    assert "auroc_far" in r["method"] and "ce_auroc_near" in r["baseline"]
    r = G.run(0, dataclasses.replace(G.FULL, **{**G.DIGITS_SETUP, "epochs": 1, "ramp": 1, "ablation": False}))
    assert 0.0 <= r["method"]["all_acc"] <= 1.0
