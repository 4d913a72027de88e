"""Low-rank and sparse adapters (card adapters-lowrank.md); importing this package imports ``peft`` (extra
``adapters``).

- PEFT tuner types, registered on import so that ``get_peft_model``, ``save_pretrained``,
  ``PeftModel.from_pretrained`` and ``merge_and_unload`` know them: :mod:`~priorkit.adapters.sorsa`
  (``SorsaConfig``) and :mod:`~priorkit.adapters.sora` (``SoraConfig``).
- Stock PEFT LoRA plus priorkit engine pieces: :mod:`~priorkit.adapters.glad` (gradient regulariser),
  :mod:`~priorkit.adapters.gs_lora` (continual forgetting), :mod:`~priorkit.adapters.my3dgen` (personalised
  generator with the symmetry prior).
- Plain modules and hooks, no PEFT branch: :mod:`~priorkit.adapters.sara` (sparse re-training of the pretrained
  weights), :mod:`~priorkit.adapters.pela` (low-rank factorisation + distillation), :mod:`~priorkit.adapters.said`
  (intrinsic-dimension subspace training).

The other modules' names load on first use (they pull in the engine, which the registration does not need).
"""

import importlib
from typing import Any

from priorkit.adapters._peft import register_tuner
from priorkit.adapters.sora import SoraConfig, SoraHook, SoraModel, sora_recipe, sora_to_lora
from priorkit.adapters.sorsa import SorsaConfig, SorsaHook, SorsaLinear, SorsaModel

_LAZY = {
    "GLADRecipe": "glad",
    "glad_lora": "glad",
    "PELA": "pela",
    "pela_compress": "pela",
    "pela_decompress": "pela",
    "SaRA": "sara",
    "magnitude_ablation": "sara",
    "My3DGen": "my3dgen",
    "SubspaceModel": "said",
    "fit_subspace": "said",
    "search_d90": "said",
    "GSLoRA": "gs_lora",
    "GSLoRALoss": "gs_lora",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"priorkit.adapters.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'priorkit.adapters' has no attribute {name!r}")


__all__ = [
    "SoraConfig",
    "SoraHook",
    "SoraModel",
    "SorsaConfig",
    "SorsaHook",
    "SorsaLinear",
    "SorsaModel",
    "register_tuner",
    "sora_recipe",
    "sora_to_lora",
    *_LAZY,
]
