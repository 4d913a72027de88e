"""The method registry: one entry per card id (69 in all), with its status, entry point and presets.

The static facts (title, year, family, kind, card, official code) live in ``_catalog.py``. What priorkit has
built for an id lives beside its code: the module ``priorkit/<family>/<id>.py`` defines
``SPEC = MethodSpec(status, entry, missing, presets)`` (:mod:`priorkit.core.spec`). An id without a module is
``planned``. The registry is built on first use (method modules import ``priorkit.core``, so it cannot be
built while ``priorkit.core`` itself is being imported).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from priorkit.core._catalog import CATALOG
from priorkit.core.errors import PriorkitError, check_choice, unknown_name
from priorkit.core.spec import STATUSES, MethodSpec

FAMILIES = ("prototypes", "regularizers", "sparsity", "adapters", "priors", "theory")
KINDS = ("head", "loss", "hook", "mask", "transform", "adapter", "system", "estimator")

@dataclass(frozen=True)
class MethodInfo:
    id: str
    title: str
    year: int
    family: str
    kind: str
    card: str
    official_code: str
    summary: str
    status: str
    module: str
    missing: str
    entry: str = ""
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["presets"] = {k: dict(v) for k, v in self.presets.items()}
        return out

    def load(self) -> Any:
        """Import the method's module (only for ``partial``/``implemented`` entries)."""
        if not self.module:
            raise NotImplementedError(f"method {self.id!r} is {self.status}: {self.missing}")
        return importlib.import_module(self.module)


def module_name(family: str, method_id: str) -> str:
    return f"priorkit.{family}.{method_id}"


def _spec_of(row: Mapping[str, Any]) -> tuple[str, MethodSpec | None]:
    name = module_name(row["family"], row["id"])
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        found = None
    if found is None:
        return "", None
    spec = getattr(importlib.import_module(name), "SPEC", None)
    if not isinstance(spec, MethodSpec):
        raise PriorkitError(f"{name} must define SPEC = MethodSpec(...) (the method contract, core/spec.py)")
    return name, spec


def _build() -> dict[str, MethodInfo]:
    out: dict[str, MethodInfo] = {}
    for row in CATALOG:
        check_choice(f"family of {row['id']}", row["family"], FAMILIES)
        check_choice(f"kind of {row['id']}", row["kind"], KINDS)
        module, spec = _spec_of(row)
        if spec is None:
            out[row["id"]] = MethodInfo(status="planned", module="", missing="not started", **row)
        else:
            out[row["id"]] = MethodInfo(
                status=spec.status, module=module, missing=spec.missing, entry=spec.entry, presets=spec.presets, **row
            )
    return out


class _Registry(Mapping[str, MethodInfo]):
    """The id -> :class:`MethodInfo` table, built on first access."""

    def __init__(self) -> None:
        self._table: dict[str, MethodInfo] | None = None

    def _get(self) -> dict[str, MethodInfo]:
        if self._table is None:
            self._table = _build()
        return self._table

    def __getitem__(self, key: str) -> MethodInfo:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


REGISTRY: Mapping[str, MethodInfo] = _Registry()


def get(method_id: str) -> MethodInfo:
    """The registry entry for ``method_id``; an unknown id raises naming the closest ids."""
    try:
        return REGISTRY[method_id]
    except KeyError:
        raise unknown_name("method id", method_id, REGISTRY) from None


def list_methods(family: str | None = None, status: str | None = None, kind: str | None = None) -> list[MethodInfo]:
    """Registry entries in catalog order, optionally filtered."""
    if family is not None:
        check_choice("family", family, FAMILIES)
    if status is not None:
        check_choice("status", status, STATUSES)
    if kind is not None:
        check_choice("kind", kind, KINDS)
    return [
        m
        for m in REGISTRY.values()
        if (family is None or m.family == family)
        and (status is None or m.status == status)
        and (kind is None or m.kind == kind)
    ]
