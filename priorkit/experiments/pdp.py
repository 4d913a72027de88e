"""PDP vs gradual magnitude pruning at 95% sparsity (card: sparsity-training.md, "Small-scale check").

Two models, each pruned over all its Linear/Conv layers: an mnist1d MLP and a digits CNN (conv-4). SGD with
momentum and a cosine schedule. PDP: a dense warm-up of ``warmup_epochs``, then the ramp eps =
1 / (``ramp_end`` - ``warmup_epochs``) so r reaches the target at epoch ``ramp_end`` - 1, with an absolute tau
(the paper's recipe); the GMP baseline uses the cubic ramp over the same window and the same global magnitude
ranking across layers. Every setting is in :class:`Config` (``QUICK`` and ``FULL``), which the report prints.
Claim (fixed before the first run): PDP's test accuracy >= GMP's on both models (margin 0). With ``analysis``
(the full tier) the run also reports dense accuracy and two PDP ablations (uniform per-layer budgets; tau
relative to mean w^2) for analysis, outside the verdict. Both sides also report ``max_abs_weight_<model>``,
the largest effective (masked) weight magnitude at the end, which shows whether training inflated the weights.

Diagnosis (``ablations``, full budget): the implementation follows the card (threshold, soft mask, autograd
through it, warm-up, eps ramp, one global allocation, hard mask ``|w| > t`` at the end); most of the gap comes
from the absolute tau. Near the threshold the boost term ``(2 w^2 / tau) m (1 - m)`` multiplies a weight's
gradient by about ``t^2 / (2 tau)``, far above 1 for these small layers at ``tau = 1e-4``; with SGD at lr 0.1 and
momentum those weights are thrown far out, the largest weights grow far beyond GMP's during the ramp and the
loss diverges. A probe that kept the same forward mask but cut the boost (mask computed on the detached weight)
recovered most of the gap, as does a larger tau (the ablations ``tau_1e-3``, ``tau_3e-3``). What remains once
the weights no longer inflate is not diagnosed by a measured ablation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import nn

from priorkit.baselines.gmp import GMP
from priorkit.data import load_digits, load_mnist1d
from priorkit.experiments._common import train_and_test
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics import model_sparsity
from priorkit.models import MLP, Conv4
from priorkit.sparsity._common import prunable_layers
from priorkit.sparsity.pdp import PDP
from priorkit.train import TrainConfig


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    epochs: int = 60
    warmup_epochs: int = 6  # dense warm-up s (PDP) = GMP's start epoch
    ramp_end: int = 40  # PDP's eps = 1 / (ramp_end - warmup_epochs); GMP's end epoch
    sparsity: float = 0.95
    tau: float = 1e-4  # PDP's absolute tau
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    mlp_hidden: tuple[int, ...] = (256, 256)
    cnn_width: int = 16
    cnn_pools: int = 2
    digits_test_fraction: float = 0.3
    analysis: bool = True  # also dense accuracy and the two PDP ablations (outside the verdict)
    ablation_relative_tau: float = 0.1  # the "tau relative to mean w^2" ablation


FULL = Config()
QUICK = Config(epochs=30, warmup_epochs=3, ramp_end=20, analysis=False)


def max_abs_weight(model: nn.Module) -> float:
    """The largest effective (masked) weight magnitude over the prunable layers."""
    return max(float(layer.weight.detach().abs().max()) for layer in prunable_layers(model).values())


def run(seed: int, c: Config) -> SeedResult:
    warm, ramp_end = c.warmup_epochs, c.ramp_end
    eps = 1.0 / (ramp_end - warm)
    cfg = TrainConfig(
        epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum, scheduler="cosine", seed=seed
    )
    setups = {
        "mlp": (load_mnist1d(seed=seed), partial(MLP, 40, c.mlp_hidden, 10)),
        "cnn": (
            load_digits(image=True, val=0.0, test=c.digits_test_fraction, seed=seed),
            partial(Conv4, 1, c.cnn_width, 10, pools=c.cnn_pools),
        ),
    }
    out: dict[str, dict[str, float]] = {"method": {}, "baseline": {}}
    for key, (data, make) in setups.items():
        pdp = lambda m: [PDP(m, c.sparsity, tau=c.tau, warmup_epochs=warm, eps=eps)]  # noqa: E731
        gmp = lambda m: [GMP(m, c.sparsity, start_epoch=warm, end_epoch=ramp_end, scope="global")]  # noqa: E731
        for side, hooks in (("method", pdp), ("baseline", gmp)):
            model, metrics, _ = train_and_test(make, data.train, data.test, cfg, hooks)
            out[side][f"acc_{key}"] = metrics["acc"]
            out[side][f"sparsity_{key}"] = model_sparsity(model)
            out[side][f"max_abs_weight_{key}"] = max_abs_weight(model)
        if c.analysis:  # reported for analysis only; the verdict uses the paper's recipe above
            _, dense, _ = train_and_test(make, data.train, data.test, cfg)
            out["baseline"][f"dense_acc_{key}"] = dense["acc"]
            ablations = {
                "uniform_budgets": dict(global_allocation=False),
                f"tau_relative_{c.ablation_relative_tau:g}": dict(tau=c.ablation_relative_tau, tau_mode="relative"),
            }
            for name, kw in ablations.items():
                hooks = lambda m, kw=kw: [PDP(m, c.sparsity, warmup_epochs=warm, eps=eps, **{"tau": c.tau, **kw})]  # noqa: E731
                _, ab, _ = train_and_test(make, data.train, data.test, cfg, hooks)
                out["method"][f"acc_{key}@{name}"] = ab["acc"]
    return out


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    keys = ("acc_mlp", "acc_cnn")
    for i, side in enumerate(("baseline", "method")):
        means = [sum(r[side][k] for r in results) / len(results) for k in keys]
        ax.bar([j + 0.38 * i for j in range(2)], means, width=0.38, label="GMP (cubic)" if i == 0 else "PDP")
    ax.set_xticks([0.19, 1.19], ["mnist1d MLP", "digits CNN"])
    sparsity = sum(r["method"]["sparsity_mlp"] for r in results) / len(results)
    ax.set_ylabel(f"test accuracy at {sparsity:.0%} sparsity")
    ax.legend()
    fig.tight_layout()
    path = outdir / "pdp_acc.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="pdp",
    claim="At 95% sparsity, accuracy at least that of gradual magnitude pruning (cubic ramp, same epochs)",
    setup="mnist1d MLP 40-hidden-10 and digits conv-4, global sparsity over all Linear/Conv layers; SGD with "
    "momentum, cosine schedule; the same epochs for both methods",
    method_name="PDP (absolute tau, warm-up + eps ramp)",
    baseline_name="GMP (cubic ramp, global magnitude)",
    checks=[Check("acc_mlp", "higher", 0.0), Check("acc_cnn", "higher", 0.0)],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    ablations={
        # the paper's absolute tau is the key hyperparameter: a larger tau shrinks the gradient boost near the
        # threshold (about t^2 / (2 tau)); the analysis runs are off to keep each ablation to PDP and GMP
        "tau_1e-3": {"tau": 1e-3, "analysis": False},
        "tau_3e-3": {"tau": 3e-3, "analysis": False},
    },
    diagnosis="Not an implementation bug: the threshold, soft mask, schedule and final hard mask follow the card. "
    "At the paper's absolute tau the mask is effectively hard on these small layers, and the boost term of its "
    "gradient multiplies the step of a weight near the threshold by about t^2 / (2 tau), far above 1 here; with "
    "SGD at lr 0.1 those weights are thrown out, PDP's weights inflate far beyond GMP's (max_abs_weight_mlp, "
    "max_abs_weight_cnn) and the loss diverges during the ramp. The tau sweep shows it: as tau grows (ablations "
    "tau_1e-3, tau_3e-3) the largest weights shrink back to GMP's scale and most of the accuracy gap closes on "
    "both models, as it does with tau relative to mean w^2 (acc_*@tau_relative_0.1). Even where the weights no "
    "longer inflate PDP still trails GMP; that remainder is not diagnosed by a measured ablation here (the "
    "candidates are PDP's linear ramp, which removes most of the remaining weights in its last epochs, and its "
    "layer budgets fixed once after the warm-up, where GMP re-ranks globally every epoch; uniform budgets, "
    "acc_*@uniform_budgets, are worse still).",
    notes="N:M PDP vs SR-STE (needs pgf_nm) and the one-shot-at-epoch-40 baseline are not run yet.",
)
