"""Backbones that priorkit pretrains itself, each with its own recipe, on the *base* classes of a dataset only.

Every entry is a frozen :class:`PretrainConfig` (data, architecture, optimisation, seed). Training goes through
the engine (:func:`priorkit.train.fit`, one cross-entropy phase, SGD with momentum and a cosine schedule) on
one CPU thread with the torch and BLAS pools pinned to 1 thread and Fabric pinned to one CPU process, so a build
gives the same bytes on every machine of one kind; the caller's thread count and RNG state are restored after.
The weights are cached as ``zoo/<name>-<config hash>.pt``: a changed config is a new file, never a stale one.

The classes a backbone was pretrained on are fixed (0-4 of its dataset), so any experiment that treats classes
5-9 as novel / OOD / new sees them for the first time; :func:`priorkit.zoo.check_disjoint` refuses an
experiment whose novel classes overlap them. Only the *training* split (for Fashion-MNIST: of the official
training images) of those classes is used, so no test image was ever seen.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range
from priorkit.core.seeding import rng_state, seed_everything, set_rng_state
from priorkit.data.datasets import IndexedTensorDataset, Splits, load_digits
from priorkit.models import MLP
from priorkit.zoo.base import FrozenBackbone

__all__ = ["CONFIGS", "ConvNet3", "PretrainConfig", "TrainedBackbone", "make_network", "pretrain_data", "train"]

PRETRAIN_DATASETS = ("fashion_mnist_image", "mnist_image", "digits")
ARCHS = ("conv3", "mlp")


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that decides a priorkit-pretrained backbone's weights (its hash names the cache file)."""

    dataset: str  # one of PRETRAIN_DATASETS
    arch: str  # "conv3" (three conv-BN-ReLU-maxpool blocks) or "mlp" (priorkit.models.MLP)
    widths: tuple[int, ...]  # conv channels per block, or MLP hidden widths
    grid: int = 2  # conv3 only: the frozen features are the last map average-pooled to grid x grid, flattened
    classes: tuple[int, ...] = (0, 1, 2, 3, 4)  # pretrain (base) classes; every other class stays novel
    val: float = 0.1  # held-out fraction of the training split (reported as the base validation accuracy)
    split_seed: int = 0  # the dataset's train/val(/test) split
    max_train: int = 0  # 0: every training image of ``classes``; else a seeded stratified subset of this size
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0  # initial weights and batch order
    version: int = 1  # bumped when the recipe's code changes meaning, so old cache files are not reused

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, PRETRAIN_DATASETS)
        check_choice("arch", self.arch, ARCHS)
        if not self.widths:
            raise PriorkitError("widths must hold at least one width")
        for w in self.widths:
            check_positive_int("widths entry", w)
        if self.arch == "conv3" and len(self.widths) != 3:
            raise PriorkitError(f"arch='conv3' needs 3 widths (one per block), got {self.widths}")
        if self.arch == "conv3" and self.grid not in (1, 2, 3):
            raise PriorkitError(f"grid must be 1, 2 or 3 (the last conv map is 3x3), got {self.grid!r}")
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise PriorkitError(f"classes must be at least 2 distinct labels, got {self.classes}")
        if any(not 0 <= c <= 9 for c in self.classes):
            raise PriorkitError(f"classes must be labels in [0, 9], got {self.classes}")
        check_range("val", self.val, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_positive_int("max_train", self.max_train, 0)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0.0, low_inclusive=False)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1] * self.grid**2 if self.arch == "conv3" else self.widths[-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (64,) if self.dataset == "digits" else (1, 28, 28)


#: The registered recipes. The Fashion-MNIST conv net sees a seeded stratified 10,000-image subset of the 27,000
#: base-class training images (the official training images of classes 0-4 less the 10% held out): a budget that
#: builds in a few minutes on one CPU thread. The MNIST-5k conv net sees all 1,750 of its base training images.
#: The MLP matches the per-seed backbone of the digits experiments (slk, teen, nb_vs_lr: 64 -> 128 -> 64).
CONFIGS: dict[str, PretrainConfig] = {
    "fmnist_conv_base5": PretrainConfig(
        dataset="fashion_mnist_image", arch="conv3", widths=(32, 64, 64), max_train=10000, epochs=4
    ),
    "mnist_conv_base5": PretrainConfig(dataset="mnist_image", arch="conv3", widths=(32, 64, 64), epochs=15),
    "digits_mlp_base5": PretrainConfig(
        dataset="digits", arch="mlp", widths=(128, 64), epochs=30, batch_size=64, lr=0.05
    ),
}


class ConvNet3(nn.Module):
    """Three 3x3 conv-BN-ReLU-maxpool(2) blocks on ``[N, 1, 28, 28]`` images (a ``[widths[-1], 3, 3]`` map).

    Trained with a linear head on the globally average-pooled map (``features``). The frozen extractor uses
    ``embedding``: the same map average-pooled to ``grid`` x ``grid`` and flattened. Under a nearest-centroid
    few-shot probe on the held-out Fashion-MNIST classes, the global average lost to raw pixels while the 2x2 grid
    beat them (the classes 5-9 differ from the base classes mostly in *where* the ink is); a wider last block
    or a trained linear embedding before the head transferred worse, and so did more base-class images (higher
    base accuracy, lower novel-class accuracy).
    """

    def __init__(
        self, widths: tuple[int, ...] = (32, 64, 64), num_classes: int = 5, in_channels: int = 1, grid: int = 2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
        self.grid = grid
        self.feature_dim = cin * grid * grid

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise PriorkitError(f"ConvNet3 expects [B, C, H, W] images, got shape {list(x.shape)}")
        return self.body(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the globally average-pooled last map."""
        return self.feature_map(x).mean(dim=(2, 3))

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen features: the last map average-pooled to ``grid`` x ``grid``, flattened."""
        return F.adaptive_avg_pool2d(self.feature_map(x), self.grid).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_network(cfg: PretrainConfig) -> nn.Module:
    """The architecture of ``cfg`` with a ``len(cfg.classes)``-way head (weights from the current torch RNG)."""
    if cfg.arch == "conv3":
        return ConvNet3(cfg.widths, len(cfg.classes), grid=cfg.grid)
    return MLP(64, cfg.widths, len(cfg.classes))


class TrainedBackbone(FrozenBackbone):
    """A frozen priorkit-pretrained network: ``forward(x)`` gives ``net.embedding(x)`` for the conv nets (see
    :class:`ConvNet3`) and ``net.features(x)`` (the last hidden layer) for the MLP; the classifier is unused.

    Inputs are the dataset's own: ``[N, 1, 28, 28]`` or flat ``[N, 784]`` images for the conv nets, ``[N, 64]``
    (or ``[N, 1, 8, 8]``) digits for the MLP; pixels in [0, 1] as priorkit's loaders give them.
    """

    def __init__(self, name: str, cfg: PretrainConfig, net: nn.Module, pretrained: bool) -> None:
        super().__init__(name, net, cfg.feature_dim, pretrained)
        self.config = cfg

    def preprocess_config(self) -> dict[str, Any]:
        return {"input_shape": list(self.config.input_shape)}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.config.input_shape
        if x.dim() < 2 or x[0].numel() != int(torch.Size(shape).numel()):
            raise PriorkitError(
                f"zoo model {self.name!r} takes inputs of shape [N, {', '.join(map(str, shape))}] (or flattened), "
                f"got {list(x.shape)}"
            )
        x = x.float().reshape(len(x), *shape)
        return self.net.embedding(x) if isinstance(self.net, ConvNet3) else self.net.features(x)


def _load_split(cfg: PretrainConfig) -> Splits:
    if cfg.dataset == "digits":
        return load_digits(val=cfg.val, seed=cfg.split_seed)
    from priorkit.data.real import load_real

    return load_real(cfg.dataset, val=cfg.val, seed=cfg.split_seed)


def pretrain_data(cfg: PretrainConfig) -> tuple[IndexedTensorDataset, IndexedTensorDataset]:
    """``(train, val)`` of the base classes of ``cfg`` with labels remapped to ``0..K-1`` (order of
    ``cfg.classes``); ``max_train`` keeps a stratified subset of the training images drawn from ``cfg.seed``."""
    sp = _load_split(cfg)
    lut = torch.full((sp.num_classes,), -1, dtype=torch.long)
    lut[torch.tensor(cfg.classes)] = torch.arange(len(cfg.classes))

    def base(d: IndexedTensorDataset, limit: int = 0) -> IndexedTensorDataset:
        keep = torch.nonzero(lut[d.y] >= 0).squeeze(1)
        if limit and limit < len(keep):
            g = torch.Generator().manual_seed(cfg.seed)
            per = [keep[lut[d.y[keep]] == k] for k in range(len(cfg.classes))]
            quota = [limit * len(p) // len(keep) for p in per]
            keep = torch.cat([p[torch.randperm(len(p), generator=g)[:q]] for p, q in zip(per, quota)]).sort().values
        return IndexedTensorDataset(d.x[keep], lut[d.y[keep]])

    return base(sp.train, cfg.max_train), base(sp.val)


@contextlib.contextmanager
def _pinned() -> Iterator[None]:
    """One CPU thread (torch, BLAS, OpenMP) and one Fabric process; the caller's threads and RNG restored."""
    from threadpoolctl import threadpool_limits

    from priorkit.train import launch_options

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise PriorkitError(
            "a zoo backbone cannot be built inside a multi-process launch (every rank would train its own share); "
            "build it first with `priorkit zoo build NAME`, then launch"
        )
    threads, rng = torch.get_num_threads(), rng_state()
    torch.set_num_threads(1)
    try:
        with (
            threadpool_limits(1),
            launch_options(accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision="32-true"),
        ):
            yield
    finally:
        torch.set_num_threads(threads)
        set_rng_state(rng)


def train(cfg: PretrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Pretrain the network of ``cfg`` through the engine; returns it (eval mode) and a summary
    (training-set size, base-class validation accuracy, final loss, seconds, torch version)."""
    from priorkit.metrics import accuracy
    from priorkit.train import TrainConfig, fit, predict

    train_set, val_set = pretrain_data(cfg)
    start = time.perf_counter()
    with _pinned(), torch.enable_grad():  # also when called under a caller's no_grad
        seed_everything(cfg.seed)
        net = make_network(cfg)
        tc = TrainConfig(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            scheduler="cosine",
            seed=cfg.seed,
            progress=False,
        )
        history = fit(net, train_set, config=tc)
        net.eval()
        val_acc = accuracy(predict(net, val_set), val_set.y) if len(val_set) else float("nan")
    summary = {
        "train_size": len(train_set),
        "val_size": len(val_set),
        "val_acc": float(val_acc),
        "final_loss": float(history[-1].get("loss", float("nan"))) if history else float("nan"),
        "seconds": time.perf_counter() - start,
        "torch": str(torch.__version__),
        "config": asdict(cfg),
    }
    return net, summary
