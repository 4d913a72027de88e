"""Hessian alignment (HGP, Hutchinson) vs ERM and IRM on colored digits (card: regularizers-theory.md).

The card's "Small-scale check on CPU": IRM's ColoredMNIST construction on scikit-learn digits
(:func:`priorkit.data.domains.colored_digits`: ``y = 1[digit >= 5]`` flipped with probability 0.25, the image in
channel ``c`` of a 2-channel input, ``c = y`` flipped with probability e; source domains e = 0.1 and 0.2, target
e = 0.9). A 2x128 MLP is trained through the engine with :func:`HessianAlignmentRecipe` (DomainBed's update: one
minibatch per source domain per step; here the whole domain, "full batch", i.e. ``per_domain`` = the smallest
source domain) with four penalties on the same data, seeds, initial weights and budget: none (ERM), IRM
(DomainBed's split-half formula, :func:`irm_penalty`), HGP and Hutchinson. All four use the official ColoredMNIST
protocol (the ``small`` preset): Adam, explicit L2, weight 1 for ``anneal_steps`` steps then
``penalty_weight`` with the loss divided by it; HGP/Hutchinson in the ColoredMNIST form (sum over domains,
alpha = beta = 1, no stop-gradient on the domain mean; ``Config.detach_mean=True`` gives DomainBed's
stop-gradient). Metric: accuracy on the e = 0.9 target domain (about 75% is the most a perfect shape classifier
gets); the training-domain validation accuracy (DomainBed's default selection rule) is reported beside it, and
the full tier also trains ERM on colour-blind inputs (``oracle_test_acc``: what a shape-only model of this size
reaches on this data, the practical ceiling of an invariant predictor here).

Rules (the card's "Expected: ERM well below 50% (uses colour), HGP/Hutchinson substantially higher (>= 55%)",
fixed before the first run): the 95% interval over seeds of HGP's and of Hutchinson's target accuracy lies at or
above 0.55; each beats ERM by at least 10 points (seed-paired); ERM's target accuracy lies at or below 0.40.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.domains import DomainData, colored_digits
from priorkit.experiments._common import accuracy_on, train_and_test
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.regularizers.hessian_alignment import HessianAlignmentRecipe
from priorkit.train import Recipe, TrainConfig

ARMS = ("erm", "irm", "hgp", "hutchinson")


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    envs: tuple[float, ...] = (0.1, 0.2, 0.9)  # colour-flip probability per domain; the last is the target
    label_noise: float = 0.25
    val: float = 0.2  # training-domain validation share of each source domain
    hidden: tuple[int, ...] = (128, 128)
    steps: int = 600
    anneal_steps: int = 150
    penalty_weight: float = 91257.19  # the ColoredMNIST script's weight after annealing (loss divided by it)
    lr: float = 4.9e-4
    l2: float = 1.1e-3
    num_probes: int = 50  # Hutchinson's S
    shared_probes: bool = False  # official: each domain and the mean draw their own probes
    detach_mean: bool = False  # ColoredMNIST script; True is DomainBed's stop-gradient
    per_domain: int | None = None  # None: full batch (every example of the smallest source domain, each step)
    oracle: bool = True  # also train ERM on colour-blind inputs (channels summed): the attainable invariant accuracy


FULL = Config()
QUICK = Config(steps=100, anneal_steps=25, num_probes=10, oracle=False)


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's IRM penalty of one domain: the product of the gradients w.r.t. a dummy scale 1.0 of the
    cross-entropies of the even and the odd rows (an unbiased estimate of the squared gradient)."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    g1 = torch.autograd.grad(F.cross_entropy(logits[::2] * scale, y[::2]), [scale], create_graph=True)[0]
    g2 = torch.autograd.grad(F.cross_entropy(logits[1::2] * scale, y[1::2]), [scale], create_graph=True)[0]
    return g1 * g2


def _irm(logits: list, ys: list, losses: list, params: list) -> torch.Tensor:
    """IRM as a :func:`HessianAlignmentRecipe` penalty: the mean over domains (DomainBed)."""
    return torch.stack([irm_penalty(lg, y) for lg, y in zip(logits, ys)]).mean()


def _recipe(arm: str, data: DomainData, c: Config, seed: int) -> Recipe:
    common = dict(steps=c.steps, anneal_steps=c.anneal_steps, penalty_weight=c.penalty_weight, rescale=True,
                  lr=c.lr, l2=c.l2, per_domain=c.per_domain, seed=seed)  # fmt: skip
    if arm == "erm":
        return HessianAlignmentRecipe(data, penalty=None, **common)
    if arm == "irm":
        return HessianAlignmentRecipe(data, penalty=_irm, **common)
    return HessianAlignmentRecipe(data, penalty=arm, alpha=1.0, beta=1.0, reduction="sum",
                                  detach_mean=c.detach_mean, num_probes=c.num_probes, shared_probes=c.shared_probes,
                                  **common)  # fmt: skip


def _colour_blind(data: DomainData) -> DomainData:
    """The same domains with the colour removed (both channels hold the sum of the two): what a model that
    cannot use colour sees; ERM on it measures how much of the card's 75% a shape-only model reaches here."""

    def gray(d: IndexedTensorDataset) -> IndexedTensorDataset:
        return IndexedTensorDataset(d.x.sum(1, keepdim=True).expand_as(d.x).contiguous(), d.y)

    return dataclasses.replace(
        data, train=[gray(d) for d in data.train], val=[gray(d) for d in data.val], test=gray(data.test)
    )


