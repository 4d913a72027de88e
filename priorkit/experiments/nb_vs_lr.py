"""Naive Bayes vs logistic regression: sample complexity (card: prototypes-fewshot-ood.md, ``nb_vs_lr``).

Part 1, the paper's simulation (``main_simulation.py``): n=100 features, K=2 classes, "easy" covariance; a
training pool of 100n=10,000 and a 10,000-sample test set drawn from the seed; training sizes sampled from the
official grid ``range(4, 10000, 5)`` between 4 and 2,000 (15 points, geometric); 5 repeats per size with
subsets missing a class redrawn; each model's sweep stops at the first size whose mean error is within 0.01
of the Bayes error (the official stop rule). NB: pooled-variance Gaussian NB, eps 1e-9. LR: scikit-learn
lbfgs, C=1, max_iter 1000. The metric ``log10_m_reach`` is log10 of the first size within 0.01 of the Bayes
error (log10 2000 when never reached, which only understates the gap).

Part 2, frozen features: an MLP 64-128-64 trained on digits 0-4 (SGD lr 0.1 momentum 0.9, weight decay 5e-4,
cosine schedule, 30 epochs) embeds digits 5-9; features are min-max scaled with the probe pool's range; NB and
LR probes are fitted on m per class in {5, 10, 20, 50, all} (5 repeats) and tested on the held-out 5-9 images.

Part 3, a real pretrained encoder: all-MiniLM-L6-v2 embeddings of 400 templated sentences across 5 topics
(50 per topic in the probe pool, 30 held out), the same NB / LR probes; reported as ``text_probe_err_*``, outside
the rule (it was added after the rule was fixed). Measured (quick): both probes are at 0.000-0.001 error from
5 shots on: the templated topics are too easy to separate NB from LR; a harder text task is still to be chosen.

Full mode: 5 seeds; quick mode: 2 seeds (same per-seed budget).

Rule (fixed before the first run, from the card's "Expected"): in the simulation NB gets within 0.01 of its
asymptote at an m at least an order of magnitude smaller than LR (``log10_m_reach`` lower by >= 1), and on the
frozen digit features NB's 5-shot probe error is not above LR's.

Outcome (quick mode, 2 seeds, first run): the simulation reproduces (NB within 0.01 of the Bayes error at m=9,
LR at m=169, a factor of ~19); the frozen-feature part does not: NB's probe error is above LR's at every m
(5-shot 0.404 vs 0.372, all 0.363 vs 0.178). Likely why: features of a small supervised MLP are sparse ReLU
units whose class-conditional distributions are far from Gaussian with a shared diagonal variance, and units
rarely active on the probe classes get tiny pooled variances (absolute eps 1e-9) and so dominate the NB score;
the paper's features come from large pretrained backbones, where its NB-wins-few-shot regime was observed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from priorkit.core.seeding import seed_everything
from priorkit.data import load_digits
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.prototypes.nb_vs_lr import bayes_error, fit_logistic, fit_nb, learning_curve, m_to_reach, simulate
from priorkit.train import TrainConfig, Trainer

N, K, MAX_M, REPEATS, WITHIN = 100, 2, 2000, 5, 0.01
SHOTS = (5, 10, 20, 50, 0)  # 0 = all


def sim_grid(points: int = 16, lo: int = 4, hi: int = MAX_M, step: int = 5) -> list[int]:
    """Up to ``points`` sizes (duplicates dropped), geometric over the official grid ``lo, lo+step, ..., hi``."""
    out: list[int] = []
    for i in range(points):
        v = lo * (hi / lo) ** (i / (points - 1))
        m = lo + step * round((v - lo) / step)
        if m <= hi and m not in out:
            out.append(m)
    return out


def _simulation(seed: int) -> dict[str, dict]:
    xp, yp = simulate(N, K, 100 * N // K, "easy", seed=10 * seed)
    xt, yt = simulate(N, K, 10_000 // K, "easy", seed=10 * seed + 1)
    target = bayes_error(N, K, "easy")
    grid = sim_grid()
    res = {}
    for name, fit in (("nb", lambda x, y: fit_nb(x, y, K)), ("lr", fit_logistic)):
        curve = learning_curve(fit, xp, yp, xt, yt, grid, repeats=REPEATS, seed=seed, target=target, stop_within=WITHIN)
        reach = m_to_reach(curve["m"], curve["mean"], target + WITHIN)
        res[name] = {"curve": curve, "m_reach": reach if reach is not None else MAX_M, "reached": reach is not None}
    res["bayes"] = {"error": target}
    return res


def _digit_features(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    sp = load_digits(seed=seed)
    x = torch.cat([sp.train.x, sp.val.x])
    y = torch.cat([sp.train.y, sp.val.y])
    src = y < 5
    seed_everything(seed)
    net = MLP(64, (128, 64), 5)
    cfg = TrainConfig(epochs=30, batch_size=64, lr=0.1, momentum=0.9, weight_decay=5e-4, scheduler="cosine", seed=seed)
    Trainer(net, IndexedTensorDataset(x[src], y[src]), config=cfg).fit()
    net.eval()
    tgt, tgt_test = ~src, sp.test.y >= 5
    with torch.no_grad():
        fp, ft = net.features(x[tgt]).double(), net.features(sp.test.x[tgt_test]).double()
    lo, hi = fp.min(0).values, fp.max(0).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return (fp - lo) / span, y[tgt] - 5, (ft - lo) / span, sp.test.y[tgt_test] - 5


def _probes(xp: torch.Tensor, yp: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, seed: int) -> dict[str, float]:
    """NB and LR probe errors at m per class in SHOTS (5 repeats of each few-shot draw)."""
    num_classes = int(yp.max()) + 1
    g = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    for shot in SHOTS:
        errs: dict[str, list[float]] = {"nb": [], "lr": []}
        for _ in range(REPEATS if shot else 1):
            if shot:
                members = [torch.nonzero(yp == c).flatten() for c in range(num_classes)]
                idx = torch.cat([mc[torch.randperm(len(mc), generator=g)[:shot]] for mc in members])
            else:
                idx = torch.arange(len(yp))
            for name, fit in (("nb", lambda a, b: fit_nb(a, b, num_classes)), ("lr", fit_logistic)):
                errs[name].append(float((fit(xp[idx], yp[idx])(xt) != yt).double().mean()))
        tag = f"{shot}shot" if shot else "all"
        for name in errs:
            out[f"{name}:probe_err_{tag}"] = sum(errs[name]) / len(errs[name])
    return out


_TOPICS = {
    "food": (
        ["the chef", "my aunt", "a baker", "the cook"],
        ["baked", "cooked", "tasted", "served"],
        ["fresh bread", "a spicy soup", "the apple pie", "grilled fish", "a curry"],
    ),
    "sport": (
        ["the striker", "our team", "the runner", "a goalkeeper"],
        ["won", "lost", "played", "trained for"],
        ["the final match", "a marathon", "the league game", "the tennis cup", "a relay race"],
    ),
    "weather": (
        ["the forecast", "the radio", "a farmer", "the pilot"],
        ["warned of", "expected", "reported", "feared"],
        ["heavy rain", "a cold front", "strong winds", "a long drought", "thick fog"],
    ),
    "computing": (
        ["the engineer", "a student", "our admin", "the team"],
        ["installed", "debugged", "compiled", "patched"],
        ["the database", "a new kernel", "the web server", "the compiler", "a laptop"],
    ),
    "music": (
        ["the band", "a pianist", "the choir", "my cousin"],
        ["performed", "recorded", "rehearsed", "composed"],
        ["a symphony", "the new album", "a jazz ballad", "the opera", "a folk song"],
    ),
}


def _text_features(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Card part 3: all-MiniLM-L6-v2 embeddings of templated sentences across 5 topics (pool / test split)."""
    import itertools

    from priorkit.models.minilm import MiniLM

    text, labels = [], []
    for label, (subj, verb, obj) in enumerate(_TOPICS.values()):
        for s, v, o in itertools.product(subj, verb, obj):
            text.append(f"{s.capitalize()} {v} {o}.")
            labels.append(label)
    emb = MiniLM().encode(text).double()
    y = torch.tensor(labels)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(len(_TOPICS)):
        test[perm[y[perm] == c][:30]] = True  # 30 test sentences per topic, 50 in the probe pool
    return emb[~test], y[~test], emb[test], y[test]


