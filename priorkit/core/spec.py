"""The method contract's ``SPEC``: what a method module says about itself, read by the registry.

Every ``priorkit/<family>/<id>.py`` ends its header with ``SPEC = MethodSpec(...)`` so the status text lives
beside the code it describes: ``priorkit list`` and ``priorkit show ID`` print it, and a registry test fails
when an ``implemented`` id lacks its test module or experiment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from priorkit.core.errors import check_choice

STATUSES = ("planned", "partial", "implemented")


@dataclass(frozen=True)
class MethodSpec:
    """``status``: planned / partial / implemented (DESIGN.md's "done"). ``entry``: the module's one public
    entry (``<Id>Hook``, an ``nn.Module`` or ``<Id>Recipe``). ``missing``: what is not built, the stand-ins
    used and where the claim does not reproduce. ``presets``: named settings of the entry (at least
    ``paper``, the paper's defaults, and ``small``, what works at CPU scale), printed by ``priorkit show``."""

    status: str
    entry: str
    missing: str = ""
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("MethodSpec.status", self.status, STATUSES)
