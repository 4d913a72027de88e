"""Method configurations: dataclasses built from dicts that refuse unknown keys."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from priorkit.core.errors import check_config_keys

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any] | None = None, **overrides: Any) -> T:
    """Build the dataclass ``cls`` from ``values`` and ``overrides``; an unknown key is a ConfigKeyError."""
    merged = {**(values or {}), **overrides}
    check_config_keys(cls.__name__, merged, [f.name for f in dataclasses.fields(cls)])  # type: ignore[arg-type]
    return cls(**merged)
