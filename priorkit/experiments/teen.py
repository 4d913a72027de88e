"""TEEN vs the plain prototype classifier in few-shot class-incremental digits (card: prototypes-fewshot-ood.md).

Setup (the card's "Small-scale check on CPU"): scikit-learn digits; the base session's classes with all their
training data, trained with an MLP and a cosine classifier (CE, SGD with momentum and weight decay, cosine
schedule); then the base weights are replaced by the class means. Each later session adds ``way`` new classes
with ``shot`` examples each; test on the held-out images of all seen classes. The backbone is trained once per
seed; several shot draws per seed are averaged. Method: TEEN with the official defaults of alpha
(``shift_weight``) and tau (``softmax_t``). Baseline: the same prototypes with alpha=0 (SimpleCIL). Every
setting is in :class:`Config` (``QUICK`` and ``FULL`` are the same per-seed budget; the tiers differ only in the
number of seeds), which the report prints.

Rule (fixed before the first run, from the card's "Expected"): in the last session TEEN's new-class accuracy
is at least 1 point higher, overall accuracy not lower, the new->base confusion rate not higher, and base
accuracy at most 1 point lower than the baseline's.

Outcome (quick mode, 2 seeds, first run): only partly reproduced. TEEN raises last-session new-class accuracy
(0.248 vs 0.230) and the harmonic mean (0.381 vs 0.362) and lowers new->base confusion (0.568 vs 0.628), as the
card expects, but base accuracy falls by 3 points (0.912 vs 0.941), so overall accuracy falls (0.648 vs 0.659).
Smaller alpha (reported as ``*@alpha=0.1/0.3``) trades less base accuracy for less new-class gain. Likely why:
here only 6 base classes exist (60 on CIFAR-100 / miniImageNet, 100 on CUB), so each calibrated new prototype
moves towards one or two base prototypes and captures part of their test images; and the tiny MLP maps the
unseen digits 6-9 very close to base prototypes (new-class accuracy ~0.25 with either classifier), so the
shift that recovers new-class examples costs base examples, which are 60-75% of the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from priorkit.core.seeding import seed_everything
from priorkit.data.incremental import load_incremental
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.incremental import average_accuracy, performance_drop, session_metrics
from priorkit.models import MLP
from priorkit.prototypes.teen import SPEC, TEEN, cosine_logits
from priorkit.train import TrainConfig, fit

_P = SPEC.presets["small"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    base_classes: int = 6
    way: int = 2  # new classes per session
    shot: int = 5
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = _P["temperature"]  # cosine classifier t (base training and TEEN's head)
    alpha: float = _P["alpha"]  # TEEN's calibration weight (the baseline uses 0)
    tau: float = _P["tau"]
    draws: int = 20  # shot draws per seed, averaged
    draw_seed_stride: int = 1000  # draw d of seed s uses seed stride * s + d
    alpha_sweep: tuple[float, ...] = (0.1, 0.3)  # also reported; CIFAR-100 uses 0.1, the card expects 0.3-0.5 to help


FULL = Config()
QUICK = Config()  # same per-seed budget; quick runs fewer seeds


class _BaseNet(nn.Module):
    """The base session's network: the backbone's features and a learnable cosine classifier ``t cos(f, w_c)``."""

    def __init__(self, backbone: MLP, num_classes: int, temperature: float) -> None:
        super().__init__()
        self.backbone, self.temperature = backbone, temperature
        self.weight = nn.Parameter(torch.empty(num_classes, backbone.feature_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self.backbone.features(x), self.weight, self.temperature)


def _evaluate(backbone: MLP, data, alpha: float, c: Config) -> dict[str, float]:
    """One shot draw: run all sessions with calibration weight ``alpha``; per-session metrics."""
    model = TEEN(backbone, data.num_classes, data.num_base, alpha=alpha, tau=c.tau, temperature=c.temperature)
    model.fit_base(data.base_train.x, data.base_train.y)
    out: dict[str, float] = {}
    accs = []
    for s in range(data.num_sessions):
        if s > 0:
            sup = data.sessions[s - 1]
            model.add_session(sup.x, sup.y, calibrate=True)
        test = data.test_upto(s)
        with torch.no_grad():
            m = session_metrics(model.head(model.embed(test.x)), test.y, data.num_base)
        accs.append(m["acc"])
        out[f"acc_s{s}"] = m["acc"]
        if s > 0:
            for k in ("base_acc", "new_acc", "hm", "new_to_base"):
                out[f"{k}_s{s}"] = m[k]
    last = data.num_sessions - 1
    out.update(
        acc_last=accs[-1],
        base_acc_last=out[f"base_acc_s{last}"],
        new_acc_last=out[f"new_acc_s{last}"],
        hm_last=out[f"hm_s{last}"],
        new_to_base_last=out[f"new_to_base_s{last}"],
        pd=performance_drop(accs),
        avg_acc=average_accuracy(accs),
    )
    return out


def run(seed: int, c: Config) -> SeedResult:
    data = load_incremental("digits", base_classes=c.base_classes, way=c.way, shot=c.shot, seed=seed)
    seed_everything(seed)
    backbone = MLP(64, c.hidden, c.base_classes)
    cfg = TrainConfig(
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        scheduler="cosine",
        seed=seed,
        progress=False,
    )
    fit(_BaseNet(backbone, data.num_base, c.temperature), data.base_train, config=cfg)  # classifier dropped after
    backbone.eval()
    sums: dict[str, dict[str, float]] = {"method": {}, "baseline": {}}
    for d in range(c.draws):
        draw = data.redraw(c.draw_seed_stride * seed + d)
        for side, alpha in (("method", c.alpha), ("baseline", 0.0)):
            for k, v in _evaluate(backbone, draw, alpha, c).items():
                sums[side][k] = sums[side].get(k, 0.0) + v / c.draws
        for alpha in c.alpha_sweep:  # reported beside the rule's alpha, never used by the checks
            res = _evaluate(backbone, draw, alpha, c)
            for k in ("acc_last", "base_acc_last", "new_acc_last", "new_to_base_last"):
                key = f"{k}@alpha={alpha}"
                sums["method"][key] = sums["method"].get(key, 0.0) + res[k] / c.draws
    curves: dict = {side: [sums[side][f"acc_s{s}"] for s in range(data.num_sessions)] for side in sums}
    curves["alpha"] = c.alpha
    return {"method": sums["method"], "baseline": sums["baseline"], "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    alpha = results[0]["curves"]["alpha"]
    for side, label in (("baseline", "prototypes (alpha=0)"), ("method", f"TEEN (alpha={alpha})")):
        acc = torch.tensor([r["curves"][side] for r in results]).mean(0)
        axes[0].plot(range(len(acc)), acc, marker="o", label=label)
    axes[0].set_xlabel("session")
    axes[0].set_ylabel("test accuracy (seen classes)")
    axes[0].legend(fontsize=7)
    keys = ("base_acc_last", "new_acc_last", "new_to_base_last")
    for i, side in enumerate(("baseline", "method")):
        vals = [sum(r[side][k] for r in results) / len(results) for k in keys]
        axes[1].bar([j + 0.4 * i for j in range(len(keys))], vals, width=0.4, label=side)
    axes[1].set_xticks([j + 0.2 for j in range(len(keys))], ["base acc", "new acc", "new->base"], fontsize=8)
    axes[1].set_title("last session")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "teen_sessions.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="teen",
    claim="Calibrating new prototypes towards base prototypes raises new-class and overall accuracy in the last "
    "session and lowers new->base confusion, with base accuracy within 1 point",
    setup="digits FSCIL: a base session (MLP with a cosine classifier, then class-mean prototypes) and few-shot "
    "sessions of new classes; several shot draws per seed; TEEN vs the same prototypes with alpha=0",
    method_name="TEEN",
    baseline_name="prototype classifier (alpha=0)",
    checks=[
        Check("new_acc_last", "higher", 0.01),
        Check("acc_last", "higher", 0.0),
        Check("new_to_base_last", "lower", 0.0),
        Check("base_acc_last", "higher", -0.01),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
