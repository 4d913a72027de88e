"""The zoo's files on disk: where they live, content hashes that name them, and atomic writes.

Layout under the cache root (:func:`priorkit.data.datasets.cache_dir`: ``$PRIORKIT_CACHE``, else
``$XDG_CACHE_HOME/priorkit``, else ``~/.cache/priorkit``): pretrained weights in ``zoo/<name>-<config hash>.pt``
and cached features in ``features/<name>-<key>.pt``. Every file is written to a temporary name in the same
folder and renamed into place, so a reader never sees half a file and two processes building the same entry
both end with a whole one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import cache_dir as default_cache_dir

__all__ = [
    "atomic_save",
    "cache_root",
    "config_hash",
    "features_dir",
    "state_dict_hash",
    "update_with_tensor",
    "zoo_dir",
]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else priorkit's cache folder."""
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def zoo_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "zoo"


def features_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "features"


def config_hash(config: Any) -> str:
    """12 hex digits of SHA-256 over a frozen config dataclass (its class name and every field, as JSON)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise PriorkitError(f"config must be a dataclass instance, got {type(config).__name__}")
    payload = {"type": type(config).__name__, **dataclasses.asdict(config)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def update_with_tensor(h: Any, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes (CPU, contiguous) into the hash object ``h``."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(np.ascontiguousarray(t.reshape(-1).view(torch.uint8).numpy()))


def state_dict_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every entry's name, dtype, shape and bytes, in sorted key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + b"\0")
        update_with_tensor(h, state[k])
    return h.hexdigest()


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
