"""Robust stable CBC vs stable CBC (margin loss) on digits (card: prototypes-interpretable.md, "Small-scale check").

sklearn digits (64-d in [0, 1]), 70/30 stratified split from the seed. Both models: 20 components (uniform in
[0.45, 0.55], clipped to [0, 1], as the official code), 2 reasoning concepts per class, Euclidean distance,
trainable per-component sigma initialised at the median sample-to-component distance, Adam 1e-2, batch 128,
60 epochs, the same initial parameters. Baseline: margin loss 0.3; method: robust loss relu(1.0 - radius).
Metrics on the test split: clean accuracy, certified accuracy at eps in {0.25, 0.5, 1.0} (Theorem 1 radius
w.r.t. the true label >= eps), and accuracy under a 20-step L2 PGD on the class margin (inputs clipped to
[0, 1]) at the same eps. Full mode adds the original CBC (margin 0.3) to the baseline side as ``orig_*``.
Quick and full modes use the same budget; quick runs 2 seeds, full 5.

Rule (fixed before the first run, from the card's "clearly higher certified accuracy at eps >= 0.5, at a
small clean-accuracy cost"): certified accuracy at 0.5 >= baseline + 0.10, at 1.0 >= baseline + 0.05, clean
accuracy >= baseline - 0.05; and (soundness) PGD accuracy >= certified accuracy at every eps for the method.

Measured (quick, 2 seeds): certified accuracy at 0.5 is 0.384 vs 0.252 (passes), clean accuracy 0.834 vs 0.880
(passes, a 4.6-point cost), PGD >= certified everywhere (passes); at eps = 1.0 neither model certifies more than
~1% of the test points (0.011 vs 0.000), so the eps = 1.0 rule fails and the claim is reported as not
reproduced. Why, as far as known: on 64-d digits the class means are only ~3-4 apart in L2 and the learned
temperatures stay near 3, so the radius of Theorem 1 (sigma_min ln t*) reaches 1.0 for almost no point in
60 epochs (median certified radius 0.39 vs 0.34); the paper's MNIST eps = 1.58 sits in a 784-d space where
digits are ~10 apart. A larger robust margin or longer training was not tried (the budget is the card's).
"""

from __future__ import annotations

from pathlib import Path

import torch

from priorkit.core.seeding import seed_everything
from priorkit.data import load_digits
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.prototypes.robust_stable_cbc import (
    CBC,
    CBCTrainConfig,
    RobustStableCBC,
    StableCBC,
    certified_accuracy,
    median_init_sigma,
    pgd_l2,
    train_cbc,
)

EPS = (0.25, 0.5, 1.0)


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
        radius = model.certified_radius(x, y)
    out = {"acc": acc, "median_radius": float(radius.clamp_min(0).median())}
    for e, c in zip(EPS, certified_accuracy(radius, list(EPS))):
        out[f"cert_acc@{e:g}"] = c
        xa = pgd_l2(model, x, y, e, steps=20, clip=(0.0, 1.0))
        with torch.no_grad():
            out[f"pgd_acc@{e:g}"] = float((model(xa).argmax(1) == y).float().mean())
    out["pgd_minus_cert_min"] = min(out[f"pgd_acc@{e:g}"] - out[f"cert_acc@{e:g}"] for e in EPS)
    return out


def run(seed: int, quick: bool) -> SeedResult:
    # tiny models: one intra-op thread is faster than several (and much faster on a shared, loaded machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(seed, quick)
    finally:
        torch.set_num_threads(threads)


def _run(seed: int, quick: bool) -> SeedResult:
    data = load_digits(val=0.0, test=0.3, seed=seed)
    x, y, xt, yt = data.train.x, data.train.y, data.test.x, data.test.y
    init = torch.rand(20, 64, generator=torch.Generator().manual_seed(seed)) / 10 + 0.45
    sigma0 = median_init_sigma(x, init)
    cfg = CBCTrainConfig(epochs=60, lr=1e-2, batch_size=128, seed=seed)
    common = dict(num_components=20, concepts_per_class=2, sigma=sigma0, init_components=init)
    results, curves = {}, {}
    builders = [
        ("baseline", lambda g: StableCBC(64, 10, loss="margin", margin=0.3, generator=g, **common)),
        ("method", lambda g: RobustStableCBC(64, 10, robust_margin=1.0, generator=g, **common)),
    ]
    if not quick:
        builders.append(("orig", lambda g: CBC(64, 10, margin=0.3, generator=g, **common)))
    for side, build in builders:
        seed_everything(seed)
        model = build(torch.Generator().manual_seed(seed))
        curves[side] = {"train_loss": train_cbc(model, x, y, cfg)}
        results[side] = _evaluate(model, xt, yt)
        with torch.no_grad():
            curves[side]["radius"] = model.certified_radius(xt, yt).tolist()
    if "orig" in results:
        results["baseline"].update({f"orig_{k}": v for k, v in results.pop("orig").items()})
    return {"method": results["method"], "baseline": results["baseline"], "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    grid = torch.linspace(0, 1.5, 61)
    for side, label in (("baseline", "stable CBC (margin)"), ("method", "robust stable CBC")):
        radii = torch.tensor([v for r in results for v in r["curves"][side]["radius"]])
        axes[0].plot(grid, [(radii >= e).float().mean() for e in grid], label=label)
        pgd = [sum(r[side][f"pgd_acc@{e:g}"] for r in results) / len(results) for e in EPS]
        axes[0].scatter(EPS, pgd, marker="x")
        axes[1].plot(torch.tensor([r["curves"][side]["train_loss"] for r in results]).mean(0), label=label)
    axes[0].set_xlabel("L2 radius eps")
    axes[0].set_ylabel("certified accuracy (line), PGD accuracy (x)")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("training loss")
    fig.tight_layout()
    path = outdir / "robust_stable_cbc_certified.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="robust_stable_cbc",
    claim="The robust loss gives clearly higher certified robust accuracy (eps >= 0.5) at a small clean-accuracy cost",
    setup="digits 64-d, 70/30; 20 components, 2 concepts/class, Euclidean, Adam 1e-2, 60 epochs; 5 seeds (quick: 2)",
    method_name="robust stable CBC (robust margin 1.0)",
    baseline_name="stable CBC (margin loss 0.3)",
    checks=[
        Check("cert_acc@0.5", "higher", 0.10),
        Check("cert_acc@1", "higher", 0.05),
        Check("acc", "higher", -0.05),
        Check("pgd_minus_cert_min", "higher", 0.0, against="value"),
    ],
    run=run,
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
