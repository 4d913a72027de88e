"""Prototype layers, heads, losses and their training stages (ProtoPNet family), and prototype methods for
few-shot learning, OOD detection, category discovery, incremental learning, MIL and more.

Import methods from their modules, e.g. ``from priorkit.prototypes.protopnet import ProtoPNet``.
"""
