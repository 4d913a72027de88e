import numpy as np
import pytest
import torch

from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data import (
    IndexedTensorDataset,
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
    with pytest.raises(PriorkitError, match=r"labels \(y\) must lie in \[0, 9\]"):
        symmetric_noise(torch.tensor([0, 12]), 0.2, 10)
    with pytest.raises(PriorkitError, match=r"y must hold integer class labels"):
        symmetric_noise(np.array([0.5, 1.0]), 0.2, 10)
    with pytest.raises(PriorkitError, match=r"y must be a 1-D"):
        symmetric_noise(np.zeros((2, 2), dtype=np.int64), 0.2, 10)
    with pytest.raises(PriorkitError, match=r"num_classes must be an integer >= 2"):
        symmetric_noise(np.array([0, 1]), 0.2, 1)
    with pytest.raises(PriorkitError, match=r"mapping must map class indices"):
        asymmetric_noise(np.array([0, 1]), 0.2, {0: -1})
    with pytest.raises(PriorkitError, match=r"labels \(y\) must be >= 0"):
        asymmetric_noise(np.array([0, -1]), 0.2, {0: 1})


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


def test_noise_accepts_numpy_lists_and_any_integer_dtype_alike():
    y = np.arange(200) % 5
    want = symmetric_noise(torch.as_tensor(y), 0.3, 5, seed=1)
    for given in (y, y.astype(np.int32), y.tolist(), torch.as_tensor(y, dtype=torch.int32)):
        got = symmetric_noise(given, 0.3, 5, seed=1)
        assert got.dtype == torch.long and torch.equal(got, want)
    assert torch.equal(
        asymmetric_noise(y, 0.3, pair_mapping(5)), asymmetric_noise(torch.as_tensor(y), 0.3, pair_mapping(5))
    )


def test_indexed_dataset_takes_numpy_and_with_labels_takes_numpy():
    ds = IndexedTensorDataset(np.zeros((4, 2), dtype=np.float32), np.array([0, 1, 1, 0], dtype=np.int32))
    assert ds.y.dtype == torch.long and isinstance(ds.x, torch.Tensor)
    noisy = ds.with_labels(np.array([1, 1, 1, 0]))
    assert noisy.y.tolist() == [1, 1, 1, 0] and torch.equal(noisy.clean_y, ds.y)
    with pytest.raises(PriorkitError, match="y must hold integer class labels"):
        IndexedTensorDataset(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(PriorkitError, match="clean_y must have the same length"):
        IndexedTensorDataset(
            torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), clean_y=torch.zeros(3, dtype=torch.long)
        )


def test_from_arrays_bad_input_is_named():
    with pytest.raises(NonFiniteError, match="x holds 1 NaN"):
        from_arrays(np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]))
    with pytest.raises(PriorkitError, match="x must hold at least one sample"):
        from_arrays(np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
    with pytest.raises(PriorkitError, match="y must be a 1-D vector"):
        from_arrays(np.zeros((2, 2)), np.zeros((2, 1), dtype=np.int64))
    with pytest.raises(PriorkitError, match="y must hold labels >= 0"):
        from_arrays(np.zeros((2, 2)), np.array([0, -1]))
    with pytest.raises(PriorkitError, match="x must be a torch.Tensor or a numpy array"):
        from_arrays("pixels", np.array([0, 1]))
    assert from_arrays([[0.0, 1.0], [2.0, 3.0]], [1, 0]).y.tolist() == [1, 0]


def test_users_own_numpy_data_trains_with_a_method_through_public_names_only():
    from priorkit.models import MLP
    from priorkit.regularizers import ELR
    from priorkit.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = rng.normal(size=(60, 4)).astype(np.float32) + y[:, None]
    train = from_arrays(x, y)
    train = train.with_labels(symmetric_noise(train.y.numpy(), 0.2, 3, seed=0))
    hook = ELR(len(train), 3)
    history = Trainer(MLP(4, (8,), 3), train, hooks=[hook], config=TrainConfig(epochs=2, batch_size=16)).fit()
    assert {"ce", "elr"} <= set(history[-1]) and bool(hook.memory.table.sum(1).gt(0).all())
