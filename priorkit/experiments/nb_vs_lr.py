"""Naive Bayes vs logistic regression: sample complexity (card: prototypes-fewshot-ood.md, ``nb_vs_lr``).

Every setting is in :class:`Config` (``QUICK`` and ``FULL`` are the same per-seed budget; the tiers differ only
in the number of seeds), which the report prints.

Part 1, the paper's simulation (``main_simulation.py``): n features, K classes, "easy" covariance; a training
pool of ``pool_factor * n`` samples and a test set drawn from the seed; training sizes sampled geometrically
from the official grid ``range(4, 10000, 5)`` up to ``max_m``; repeats per size with subsets missing a class
redrawn; each model's sweep stops at the first size whose mean error is within ``within`` of the Bayes error
(the official stop rule). NB: pooled-variance Gaussian NB. LR: scikit-learn lbfgs. The metric
``log10_m_reach`` is log10 of the first size within ``within`` of the Bayes error (log10 ``max_m`` when never
reached, which only understates the gap).

Part 2, frozen features of a pretrained backbone (the regime of the paper's few-shot claim): the zoo's
``fmnist_conv_base5`` (a conv net priorkit pretrained on Fashion-MNIST classes 0-4 only), frozen, embeds the
Fashion-MNIST classes 5-9 it never saw (disjointness checked with :func:`priorkit.zoo.check_disjoint`); the
features are cached on disk (:func:`priorkit.zoo.extract_features`). The probe pool is ``probe_pool_per_class``
training images per class drawn from the seed, the test set the official test images of those classes; features
are min-max scaled with the probe pool's range; NB and LR probes are fitted on m per class in ``shots`` (0 = all;
repeated few-shot draws) and tested on the test images. Ablations (``Config.backbone`` / ``Config.dataset``):
``random_init``, the same conv architecture randomly initialised (pretrained vs untrained features);
``efficientnet_lite0``, the zoo's ImageNet backbone (images resized to 64 x 64; the paper's regime of a large
pretrained backbone), on a smaller pool and test set; and ``digits_mlp``, the former setup: an MLP trained per
seed with SGD (cosine schedule) on the digits below ``source_classes`` embeds the other digits.

Part 3, a real pretrained encoder: all-MiniLM-L6-v2 embeddings of templated sentences across 5 topics
(``text_test_per_topic`` per topic held out, the rest in the probe pool), the same NB / LR probes; reported as
``text_probe_err_*``, outside the rule (it was added after the rule was fixed). Both probes are at almost zero
error from a few shots on: the templated topics are too easy to separate NB from LR; a harder text task is
still to be chosen.

Rule (fixed before the first run, from the card's "Expected"): in the simulation NB gets within 0.01 of its
asymptote at an m at least an order of magnitude smaller than LR (``log10_m_reach`` lower by >= 1), and on the
frozen features NB's 5-shot probe error is not above LR's.

What the runs taught (the figures are in the committed ``results/nb_vs_lr.json`` and ``results/report.md``):
the simulation reproduces (NB reaches the Bayes error at a much smaller m than LR). On the former stand-in for
pretrained features (now the ``digits_mlp`` ablation) NB's probe error was above LR's at every m. Likely why:
features of a small supervised MLP are sparse ReLU units whose class-conditional distributions are far from
Gaussian with a shared diagonal variance, and units rarely active on the probe classes get tiny pooled variances
(with the absolute eps) and so dominate the NB score. The paper's NB-wins-few-shot regime was observed on
features of large pretrained backbones: hence part 2's pretrained backbone, and the ``random_init`` and
``efficientnet_lite0`` ablations, which tell whether pretraining or the backbone's scale decides it here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from priorkit.core.errors import PriorkitError, check_choice
from priorkit.core.seeding import seed_everything
from priorkit.data import load_digits
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.prototypes.nb_vs_lr import bayes_error, fit_logistic, fit_nb, learning_curve, m_to_reach, simulate
from priorkit.train import TrainConfig, Trainer


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    # part 1: the simulation
    n: int = 100  # features
    k: int = 2  # classes
    covariance: str = "easy"
    pool_factor: int = 100  # training pool = pool_factor * n samples
    test_size: int = 10_000
    grid_points: int = 16  # geometric points over the official grid (duplicates dropped)
    grid_lo: int = 4
    grid_step: int = 5
    max_m: int = 2000
    repeats: int = 5  # per training size, and per few-shot probe draw
    within: float = 0.01  # "reached" = mean error <= Bayes error + within
    # the two models (parts 1-3)
    nb_eps: float = 1e-9  # absolute variance floor of the pooled-variance Gaussian NB
    logistic_c: float = 1.0
    logistic_max_iter: int = 1000
    # part 2: probes on frozen features of the classes the backbone never saw
    dataset: str = "fashion_mnist"  # or "digits" (the former setup, with backbone "mlp")
    backbone: str = "fmnist_conv_base5"  # frozen zoo features; "random_init"; "efficientnet_lite0"; "mlp" (digits)
    shots: tuple[int, ...] = (5, 10, 20, 50, 0)  # per class; 0 = all
    source_classes: int = 5  # the classes >= source_classes are probed (never seen by the backbone)
    probe_pool_per_class: int = 1000  # Fashion-MNIST: pool images per class drawn each seed from the train split
    probe_test_per_class: int = 1000  # Fashion-MNIST: test images per class from the official test split (0 = all)
    # backbone "mlp": the per-seed MLP trained with SGD on digits < source_classes
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # part 3: text probes
    text_test_per_topic: int = 30


FULL = Config()
QUICK = Config()  # same per-seed budget; quick runs fewer seeds


def sim_grid(points: int = 16, lo: int = 4, hi: int = 2000, step: int = 5) -> list[int]:
    """Up to ``points`` sizes (duplicates dropped), geometric over the official grid ``lo, lo+step, ..., hi``."""
    out: list[int] = []
    for i in range(points):
        v = lo * (hi / lo) ** (i / (points - 1))
        m = lo + step * round((v - lo) / step)
        if m <= hi and m not in out:
            out.append(m)
    return out


def _fits(c: Config, num_classes: int) -> tuple[tuple[str, Callable], tuple[str, Callable]]:
    """The two fitters with the config's settings: ``(("nb", fit), ("lr", fit))``."""
    nb = partial(fit_nb, num_classes=num_classes, eps=c.nb_eps)
    lr = partial(fit_logistic, C=c.logistic_c, max_iter=c.logistic_max_iter)
    return ("nb", nb), ("lr", lr)


