"""Backbones, created by name with :func:`create_model` (one registry, as in timm)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from priorkit.core.errors import unknown_name
from priorkit.models.small import CNN1D, MLP, Conv4, SmallResNet
from priorkit.models.vit import ViT as ViT

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "conv4": Conv4,
    "resnet_small": SmallResNet,
    "cnn1d": CNN1D,
}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``mlp``, ``conv4``, ``resnet_small``, ``cnn1d`` or ``minilm`` (extra ``text``)."""
    if name == "minilm":
        from priorkit.models.minilm import MiniLM

        return MiniLM(**kwargs)
    if name not in MODELS:
        raise unknown_name("model", name, [*MODELS, "minilm"])
    return MODELS[name](**kwargs)


__all__ = ["CNN1D", "MLP", "MODELS", "Conv4", "SmallResNet", "create_model"]
