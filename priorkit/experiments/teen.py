"""TEEN vs the plain prototype classifier in few-shot class-incremental digits (card: prototypes-fewshot-ood.md).

Setup (the card's "Small-scale check on CPU"): scikit-learn digits; base session = classes 0-5 with all their
training data, trained with an MLP 64-128-64 and a cosine classifier (t=16, CE, SGD lr 0.1 momentum 0.9 weight
decay 5e-4, cosine schedule, batch 64, 40 epochs); then the base weights are replaced by the class means.
Session 1 adds classes 6-7 and session 2 adds 8-9, 5 shots each; test on the held-out images of all seen
classes. The backbone is trained once per seed; 20 shot draws per seed are averaged. Method: TEEN with the
official defaults alpha=0.5 (``shift_weight``), tau=16 (``softmax_t``). Baseline: the same prototypes with
alpha=0 (SimpleCIL). Full mode: 5 seeds; quick mode: 2 seeds (same per-seed budget).

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
ALPHA, TAU, TEMPERATURE, DRAWS = _P["alpha"], _P["tau"], _P["temperature"], 20
SWEEP = (0.1, 0.3)  # CIFAR-100 uses 0.1; the card expects 0.3-0.5 to help


class _BaseNet(nn.Module):
    """The base session's network: the backbone's features and a learnable cosine classifier ``t cos(f, w_c)``."""

    def __init__(self, backbone: MLP, num_classes: int, temperature: float) -> None:
        super().__init__()
        self.backbone, self.temperature = backbone, temperature
        self.weight = nn.Parameter(torch.empty(num_classes, backbone.feature_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self.backbone.features(x), self.weight, self.temperature)


def _evaluate(backbone: MLP, data, alpha: float) -> dict[str, float]:
    """One shot draw: run all sessions with calibration weight ``alpha``; per-session metrics."""
    model = TEEN(backbone, data.num_classes, data.num_base, alpha=alpha, tau=TAU, temperature=TEMPERATURE)
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


def run(seed: int, quick: bool) -> SeedResult:
    data = load_incremental("digits", base_classes=6, way=2, shot=5, seed=seed)
    seed_everything(seed)
    backbone = MLP(64, (128, 64), 6)
    cfg = TrainConfig(epochs=40, batch_size=64, lr=0.1, momentum=0.9, weight_decay=5e-4, scheduler="cosine", seed=seed,
                      progress=False)  # fmt: skip
    fit(_BaseNet(backbone, data.num_base, TEMPERATURE), data.base_train, config=cfg)  # classifier dropped after
    backbone.eval()
    sums: dict[str, dict[str, float]] = {"method": {}, "baseline": {}}
    for d in range(DRAWS):
        draw = data.redraw(1000 * seed + d)
        for side, alpha in (("method", ALPHA), ("baseline", 0.0)):
            for k, v in _evaluate(backbone, draw, alpha).items():
                sums[side][k] = sums[side].get(k, 0.0) + v / DRAWS
        for alpha in SWEEP:  # reported beside the rule's alpha, never used by the checks
            res = _evaluate(backbone, draw, alpha)
            for k in ("acc_last", "base_acc_last", "new_acc_last", "new_to_base_last"):
                key = f"{k}@alpha={alpha}"
                sums["method"][key] = sums["method"].get(key, 0.0) + res[k] / DRAWS
    curves = {side: [sums[side][f"acc_s{s}"] for s in range(data.num_sessions)] for side in sums}
    return {"method": sums["method"], "baseline": sums["baseline"], "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for side, label in (("baseline", "prototypes (alpha=0)"), ("method", f"TEEN (alpha={ALPHA})")):
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
    setup="digits FSCIL: base 0-5 (MLP 64-128-64, cosine classifier t=16, 40 epochs), sessions +6-7, +8-9 "
    "5-shot; 20 shot draws per seed; TEEN alpha=0.5 tau=16 vs alpha=0; 5 seeds (quick: 2)",
    method_name="TEEN (alpha=0.5, tau=16)",
    baseline_name="prototype classifier (alpha=0)",
    checks=[
        Check("new_acc_last", "higher", 0.01),
        Check("acc_last", "higher", 0.0),
        Check("new_to_base_last", "lower", 0.0),
        Check("base_acc_last", "higher", -0.01),
    ],
    run=run,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
