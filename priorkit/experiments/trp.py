"""TRP vs post-hoc factorisation of a dense CNN (card: sparsity-training.md, trp, "Small-scale check on CPU").

Data: scikit-learn's 8x8 digits upsampled to 16x16 (bilinear), 80/20 split. Model (the card's): conv 1->w
(excluded, the first conv), conv w->2w, conv 2w->2w, 2x2 max-pool, conv 2w->4w, conv 4w->4w, global average pool,
linear; every conv 3x3, stride 1, BN, ReLU (the card's w = 16; ``width`` below). SGD lr 0.05, momentum 0.9,
weight decay 1e-4, cosine schedule, the same epochs, batches and initial weights for every arm, all through the
engine. Arms: (a) dense baseline, then channel-wise (NC) factorisation at energy 0.9, no fine-tuning; (b) the
nuclear-norm regulariser only (lambda 3e-4, "Nu"), then the same factorisation; (c) TRP (NC, m = 5, e = 0.9,
lambda 3e-4), then factorisation with the value threshold 0.05 (the code's default). The dense model is also
factorised at TRP's own per-layer ranks of the same seed (``acc_after_matched``: the same target-layer MACs, the
card's "comparable reduction"). Reported per arm: test accuracy before and after factorisation, its drop, and the
MACs reduction of the target layers (original MACs / factorised MACs, on the network's real feature-map sizes).

Rules (fixed before the first run, from the card's "Expected: (a) loses several points after factorisation at a
comparable reduction. (c) loses under 1 point and reaches >= 1.5x reduction of the target-layer MACs"): TRP's
accuracy after factorisation at least 2 points above the dense baseline's after factorisation at TRP's ranks
(``acc_after_matched``: "several points" against "under 1", at the same reduction); TRP's own factorisation
drop at most 1 point (against the value 0.01); TRP's target-layer MACs reduction at least 1.5x (against the
value). (b) "lands in between" is reported, not ruled.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.data import load_digits
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.experiments._common import accuracy_on, train_and_test
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.sparsity.trp import SPEC, TRP, conv_macs, trp_decompose, trp_targets
from priorkit.train import TrainConfig

_P = SPEC.presets["small"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    width: int = 8  # the card's CNN has w = 16; halved to fit the CPU budget
    epochs: int = 30  # the card's 40, cut to fit the CPU budget
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    energy: float = _P["energy"]
    period: int = _P["period"]
    nuclear_weight: float = _P["nuclear_weight"]
    scheme: str = _P["scheme"]
    value_threshold: float = 0.05  # TRP's post-training factorisation (the code's default for NC)
    posthoc_energy: float = 0.9  # the baselines' post-hoc factorisation
    test: float = 0.2


FULL = Config()
QUICK = Config(epochs=3)


def digits16(seed: int, test: float):
    sp = load_digits(image=True, val=0.0, test=test, seed=seed)

    def up(d: IndexedTensorDataset) -> IndexedTensorDataset:
        x = F.interpolate(d.x, size=(16, 16), mode="bilinear", align_corners=False)
        return IndexedTensorDataset(x, d.y)

    return up(sp.train), up(sp.test)


def cnn(width: int, num_classes: int = 10) -> nn.Sequential:
    """The card's CNN: five 3x3 conv-BN-ReLU blocks (pool after the third), global average pool, linear."""

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    w = width
    return nn.Sequential(*block(1, w), *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
                         *block(2 * w, 4 * w), *block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, num_classes))  # fmt: skip


def _factorised(model: nn.Module, test: IndexedTensorDataset, example: torch.Tensor, **kw) -> dict[str, Any]:
    names = list(trp_targets(model))
    before = conv_macs(model, example)
    target_before = sum(before[n] for n in names)
    report = trp_decompose(model, **kw)
    after = conv_macs(model, example)
    target_after = sum(v for k, v in after.items() if any(k == n or k.startswith(n + ".") for n in names))
    ranks = [r["rank"] for r in report.values()]
    return {"acc_after": accuracy_on(model, test), "macs_reduction": target_before / target_after,
            "mean_rank": sum(ranks) / len(ranks), "ranks": {n: r["rank"] for n, r in report.items()}}  # fmt: skip


def run(seed: int, c: Config) -> SeedResult:
    train, test = digits16(seed, c.test)
    cfg = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                      weight_decay=c.weight_decay, scheduler="cosine", seed=seed)  # fmt: skip
    make = partial(cnn, c.width)
    kw = dict(energy=c.energy, period=c.period, nuclear_weight=c.nuclear_weight, scheme=c.scheme)
    arms = {
        "baseline": (lambda m: [], dict(threshold="energy", energy=c.posthoc_energy)),
        "nu": (lambda m: [TRP(m, trp=False, **kw)], dict(threshold="energy", energy=c.posthoc_energy)),
        "method": (lambda m: [TRP(m, **kw)], dict(threshold="value", value=c.value_threshold)),
    }
    out: dict[str, dict[str, Any]] = {}
    models = {}
    for arm, (hooks, fact) in arms.items():
        model, metrics, _ = train_and_test(make, train, test, cfg, hooks)
        models[arm] = copy.deepcopy(model)
        row = {"acc_before": metrics["acc"]}
        row.update(_factorised(model, test, train.x[:1], scheme=c.scheme, **fact))
        row["factorization_drop"] = row["acc_before"] - row["acc_after"]
        out[arm] = row
    ranks = out["method"].pop("ranks")
    for arm in ("baseline", "nu"):
        out[arm].pop("ranks")
        matched = _factorised(models[arm], test, train.x[:1], scheme=c.scheme, ranks=ranks)
        out[arm]["acc_after_matched"] = matched["acc_after"]
        out[arm]["macs_reduction_matched"] = matched["macs_reduction"]
    out["method"]["acc_after_matched"] = out["method"]["acc_after"]
    nu = out.pop("nu")
    return {"method": out["method"], "baseline": out["baseline"], "extra": {f"nu_{k}": v for k, v in nu.items()}}


EXPERIMENT = Experiment(
    id="trp",
    claim="TRP-trained convs factorise with under 1 point of accuracy loss at >= 1.5x fewer target-layer MACs, "
    "where a dense net's post-hoc factorisation loses several points",
    setup="16x16 digits, the card's 5-conv BN CNN (width halved), SGD + cosine, same epochs/initialisation for all "
    "arms; NC factorisation without fine-tuning (dense and Nu: energy 0.9; TRP: value threshold 0.05)",
    method_name="TRP (NC, m=5, e=0.9, lambda=3e-4) + value-threshold factorisation",
    baseline_name="dense training + post-hoc NC factorisation (energy 0.9)",
    checks=[
        Check("acc_after_matched", "higher", 0.02),
        Check("factorization_drop", "lower", 0.01, against="value"),
        Check("macs_reduction", "higher", 1.5, against="value"),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    ablations={
        # the card's own width and epochs (if the reduced budget is what hides the effect)
        "card_width_16": {"width": 16},
        # the projection every batch (the code's default m = 1) instead of every 5th
        "period_1": {"period": 1},
    },
)
