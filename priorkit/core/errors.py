"""Errors and argument checks shared by every priorkit module.

Every check raises with a message that names the argument and the values it may take (DESIGN principle 6):
never a silent clamp.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch


class PriorkitError(ValueError):
    """Base class: bad input to a priorkit function, named with what is allowed."""


class UnknownIdError(PriorkitError, KeyError):
    """A method id (or other name) that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0] if self.args else ""


class ConfigKeyError(PriorkitError):
    """A configuration key that the method does not define."""


class NonFiniteError(PriorkitError, FloatingPointError):
    """An input, a loss term or a state update holds NaN or infinite values."""


class NonFiniteLossError(NonFiniteError):
    """A loss term became NaN or infinite during training."""


class HookConflictError(PriorkitError):
    """Two parts of one run would silently fight (the same resource claimed twice, the same loss name)."""


class CheckpointMismatchError(PriorkitError):
    """A checkpoint that does not belong to this run (other config, hooks, shapes or recipe)."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The up-to-``n`` closest names to ``name`` among ``choices`` (for 'did you mean')."""
    choices = list(choices)
    hits = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not hits:
        hits = [c for c in choices if name.lower() in c.lower() or c.lower() in name.lower()][:n]
    return hits


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownIdError:
    """Build the error for an unknown ``kind`` called ``name``, suggesting the closest ``choices``."""
    choices = sorted(choices)
    near = closest(name, choices)
    hint = f"; closest: {', '.join(near)}" if near else ""
    known = f". Known: {', '.join(choices)}" if len(choices) <= 12 else f" ({len(choices)} known)"
    return UnknownIdError(f"unknown {kind} {name!r}{hint}{known}")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise naming ``name`` and the allowed values."""
    if value not in allowed:
        raise PriorkitError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` if it lies in the interval, else raise with the interval written out."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PriorkitError(f"{name} must be a number, got {value!r}") from None
    ok = not math.isnan(v)
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise PriorkitError(f"{name} must be in {lo}, {hi}, got {value!r}")
    return value


def check_sparsity(name: str, value: float) -> float:
    """Sparsity is a fraction of weights removed: it must lie in [0, 1)."""
    return check_range(name, value, 0.0, 1.0, high_inclusive=False)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PriorkitError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_shape(name: str, tensor: torch.Tensor, shape: Sequence[int | None]) -> torch.Tensor:
    """Check ``tensor`` against ``shape``, where ``None`` matches any size along that axis."""
    if not isinstance(tensor, torch.Tensor):
        raise PriorkitError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    if tensor.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
        raise PriorkitError(f"{name} must have shape {want}, got {list(tensor.shape)}")
    return tensor


def check_config_keys(owner: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse configuration keys that ``owner`` does not define, suggesting the closest valid keys."""
    allowed = sorted(allowed)
    for key in given:
        if key not in allowed:
            near = closest(key, allowed)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ConfigKeyError(f"{owner} has no config key {key!r}{hint}; valid keys: {', '.join(allowed)}")


def check_finite_losses(terms: Mapping[str, torch.Tensor], step: int | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming every loss term that is NaN or infinite."""
    bad = {k: float(v.detach()) for k, v in terms.items() if not torch.isfinite(v.detach()).all()}
    if bad:
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(
            f"non-finite loss{where}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + " (lower the learning rate, check the inputs for NaN, or check the method's clamps)"
        )


def as_tensor(name: str, value: Any, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Accept a tensor, a NumPy array or a nested list alike at a public boundary; anything else is refused."""
    if isinstance(value, torch.Tensor):
        return value if dtype is None else value.to(dtype)
    try:
        import numpy as np

        if isinstance(value, np.ndarray | list | tuple):
            return torch.as_tensor(np.asarray(value), dtype=dtype)
    except (TypeError, ValueError) as e:
        raise PriorkitError(f"{name} must be a tensor or an array of numbers: {e}") from None
    raise PriorkitError(f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}")


def check_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Refuse NaN or infinite entries in ``tensor`` (named in the error with their count)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NonFiniteError(f"{name} holds {bad} NaN or infinite value(s) of {tensor.numel()}; state unchanged")
    return tensor


def check_labels(name: str, labels: torch.Tensor, num_classes: int, *, length: int | None = None) -> torch.Tensor:
    """Integer class labels in ``[0, num_classes)``, optionally of a given length."""
    if not isinstance(labels, torch.Tensor):
        raise PriorkitError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise PriorkitError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or (length is not None and labels.shape[0] != length):
        want = f"[{length}]" if length is not None else "[batch]"
        raise PriorkitError(f"{name} must have shape {want}, got {list(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise PriorkitError(
            f"{name} must lie in [0, {num_classes - 1}] (num_classes={num_classes}), "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def check_batch(name: str, tensor: torch.Tensor, *, dim: int | None = None) -> torch.Tensor:
    """A non-empty, floating-point, finite batch (``dim`` axes when given)."""
    if not isinstance(tensor, torch.Tensor):
        raise PriorkitError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if dim is not None and tensor.dim() != dim:
        raise PriorkitError(f"{name} must have {dim} dimensions, got shape {list(tensor.shape)}")
    if tensor.dim() == 0 or tensor.shape[0] == 0:
        raise PriorkitError(f"{name} must be a non-empty batch, got shape {list(tensor.shape)}")
    if not tensor.is_floating_point():
        raise PriorkitError(f"{name} must be floating point, got dtype {tensor.dtype}")
    return check_finite(name, tensor)
