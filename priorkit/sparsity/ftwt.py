"""Fire Together Wire Together: A Dynamic Pruning Approach with Self-Supervised Mask Prediction, Elkerdawy et al.,
CVPR 2022.

Dynamic, per-sample channel pruning: every gated layer ``o = act(BN(conv(x)))`` gets a small gate (adaptive
average pool to ``d x d``, softmax over the pooled features, a linear map to ``C_out`` logits ``z``) whose binary
mask ``b = 1[sigmoid(z) > 0.5]`` multiplies the output, in training and evaluation alike. The gate learns from a
self-supervised target computed from the layer's own output, with no gradient: each filter's score is its
spatial max ``a_c = max |o[c]|``; in ``mass`` mode the strongest filters holding a fraction ``r`` of
``sum_c a_c`` are kept (the target is 0 once the cumulative share in descending order exceeds ``r + 1e-5``;
``r = 1`` drops only dead filters), in ``uniform`` mode the ``floor(p C)`` weakest are dropped. Loss
``CE + lambda_mask (1/L) sum_l sum_c mean_batch BCEWithLogits(z_lc, g_lc)`` with ``lambda_mask = 1`` before
``floor(cooldown E)`` epochs and 0 after. In the default ``decoupled`` mode the gate sees ``x.detach()`` and ``b`` is
built without gradient, so CE never trains the gates and the BCE never trains the backbone. Because ``r`` fixes the
kept mass, the pretrained model predicts each layer's ``k`` (and the FLOPs) before any training.

Code details kept (official selkerdawy/FTWT): the filter whose cumulative mass first crosses ``r`` is dropped (a
single filter above ``r`` zeroes the layer; ``keep_crossing=True`` keeps it, guaranteeing ``k >= 1``); BN statistics
include the pruned channels' outputs (the mask is after BN). Two optimizers in the code (backbone SGD lr 1e-2,
wd 5e-4 with its schedule; gates SGD lr 0.1, wd 0, constant) are :func:`ftwt_optimizer`'s two parameter groups
(identical per-parameter updates) with a per-group schedule.

Not built: MobileNet wiring, ``init_predictor_with_ones``, real sparse execution (the FLOPs are the code's analytic
dynamic count; per-sample channel gathering would be needed for a speed-up, so masked execution here saves nothing
in time). Library parts: none of torch.ao / Torch-Pruning has dynamic per-sample gates; written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range
from priorkit.core.spec import MethodSpec
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook

__all__ = [
    "FTWT",
    "FTWTGate",
    "dynamic_flops",
    "filter_scores",
    "ftwt_mask_loss",
    "ftwt_optimizer",
    "gate_conv_blocks",
    "mass_targets",
    "uniform_targets",
]

GT_TYPES = ("mass", "uniform")
MODES = ("decoupled", "joint")
DELTA = 1e-5

SPEC = MethodSpec(
    status="implemented",
    entry="FTWT",
    missing="MobileNet wiring, init_predictor_with_ones and real sparse execution not built (FLOPs are analytic; the "
    "masked forward saves no time); no CIFAR/ImageNet VGG/ResNet runs: the check is a 4-conv CNN on 8x8 digits",
    presets={
        # job_dynamic.sh: r (mthresh) is the knob; decoupled, softmax on, d = 1, cooldown 0.5, gate lr 0.1
        "paper": {
            "r": 0.9,
            "gt_type": "mass",
            "mode": "decoupled",
            "softmax": True,
            "pool": 1,
            "cooldown": 0.5,
            "backbone_lr": 1e-2,
            "gate_lr": 0.1,
            "weight_decay": 5e-4,
        },  # fmt: skip
        "small": {
            "r": 0.9,
            "gt_type": "mass",
            "mode": "decoupled",
            "softmax": True,
            "pool": 1,
            "cooldown": 0.5,
            "backbone_lr": 1e-2,
            "gate_lr": 0.1,
            "weight_decay": 5e-4,
        },  # fmt: skip
    },
)


# ------------------------------------------------------------------------------------------------ functional core
def filter_scores(o: torch.Tensor) -> torch.Tensor:
    """``a_c = max_{h,w} |o[c, h, w]|`` per sample: ``[B, C, H, W] -> [B, C]``."""
    if not isinstance(o, torch.Tensor) or o.dim() != 4:
        raise PriorkitError(f"o must be a feature map [B, C, H, W], got {getattr(o, 'shape', type(o).__name__)}")
    return o.detach().abs().amax(dim=(2, 3))


def mass_targets(scores: torch.Tensor, r: float, *, keep_crossing: bool = False) -> torch.Tensor:
    """Targets ``g`` in {0, 1} (``[B, C]``): the descending prefix of filters whose cumulative share of
    ``sum_c a_c`` stays ``<= r + 1e-5`` is kept; ``r = 1`` keeps every filter with share ``> 1e-5``."""
    check_range("r", r, 0.0, 1.0, low_inclusive=False)
    if scores.dim() != 2:
        raise PriorkitError(f"scores must be [B, C], got {list(scores.shape)}")
    share = scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-30)
    if r == 1.0:  # the code's special case: only dead filters are dropped
        return (share > DELTA).float()
    sorted_share, order = share.sort(dim=1, descending=True)
    cum = sorted_share.cumsum(dim=1)
    keep_sorted = cum <= r + DELTA
    if keep_crossing:  # also keep the filter whose cumulative share first crosses r (k >= 1)
        first_out = (~keep_sorted).float().argmax(dim=1)
        has_out = (~keep_sorted).any(dim=1)
        keep_sorted[has_out, first_out[has_out]] = True
    return torch.zeros_like(share).scatter(1, order, keep_sorted.float())


def uniform_targets(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Targets with the ``floor(p C)`` lowest-scoring filters (and every filter with score ``<= 1e-5``) at 0."""
    check_range("p", p, 0.0, 1.0, high_inclusive=False)
    if scores.dim() != 2:
        raise PriorkitError(f"scores must be [B, C], got {list(scores.shape)}")
    c = scores.shape[1]
    k = math.floor(p * c)
    g = (scores > DELTA).float()
    if k:
        low = scores.argsort(dim=1, stable=True)[:, :k]
        g.scatter_(1, low, 0.0)
    return g


