"""PS-KD vs cross-entropy on mnist1d (card: regularizers-theory.md, "Small-scale check on CPU").

An MLP trained with SGD (momentum, weight decay, step decay at ``milestones``) and random shifts, with
cross-entropy and with PS-KD on the same budget; the full tier also runs an alpha_T sweep. Every setting is in
:class:`Config` (``QUICK`` and ``FULL``), which the report prints.

Rule (the card's "Expected: ECE drops by a factor of 2-5, NLL lower; accuracy equal or up 0.5-2 points. Report if
accuracy does not improve (small data may show calibration gains only)"): the per-seed ratio
``ece_ratio = ECE(PS-KD) / ECE(CE)`` is at most 0.5 (a factor of 2, the low end of the card's range), NLL is lower
than CE's, and accuracy is no more than 0.5 points below CE's (the card allows calibration-only gains). The first
rule asked only for an ECE 0.005 lower than CE's (kept as ``former_checks``).

What was learnt: PS-KD corrects over-confidence, which needs training long enough for the network to become
over-confident. In the quick tier (40 epochs) CE is still under-fit and already well calibrated, and the softened
targets make PS-KD under-confident, so ECE rises; the full budget is the one the card describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from priorkit.data import load_mnist1d
from priorkit.data.augment import random_shift
from priorkit.experiments._common import train_and_test
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics import reliability
from priorkit.models import MLP
from priorkit.regularizers.pskd import PSKD
from priorkit.train import Augment, TrainConfig, predict


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    epochs: int = 100
    milestones: tuple[int, ...] = (50, 75)  # step decay at 1/2 and 3/4 of training (epochs // 2, 3 * epochs // 4)
    gamma: float = 0.1
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    hidden: tuple[int, ...] = (256, 256)
    max_shift: int = 2  # random shift augmentation, +- samples
    alpha_T: float = 0.8  # noqa: N815 (the paper's name)
    alpha_sweep: tuple[float, ...] = (0.4, 0.6)  # also reported, outside the verdict


FULL = Config()
QUICK = Config(epochs=40, milestones=(20, 30), alpha_sweep=())


def _ece_ratio(method: float, baseline: float) -> float | None:
    """ECE(method) / ECE(baseline) of one seed, the card's "factor" (< 1: PS-KD is better calibrated); undefined
    (``None``) when the baseline's ECE is exactly 0."""
    return None if baseline == 0 else method / baseline


def run(seed: int, c: Config) -> SeedResult:
    data = load_mnist1d(seed=seed)
    cfg = TrainConfig(
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        scheduler="step",
        milestones=c.milestones,
        gamma=c.gamma,
        seed=seed,
    )
    make = partial(MLP, 40, c.hidden, 10)
    shift = Augment(partial(random_shift, max_shift=c.max_shift), name="shift")
    base_model, base, _ = train_and_test(make, data.train, data.test, cfg, lambda m: [shift])
    n = len(data.train)
    model, meth, _ = train_and_test(make, data.train, data.test, cfg, lambda m: [shift, PSKD(n, 10, alpha_T=c.alpha_T)])
    meth["ece_ratio"] = _ece_ratio(meth["ece"], base["ece"])
    curves = {}
    for side, m in (("baseline", base_model), ("method", model)):
        rel = reliability(predict(m, data.test), data.test.y)
        curves[side] = {
            "confidence": rel.confidence.tolist(),
            "accuracy": rel.accuracy.tolist(),
            "count": rel.count.tolist(),
        }
    for a in c.alpha_sweep:
        _, sweep, _ = train_and_test(make, data.train, data.test, cfg, lambda m, a=a: [shift, PSKD(n, 10, alpha_T=a)])
        sweep["ece_ratio"] = _ece_ratio(sweep["ece"], base["ece"])
        meth.update({f"{k}@alpha_T={a}": v for k, v in sweep.items()})
    return {"method": meth, "baseline": base, "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(12, 2.9))
    ax = axes[3]
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    for side, label in (("baseline", "CE"), ("method", "PS-KD")):
        conf = torch.tensor([r["curves"][side]["confidence"] for r in results])
        acc = torch.tensor([r["curves"][side]["accuracy"] for r in results])
        count = torch.tensor([r["curves"][side]["count"] for r in results])
        keep = count.sum(0) > 0
        w = count / count.sum(0).clamp_min(1)
        ax.plot((conf * w).sum(0)[keep], (acc * w).sum(0)[keep], marker="o", ms=3, label=label)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (15 bins, all seeds)")
    ax.legend(fontsize=8)
    for ax, key in zip(axes, ("acc", "ece", "nll")):
        vals = [[r["baseline"][key] for r in results], [r["method"][key] for r in results]]
        ax.boxplot(vals, tick_labels=["CE", "PS-KD"])
        ax.set_title(f"test {key}")
    fig.tight_layout()
    path = outdir / "pskd_metrics.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="pskd",
    claim="ECE at least 2x lower than cross-entropy's (the card: a factor of 2-5), lower NLL, accuracy equal or "
    "better (within 0.5 points), same budget",
    setup="mnist1d, MLP 40-hidden-10, SGD with momentum and step decay, random-shift augmentation; the same "
    "budget for both",
    method_name="PS-KD",
    baseline_name="cross-entropy",
    checks=[
        Check("ece_ratio", "lower", 0.5, against="value"),
        Check("nll", "lower", 0.0),
        Check("acc", "higher", -0.005),
    ],
    former_checks=[Check("ece", "lower", 0.005), Check("acc", "higher", -0.005)],
    former_note="The first rule asked for an ECE only 0.005 below cross-entropy's (any small absolute gain passed) and "
    "did not check NLL; the card expects ECE to fall by a factor of 2-5 with a lower NLL, so the rule now asks for "
    "a per-seed ECE ratio of at most 0.5 and a lower NLL. The accuracy rule is unchanged.",
    diagnosis="PS-KD lowers ECE on most seeds but by less than the card's factor of 2, and NLL and accuracy do not "
    "move: the cross-entropy baseline here is only mildly over-confident (its ECE, in the metrics table, is a "
    "fraction of what a CIFAR-100 ResNet reaches), so there is little over-confidence for the softened targets to "
    "remove. The in-run alpha_T sweep (ece_ratio@alpha_T=0.4 and @0.6) shows the ratio falling as alpha_T grows "
    "at unchanged accuracy, the direction the paper reports, without reaching 0.5 in this range.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