def _simulation(seed: int, c: Config) -> dict[str, dict]:
    xp, yp = simulate(c.n, c.k, c.pool_factor * c.n // c.k, c.covariance, seed=10 * seed)
    xt, yt = simulate(c.n, c.k, c.test_size // c.k, c.covariance, seed=10 * seed + 1)
    target = bayes_error(c.n, c.k, c.covariance)
    grid = sim_grid(c.grid_points, c.grid_lo, c.max_m, c.grid_step)
    res = {}
    for name, fit in _fits(c, c.k):
        curve = learning_curve(
            fit, xp, yp, xt, yt, grid, repeats=c.repeats, seed=seed, target=target, stop_within=c.within
        )
        reach = m_to_reach(curve["m"], curve["mean"], target + c.within)
        res[name] = {"curve": curve, "m_reach": reach if reach is not None else c.max_m, "reached": reach is not None}
    res["bayes"] = {"error": target}
    return res


DATASETS = ("fashion_mnist", "digits")
ZOO_BACKBONE = "fmnist_conv_base5"
IMAGENET_BACKBONE = "efficientnet_lite0"  # ablation: the paper's regime, a backbone pretrained on ImageNet
BACKBONES = (ZOO_BACKBONE, "random_init", IMAGENET_BACKBONE, "mlp")
Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # pool x, pool y, test x, test y


def _minmax(fp: torch.Tensor, yp: torch.Tensor, ft: torch.Tensor, yt: torch.Tensor, k: int) -> Features:
    """Features min-max scaled with the probe pool's range (float64), labels shifted to start at 0."""
    fp, ft = fp.double(), ft.double()
    lo, hi = fp.min(0).values, fp.max(0).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return (fp - lo) / span, yp - k, (ft - lo) / span, yt - k


def _per_class(y: torch.Tensor, per_class: int, g: torch.Generator | None) -> torch.Tensor:
    """Sorted indices of ``per_class`` items of each label in ``y`` (random draws with ``g``, else the first);
    all of them for ``per_class`` 0."""
    if per_class == 0:
        return torch.arange(len(y))
    parts = []
    for label in torch.unique(y):
        m = torch.nonzero(y == label).flatten()
        parts.append(m[torch.randperm(len(m), generator=g)[:per_class]] if g is not None else m[:per_class])
    return torch.cat(parts).sort().values


@torch.no_grad()
def _zoo_features(x: torch.Tensor, backbone: str, batch_size: int = 512) -> torch.Tensor:
    """Frozen features of ``x``: a pretrained zoo backbone's (cached on disk) or, for ``"random_init"``, those of
    the ``fmnist_conv_base5`` architecture randomly initialised (both cached on disk by the zoo)."""
    from priorkit.zoo import extract_features

    if backbone != "random_init":
        return extract_features(backbone, x, batch_size=batch_size)
    return extract_features(ZOO_BACKBONE, x, batch_size=batch_size, pretrained=False)


def _fmnist_features(seed: int, c: Config) -> Features:
    """Frozen backbone features of the Fashion-MNIST classes >= ``source_classes`` (never seen in pretraining):
    a per-seed pool drawn from the training split, tested on the official test images."""
    from priorkit.data import load_dataset
    from priorkit.zoo import check_disjoint

    sp = load_dataset("fashion_mnist_image")  # seed 0: the split is fixed, the draws below follow the seed
    x, y = torch.cat([sp.train.x, sp.val.x]), torch.cat([sp.train.y, sp.val.y])
    pool = torch.nonzero(y >= c.source_classes).flatten()
    test = torch.nonzero(sp.test.y >= c.source_classes).flatten()
    name = ZOO_BACKBONE if c.backbone == "random_init" else c.backbone
    check_disjoint(name, torch.unique(y[pool]).tolist(), dataset="fashion_mnist")
    pool = pool[_per_class(y[pool], c.probe_pool_per_class, torch.Generator().manual_seed(seed))]
    test = test[_per_class(sp.test.y[test], c.probe_test_per_class, None)]
    fp, ft = _zoo_features(x[pool], c.backbone), _zoo_features(sp.test.x[test], c.backbone)
    return _minmax(fp, y[pool], ft, sp.test.y[test], c.source_classes)


def _probe_features(seed: int, c: Config) -> Features:
    """Part 2's (pool, test) features for the configured dataset and backbone."""
    check_choice("dataset", c.dataset, DATASETS)
    check_choice("backbone", c.backbone, BACKBONES)
    if (c.dataset == "digits") != (c.backbone == "mlp"):
        raise PriorkitError(
            f"backbone 'mlp' goes with dataset 'digits' and the zoo backbones with 'fashion_mnist'; got dataset "
            f"{c.dataset!r} with backbone {c.backbone!r}"
        )
    return _digit_features(seed, c) if c.dataset == "digits" else _fmnist_features(seed, c)


def _digit_features(seed: int, c: Config) -> Features:
    """The former part 2 (ablation ``digits_mlp``): an MLP trained with SGD on the digits < ``source_classes``
    embeds the other digits."""
    sp = load_digits(seed=seed)
    x = torch.cat([sp.train.x, sp.val.x])
    y = torch.cat([sp.train.y, sp.val.y])
    src = y < c.source_classes
    seed_everything(seed)
    net = MLP(64, c.hidden, c.source_classes)
    cfg = TrainConfig(
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        scheduler="cosine",
        seed=seed,
    )
    Trainer(net, IndexedTensorDataset(x[src], y[src]), config=cfg).fit()
    net.eval()
    tgt, tgt_test = ~src, sp.test.y >= c.source_classes
    with torch.no_grad():
        fp, ft = net.features(x[tgt]), net.features(sp.test.x[tgt_test])
    return _minmax(fp, y[tgt], ft, sp.test.y[tgt_test], c.source_classes)


def _probes(
    xp: torch.Tensor, yp: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, seed: int, c: Config
) -> dict[str, float]:
    """NB and LR probe errors at m per class in ``c.shots`` (``c.repeats`` draws of each few-shot size)."""
    num_classes = int(yp.max()) + 1
    g = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    for shot in c.shots:
        errs: dict[str, list[float]] = {"nb": [], "lr": []}
        for _ in range(c.repeats if shot else 1):
            if shot:
                members = [torch.nonzero(yp == c).flatten() for c in range(num_classes)]
                idx = torch.cat([mc[torch.randperm(len(mc), generator=g)[:shot]] for mc in members])
            else:
                idx = torch.arange(len(yp))
            for name, fit in _fits(c, num_classes):
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


def _text_features(seed: int, c: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
    for cls in range(len(_TOPICS)):
        test[perm[y[perm] == cls][: c.text_test_per_topic]] = True  # held out; the rest is the probe pool
    return emb[~test], y[~test], emb[test], y[test]


def run(seed: int, c: Config) -> SeedResult:
    # small problems: one thread is fastest; on a loaded machine OpenBLAS threads slow lbfgs down a lot
    # (EXPERIMENT.threads = 1 limits torch and BLAS for the whole run)
    sim = _simulation(seed, c)
    probes = _probes(*_probe_features(seed, c), seed, c)
    text = _probes(*_text_features(seed, c), seed, c)
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
    curves["setting"] = {
        "n": c.n, "k": c.k, "covariance": c.covariance, "within": c.within, "shots": list(c.shots),
        "dataset": c.dataset, "backbone": c.backbone,
    }  # fmt: skip
    return {"method": sides["method"], "baseline": sides["baseline"], "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    setting = results[0]["curves"]["setting"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, r in enumerate(results):
        for name, color in (("nb", "C0"), ("lr", "C1")):
            c = r["curves"][name]
            axes[0].plot(c["m"], c["mean"], color=color, alpha=0.7, marker=".", label=name.upper() if i == 0 else None)
    axes[0].axhline(
        results[0]["curves"]["bayes"] + setting["within"],
        color="k",
        ls=":",
        lw=1,
        label=f"Bayes + {setting['within']:g}",
    )
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training size m")
    axes[0].set_ylabel("test error")
    axes[0].set_title(f"simulation n={setting['n']}, K={setting['k']}, {setting['covariance']}")
    axes[0].legend(fontsize=7)
    tags = [f"{s}shot" if s else "all" for s in setting["shots"]]
    for side, name in (("method", "NB"), ("baseline", "LR")):
        vals = [sum(r[side][f"probe_err_{t}"] for r in results) / len(results) for t in tags]
        axes[1].plot(range(len(tags)), vals, marker="o", label=name)
    axes[1].set_xticks(range(len(tags)), [t.replace("shot", "") for t in tags])
    axes[1].set_xlabel("examples per class")
    axes[1].set_ylabel("test error")
    where = f"probes on {setting.get('backbone', 'mlp')} features, unseen {setting.get('dataset', 'digits')} classes"
    axes[1].set_title(where, fontsize=8)
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
    setup="the paper's Gaussian simulation (training sizes geometric over the official grid, the official stop "
    "rule); frozen fmnist_conv_base5 features (a conv net priorkit pretrained on Fashion-MNIST classes 0-4) of the "
    "Fashion-MNIST classes 5-9, probed with NB and LR at few shots per class and with all (train-split pool, "
    "official test images); MiniLM embeddings of templated topic sentences probed the same way (outside the rule)",
    method_name="Gaussian NB (pooled variance)",
    baseline_name="logistic regression (lbfgs)",
    checks=[Check("log10_m_reach", "lower", 1.0), Check("probe_err_5shot", "lower", 0.0)],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    threads=1,
    diagnosis="The paper's simulation reproduces (NB reaches its asymptote with far fewer samples, log10_m_reach), "
    "but its consequence for frozen features does not: with 5 labelled examples per class NB's error is above "
    "LR's on the pretrained Fashion-MNIST backbone and on every ablation backbone - the same network randomly "
    "initialised, the former digits MLP, and ImageNet-pretrained EfficientNet-Lite0 - so the regime where NB's "
    "faster convergence wins at few shots is not reached by any of these feature spaces; the probe curves over m "
    "(the probe_err_* metrics) show LR ahead at every m measured, not only at 5 shots.",
    ablations={
        "random_init": {"backbone": "random_init"},
        "digits_mlp": {"dataset": "digits", "backbone": "mlp"},
        # EfficientNet's features cost an order of magnitude more per image on CPU: a smaller pool and test set
        # (the 5-shot rule needs few images per class)
        IMAGENET_BACKBONE: {"backbone": IMAGENET_BACKBONE, "probe_pool_per_class": 200, "probe_test_per_class": 200},
    },
)