def ftwt_mask_loss(logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(1/L) sum_l sum_c mean_batch BCEWithLogits(z_lc, g_lc)`` (summed over filters, averaged over layers)."""
    if len(logits) == 0 or len(logits) != len(targets):
        raise PriorkitError(f"need one target per gate logit tensor, got {len(logits)} logits, {len(targets)} targets")
    per_layer = [F.binary_cross_entropy_with_logits(z, g, reduction="none").mean(dim=0).sum()
                 for z, g in zip(logits, targets)]  # fmt: skip
    return torch.stack(per_layer).mean()


# ------------------------------------------------------------------------------------------------------ modules
class FTWTGate(nn.Module):
    """A gated layer: ``block`` (conv -> BN -> act, or any module ending in a conv-shaped output) and its mask
    predictor; forward returns ``block(x) * b`` with ``b`` the binary per-sample channel mask.

    After each forward the gate keeps (for the loss and the metrics) its logits ``z``, target ``g``, mask ``b``
    and the output's spatial size.
    """

    def __init__(
        self,
        block: nn.Module,
        in_channels: int,
        out_channels: int,
        *,
        conv: nn.Conv2d | None = None,
        r: float = 0.9,
        gt_type: str = "mass",
        mode: str = "decoupled",
        softmax: bool = True,
        pool: int = 1,
        keep_crossing: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_choice("gt_type", gt_type, GT_TYPES)
        check_choice("mode", mode, MODES)
        check_positive_int("pool", pool)
        if gt_type == "mass":
            check_range("r", r, 0.0, 1.0, low_inclusive=False)
        else:
            check_range("r", r, 0.0, 1.0, high_inclusive=False)  # the dropped fraction p in uniform mode
        self.block, self.r, self.gt_type, self.mode = block, float(r), gt_type, mode
        self.softmax, self.keep_crossing = bool(softmax), bool(keep_crossing)
        self.conv = conv
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.predictor = nn.Linear(in_channels * pool * pool, out_channels)
        self.last: dict[str, Any] = {}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(x.detach() if self.mode == "decoupled" else x).flatten(1)
        if self.softmax:
            h = torch.softmax(h, dim=1)
        return self.predictor(h)

    def targets(self, o: torch.Tensor) -> torch.Tensor:
        a = filter_scores(o)
        if self.gt_type == "mass":
            return mass_targets(a, self.r, keep_crossing=self.keep_crossing)
        return uniform_targets(a, self.r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.block(x)
        z = self.logits(x)
        if z.shape != o.shape[:2]:
            raise PriorkitError(f"gate logits {list(z.shape)} do not match the block's output channels "
                                f"{list(o.shape[:2])}")  # fmt: skip
        with torch.no_grad():
            b = (torch.sigmoid(z) > 0.5).to(o.dtype)
            g = self.targets(o)
        self.last = {"z": z, "g": g, "b": b, "hw": o.shape[-2] * o.shape[-1], "in_channels": x.shape[1]}
        return o * b[:, :, None, None]


def gate_conv_blocks(model: nn.Sequential, include: Callable[[int, nn.Conv2d], bool] | None = None,
                     **gate_kw: Any) -> list[FTWTGate]:  # fmt: skip
    """Wrap, in place, every ``Conv2d [-> BatchNorm2d] [-> ReLU]`` run of a ``nn.Sequential`` in an
    :class:`FTWTGate` (``include(index, conv)`` selects which); returns the gates in forward order."""
    if not isinstance(model, nn.Sequential):
        raise PriorkitError(f"gate_conv_blocks needs an nn.Sequential, got {type(model).__name__} (wrap your own "
                            "blocks in FTWTGate for other architectures)")  # fmt: skip
    mods, out, gates, i = list(model), [], [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d) and (include is None or include(i, m)):
            j = i + 1
            while j < len(mods) and isinstance(mods[j], nn.BatchNorm2d | nn.ReLU) and j - i <= 2:
                j += 1
            gate = FTWTGate(nn.Sequential(*mods[i:j]), m.in_channels, m.out_channels, conv=m, **gate_kw)
            out.append(gate)
            gates.append(gate)
            i = j
        else:
            out.append(m)
            i += 1
    if not gates:
        raise PriorkitError("gate_conv_blocks found no Conv2d to gate")
    for k in list(model._modules):
        del model._modules[k]
    for k, m in enumerate(out):
        model.add_module(str(k), m)
    return gates


def dynamic_flops(gates: Sequence[FTWTGate]) -> tuple[float, float]:
    """The code's analytic count over the last forward: per gated layer ``active_out x H W x (prev_active/groups
    x k^2)`` per sample (``prev_active``: the previous gate's active channels; the first gate's input channels),
    averaged over the batch; returns ``(mean dynamic MACs, dense MACs)``."""
    dyn, dense, prev = 0.0, 0.0, None
    for gate in gates:
        if not gate.last or gate.conv is None:
            raise PriorkitError("dynamic_flops needs gates with a conv that have run a forward")
        b, hw, cin = gate.last["b"], gate.last["hw"], gate.last["in_channels"]
        kh, kw = gate.conv.kernel_size
        groups = gate.conv.groups
        active = b.sum(dim=1)
        prev_active = torch.full_like(active, float(cin)) if prev is None else prev
        dyn += float((active * hw * (prev_active / groups) * kh * kw).mean())
        dense += b.shape[1] * hw * (cin / groups) * kh * kw
        prev = active
    return dyn, dense


def ftwt_optimizer(model: nn.Module, gates: Sequence[FTWTGate], *, backbone_lr: float = 1e-2, gate_lr: float = 0.1,
                   momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:  # fmt: skip
    """The code's two SGD optimizers as two parameter groups: backbone (``backbone_lr``, ``weight_decay``) and
    gates (``gate_lr``, no weight decay); group 0 is the backbone, group 1 the gates."""
    gate_params = {id(p) for g in gates for p in g.predictor.parameters()}
    backbone = [p for p in model.parameters() if id(p) not in gate_params and p.requires_grad]
    head = [p for g in gates for p in g.predictor.parameters()]
    return torch.optim.SGD([{"params": backbone, "lr": backbone_lr, "weight_decay": weight_decay},
                            {"params": head, "lr": gate_lr, "weight_decay": 0.0}], momentum=momentum)  # fmt: skip


# ------------------------------------------------------------------------------------------------------- hook
class FTWT(Hook):
    """Adds ``lambda_mask x`` :func:`ftwt_mask_loss` over ``gates`` while ``epoch < floor(cooldown x epochs)``
    (``mask_bce``); after the cooldown the term is gone and the gates get no gradient. Logs the gate accuracy
    (agreement of ``b`` with ``g``) and the dynamic FLOPs reduction of each step."""

    claims = ("ftwt_gates",)

    def __init__(self, gates: Sequence[FTWTGate], *, cooldown: float = 0.5, mask_weight: float = 1.0) -> None:
        gates = list(gates)
        if not gates or not all(isinstance(g, FTWTGate) for g in gates):
            raise PriorkitError("gates must be a non-empty list of FTWTGate modules (see gate_conv_blocks)")
        check_range("cooldown", cooldown, 0.0, 1.0)
        check_range("mask_weight", mask_weight, 0.0)
        self.gates, self.cooldown, self.mask_weight = gates, float(cooldown), float(mask_weight)

    def active(self, state: RunState) -> bool:
        return state.epoch < math.floor(self.cooldown * state.num_epochs) and self.mask_weight > 0

    def extra_loss(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            acc = torch.stack([(g.last["b"] == g.last["g"]).float().mean() for g in self.gates]).mean()
            dyn, dense = dynamic_flops(self.gates)
        state.log(gate_acc=float(acc), flops_reduction=1.0 - dyn / dense)
        if not self.active(state):
            return {}
        loss = ftwt_mask_loss([g.last["z"] for g in self.gates], [g.last["g"] for g in self.gates])
        return {"mask_bce": self.mask_weight * loss}


@torch.no_grad()
def evaluate_gated(model: nn.Module, gates: Sequence[FTWTGate], x: torch.Tensor, y: torch.Tensor,
                   batch: int = 256) -> dict[str, float]:  # fmt: skip
    """Accuracy, mean dynamic FLOPs reduction and gate accuracy of ``model`` (eval mode, masks applied)."""
    was = model.training
    model.eval()
    correct, dyn, dense, agree, n = 0, 0.0, 0.0, 0.0, len(x)
    for s in range(0, n, batch):
        xb = x[s : s + batch]
        correct += int((model(xb).argmax(1) == y[s : s + batch]).sum())
        d, t = dynamic_flops(gates)
        dyn, dense = dyn + d * len(xb), t
        agree += float(torch.stack([(g.last["b"] == g.last["g"]).float().mean() for g in gates]).mean()) * len(xb)
    model.train(was)
    return {"acc": correct / n, "flops_reduction": 1.0 - dyn / n / dense, "gate_acc": agree / n}


def kept_ratios(gates: Sequence[FTWTGate]) -> list[float]:
    """Mean fraction of active channels per gate over the last forward."""
    return [float(g.last["b"].mean()) for g in gates]
