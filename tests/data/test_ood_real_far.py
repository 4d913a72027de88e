"""Far-OOD sets of real gray images: natural-image crops (scikit-image's bundled photographs) and MNIST-5k digits."""

import numpy as np
import pytest
import torch

import priorkit.data.ood as ood_mod
from priorkit.core.errors import PriorkitError
from priorkit.data.ood import far_outliers, mnist_digits, natural_crops, ood_split


def test_natural_crops_are_deterministic_gray_images_of_the_asked_side():
    pytest.importorskip("skimage.data", reason="scikit-image (extra priorkit[data]) not installed")
    a, b = natural_crops(12, (28, 28), seed=3), natural_crops(12, (28, 28), seed=3)
    assert a.shape == (12, 28, 28) and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and float(a.std()) > 0.05
    assert not torch.equal(a, natural_crops(12, (28, 28), seed=4))
    assert len({r.numpy().tobytes() for r in a}) == 12  # distinct crops
    small = far_outliers(5, (64,), "natural", seed=1, value_range=(0.0, 16.0))  # flat 8x8 digits, their range
    assert small.shape == (5, 64) and float(small.max()) <= 16.0 and float(small.max()) > 1.0
    x = torch.rand(60, 1, 8, 8)
    d = ood_split((x, torch.arange(60) % 4), id_classes=(0, 1), far=("natural", "uniform"), n_far=7, seed=0)
    assert sorted(d.ood) == ["far_natural", "far_uniform", "near"] and d.ood["far_natural"].x.shape == (7, 1, 8, 8)
    assert torch.equal(d.ood["far_natural"].y, torch.full((7,), -1))


def test_mnist_digits_far_set(monkeypatch):
    rng = np.random.default_rng(0)
    fake = rng.integers(0, 256, (30, 784), dtype=np.uint8)
    monkeypatch.setattr(ood_mod, "_mnist5k", lambda: (fake, np.arange(30) % 10))
    m = mnist_digits(10, seed=0)
    assert m.shape == (10, 28, 28) and torch.equal(m, mnist_digits(10, seed=0))
    pool = {r.tobytes() for r in fake}
    picked = {r.mul(255).round().to(torch.uint8).flatten().numpy().tobytes() for r in m}
    assert len(picked) == 10 and picked <= pool  # distinct digits of the set, unchanged at 28 x 28
    f = far_outliers(4, (1, 8, 8), "mnist", seed=0)
    assert f.shape == (4, 1, 8, 8) and float(f.min()) >= 0.0 and float(f.max()) <= 1.0
    with pytest.raises(PriorkitError, match="must be <= 30"):
        mnist_digits(31)


def test_real_far_kinds_refuse_shapes_and_mnist_as_its_own_ood():
    with pytest.raises(PriorkitError, match="shape must be"):
        far_outliers(3, (40,), "natural")  # not a square image
    with pytest.raises(PriorkitError, match="shape must be"):
        far_outliers(3, (3, 8, 8), "mnist")  # not gray
    with pytest.raises(PriorkitError, match="ID dataset 'mnist_image' itself"):
        ood_split("mnist_image", far=("mnist",))
    with pytest.raises(PriorkitError, match="scale must be"):
        natural_crops(2, (8, 8), scale=(3.0, 1.0))
