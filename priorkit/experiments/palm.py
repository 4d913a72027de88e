"""PALM vs its single-prototype (CIDER-like) variant for OOD detection on digits (card: prototypes-fewshot-ood.md).

Setup (the card's "Small-scale check on CPU"): ID = the ID digit classes (70/30 split, ID training samples only);
near-OOD = the test images of the other digits; far-OOD = uniform-noise 8x8 images (as many as the ID test set).
MLP encoder + projection head + L2 norm; two views per sample (random pixel shift along each axis + Gaussian
noise); the paper's optimiser (SGD Nesterov, warm-up epochs, per-step cosine to a fraction of the lr). PALM: M
prototypes per class, top-k assignment, Sinkhorn, MLE + prototype-contrastive loss. Prototype momentum: the
official constructor's default instead of the CIFAR 0.999: this run has ~450 steps, against ~49k in the paper,
and with 0.999 the prototypes would cover only a third of their way from the random init (0.999^450 = 0.64).
Baseline: the same loss with one prototype per class (CIDER-like); a CE-trained encoder (linear classifier, same
views and epochs, SGD with cosine decay) is reported beside it under ``ce_*`` when ``Config.ce_reference`` is set
(full tier only). All use the SSD+ score on the encoder features (PALM's SSD+ with the official centring quirk is
reported as ``*_official_centering``; the class-conditional Mahalanobis score of the CE model as ``ce_cmaha_*``).
Every setting is in :class:`Config` (``QUICK`` and ``FULL``), which the report prints.

Rule (the card's "Expected: PALM >= the M=1 variant on near-OOD by roughly 1-3 AUROC points. The effect may be
small at this scale, so report the spread honestly."): the 95% t-interval of the seed-paired near-OOD AUROC
differences (PALM - M=1) lies entirely above 0.01, the low end of the card's effect. The margin is the effect size
the card states, not an allowance for noise: the seed-to-seed spread (about as large as the effect here) widens
the paired interval instead, so a real 1-point gain needs seeds that agree on it. The margin is unchanged since the
first run (it was already the card's low end); the bench now decides every check on the paired interval.

What was learnt: at this scale (5 ID classes of 8x8 digits, a few hundred training images) one prototype per class
already separates the held-out digits well, so the near-OOD difference between M=6 and M=1 is of the order of the
seed spread and changes sign between seeds; two quick-tier seeds cannot resolve it. The card warned the effect may
be small.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from priorkit.baselines.ood import class_mahalanobis_fit, class_mahalanobis_score, ssd_fit, ssd_score
from priorkit.core.seeding import seed_everything
from priorkit.data.ood import ood_split, shift_noise_views
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics import auroc, fpr_at_95_tpr
from priorkit.models import MLP
from priorkit.prototypes.palm import PALMHook, PALMNet, embed
from priorkit.train import Augment, TrainConfig, Trainer


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it); the PALM settings are its ``small`` preset."""

    epochs: int = 150
    batch_size: int = 256
    id_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    far: tuple[str, ...] = ("uniform",)
    hidden: tuple[int, ...] = (256, 128)  # encoder MLP 64-256-128
    head_hidden: int = 128
    proj_dim: int = 32
    max_shift: int = 1  # views: random shift (pixels) along each axis
    sigma: float = 0.1  # views: Gaussian noise
    num_protos: int = 6
    k: int = 5
    baseline_num_protos: int = 1
    baseline_k: int = 1
    momentum: float = 0.99  # prototype EMA
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iters: int = 3
    lambda_pcon: float = 1.0
    pcon_temperature: float = 0.5
    lr: float = 0.5
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_epochs: int = 10
    min_lr_ratio: float = 1e-3
    ce_reference: bool = True  # also train the CE encoder (reported as ce_*, not part of the rule)
    ce_lr: float = 0.1


FULL = Config()
QUICK = Config(epochs=100, ce_reference=False)


def _views(c: Config) -> partial:
    return partial(shift_noise_views, max_shift=c.max_shift, sigma=c.sigma, image_shape=(8, 8))


def _ood_metrics(s_in: torch.Tensor, s_out: dict[str, torch.Tensor], suffix: str = "") -> dict[str, float]:
    out = {}
    for name, s in s_out.items():
        out[f"auroc_{name}{suffix}"] = auroc(s_in, s)
        out[f"fpr95_{name}{suffix}"] = fpr_at_95_tpr(s_in, s)
    return out


