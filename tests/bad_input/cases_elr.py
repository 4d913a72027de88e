"""Bad input for ELR's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.regularizers.elr import ELR, clamped_softmax, elr_regularizer, elr_update
from priorkit.train import Batch


def _p(n=4, c=3):
    return torch.rand(n, c, generator=torch.Generator().manual_seed(0)).softmax(1)


def _nan(t, value=float("nan")):
    t = t.clone()
    t[1, 1] = value
    return t


def _step(logits, index=None, n=8, c=3):
    index = torch.arange(len(logits)) if index is None else index
    batch = Batch(x=logits, y=torch.zeros(len(index), dtype=torch.long), index=index, output=logits)
    return ELR(n, c).extra_loss(None, batch)


CASES = [
    ("elr_hook_logits_shape", lambda: _step(torch.randn(4, 5)), r"logits .*must have shape \[batch, 3\]"),
    ("elr_hook_logits_nan", lambda: _step(_nan(torch.randn(4, 3))), r"logits"),
    ("elr_hook_logits_inf", lambda: _step(_nan(torch.randn(4, 3), float("inf"))), r"logits"),
    ("elr_hook_empty", lambda: _step(torch.zeros(0, 3)), r"index must be a non-empty batch"),
    ("elr_hook_index_range", lambda: _step(torch.randn(2, 3), torch.tensor([0, 8])), r"index must lie in \[0, 7\]"),
    ("elr_hook_index_negative", lambda: _step(torch.randn(2, 3), torch.tensor([-1, 0])), r"index must lie in"),
    ("elr_hook_index_dtype", lambda: _step(torch.randn(2, 3), torch.tensor([0.0, 1.0])), r"index must be a 1-D int"),
    ("elr_hook_index_length", lambda: _step(torch.randn(3, 3), torch.tensor([0, 1])), r"index must be .*one entry"),
    ("elr_beta", lambda: ELR(8, 3, beta=1.5), r"beta must be in \[0, 1\]"),
    ("elr_lam", lambda: ELR(8, 3, lam=-1.0), r"lam must be in"),
    ("elr_clamp", lambda: ELR(8, 3, clamp=(0.0, 1.0)), r"clamp must satisfy"),
    ("elr_clamp_type", lambda: ELR(8, 3, clamp=0.1), r"clamp must be a pair"),
    ("elr_num_samples", lambda: ELR(0, 3), r"num_samples must be an integer >= 1"),
    ("elr_num_classes", lambda: ELR(8, 2.5), r"num_classes must be an integer"),
    ("elr_memory_dtype", lambda: ELR(8, 3, memory_dtype="int8"), r"memory dtype must be one of"),
    ("clamped_softmax_shape", lambda: clamped_softmax(torch.randn(4)), r"logits must have shape"),
    ("clamped_softmax_nan", lambda: clamped_softmax(_nan(torch.randn(4, 3))), r"logits"),
    ("elr_update_shape", lambda: elr_update(_p(), _p(4, 4), 0.7), r"probs must have shape \[4, 3\]"),
    ("elr_update_beta", lambda: elr_update(_p(), _p(), 2.0), r"beta must be in"),
    ("elr_update_nan", lambda: elr_update(_p(), _nan(_p()), 0.7), r"probs"),
    ("elr_update_targets_inf", lambda: elr_update(_nan(_p(), float("inf")), _p(), 0.7), r"targets"),
    ("elr_regularizer_shape", lambda: elr_regularizer(_p(), _p(4, 4)), r"targets must have shape \[4, 3\]"),
    ("elr_regularizer_probs_dim", lambda: elr_regularizer(torch.rand(4), torch.rand(4)), r"probs must have shape"),
    ("elr_regularizer_empty", lambda: elr_regularizer(torch.zeros(0, 3), torch.zeros(0, 3)), r"probs must be a non"),
    ("elr_regularizer_nan", lambda: elr_regularizer(_nan(_p()), _p()), r"probs"),
    ("elr_regularizer_unclamped", lambda: elr_regularizer(torch.eye(3), torch.eye(3)), r"1 - <t, p> > 0"),
]
