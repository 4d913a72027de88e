"""Frozen features of a zoo backbone, cached on disk so that an experiment pays for the forward pass once.

The cache key is a SHA-256 over the backbone's name, the hash of its weights, its preprocessing settings (e.g.
EfficientNet's resize side) and the input tensor's dtype, shape and bytes: any change to one of them is a new
entry, and the same inputs through the same weights are read back instead of recomputed. Feature files are a
pure speed cache: one that cannot be read (or has the wrong shape) is recomputed and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch

from priorkit.core.errors import PriorkitError, as_tensor, check_positive_int
from priorkit.zoo.base import FrozenBackbone
from priorkit.zoo.cache import atomic_save, cache_root, features_dir, update_with_tensor
from priorkit.zoo.registry import create_model

__all__ = ["extract_features", "features_key"]

_FORMAT = 1
_MODELS: dict[tuple[str, str, str, bool], FrozenBackbone] = {}  # loaded backbones, reused within a process


def features_key(model: FrozenBackbone, x: torch.Tensor) -> str:
    """24 hex digits naming the features of ``x`` under ``model`` (weights + preprocessing + input bytes)."""
    h = hashlib.sha256()
    meta = {"format": _FORMAT, "name": model.name, "weights": model.weights_hash, "pre": model.preprocess_config()}
    h.update(json.dumps(meta, sort_keys=True).encode())
    update_with_tensor(h, x)
    return h.hexdigest()[:24]


def _model(
    name: str, cache_dir: str | os.PathLike | None, options: dict[str, Any], pretrained: bool
) -> FrozenBackbone:
    key = (name, str(cache_root(cache_dir)), repr(sorted(options.items())), pretrained)
    if key not in _MODELS:
        _MODELS[key] = create_model(name, pretrained=pretrained, cache_dir=cache_dir, **options)
    return _MODELS[key]


def extract_features(
    name: str,
    x: Any,
    *,
    batch_size: int = 256,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    pretrained: bool = True,
    **options: Any,
) -> torch.Tensor:
    """``[N, feature_dim]`` float32 features of ``x`` (a tensor or numpy array of inputs the backbone takes)
    through the frozen backbone ``name``, in batches of ``batch_size``: pretrained, or with ``pretrained=False``
    the same architecture randomly initialised from its fixed seed (the "pretrained vs scratch" ablation).

    With ``cache`` the result is stored under ``<cache>/features/`` and later calls with the same weights,
    preprocessing and input bytes read it back. ``options`` go to :func:`priorkit.zoo.create_model`.
    """
    check_positive_int("batch_size", batch_size)
    x = as_tensor("x", x)
    if x.dim() < 2 or len(x) == 0:
        raise PriorkitError(f"x must be a non-empty batch of inputs [N, ...], got shape {list(x.shape)}")
    model = _model(name, cache_dir, options, pretrained)
    path = None
    if cache:
        path = features_dir(cache_dir) / f"{name}-{features_key(model, x)}.pt"
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                feats = blob["features"]
                if isinstance(feats, torch.Tensor) and tuple(feats.shape) == (len(x), model.feature_dim):
                    return feats
            except Exception:  # noqa: BLE001, S110 - a damaged speed-cache file is recomputed below
                pass
    device = next(model.parameters()).device
    with torch.no_grad():
        parts = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    feats = torch.cat(parts)
    if path is not None:
        atomic_save({"format": _FORMAT, "name": name, "features": feats}, path)
    return feats
