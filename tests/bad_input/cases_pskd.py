"""Bad input for PS-KD's public entry points (collected by tests/test_bad_input.py)."""

from types import SimpleNamespace

import torch

from priorkit.regularizers.pskd import PSKD, alpha_at, pskd_loss, pskd_targets
from priorkit.train import Batch


def _p(n=4, c=3):
    return torch.rand(n, c, generator=torch.Generator().manual_seed(0)).softmax(1)


def _nan(t, value=float("nan")):
    t = t.clone()
    t[1, 1] = value
    return t


def _y(*v):
    return torch.tensor(v, dtype=torch.long)


def _transform(y, index=None, epoch=1):
    hook = PSKD(8, 3)
    hook.on_epoch_start(SimpleNamespace(epoch=epoch, num_epochs=4))
    index = torch.arange(len(y)) if index is None else index
    return hook.transform_batch(None, Batch(x=torch.zeros(len(y), 2), y=y, index=index))


def _step_end(output, index=None):
    hook = PSKD(8, 3)
    index = torch.arange(len(output)) if index is None else index
    batch = Batch(x=torch.zeros(len(index), 2), y=torch.zeros(len(index), dtype=torch.long), index=index, output=output)
    hook.on_step_end(None, batch)


CASES = [
    ("pskd_labels_range", lambda: _transform(_y(0, 3)), r"labels \(batch.y\) must lie in \[0, 2\]"),
    ("pskd_labels_range_epoch0", lambda: _transform(_y(0, 5), epoch=0), r"labels \(batch.y\) must lie in"),
    ("pskd_labels_negative", lambda: _transform(_y(-1, 0)), r"labels \(batch.y\) must lie in"),
    ("pskd_labels_dtype", lambda: _transform(torch.tensor([0.0, 1.0])), r"labels \(batch.y\) must hold integer"),
    ("pskd_labels_shape", lambda: _transform(_y(0, 1), torch.tensor([0, 1, 2])), r"labels \(batch.y\) must have shape"),
    ("pskd_empty", lambda: _transform(_y()), r"batch is empty"),
    ("pskd_index_range", lambda: _transform(_y(0, 1), torch.tensor([0, 9])), r"index must lie in \[0, 7\]"),
    ("pskd_output_nan", lambda: _step_end(_nan(torch.randn(4, 3))), r"logits \(batch.output\)"),
    ("pskd_output_inf", lambda: _step_end(_nan(torch.randn(4, 3), float("inf"))), r"logits \(batch.output\)"),
    ("pskd_output_shape", lambda: _step_end(torch.randn(4, 5)), r"logits \(batch.output\) must have shape \[batch"),
    ("pskd_alpha_T", lambda: PSKD(8, 3, alpha_T=1.2), r"alpha_T must be in \[0, 1\]"),
    ("pskd_schedule", lambda: PSKD(8, 3, schedule="cosine"), r"schedule must be one of"),
    ("pskd_num_samples", lambda: PSKD(-1, 3), r"num_samples must be an integer"),
    ("alpha_at_epoch", lambda: alpha_at(5, 4), r"epoch must be an integer in \[0, 3\]"),
    ("alpha_at_total", lambda: alpha_at(0, 0), r"total_epochs must be an integer >= 1"),
    ("alpha_at_alpha_T", lambda: alpha_at(0, 4, alpha_T=-0.1), r"alpha_T must be in"),
    ("pskd_targets_labels_range", lambda: pskd_targets(_y(0, 1, 2, 3), _p(), 0.5), r"y must lie in \[0, 2\]"),
    ("pskd_targets_labels_dtype", lambda: pskd_targets(torch.zeros(4), _p(), 0.5), r"y must hold integer"),
    ("pskd_targets_shape", lambda: pskd_targets(_y(0, 1), _p(), 0.5), r"y must have shape \[4\]"),
    ("pskd_targets_past_nan", lambda: pskd_targets(_y(0, 1, 2, 0), _nan(_p()), 0.5), r"past"),
    (
        "pskd_targets_past_dtype",
        lambda: pskd_targets(_y(0, 1, 2, 0), torch.ones(4, 3, dtype=torch.long), 0.5),
        r"past must be floating point",
    ),
    ("pskd_targets_alpha", lambda: pskd_targets(_y(0, 1, 2, 0), _p(), 1.5), r"alpha must be in"),
    ("pskd_loss_shape", lambda: pskd_loss(torch.randn(4, 3), _p(4, 4)), r"targets must have shape \[4, 3\]"),
    ("pskd_loss_empty", lambda: pskd_loss(torch.zeros(0, 3), torch.zeros(0, 3)), r"logits must be a non-empty"),
    ("pskd_loss_nan", lambda: pskd_loss(_nan(torch.randn(4, 3)), _p()), r"logits"),
    ("pskd_loss_targets_inf", lambda: pskd_loss(torch.randn(4, 3), _nan(_p(), float("inf"))), r"targets"),
]
