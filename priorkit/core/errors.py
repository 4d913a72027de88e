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


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training."""


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
