"""ELR vs cross-entropy under symmetric label noise on digits (card: regularizers-theory.md).

Noise on the training labels only (seeded); ELR's beta and lambda are the CIFAR-10 defaults. Every setting is
in :class:`Config` (``QUICK`` and ``FULL``), which the report prints. Claim (fixed before the first run): final
test accuracy at least 3 points above CE at the claim's noise rate. Memorization = fraction of noisy-labelled
training samples predicted as their noisy label.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from priorkit.data import load_digits, symmetric_noise
from priorkit.experiments._common import train_and_test
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.regularizers.elr import ELR
from priorkit.train import TrainConfig, predict


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    epochs: int = 200
    noise: float = 0.4
    extra_noise: tuple[float, ...] = (0.6,)  # also reported, not part of the claim
    test_fraction: float = 0.3
    hidden: tuple[int, ...] = (256, 256)
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    beta: float = 0.7
    lam: float = 3.0


FULL = Config()
QUICK = Config(epochs=100, extra_noise=())


def _one(seed: int, c: Config, rate: float) -> tuple[dict, dict, dict]:
    data = load_digits(val=0.0, test=c.test_fraction, seed=seed)
    noisy_y = symmetric_noise(data.train.y, rate, 10, seed=seed)
    train = data.train.with_labels(noisy_y)
    noisy = noisy_y != data.train.clean_y
    cfg = TrainConfig(
        epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum, scheduler="cosine", seed=seed
    )
    make = partial(MLP, 64, c.hidden, 10)
    out, curves = {}, {}
    elr = lambda m: [ELR(len(train), 10, beta=c.beta, lam=c.lam)]  # noqa: E731
    for side, hooks in (("baseline", lambda m: []), ("method", elr)):
        model, metrics, curve = train_and_test(make, train, data.test, cfg, hooks, curve_every=max(1, c.epochs // 20))
        pred = predict(model, train).argmax(1)
        metrics["memorization"] = float((pred[noisy] == noisy_y[noisy]).float().mean())
        metrics["best_acc"] = max(curve["test_acc"])
        out[side], curves[side] = metrics, {"epoch": curve["epoch"], "test_acc": curve["test_acc"]}
    return out["method"], out["baseline"], curves


def run(seed: int, c: Config) -> SeedResult:
    meth, base, curves = _one(seed, c, c.noise)
    for rate in c.extra_noise:
        m, b, _ = _one(seed, c, rate)
        meth.update({f"{k}@{rate:.0%}": v for k, v in m.items()})
        base.update({f"{k}@{rate:.0%}": v for k, v in b.items()})
    return {"method": meth, "baseline": base, "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for side, label in (("baseline", "CE"), ("method", "ELR")):
        ep = results[0]["curves"][side]["epoch"]
        acc = torch.tensor([r["curves"][side]["test_acc"] for r in results]).mean(0)
        ax.plot(ep, acc, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (40% sym. noise)")
    ax.legend()
    fig.tight_layout()
    path = outdir / "elr_curve.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="elr",
    claim="With 40% symmetric label noise, clearly higher test accuracy than cross-entropy",
    setup="sklearn digits, symmetric noise on the training labels only, MLP, SGD with cosine decay",
    method_name="ELR",
    baseline_name="cross-entropy",
    checks=[Check("acc", "higher", 0.03)],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
