"""FTWT vs static L1-norm filter pruning at matched FLOPs (card: sparsity-training.md, ftwt, "Small-scale check").

Data: scikit-learn's 8x8 digits, stratified-by-seed 80/20 split. Model: the card's CNN, conv 1->w, w->w, w->2w,
2w->2w (3x3, padding 1, BN, ReLU), global average pool, linear (the card's w = 32; ``width`` below). A dense model
is trained first (SGD lr 0.05, momentum 0.9, cosine, ``dense_epochs``), then, from the same dense weights, for each
``r``: (1) FTWT (mass targets, every conv gated, decoupled, softmax, d = 1, cooldown 0.5) fine-tuned for
``ft_epochs`` with the code's two optimizers (backbone lr 1e-2, wd 5e-4, cosine; gates lr 0.1, constant);
(2) static L1-norm filter pruning with each layer's kept ratio set to FTWT's mean kept ratio of that layer on the
training set (matched FLOPs), fine-tuned for the same epochs with the backbone optimizer; (3) FTWT with the
``uniform`` target at the same per-layer mean k (reported, no rule). Everything trains through the engine.
Metrics (test set, masks applied): accuracy, mean dynamic FLOPs reduction of the gated convs (the code's analytic
count; static pruning's count with its fixed masks), gate accuracy (agreement of ``b`` with ``g``).

Rules (fixed before the first run, from the card's "Expected: FLOPs reduction grows as r decreases, and gate
accuracy exceeds 90%. At matched FLOPs, FTWT-mass accuracy >= static pruning, with a larger gap at lower r"):
FTWT's FLOPs reduction at the lowest r minus that at the highest r > 0 (against the value 0); the lower of the
gate accuracies over the r values >= 0.9 (against the value); accuracy at the lowest r >= static's (margin 0:
"a larger gap at lower r"); accuracy at the highest r no more than 0.5 points below static's (the card's ">=",
with the tolerance PS-KD's rule uses for "equal or better").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from priorkit.baselines.filter_pruning import StaticChannelMask, l1_filter_keep
from priorkit.data import load_digits
from priorkit.experiments._common import accuracy_on
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.sparsity.ftwt import FTWT, SPEC, FTWTGate, evaluate_gated, ftwt_optimizer, gate_conv_blocks
from priorkit.train import Phase, Recipe, TrainConfig, Trainer

_P = SPEC.presets["small"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    width: int = 16  # the card's 32, halved for the CPU budget
    dense_epochs: int = 20  # the card's 40
    ft_epochs: int = 15  # the card's 30
    rs: tuple[float, ...] = (0.95, 0.8)  # the card's {1.0, 0.95, 0.9, 0.8}: the ends that carry the rules
    batch_size: int = 64
    dense_lr: float = 0.05
    backbone_lr: float = _P["backbone_lr"]
    gate_lr: float = _P["gate_lr"]
    weight_decay: float = _P["weight_decay"]
    cooldown: float = _P["cooldown"]
    uniform: bool = True  # also the uniform-target FTWT at the same mean k (no rule)
    test: float = 0.2


FULL = Config()
QUICK = Config(dense_epochs=2, ft_epochs=2, uniform=False)


def cnn(width: int, num_classes: int = 10) -> nn.Sequential:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    w = width
    return nn.Sequential(*block(1, w), *block(w, w), *block(w, 2 * w), *block(2 * w, 2 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, num_classes))  # fmt: skip


def _fit(model: nn.Module, train: Any, epochs: int, seed: int, optimizer: Any, hooks: list | None = None) -> None:
    def sched(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        cos = lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs))  # noqa: E731
        lambdas = [cos] + [lambda e: 1.0] * (len(opt.param_groups) - 1)  # gates: constant
        return torch.optim.lr_scheduler.LambdaLR(opt, lambdas)

    phase = Phase("fit", epochs=epochs, optimizer=optimizer, scheduler=sched)
    cfg = TrainConfig(epochs=epochs, batch_size=64, seed=seed, progress=False)
    Trainer(model, train, recipe=Recipe([phase]), hooks=hooks or [], config=cfg).fit()


def _backbone_sgd(c: Config, lr: float, wd: float):
    return lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                                     weight_decay=wd)  # fmt: skip


@torch.no_grad()
def _kept(model: nn.Module, gates: list[FTWTGate], x: torch.Tensor) -> list[float]:
    was = model.training
    model.eval()
    sums = [0.0] * len(gates)
    for s in range(0, len(x), 256):
        model(x[s : s + 256])
        for i, g in enumerate(gates):
            sums[i] += float(g.last["b"].mean()) * len(x[s : s + 256])
    model.train(was)
    return [v / len(x) for v in sums]


def _static_flops_reduction(model: nn.Sequential, masks: list[torch.Tensor], x: torch.Tensor) -> float:
    """The same analytic count with fixed active channels."""
    convs = [m.block[0] for m in model if isinstance(m, StaticChannelMask)]
    dyn = dense = 0.0
    prev, hw = None, x.shape[-1] * x.shape[-2]
    for conv, mask in zip(convs, masks):
        k = conv.kernel_size[0] * conv.kernel_size[1]
        cin = conv.in_channels if prev is None else prev
        dyn += float(mask.sum()) * hw * cin * k
        dense += conv.out_channels * hw * conv.in_channels * k
        prev = float(mask.sum())
    return 1.0 - dyn / dense


def _gated(dense: nn.Module, c: Config, train: Any, seed: int, **gate_kw: Any) -> tuple[nn.Module, list]:
    model = copy.deepcopy(dense)
    gates = gate_conv_blocks(model, softmax=_P["softmax"], pool=_P["pool"], mode=_P["mode"], **gate_kw)
    opt = lambda m: ftwt_optimizer(m, gates, backbone_lr=c.backbone_lr, gate_lr=c.gate_lr,  # noqa: E731
                                   weight_decay=c.weight_decay)  # fmt: skip
    _fit(model, train, c.ft_epochs, seed, opt, [FTWT(gates, cooldown=c.cooldown)])
    return model, gates


def run(seed: int, c: Config) -> SeedResult:
    sp = load_digits(image=True, val=0.0, test=c.test, seed=seed)
    train, test = sp.train, sp.test
    torch.manual_seed(seed)
    dense = cnn(c.width)
    _fit(dense, train, c.dense_epochs, seed, _backbone_sgd(c, c.dense_lr, 5e-4))
    method: dict[str, float] = {}
    base: dict[str, float] = {"dense_acc": accuracy_on(dense, test)}
    extra: dict[str, Any] = {}
    for r in c.rs:
        model, gates = _gated(dense, c, train, seed, r=r, gt_type="mass")
        ev = evaluate_gated(model, gates, test.x, test.y)
        kept = _kept(model, gates, train.x)
        method.update({f"acc_r{r:g}": ev["acc"], f"flops_reduction_r{r:g}": ev["flops_reduction"],
                       f"gate_acc_r{r:g}": ev["gate_acc"]})  # fmt: skip
        extra[f"kept_r{r:g}"] = kept
        static = copy.deepcopy(dense)
        convs = [i for i, m in enumerate(static) if isinstance(m, nn.Conv2d)]
        masks = [l1_filter_keep(static[i], k) for i, k in zip(convs, kept)]
        for i, mask in reversed(list(zip(convs, masks))):
            blk = nn.Sequential(static[i], static[i + 1], static[i + 2])
            static = nn.Sequential(*list(static)[:i], StaticChannelMask(blk, mask), *list(static)[i + 3 :])
        _fit(static, train, c.ft_epochs, seed, _backbone_sgd(c, c.backbone_lr, c.weight_decay))
        base[f"acc_r{r:g}"] = accuracy_on(static, test)
        base[f"flops_reduction_r{r:g}"] = _static_flops_reduction(static, masks, test.x)
        if c.uniform:
            # the dropped fraction p = 1 - FTWT's mean kept ratio, per layer
            uni, ugates = _uniform_matched(dense, c, train, seed, kept)
            ev_u = evaluate_gated(uni, ugates, test.x, test.y)
            extra[f"uniform_acc_r{r:g}"] = ev_u["acc"]
            extra[f"uniform_flops_reduction_r{r:g}"] = ev_u["flops_reduction"]
    lo, hi = min(c.rs), max(c.rs)
    method["flops_reduction_gain"] = method[f"flops_reduction_r{lo:g}"] - method[f"flops_reduction_r{hi:g}"]
    method["gate_acc_min"] = min(method[f"gate_acc_r{r:g}"] for r in c.rs)
    return {"method": method, "baseline": base, "extra": extra}


def _uniform_matched(dense: nn.Module, c: Config, train: Any, seed: int, kept: list[float]):
    model = copy.deepcopy(dense)
    ps = iter([min(max(1.0 - k, 0.0), 0.999) for k in kept])
    gates = gate_conv_blocks(model, softmax=_P["softmax"], pool=_P["pool"], mode=_P["mode"], gt_type="uniform", r=0.5)
    for g in gates:
        g.r = next(ps)
    opt = lambda m: ftwt_optimizer(m, gates, backbone_lr=c.backbone_lr, gate_lr=c.gate_lr,  # noqa: E731
                                   weight_decay=c.weight_decay)  # fmt: skip
    _fit(model, train, c.ft_epochs, seed, opt, [FTWT(gates, cooldown=c.cooldown)])
    return model, gates


_LO, _HI = min(FULL.rs), max(FULL.rs)

EXPERIMENT = Experiment(
    id="ftwt",
    claim="FLOPs reduction grows as r decreases with gate accuracy above 90%; at matched FLOPs FTWT's accuracy is "
    ">= static L1 filter pruning's, with a larger gap at lower r",
    setup="8x8 digits, 4-conv BN CNN (width 16), dense pre-training then fine-tuning from the same weights; static "
    "L1-norm filter pruning at FTWT's per-layer mean kept ratios; the same fine-tuning epochs",
    method_name="FTWT (mass targets, decoupled gates, cooldown 0.5)",
    baseline_name="static L1-norm filter pruning (matched per-layer kept ratio), fine-tuned",
    checks=[
        Check("flops_reduction_gain", "higher", 0.0, against="value"),
        Check("gate_acc_min", "higher", 0.9, against="value"),
        Check(f"acc_r{_LO:g}", "higher", 0.0),
        Check(f"acc_r{_HI:g}", "higher", -0.005),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    diagnosis="The FLOPs half holds: the reduction grows from the highest to the lowest r (flops_reduction_r*). The "
    "gates do not reach the card's 90% agreement with their targets (gate_acc_r*), lowest at the lowest r, and a "
    "longer fine-tuning (ft_epochs_30) or gates trained to the end (no_cooldown) do not raise it, so it is not the "
    "budget. A likely cause, not separately measured: the predictor pools its input to 1x1 and takes a softmax over "
    "the channels, so the first gated conv (one input channel on digits) sees a constant and cannot predict its "
    "per-sample targets at all, and the next layers see few channels. At matched per-layer kept ratios the static "
    "L1-norm baseline is as accurate as FTWT or slightly better (acc_r*): on 8x8 digits a fine-tuned static "
    "network at these ratios loses almost nothing, so there is no gap for per-sample gating to close.",
    ablations={
        # the code's own cooldown-free variant: gates keep learning to the end
        "no_cooldown": {"cooldown": 1.0, "uniform": False},
        # the card's full fine-tuning budget
        "ft_epochs_30": {"ft_epochs": 30, "uniform": False},
    },
)
