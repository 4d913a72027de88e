"""Low-rank and sparse adapters. SoRA and SORSA are PEFT tuner types (registered on import); the others are
PEFT LoRA plus priorkit hooks, or plain modules. Importing this package imports ``peft`` (extra ``adapters``)."""

from priorkit.adapters._peft import register_tuner

__all__ = ["register_tuner"]
