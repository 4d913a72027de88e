"""Registry, configuration, errors and seeding shared by all of priorkit."""

from priorkit.core.errors import (
    ConfigKeyError,
    NonFiniteLossError,
    PriorkitError,
    UnknownIdError,
)
from priorkit.core.registry import REGISTRY, MethodInfo, get, list_methods
from priorkit.core.seeding import seed_everything

__all__ = [
    "ConfigKeyError",
    "MethodInfo",
    "NonFiniteLossError",
    "PriorkitError",
    "REGISTRY",
    "UnknownIdError",
    "get",
    "list_methods",
    "seed_everything",
]
