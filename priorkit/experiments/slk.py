"""SLK vs SimpleShot on digits novel classes (card: prototypes-fewshot-ood.md, "Small-scale check on CPU").

Backbone: an MLP trained with cross-entropy (SGD) on the base classes, once per seed. Features of the novel
classes; N-way tasks at each shot count with a fixed number of queries per class. lambda of SLK-Means and SLK-MS
is tuned per shot over the card's grid on tasks built from held-out base-class images (``tune_tasks`` > 0, the
full tier); the quick tier uses the card's default lambda and leaves out SLK-MS, to stay under a minute. Every
setting is in :class:`Config` (``QUICK`` and ``FULL``), which the report prints. Compared on the same tasks:
SimpleShot (CL2N nearest prototype, the baseline), transductive K-means (lambda=0), SLK-Means and SLK-MS (CL2N +
query shift for all transductive variants). Accuracies are means over tasks; ``*_ci95`` is the 95% CI half-width
over tasks.

Rules, fixed before the first run from the card's "Expected": SLK-Means 1-shot >= SimpleShot + 3 points;
K-means - SimpleShot >= 3 points at 1-shot; SLK-Means >= K-means at 1-shot; SLK-Means 5-shot >= SimpleShot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from priorkit.baselines.fewshot import simpleshot
from priorkit.core.seeding import seed_everything
from priorkit.data.episodes import EpisodeSampler, load_fewshot
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.fewshot import mean_ci95
from priorkit.models import MLP
from priorkit.prototypes.slk import SPEC, cl2n, episode_batch, slk, tune_lambda
from priorkit.train import TrainConfig, Trainer


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    base_classes: int = 5  # digits 0..base_classes-1 train the backbone; the rest are novel
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    shots: tuple[int, ...] = (1, 5)
    n_way: int = 5
    n_query: int = 15  # per class
    n_tasks: int = 1000  # test tasks per shot
    tune_tasks: int = 200  # held-out base-class tasks for tuning lambda; 0 = no tuning (default_lam)
    tune_seed_offset: int = 10_000  # tuning tasks use seed + offset
    lambdas: tuple[float, ...] = (0.05, 0.1, 0.3, 0.5, 0.7, 0.8, 1.0)  # the card's tuning grid
    default_lam: float = SPEC.presets["paper"]["lam"]  # the card's default, used when not tuning
    slk_ms: bool = True  # also run SLK-MS


FULL = Config()
QUICK = Config(n_tasks=100, tune_tasks=0, slk_ms=False)


def train_backbone(seed: int, c: Config = FULL) -> tuple[MLP, object]:
    fs = load_fewshot("digits", base_classes=c.base_classes, seed=seed)
    seed_everything(seed)
    model = MLP(64, c.hidden, len(fs.base_classes))
    cfg = TrainConfig(
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        seed=seed,
        progress=False,
    )
    Trainer(model, fs.base_train, config=cfg).fit()
    return model.eval(), fs


def run(seed: int, c: Config) -> SeedResult:
    model, fs = train_backbone(seed, c)
    with torch.no_grad():
        base_mean = model.features(fs.base_train.x).mean(0)
        f_val, f_novel = model.features(fs.base_val.x), model.features(fs.novel.x)
    method: dict[str, float] = {}
    baseline: dict[str, float] = {}
    curves: dict[str, dict] = {}
    for shot in c.shots:
        lam_km = lam_ms = c.default_lam
        scores_km: dict[float, float] = {}
        scores_ms: dict[float, float] = {}
        if c.tune_tasks:
            kw = dict(
                lambdas=c.lambdas,
                n_way=c.n_way,
                n_shot=shot,
                n_query=c.n_query,
                n_episodes=c.tune_tasks,
                seed=c.tune_seed_offset + seed,
            )
            lam_km, scores_km = tune_lambda(f_val, fs.base_val.y, base_mean, mode="kmeans", **kw)
            lam_ms, scores_ms = tune_lambda(f_val, fs.base_val.y, base_mean, mode="ms", **kw)
        sampler = EpisodeSampler(
            fs.novel.y, n_way=c.n_way, n_shot=shot, n_query=c.n_query, n_episodes=c.n_tasks, seed=seed
        )
        xs, ys, xq, yq = episode_batch(f_novel, sampler, base_mean)
        raw_s = torch.stack([ep.support(f_novel) for ep in sampler])
        raw_q = torch.stack([ep.query(f_novel) for ep in sampler])
        preds = {
            "simpleshot": simpleshot(cl2n(raw_s, base_mean), ys, cl2n(raw_q, base_mean)),
            "kmeans": slk(xs, ys, xq, lam=0.0, mode="kmeans").labels,
            "slk_means": slk(xs, ys, xq, lam=lam_km, mode="kmeans").labels,
        }
        if c.slk_ms:
            preds["slk_ms"] = slk(xs, ys, xq, lam=lam_ms, mode="ms").labels
        acc = {k: (p == yq).double().mean(1) for k, p in preds.items()}
        stats = {k: mean_ci95(v) for k, v in acc.items()}
        tag = f"{shot}shot"
        method[f"acc_{tag}"], method[f"acc_{tag}_ci95"] = stats["slk_means"]
        baseline[f"acc_{tag}"], baseline[f"acc_{tag}_ci95"] = stats["simpleshot"]
        method[f"kmeans_acc_{tag}"], method[f"kmeans_acc_{tag}_ci95"] = stats["kmeans"]
        if "slk_ms" in stats:
            method[f"slk_ms_acc_{tag}"], method[f"slk_ms_acc_{tag}_ci95"] = stats["slk_ms"]
        method[f"kmeans_gain_{tag}"] = stats["kmeans"][0] - stats["simpleshot"][0]
        method[f"slk_gain_over_kmeans_{tag}"] = stats["slk_means"][0] - stats["kmeans"][0]
        method[f"lambda_means_{tag}"], method[f"lambda_ms_{tag}"] = lam_km, lam_ms
        curves[tag] = {
            "lambdas": list(scores_km),
            "val_means": list(scores_km.values()),
            "val_ms": list(scores_ms.values()),
        }
        curves[tag]["test"] = {k: list(v) for k, v in stats.items()}
    return {"method": method, "baseline": baseline, "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    names = [n for n in ("simpleshot", "kmeans", "slk_means", "slk_ms") if n in results[0]["curves"]["1shot"]["test"]]
    for ax, tag in zip(axes[:2], ("1shot", "5shot")):
        means = torch.tensor([[r["curves"][tag]["test"][n][0] for n in names] for r in results])
        cis = torch.tensor([[r["curves"][tag]["test"][n][1] for n in names] for r in results])
        ax.bar(range(len(names)), means.mean(0), yerr=cis.mean(0), color=["0.6", "C0", "C1", "C2"][: len(names)])
        ax.set_xticks(range(len(names)), ["SimpleShot", "K-means", "SLK-Means", "SLK-MS"][: len(names)], fontsize=8)
        ax.set_ylim(max(0.0, float(means.min()) - 0.1), min(1.0, float(means.max()) + 0.05))
        ax.set_title(f"novel 5-way {tag} (mean +- 95% CI)")
    ax = axes[2]
    for tag, ls in (("1shot", "-"), ("5shot", "--")):
        for key, col in (("val_means", "C1"), ("val_ms", "C2")):
            if not results[0]["curves"][tag][key]:
                continue
            vals = torch.tensor([r["curves"][tag][key] for r in results]).mean(0)
            ax.plot(
                results[0]["curves"][tag]["lambdas"], vals, ls=ls, color=col, marker="o", ms=3, label=f"{key[4:]} {tag}"
            )
    ax.set_xlabel("lambda")
    ax.set_ylabel("val accuracy")
    ax.set_title("lambda tuning (held-out base classes)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "slk_accuracy.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="slk",
    claim="Transductive K-means beats SimpleShot by >= 3 points at 1-shot, and SLK adds on top of K-means",
    setup=(
        "digits, MLP CE-trained on the base classes; N-way few-shot tasks on the novel classes (CL2N features, query "
        "shift for the transductive variants); lambda tuned on held-out base-class tasks (quick: the card's default, "
        "no SLK-MS)"
    ),
    method_name="SLK-Means (tuned lambda)",
    baseline_name="SimpleShot (CL2N nearest prototype)",
    checks=[
        Check("acc_1shot", "higher", 0.03),
        Check("kmeans_gain_1shot", "higher", 0.03, against="value"),
        Check("slk_gain_over_kmeans_1shot", "higher", 0.0, against="value"),
        Check("acc_5shot", "higher", 0.0),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