def run(seed: int, c: Config) -> SeedResult:
    data = colored_digits(c.envs, target=len(c.envs) - 1, label_noise=c.label_noise, val=c.val, seed=seed)
    make = partial(MLP, 2 * 8 * 8, c.hidden, 2)
    cfg = TrainConfig(seed=seed)
    arms = {}
    for arm in ARMS:
        recipe = partial(_recipe, arm, data, c, seed)
        model, metrics, _ = train_and_test(make, data.pooled(), data.test, cfg, recipe=lambda m, r=recipe: r())
        arms[arm] = {
            "test_acc": metrics["acc"],
            "test_nll": metrics["nll"],
            "val_acc": sum(accuracy_on(model, v) for v in data.val) / len(data.val),
            "train_acc": sum(accuracy_on(model, d) for d in data.train) / len(data.train),
        }
    meth = dict(arms["hgp"])
    for arm in ("hutchinson", "irm"):
        meth.update({f"{k}_{arm}": v for k, v in arms[arm].items()})
    meth["hutchinson_gain"] = arms["hutchinson"]["test_acc"] - arms["erm"]["test_acc"]
    meth["erm_test_acc"] = arms["erm"]["test_acc"]
    if c.oracle:
        gray = _colour_blind(data)
        model, metrics, _ = train_and_test(
            make, gray.pooled(), gray.test, cfg, recipe=lambda m: _recipe("erm", gray, c, seed)
        )
        meth["oracle_test_acc"] = metrics["acc"]
        meth["oracle_train_acc"] = sum(accuracy_on(model, d) for d in gray.train) / len(gray.train)
    return {"method": meth, "baseline": dict(arms["erm"]), "curves": {"arms": arms}}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 2.9))
    labels = ["ERM", "IRM", "HGP", "Hutchinson"]
    for ax, key, title in ((axes[0], "test_acc", "target (e = 0.9) accuracy"),
                           (axes[1], "val_acc", "training-domain validation accuracy")):  # fmt: skip
        vals = [[r["curves"]["arms"][a][key] for r in results] for a in ARMS]
        ax.boxplot(vals, tick_labels=labels)
        ax.set_title(title, fontsize=9)
    axes[0].axhline(0.75, color="0.6", lw=1, ls="--", label="perfect shape classifier")
    oracle = [r["method"]["oracle_test_acc"] for r in results if "oracle_test_acc" in r["method"]]
    if oracle:
        axes[0].axhline(sum(oracle) / len(oracle), color="C2", lw=1, ls=":", label="colour-blind ERM (mean)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "hessian_alignment_acc.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="hessian_alignment",
    claim="On colored digits (colour spuriously predictive in the source domains, reversed in the target), HGP "
    "and Hutchinson reach at least 55% target accuracy and beat ERM by at least 10 points, while ERM stays well "
    "below 50% (at most 40%)",
    setup="colored digits from scikit-learn digits (source e = 0.1, 0.2; target e = 0.9; label noise 0.25), "
    "2x128 MLP, full-batch DomainBed update through the engine, the ColoredMNIST penalty schedule for every arm; "
    "IRM (DomainBed formula) reported beside",
    method_name="HGP",
    baseline_name="ERM",
    checks=[
        Check("test_acc", "higher", 0.55, against="value"),
        Check("test_acc_hutchinson", "higher", 0.55, against="value"),
        Check("test_acc", "higher", 0.10),
        Check("hutchinson_gain", "higher", 0.10, against="value"),
        Check("erm_test_acc", "lower", 0.40, against="value"),
    ],
    diagnosis="HGP beats ERM on the colour-flipped target on average, but neither penalty reaches the card's 0.55 "
    "and the 10-point gain over ERM is not clear of its interval. In-run metrics: the shape-only ceiling "
    "on this data (ERM on colour-blind inputs, the oracle metric) is itself far under the card's 75%, "
    "because 958 noisy-label digit images let the 2x128 MLP memorise; after the penalty weight jumps the "
    "penalty falls to about zero while the cross-entropy stays high, so the network matches the domains' "
    "head gradients and Hessians without giving up colour. Hutchinson with the official independent "
    "probes drifts toward a constant predictor (its penalty's expectation carries the probes' variance); "
    "the shared_probes ablation removes that drift, and its Hutchinson-over-ERM gain clears the rule, "
    "while the absolute 0.55 is still out of reach.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="What was learnt while building it (development runs on one seed, before the bench): HGP and Hutchinson "
    "raised the target accuracy clearly above ERM's but stayed under the card's 0.55, and IRM moved little. After "
    "the weight jump the penalty is driven to about zero within a few dozen steps while the raw cross-entropy "
    "stays high: on 958 training images the 2x128 MLP can match the domains' head gradients and Hessians without "
    "giving up colour. The card's ~75% ceiling assumes a perfect shape classifier; here a colour-blind ERM model "
    "(oracle_test_acc) memorises the noisy training labels (oracle_train_acc) and stays well below 75%, and since "
    "colour is the channel that holds the image, each channel sees the label-minority shapes in only about 15% "
    "of its images (ColoredMNIST has 25,000 images per domain), so the invariant solution is much weaker on "
    "this data than on ColoredMNIST. Hutchinson with the official independent probes drifted towards a constant "
    "classifier (train and target accuracy near chance, large target NLL): with probes drawn separately for each "
    "domain and for the mean, the expected penalty also holds the estimators' variances, which the 91257x weight "
    "then removes by flattening the head's Hessian; a constant predictor scores about 0.5 on the target, so "
    "beating ERM's below-chance accuracy by 10 points is not evidence of invariance on its own, and the 0.55 "
    "rule is what separates the two. With shared probes (Config.shared_probes, one development run) that term "
    "cancels and Hutchinson behaved like HGP instead.",
    # the official Hutchinson draws independent probes per domain, so the penalty's expectation carries the
    # estimators' variance; one shared probe set per step removes it
    ablations={"shared_probes": {"shared_probes": True}},
    threads=1,
)
