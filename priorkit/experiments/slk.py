"""SLK vs SimpleShot on digits novel classes (card: prototypes-fewshot-ood.md, "Small-scale check on CPU").

Backbone: MLP 64-128-64 trained with cross-entropy on base classes 0-4 (30 epochs, SGD lr 0.05 momentum 0.9,
weight decay 5e-4, batch 64), once per seed. Features of novel classes 5-9; 5-way 1-shot and 5-shot tasks
with 15 queries per class (full: 1,000 tasks per shot, quick: 100). lambda of SLK-Means and SLK-MS is tuned
per shot over the card's grid on tasks built from held-out base-class images (full mode, 200 tasks);
quick mode (100 tasks per shot) uses the card's default lambda 0.7 and leaves out SLK-MS, to stay under a minute.
Compared on the same tasks: SimpleShot (CL2N nearest prototype, the baseline), transductive K-means
(lambda=0), SLK-Means and SLK-MS (CL2N + query shift for all transductive variants). Accuracies are means
over tasks; ``*_ci95`` is the 95% CI half-width over tasks.

Rules, fixed before the first run from the card's "Expected": SLK-Means 1-shot >= SimpleShot + 3 points;
K-means - SimpleShot >= 3 points at 1-shot; SLK-Means >= K-means at 1-shot; SLK-Means 5-shot >= SimpleShot.
"""

from __future__ import annotations

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


def train_backbone(seed: int) -> tuple[MLP, object]:
    fs = load_fewshot("digits", base_classes=5, seed=seed)
    seed_everything(seed)
    model = MLP(64, (128, 64), len(fs.base_classes))
    cfg = TrainConfig(epochs=30, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, seed=seed, progress=False)
    Trainer(model, fs.base_train, config=cfg).fit()
    return model.eval(), fs


def run(seed: int, quick: bool) -> SeedResult:
    model, fs = train_backbone(seed)
    with torch.no_grad():
        base_mean = model.features(fs.base_train.x).mean(0)
        f_val, f_novel = model.features(fs.base_val.x), model.features(fs.novel.x)
    n_test, n_val = (100, 0) if quick else (1000, 200)
    method: dict[str, float] = {}
    baseline: dict[str, float] = {}
    curves: dict[str, dict] = {}
    for shot in (1, 5):
        lam_km = lam_ms = SPEC.presets["paper"]["lam"]  # the card's default 0.7; quick mode does not tune
        scores_km: dict[float, float] = {}
        scores_ms: dict[float, float] = {}
        if not quick:
            kw = dict(n_shot=shot, n_episodes=n_val, seed=10_000 + seed)
            lam_km, scores_km = tune_lambda(f_val, fs.base_val.y, base_mean, mode="kmeans", **kw)
            lam_ms, scores_ms = tune_lambda(f_val, fs.base_val.y, base_mean, mode="ms", **kw)
        sampler = EpisodeSampler(fs.novel.y, n_way=5, n_shot=shot, n_query=15, n_episodes=n_test, seed=seed)
        xs, ys, xq, yq = episode_batch(f_novel, sampler, base_mean)
        raw_s = torch.stack([ep.support(f_novel) for ep in sampler])
        raw_q = torch.stack([ep.query(f_novel) for ep in sampler])
        preds = {
            "simpleshot": simpleshot(cl2n(raw_s, base_mean), ys, cl2n(raw_q, base_mean)),
            "kmeans": slk(xs, ys, xq, lam=0.0, mode="kmeans").labels,
            "slk_means": slk(xs, ys, xq, lam=lam_km, mode="kmeans").labels,
        }
        if not quick:
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
        "digits, MLP 64-128-64 CE-trained on base classes 0-4 (30 epochs); novel 5-9, 5-way 1/5-shot, 15 queries, "
        "1000 tasks x 3 seeds (quick: 100 x 2, lambda=0.7, no SLK-MS); lambda tuned on held-out base-class tasks"
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
    seeds=3,
    quick_seeds=2,
    plot=plot,
)
