"""Offline datasets and split builders; every item is ``(x, y, index)``."""

from priorkit.data.datasets import (
    DATASETS,
    IndexedTensorDataset,
    Splits,
    gaussian_mixture,
    load_dataset,
    load_digits,
    load_mnist1d,
    split_arrays,
)
from priorkit.data.noise import asymmetric_noise, pair_mapping, symmetric_noise
from priorkit.data.user import from_arrays, image_folder

__all__ = [
    "DATASETS",
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
