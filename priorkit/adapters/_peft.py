"""How priorkit's adapters become PEFT tuner types (the one place priorkit touches PEFT internals).

PEFT's ``register_peft_method(name=..., config_cls=..., model_cls=...)`` is the library's own way to add a tuner,
but in the pinned version (``peft==0.21.2``) it accepts only names already in the ``PeftType`` enum, which an
outside library cannot edit. :func:`register_tuner` adds the member to the enum (the only internal touched), then
calls ``register_peft_method`` unchanged, so ``get_peft_model(model, SoraConfig(...))``, ``save_pretrained``,
``PeftModel.from_pretrained`` and ``merge_and_unload`` dispatch to priorkit's classes like any built-in tuner.
A priorkit tuner subclasses PEFT's LoRA classes (config, model, layer) and keeps LoRA's ``lora_`` prefix, so
PEFT's LoRA code paths (state-dict filtering, merging, adapter names) apply to it unchanged.

The registration runs when :mod:`priorkit.adapters` is imported; ``import priorkit`` arranges for that to happen
as soon as ``peft`` itself is imported (:func:`priorkit._register_adapters_with_peft`), so a saved priorkit adapter
loads with plain ``peft.PeftModel.from_pretrained`` in a process that has imported priorkit.
"""

from __future__ import annotations

from typing import Any

from priorkit.core.errors import PriorkitError

PINNED_PEFT = "0.21"


def _check_version() -> None:
    import peft

    if not str(peft.__version__).startswith(PINNED_PEFT):
        raise PriorkitError(
            f"priorkit's adapters are built and tested on peft {PINNED_PEFT}.x (the tuner-registration internals "
            f"they rely on are experimental in PEFT), found peft {peft.__version__}; install "
            f"`pip install 'priorkit[adapters]'` (peft=={PINNED_PEFT}.2)"
        )


def peft_type(name: str) -> Any:
    """The ``PeftType`` member called ``name`` (upper case), added to the enum when PEFT does not have it."""
    from peft.utils.peft_types import PeftType

    key = name.upper()
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_, member._value_ = key, key
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    type.__setattr__(PeftType, key, member)
    return member


def register_tuner(name: str, config_cls: type, model_cls: type, prefix: str = "lora_") -> Any:
    """Register ``config_cls``/``model_cls`` as PEFT tuner type ``name`` (idempotent); returns the ``PeftType``.

    ``name`` is lower case (``"sora"``); the config's ``peft_type`` must be set to the returned member in its
    ``__post_init__``. ``prefix`` is the parameter-name prefix of the tuner's tensors (LoRA's, for LoRA subclasses).
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    _check_version()
    if not name.islower() or not name.isidentifier():
        raise PriorkitError(f"tuner name must be a lower-case identifier, got {name!r}")
    member = peft_type(name)
    known = PEFT_TYPE_TO_CONFIG_MAPPING.get(member), PEFT_TYPE_TO_TUNER_MAPPING.get(member)
    if known == (config_cls, model_cls):
        return member
    if known != (None, None):
        raise PriorkitError(
            f"PEFT tuner type {member.value!r} is already registered to {known[0].__name__}/{known[1].__name__}"
        )
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
    return member


__all__ = ["PINNED_PEFT", "peft_type", "register_tuner"]