def _palm_side(data, seed: int, c: Config, m: int, k: int) -> dict[str, float]:  # noqa: ANN001
    seed_everything(seed)
    net = PALMNet(MLP(64, c.hidden, data.num_classes), proj_dim=c.proj_dim, hidden=c.head_hidden)
    settings = dict(
        num_protos=m, k=k, momentum=c.momentum, temperature=c.temperature, epsilon=c.epsilon,
        sinkhorn_iters=c.sinkhorn_iters, lambda_pcon=c.lambda_pcon, pcon_temperature=c.pcon_temperature,
        epochs=c.epochs, lr=c.lr, sgd_momentum=c.sgd_momentum, weight_decay=c.weight_decay,
        warmup_epochs=c.warmup_epochs, min_lr_ratio=c.min_lr_ratio,
    )  # fmt: skip
    hook = PALMHook(data.num_classes, c.proj_dim, **settings, seed=seed, augment=_views(c))
    cfg = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, seed=seed, progress=False)
    hist = Trainer(net, data.train, recipe=hook.recipe(), hooks=[hook], config=cfg).fit()
    fit = ssd_fit(embed(net, data.train.x))
    s_in = ssd_score(fit, embed(net, data.test.x))
    outs = {n: ssd_score(fit, embed(net, d.x)) for n, d in data.ood.items()}
    res = _ood_metrics(s_in, outs)
    s_in_o = ssd_score(fit, embed(net, data.test.x), official_centering=True)
    outs_o = {n: ssd_score(fit, embed(net, d.x), official_centering=True) for n, d in data.ood.items()}
    res.update(_ood_metrics(s_in_o, outs_o, "_official_centering"))
    res["final_loss"] = hist[-1]["loss"]
    return res


def _ce_side(data, seed: int, c: Config) -> dict[str, float]:  # noqa: ANN001
    seed_everything(seed)
    model = MLP(64, c.hidden, data.num_classes)
    cfg = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.ce_lr, scheduler="cosine", seed=seed,
                      progress=False)  # fmt: skip
    views = _views(c)
    Trainer(model, data.train, hooks=[Augment(lambda x: views(x))], config=cfg).fit()
    model.eval()
    with torch.no_grad():
        f_tr, f_te = model.features(data.train.x), model.features(data.test.x)
        f_ood = {n: model.features(d.x) for n, d in data.ood.items()}
        acc = float((model(data.test.x).argmax(1) == data.test.y).float().mean())
    fit = ssd_fit(f_tr)
    res = _ood_metrics(ssd_score(fit, f_te), {n: ssd_score(fit, f) for n, f in f_ood.items()})
    cm = class_mahalanobis_fit(f_tr, data.train.y)
    res.update(
        _ood_metrics(
            class_mahalanobis_score(cm, f_te), {n: class_mahalanobis_score(cm, f) for n, f in f_ood.items()}, "_cmaha"
        )
    )
    res["id_acc"] = acc
    return {f"ce_{k}": v for k, v in res.items()}


def run(seed: int, c: Config) -> SeedResult:
    data = ood_split("digits", id_classes=c.id_classes, far=c.far, seed=seed)
    method = _palm_side(data, seed, c, m=c.num_protos, k=c.k)
    baseline = _palm_side(data, seed, c, m=c.baseline_num_protos, k=c.baseline_k)
    if c.ce_reference:  # the CE reference (not part of the rule)
        baseline.update(_ce_side(data, seed, c))
    return {"method": method, "baseline": baseline}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    keys = ("auroc_near", "auroc_far")
    sides = [("method", "", "PALM M=6"), ("baseline", "", "M=1 (CIDER-like)")]
    if "ce_auroc_near" in results[0]["baseline"]:
        sides.append(("baseline", "ce_", "CE + SSD+"))
    fig, ax = plt.subplots(figsize=(5, 3))
    for i, (side, pre, label) in enumerate(sides):
        vals = [sum(r[side][pre + k] for r in results) / len(results) for k in keys]
        ax.bar([j + 0.27 * i for j in range(len(keys))], vals, width=0.27, label=label)
    ax.set_xticks([j + 0.27 for j in range(len(keys))], ["near-OOD (5-9)", "far-OOD (noise)"])
    ax.set_ylabel("AUROC (SSD+)")
    ax.set_ylim(0.5, 1.0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "palm_auroc.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="palm",
    claim="A mixture of prototypes per class (M=6, k=5) gives a higher near-OOD AUROC than one prototype per class "
    "(by roughly 1-3 points)",
    setup="digits: ID classes, near-OOD = the other digits, far-OOD uniform noise; MLP encoder + projection head; "
    "two views (pixel shift + noise); SGD Nesterov with warm-up and per-step cosine; SSD+ score",
    method_name="PALM (mixture of prototypes per class, top-k assignment)",
    baseline_name="single prototype per class (CIDER-like)",
    checks=[Check("auroc_near", "higher", 0.01)],
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="The CE-trained encoder with the same SSD+ score is reported as ce_* in the baseline column. The margin "
    "(0.01 AUROC) is the low end of the card's expected 1-3 points; the per-seed spread enters the paired 95% "
    "interval, not the margin.",
)
