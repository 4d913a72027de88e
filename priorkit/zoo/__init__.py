"""Pretrained backbones by name, as timm's ``create_model(name, pretrained=True)``, and cached frozen features.

>>> from priorkit.zoo import list_models, model_info
>>> list_models()
['digits_mlp_base5', 'efficientnet_lite0', 'fmnist_conv_base5', 'mnist_conv_base5']
>>> model_info("fmnist_conv_base5").pretrain_classes, model_info("efficientnet_lite0").feature_dim
((0, 1, 2, 3, 4), 1280)

Typical use in an experiment (novel classes 5-9 of Fashion-MNIST on a backbone pretrained on classes 0-4)::

    from priorkit.data import load_fewshot
    from priorkit.zoo import check_disjoint, extract_features

    fs = load_fewshot("fashion_mnist_image", base_classes=5)
    check_disjoint("fmnist_conv_base5", fs.novel_classes, dataset="fashion_mnist")
    feats = extract_features("fmnist_conv_base5", fs.novel.x)   # built on first use, then cached on disk

Entries: ``efficientnet_lite0`` (ImageNet; weights from an installed package, extra ``priorkit[zoo]``) and
three backbones that priorkit pretrains with their own registered recipe on classes 0-4 of Fashion-MNIST,
MNIST-5k and scikit-learn digits (:mod:`priorkit.zoo.pretrained`). The command line: ``priorkit zoo list``,
``priorkit zoo build NAME``, ``priorkit zoo path NAME``.
"""

from priorkit.zoo.base import FrozenBackbone
from priorkit.zoo.cache import cache_root
from priorkit.zoo.features import extract_features, features_key
from priorkit.zoo.registry import (
    ZooEntry,
    build,
    build_summary,
    check_disjoint,
    create_model,
    list_models,
    model_info,
    replace_config,
    weights_path,
)


def __getattr__(name: str):  # noqa: ANN202 - PretrainConfig without importing the engine at package import
    if name in ("PretrainConfig", "CONFIGS"):
        from priorkit.zoo import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'priorkit.zoo' has no attribute {name!r}")


__all__ = [
    "CONFIGS",
    "FrozenBackbone",
    "PretrainConfig",
    "ZooEntry",
    "build",
    "build_summary",
    "cache_root",
    "check_disjoint",
    "create_model",
    "extract_features",
    "features_key",
    "list_models",
    "model_info",
    "replace_config",
    "weights_path",
]
