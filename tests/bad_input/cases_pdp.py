"""Bad input for PDP's public entry points and for the GMP baseline it is compared with (collected by
tests/test_bad_input.py)."""

from types import SimpleNamespace

import torch

from priorkit.baselines.gmp import GMP, one_shot_magnitude
from priorkit.models import MLP
from priorkit.sparsity.pdp import PDP, PDPMask, pdp_hard_mask, pdp_soft_mask, pdp_threshold


def _w(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _nan(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[3] = value
    return t


def _pdp_nan_weights():
    model = MLP(4, (8,), 3)
    hook = PDP(model, 0.5, warmup_epochs=0)
    hook.on_fit_start(None)
    with torch.no_grad():
        model.head.parametrizations.weight.original.fill_(float("nan"))
    hook.on_epoch_start(SimpleNamespace(epoch=0, num_epochs=2))


def _gmp_nan_weights():
    model = MLP(4, (8,), 3)
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    hook = GMP(model, 0.5, start_epoch=0, end_epoch=2)
    hook.on_fit_start(None)
    hook.on_epoch_start(SimpleNamespace(epoch=0))


CASES = [
    ("pdp_threshold_r", lambda: pdp_threshold(_w(8, 4), 1.0), r"r must be in \[0, 1\)"),
    ("pdp_threshold_nan", lambda: pdp_threshold(_nan(_w(8, 4)), 0.5), r"w holds"),
    ("pdp_threshold_dtype", lambda: pdp_threshold(torch.ones(8, 4, dtype=torch.long), 0.5), r"w must be a floating"),
    ("pdp_threshold_empty", lambda: pdp_threshold(torch.zeros(0, 4), 0.5), r"w must hold at least 2"),
    ("pdp_threshold_type", lambda: pdp_threshold([[1.0, 2.0]], 0.5), r"w must be a torch.Tensor"),
    ("pdp_threshold_mode", lambda: pdp_threshold(_w(8, 4), 0.5, mode="block"), r"mode must be one of"),
    ("pdp_threshold_nm_shape", lambda: pdp_threshold(_w(8), 0.5, mode="nm"), r"w must have >= 2 dims"),
    ("pdp_threshold_nm_divisible", lambda: pdp_threshold(_w(4, 6), 0.5, mode="nm", n=1, m=4), r"divisible by M"),
    ("pdp_soft_mask_tau", lambda: pdp_soft_mask(_w(8, 4), 0.5, tau=0.0), r"tau must be in"),
    ("pdp_soft_mask_inf", lambda: pdp_soft_mask(_nan(_w(8, 4), float("inf")), 0.5), r"w holds"),
    ("pdp_soft_mask_tau_mode", lambda: pdp_soft_mask(_w(8, 4), 0.5, tau_mode="scaled"), r"tau_mode must be one of"),
    ("pdp_soft_mask_r", lambda: pdp_soft_mask(_w(8, 4), -0.1), r"r must be in \[0, 1\)"),
    ("pdp_hard_mask_nan", lambda: pdp_hard_mask(_nan(_w(8, 4)), 0.5), r"w holds"),
    ("pdp_hard_mask_r", lambda: pdp_hard_mask(_w(8, 4), 1.5), r"r must be in"),
    ("pdp_hard_mask_channel_shape", lambda: pdp_hard_mask(_w(8), 0.5, mode="channel"), r"w must have >= 2 dims"),
    ("pdpmask_tau", lambda: PDPMask(0.0, tau=-1.0), r"tau must be in"),
    ("pdpmask_r", lambda: PDPMask(1.0), r"r must be in \[0, 1\)"),
    ("pdpmask_nm", lambda: PDPMask(0.0, mode="nm", n=4, m=4), r"N:M needs 0 < N < M"),
    ("pdp_model", lambda: PDP("model", 0.5), r"model must be a torch.nn.Module"),
    ("pdp_sparsity", lambda: PDP(MLP(4, (4,), 2), 1.0), r"sparsity must be in \[0, 1\)"),
    ("pdp_eps", lambda: PDP(MLP(4, (4,), 2), 0.5, eps=0.0), r"eps must be in"),
    ("pdp_warmup", lambda: PDP(MLP(4, (4,), 2), 0.5, warmup_epochs=-1), r"warmup_epochs must be an integer >= 0"),
    ("pdp_hard_epochs", lambda: PDP(MLP(4, (4,), 2), 0.5, hard_finetune_epochs=1.5), r"hard_finetune_epochs must be"),
    ("pdp_mode", lambda: PDP(MLP(4, (4,), 2), 0.5, mode="block"), r"mode must be one of"),
    ("pdp_nm", lambda: PDP(MLP(4, (4,), 2), 0.5, mode="nm", n=0, m=4), r"n must be an integer >= 1"),
    ("pdp_no_layers", lambda: PDP(MLP(4, (4,), 2), 0.5, include=lambda n, m: False), r"no prunable layers"),
    ("pdp_nan_weights", _pdp_nan_weights, r"weight of layer 'head'"),
    ("gmp_sparsity", lambda: GMP(MLP(4, (4,), 2), 1.0, start_epoch=0, end_epoch=2), r"sparsity must be in"),
    ("gmp_epochs", lambda: GMP(MLP(4, (4,), 2), 0.5, start_epoch=2, end_epoch=2), r"end_epoch must be > start_epoch"),
    ("gmp_start_type", lambda: GMP(MLP(4, (4,), 2), 0.5, start_epoch=0.5, end_epoch=2), r"start_epoch must be an"),
    ("gmp_scope", lambda: GMP(MLP(4, (4,), 2), 0.5, start_epoch=0, end_epoch=2, scope="row"), r"scope must be one"),
    ("gmp_model", lambda: GMP(None, 0.5, start_epoch=0, end_epoch=2), r"model must be a torch.nn.Module"),
    ("gmp_nan_weights", _gmp_nan_weights, r"weight of layer 'head'"),
    ("one_shot_sparsity", lambda: one_shot_magnitude(MLP(4, (4,), 2), 1.0), r"sparsity must be in"),
    ("one_shot_scope", lambda: one_shot_magnitude(MLP(4, (4,), 2), 0.5, scope="all"), r"scope must be one of"),
    ("one_shot_model", lambda: one_shot_magnitude([1, 2], 0.5), r"model must be a torch.nn.Module"),
]
