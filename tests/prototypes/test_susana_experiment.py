"""The susana experiment's data and head (on a stand-in for Fashion-MNIST: CI has no real images): per-class
draws, the frozen-backbone features, the disjointness refusal, the residual head starting at the identity, and
a tiny end-to-end run whose frozen-feature reference is the plain ProtoNet on the features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import priorkit.experiments.susana as ex
from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.episodes import make_fewshot


def _fake_fewshot(monkeypatch: pytest.MonkeyPatch, n: int = 200) -> list[str]:
    """Route the experiment's ``load_fewshot`` to 10 classes of random 28x28 images; returns the names asked for."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10
    asked: list[str] = []

    def load(name: str, *, base_classes: int, seed: int) -> object:
        asked.append(name)
        return make_fewshot(x, y, base_classes=base_classes, seed=seed)

    monkeypatch.setattr(ex, "load_fewshot", load)
    return asked


def test_subset_draws_per_class_and_keeps_small_sets_whole() -> None:
    y = torch.tensor([0] * 6 + [1] * 4 + [2] * 5)
    data = IndexedTensorDataset(torch.arange(len(y)).float().unsqueeze(1), y)
    assert ex._subset(data, 6, seed=0) is data and ex._subset(data, 0, seed=0) is data
    sub = ex._subset(data, 3, seed=0)
    assert torch.bincount(sub.y).tolist() == [3, 3, 3]
    assert torch.equal(sub.y, y[sub.x.flatten().long()]) and bool((sub.x.flatten().diff() > 0).all())
    assert torch.equal(ex._subset(data, 3, seed=0).x, sub.x) and not torch.equal(ex._subset(data, 3, seed=1).x, sub.x)


def test_residual_head_starts_at_the_frozen_embedding() -> None:
    x = torch.randn(7, 12)
    head = ex._embedding(12, dataclasses.replace(ex.FULL, hidden=5))
    assert isinstance(head, ex.ResidualHead) and torch.equal(head(x), x)
    mlp = ex._embedding(12, dataclasses.replace(ex.FULL, head="mlp", hidden=5, emb_dim=3))
    assert mlp(x).shape == (7, 3)
    with pytest.raises(PriorkitError, match="head"):
        ex._embedding(12, dataclasses.replace(ex.FULL, head="linear"))


def test_data_features_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _fake_fewshot(monkeypatch)
    c = dataclasses.replace(ex.FULL, backbone="random_init", base_per_class=8, novel_per_class=5, rms_scale=False)
    base, novel = ex._data(0, c)
    assert asked == ["fashion_mnist_image"]
    assert base.x.shape == (40, 256) and torch.bincount(base.y).tolist() == [8] * 5
    assert novel.x.shape == (25, 256) and torch.bincount(novel.y).tolist() == [5] * 5
    # random_init: exactly the zoo's randomly initialised architecture on the drawn images
    from priorkit.zoo import create_model

    pix_base, pix_novel = ex._data(0, dataclasses.replace(c, backbone="pixels"))
    with torch.no_grad():
        want = create_model("fmnist_conv_base5", pretrained=False)(pix_novel.x.view(-1, 1, 28, 28))
    assert torch.equal(novel.x, want) and torch.equal(novel.y, pix_novel.y)
    # rms_scale: one scalar, the base features' root-mean-square, divides both sets
    sbase, snovel = ex._data(0, dataclasses.replace(c, rms_scale=True))
    rms = base.x.double().pow(2).mean().sqrt().float()
    assert torch.equal(sbase.x, base.x / rms) and torch.equal(snovel.x, novel.x / rms)
    assert abs(float(sbase.x.double().pow(2).mean()) - 1.0) < 1e-5
    # the pretrained backbone goes through the zoo's cached extraction
    import priorkit.zoo

    monkeypatch.setattr(priorkit.zoo, "extract_features", lambda name, x, **kw: torch.full((len(x), 3), 1.0))
    base3, _ = ex._data(0, dataclasses.replace(c, backbone="fmnist_conv_base5"))
    assert base3.x.shape == (40, 3)
    with pytest.raises(PriorkitError, match="overlap"):
        ex._data(0, dataclasses.replace(c, base_classes=3))  # novel 3-9 overlaps the pretraining classes 0-4
    with pytest.raises(PriorkitError, match="backbone must be 'pixels' with dataset 'digits'"):
        ex._data(0, dataclasses.replace(c, dataset="digits"))
    with pytest.raises(PriorkitError, match="dataset"):
        ex._data(0, dataclasses.replace(c, dataset="cifar"))


def test_tiny_run_reports_the_frozen_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_fewshot(monkeypatch)
    c = dataclasses.replace(
        ex.QUICK, backbone="pixels", base_per_class=10, novel_per_class=8, hidden=8, train_episodes=3,
        n_query=2, test_episodes=4, test_query=3,
    )  # fmt: skip
    res = ex.run(0, c)
    _, novel = ex._data(0, c)
    frozen = ex._evaluate(nn.Identity(), novel.x, novel.y, c, 0)
    assert {k: res["baseline"][f"{k}@frozen_features"] for k in frozen} == frozen
    assert set(res["method"]) == set(frozen) and 0.0 <= res["method"]["acc_5shot"] <= 1.0
    for overrides in ex.EXPERIMENT.ablations.values():
        dataclasses.replace(ex.FULL, **overrides)  # every ablation names real config fields
