"""The frozen feature extractor that :func:`priorkit.zoo.create_model` returns.

A zoo backbone is used as a fixed embedding (few-shot, OOD, GCD and incremental experiments fit only heads on
top of it), so the wrapper keeps it frozen: every parameter has ``requires_grad=False`` and the module stays in
eval mode even when a surrounding model calls ``.train()`` (BatchNorm statistics never move). To fine-tune,
take ``.net`` (the plain network) instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from priorkit.zoo.cache import state_dict_hash

__all__ = ["FrozenBackbone"]


class FrozenBackbone(nn.Module):
    """``forward(x) -> [N, feature_dim]`` features of a frozen ``net``; subclasses define :meth:`embed`."""

    def __init__(self, name: str, net: nn.Module, feature_dim: int, pretrained: bool) -> None:
        super().__init__()
        self.name, self.net, self.feature_dim, self.pretrained = name, net, feature_dim, pretrained
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)
        self._weights_hash: str | None = None

    def train(self, mode: bool = True) -> FrozenBackbone:  # noqa: ARG002 - frozen: always eval
        """Stays in eval mode whatever ``mode`` is (a frozen extractor's BatchNorm statistics never move)."""
        return super().train(False)

    def preprocess_config(self) -> dict[str, Any]:
        """What the input goes through before the network (part of the feature-cache key)."""
        return {}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    @property
    def weights_hash(self) -> str:
        """SHA-256 of the network's state dict (computed once; the weights are frozen)."""
        if self._weights_hash is None:
            self._weights_hash = state_dict_hash(self.net.state_dict())
        return self._weights_hash

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, pretrained={self.pretrained}"
