"""Offline datasets, real image sets (Fashion-MNIST, MNIST-5k), the user's own arrays, and split builders (label
noise, OOD, GCD, MIL bags, few-shot episodes, class-incremental sessions, webly and zero-shot); every item is
``(x, y, index)``."""

from priorkit.data.datasets import (
    DATASETS,
    REAL_DATASETS,
    IndexedTensorDataset,
    Splits,
    gaussian_mixture,
    load_dataset,
    load_digits,
    load_mnist1d,
    split_arrays,
)
from priorkit.data.episodes import EpisodeSampler, iter_episodes, load_fewshot, make_fewshot
from priorkit.data.gcd import gcd_split
from priorkit.data.incremental import load_incremental, make_incremental
from priorkit.data.mil import make_bags, mil_split
from priorkit.data.noise import asymmetric_noise, pair_mapping, symmetric_noise
from priorkit.data.ood import ood_split
from priorkit.data.real import (
    FASHION_MNIST_CLASSES,
    fetch_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist,
    load_mnist,
    load_real,
    read_idx,
    write_idx,
)
from priorkit.data.user import from_arrays, image_folder
from priorkit.data.webly import make_webly
from priorkit.data.zeroshot import make_zeroshot

__all__ = [
    "EpisodeSampler",
    "gcd_split",
    "iter_episodes",
    "load_fewshot",
    "load_incremental",
    "make_bags",
    "make_fewshot",
    "make_incremental",
    "make_webly",
    "make_zeroshot",
    "mil_split",
    "ood_split",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "REAL_DATASETS",
    "fetch_fashion_mnist",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "load_mnist",
    "load_real",
    "read_idx",
    "write_idx",
    "IndexedTensorDataset",
    "Splits",
    "asymmetric_noise",
    "from_arrays",
    "gaussian_mixture",
    "image_folder",
    "load_dataset",
    "load_digits",
    "load_mnist1d",
    "pair_mapping",
    "split_arrays",
    "symmetric_noise",
]
