import numpy as np
import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data import (
    asymmetric_noise,
    from_arrays,
    gaussian_mixture,
    image_folder,
    load_digits,
    load_mnist1d,
    pair_mapping,
    symmetric_noise,
)


def test_items_carry_their_index():
    d = load_digits()
    x, y, i = d.train[5]
    assert i == 5 and torch.equal(x, d.train.x[5]) and int(y) == int(d.train.y[5])


def test_splits_are_disjoint_and_deterministic():
    a, b = gaussian_mixture(seed=3), gaussian_mixture(seed=3)
    assert torch.equal(a.train.x, b.train.x)
    rows = {tuple(r.tolist()) for r in a.train.x} & {tuple(r.tolist()) for r in a.test.x}
    assert not rows


def test_mnist1d_shapes():
    d = load_mnist1d()
    assert d.train.x.shape[1:] == (40,) and len(d.train) + len(d.val) == 4000 and len(d.test) == 1000


def test_symmetric_noise_flips_exact_fraction_to_other_classes():
    y = torch.arange(1000) % 10
    z = symmetric_noise(y, 0.4, 10, seed=0)
    assert int((z != y).sum()) == 400
    assert torch.equal(z, symmetric_noise(y, 0.4, 10, seed=0))


def test_asymmetric_noise_follows_mapping():
    y = torch.arange(1000) % 4
    z = asymmetric_noise(y, 0.3, pair_mapping(4), seed=0)
    changed = z != y
    assert torch.equal(z[changed], (y[changed] + 1) % 4)
    assert 0.2 < changed.float().mean() < 0.4


def test_noise_bad_input():
    with pytest.raises(PriorkitError, match="rate must be in"):
        symmetric_noise(torch.zeros(3, dtype=torch.long), 1.2, 10)
    with pytest.raises(PriorkitError, match="labels must lie in"):
        symmetric_noise(torch.tensor([0, 12]), 0.2, 10)


def test_from_arrays_and_errors():
    ds = from_arrays(np.zeros((3, 2)), np.array([0, 1, 1]))
    assert ds.num_classes == 2 and ds[2][2] == 2
    with pytest.raises(PriorkitError, match="integer class labels"):
        from_arrays(np.zeros((2, 2)), np.array([0.5, 1.0]))
    with pytest.raises(PriorkitError, match="same length"):
        from_arrays(np.zeros((3, 2)), np.array([0, 1]))


def test_image_folder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for k in range(2):
            Image.fromarray(np.full((6, 6, 3), 40 * k, dtype=np.uint8)).save(tmp_path / c / f"{k}.png")
    ds, classes = image_folder(tmp_path)
    assert classes == ["cat", "dog"] and ds.x.shape == (4, 3, 6, 6) and ds.y.tolist() == [0, 0, 1, 1]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        image_folder(tmp_path / "missing")