def run(seed: int, quick: bool) -> SeedResult:
    # small problems: one thread is fastest; on a loaded machine OpenBLAS threads slow lbfgs down ~10x
    # (EXPERIMENT.threads = 1 limits torch and BLAS for the whole run)
    sim = _simulation(seed)
    probes = _probes(*_digit_features(seed), seed)
    text = _probes(*_text_features(seed), seed)
    sides = {}
    for name, side in (("nb", "method"), ("lr", "baseline")):
        r = sim[name]
        metrics = {
            "log10_m_reach": math.log10(r["m_reach"]),
            "m_reach": float(r["m_reach"]),
            "reached": float(r["reached"]),
            "sim_err_m4": r["curve"]["mean"][0],
        }
        metrics.update({k.split(":", 1)[1]: v for k, v in probes.items() if k.startswith(name + ":")})
        metrics.update({"text_" + k.split(":", 1)[1]: v for k, v in text.items() if k.startswith(name + ":")})
        sides[side] = metrics
    curves = {n: {"m": sim[n]["curve"]["m"], "mean": sim[n]["curve"]["mean"]} for n in ("nb", "lr")}
    curves["bayes"] = sim["bayes"]["error"]
    return {"method": sides["method"], "baseline": sides["baseline"], "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, r in enumerate(results):
        for name, color in (("nb", "C0"), ("lr", "C1")):
            c = r["curves"][name]
            axes[0].plot(c["m"], c["mean"], color=color, alpha=0.7, marker=".", label=name.upper() if i == 0 else None)
    axes[0].axhline(results[0]["curves"]["bayes"] + WITHIN, color="k", ls=":", lw=1, label="Bayes + 0.01")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training size m")
    axes[0].set_ylabel("test error")
    axes[0].set_title(f"simulation n={N}, K={K}, easy")
    axes[0].legend(fontsize=7)
    tags = [f"{s}shot" if s else "all" for s in SHOTS]
    for side, name in (("method", "NB"), ("baseline", "LR")):
        vals = [sum(r[side][f"probe_err_{t}"] for r in results) / len(results) for t in tags]
        axes[1].plot(range(len(tags)), vals, marker="o", label=name)
    axes[1].set_xticks(range(len(tags)), [t.replace("shot", "") for t in tags])
    axes[1].set_xlabel("examples per class")
    axes[1].set_ylabel("test error")
    axes[1].set_title("probes on MLP features, digits 5-9")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "nb_vs_lr_curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="nb_vs_lr",
    claim="Naive Bayes reaches its asymptotic error with an order of magnitude fewer samples than logistic "
    "regression, and is at least as good few-shot on frozen features",
    setup="simulation n=100, K=2, easy covariance, m in 4..2000 (15 sizes), 5 repeats, 10k test; MLP features "
    "of digits 0-4 probed on 5-9 at 5/10/20/50/all per class; 5 seeds (quick: 2)",
    method_name="Gaussian NB (pooled variance)",
    baseline_name="logistic regression (lbfgs, C=1)",
    checks=[Check("log10_m_reach", "lower", 1.0), Check("probe_err_5shot", "lower", 0.0)],
    run=run,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    threads=1,
)
