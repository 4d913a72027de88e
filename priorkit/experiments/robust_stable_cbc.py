"""Robust stable CBC vs stable CBC (margin loss) on digits (card: prototypes-interpretable.md, "Small-scale check").

sklearn digits (64-d in [0, 1]), stratified train/test split from the seed. Both models: components initialised
uniformly in a narrow band around 0.5 and clipped to [0, 1] (as the official code), a few reasoning concepts
per class, Euclidean distance, trainable per-component sigma initialised at the median sample-to-component
distance, Adam, the same initial parameters. Baseline: margin loss; method: robust loss relu(robust margin -
radius). Metrics on the test split: clean accuracy, certified accuracy at each eps (Theorem 1 radius w.r.t. the
true label >= eps), and accuracy under an L2 PGD on the class margin (inputs clipped to the data range) at the
same eps. The full tier adds the original CBC (the baseline's margin) to the baseline side as ``orig_*``.
Every setting is in :class:`Config` (``QUICK`` and ``FULL``: the same budget), which the report prints.

Rule (fixed before the first run, from the card's "clearly higher certified accuracy at eps >= 0.5, at a
small clean-accuracy cost"): certified accuracy at 0.5 >= baseline + 0.10, at 1.0 >= baseline + 0.05, clean
accuracy >= baseline - 0.05; and (soundness) PGD accuracy >= certified accuracy at every eps for the method.

What the runs taught (the figures are in the committed ``results/robust_stable_cbc.json`` and
``results/report.md``): the robust loss does raise certified accuracy at eps = 0.5 at a small clean-accuracy cost,
and PGD accuracy stays above certified accuracy (the certificate is sound), but at eps = 1.0 neither model
certifies more than a tiny fraction of the test points, so the eps = 1.0 rule fails. Why, as far as known: on
64-d digits the class means are only a few units apart in L2 and the learned temperatures stay small, so the
radius of Theorem 1 (sigma_min ln t*) reaches 1.0 for almost no point within the card's epoch budget; the
paper's MNIST eps = 1.58 sits in a 784-d space where digits are much further apart. A larger robust margin or
longer training was not tried (the budget is the card's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from priorkit.core.seeding import seed_everything
from priorkit.data import load_digits
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.prototypes.robust_stable_cbc import (
    CBC,
    RobustStableCBC,
    StableCBC,
    cbc_recipe,
    certified_accuracy,
    component_distances,
    detection_probability,
    median_init_sigma,
    pgd_l2,
)
from priorkit.train import TrainConfig, Trainer


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    test_fraction: float = 0.3
    num_components: int = 20
    init_low: float = 0.45  # components start uniform in [init_low, init_low + init_width]
    init_width: float = 0.1
    concepts_per_class: int = 2
    epochs: int = 60
    lr: float = 1e-2
    batch_size: int = 128
    margin: float = 0.3  # the baseline's (and the original CBC's) margin loss
    robust_margin: float = 1.0  # the method's robust loss relu(robust_margin - radius)
    eps: tuple[float, ...] = (0.25, 0.5, 1.0)  # L2 radii for certified and PGD accuracy
    pgd_steps: int = 20
    pgd_clip: tuple[float, float] = (0.0, 1.0)  # the data range
    orig_cbc: bool = True  # also train the original CBC (``orig_*`` on the baseline side)


FULL = Config()
QUICK = Config(orig_cbc=False)


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, c: Config) -> dict[str, float]:
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
        radius = model.certified_radius(x, y)
    out = {"acc": acc, "median_radius": float(radius.clamp_min(0).median())}
    for e, ca in zip(c.eps, certified_accuracy(radius, list(c.eps))):
        out[f"cert_acc@{e:g}"] = ca
        xa = pgd_l2(model, x, y, e, steps=c.pgd_steps, clip=c.pgd_clip)
        with torch.no_grad():
            out[f"pgd_acc@{e:g}"] = float((model(xa).argmax(1) == y).float().mean())
    out["pgd_minus_cert_min"] = min(out[f"pgd_acc@{e:g}"] - out[f"cert_acc@{e:g}"] for e in c.eps)
    return out


def run(seed: int, c: Config) -> SeedResult:
    data = load_digits(val=0.0, test=c.test_fraction, seed=seed)
    x, y, xt, yt = data.train.x, data.train.y, data.test.x, data.test.y
    dim = x.shape[1]
    # ``/ (1 / width)``: the same float32 values as the official ``rand / 10 + 0.45`` for width 0.1
    init = torch.rand(c.num_components, dim, generator=torch.Generator().manual_seed(seed)) / (1 / c.init_width)
    init = init + c.init_low
    sigma0 = median_init_sigma(x, init)
    cfg = TrainConfig(batch_size=c.batch_size, seed=seed, progress=False)
    train = TensorDataset(x, y)
    common = dict(
        num_components=c.num_components, concepts_per_class=c.concepts_per_class, sigma=sigma0, init_components=init
    )
    results, curves = {}, {}
    builders = [
        ("baseline", lambda g: StableCBC(dim, 10, loss="margin", margin=c.margin, generator=g, **common)),
        ("method", lambda g: RobustStableCBC(dim, 10, robust_margin=c.robust_margin, generator=g, **common)),
    ]
    if c.orig_cbc:
        builders.append(("orig", lambda g: CBC(dim, 10, margin=c.margin, generator=g, **common)))
    for side, build in builders:
        seed_everything(seed)
        model = build(torch.Generator().manual_seed(seed))
        hist = Trainer(model, train, recipe=cbc_recipe(model, epochs=c.epochs, lr=c.lr), config=cfg).fit()
        curves[side] = {"train_loss": [h["loss"] for h in hist if "loss" in h]}
        results[side] = _evaluate(model, xt, yt, c)
        with torch.no_grad():
            curves[side]["radius"] = model.certified_radius(xt, yt).tolist()
        if isinstance(model, StableCBC):
            curves[side]["viz"] = _viz_data(model, xt, yt)
    if "orig" in results:
        results["baseline"].update({f"orig_{k}": v for k, v in results.pop("orig").items()})
    curves["eps"] = list(c.eps)
    return {"method": results["method"], "baseline": results["baseline"], "curves": curves}


def _rounded(t: torch.Tensor) -> list:
    return t.detach().double().round(decimals=4).tolist()


@torch.no_grad()
def _viz_data(model: StableCBC, xt: torch.Tensor, yt: torch.Tensor) -> dict:
    """What the figures need (JSON lists): components [K, 64], joint reasoning [2K, R], sigma [K], and 3 test
    images (two correct ones of different classes, plus the first misclassified one if any) with labels."""
    pred = model(xt).argmax(1)
    ok = torch.nonzero(pred == yt).flatten().tolist()
    picks = ok[:1] + [i for i in ok if int(yt[i]) != int(yt[ok[0]])][:1] if ok else []
    wrong = torch.nonzero(pred != yt).flatten().tolist()
    picks += wrong[:1] if wrong else ok[2:3]
    return {
        "components": _rounded(model.components),
        "reasoning": _rounded(model.reasoning),
        "sigma": _rounded(model.sigma.expand(model.components.shape[0])),
        "images": _rounded(xt[picks]),
        "labels": yt[picks].tolist(),
    }


def _explain(viz: dict) -> dict[str, torch.Tensor]:
    """Detections, winning concept and per-component contributions ``d_k r+_k + (1 - d_k) r-_k`` (the
    stable CBC's ``p_c`` is exactly their sum) for the stored test images."""
    comps, reasoning = torch.tensor(viz["components"]), torch.tensor(viz["reasoning"])
    k = comps.shape[0]
    x = torch.tensor(viz["images"])
    det = detection_probability(component_distances(x, comps), torch.tensor(viz["sigma"]))  # [B, K]
    pos, neg = reasoning[:k], reasoning[k:]
    concepts = det @ (pos - neg) + neg.sum(0)  # [B, R]
    per_class = len(concepts[0]) // 10
    scores = concepts.view(len(x), 10, per_class)
    pred = scores.max(2).values.argmax(1)
    concept = pred * per_class + scores[torch.arange(len(x)), pred].argmax(1)
    contrib = det * pos[:, concept].T + (1 - det) * neg[:, concept].T  # [B, K]
    return {
        "det": det,
        "pred": pred,
        "concept": concept,
        "contrib": contrib,
        "score": concepts.gather(1, concept[:, None])[:, 0],
    }


def _class_support(reasoning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per component and class the largest positive / negative reasoning probability over the class's concepts."""
    k, r = reasoning.shape[0] // 2, reasoning.shape[1]
    pos = reasoning[:k].view(k, 10, r // 10).amax(2)
    neg = reasoning[k:].view(k, 10, r // 10).amax(2)
    return pos, neg


def _plot_gallery(results: list[SeedResult], outdir: Path) -> Path:
    import matplotlib.pyplot as plt

    from priorkit.prototypes.viz import show_image

    sides = [(s, n) for s, n in (("method", "robust stable CBC"), ("baseline", "stable CBC (margin)"))
             if "viz" in results[0]["curves"].get(s, {})]  # fmt: skip
    k = len(results[0]["curves"][sides[0][0]]["viz"]["components"])
    cols = 10
    rows_per = -(-k // cols)
    fig = plt.figure(figsize=(13, 2.05 * rows_per * len(sides) + 3.2))
    gs = fig.add_gridspec(rows_per * len(sides) + 1, cols, height_ratios=[1.0] * (rows_per * len(sides)) + [1.6])
    thr = 1.0 / (2 * k)  # the uniform joint reasoning probability
    for si, (side, name) in enumerate(sides):
        viz = results[0]["curves"][side]["viz"]
        reasoning = torch.tensor(viz["reasoning"])
        pos, neg = _class_support(reasoning)
        for j, comp in enumerate(torch.tensor(viz["components"])):
            ax = fig.add_subplot(gs[si * rows_per + j // cols, j % cols])
            show_image(ax, comp.view(1, 8, 8))
            plus = ",".join(str(c) for c in torch.nonzero(pos[j] > 2 * thr).flatten().tolist()) or "-"
            minus = ",".join(str(c) for c in torch.nonzero(neg[j] > 2 * thr).flatten().tolist()) or "-"
            ax.set_title(f"c{j} \u03c3={viz['sigma'][j]:.2f}\n+[{plus}]\n\u2212[{minus}]", fontsize=6.5)
            if j % cols == 0:
                ax.set_ylabel(name, fontsize=7)
    # reasoning matrix of the method: signed net requiredness per component and class (r+ - r-, max-|.| concept)
    viz = results[0]["curves"][sides[0][0]]["viz"]
    reasoning = torch.tensor(viz["reasoning"])
    pos, neg = _class_support(reasoning)
    ax = fig.add_subplot(gs[-1, 1:-1])
    net = (pos - neg).T
    lim = float(net.abs().max())
    im = ax.imshow(net.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(k), [f"c{j}" for j in range(k)], fontsize=6)
    ax.set_yticks(range(10), [str(c) for c in range(10)], fontsize=6)
    ax.set_ylabel("class", fontsize=7)
    ax.set_title(f"{sides[0][1]}: max r+ minus max r\u2212 over the class's concepts (red: detection supports the "
                 f"class, blue: absence required)", fontsize=7)  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.suptitle(
        f"Components (8x8, seed 0). +[..]: classes with positive reasoning prob > {2 * thr:.3f} (2x uniform), "
        f"\u2212[..]: classes that need the component absent",
        fontsize=8,
    )
    fig.tight_layout()
    path = outdir / "robust_stable_cbc_components.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_explanations(results: list[SeedResult], outdir: Path) -> Path:
    import matplotlib.pyplot as plt

    from priorkit.prototypes.viz import draw_box, show_image

    viz = results[0]["curves"]["method"]["viz"]
    ex = _explain(viz)
    comps, reasoning = torch.tensor(viz["components"]), torch.tensor(viz["reasoning"])
    k = comps.shape[0]
    n = len(viz["labels"])
    fig, axes = plt.subplots(n, 4, figsize=(8.6, 2.0 * n + 0.5), squeeze=False)
    for i in range(n):
        pred, concept, y = int(ex["pred"][i]), int(ex["concept"][i]), viz["labels"][i]
        ax = axes[i, 0]
        show_image(ax, torch.tensor(viz["images"][i]).view(1, 8, 8))
        draw_box(ax, (0, 0, 8, 8), "lime" if pred == y else "red", 2.0)
        ax.set_title(f"test: true {y}, pred {pred}\np={float(ex['score'][i]):.3f} (concept {concept})", fontsize=7)
        top = ex["contrib"][i].argsort(descending=True)[:3].tolist()
        for c, j in enumerate(top):
            ax = axes[i, c + 1]
            show_image(ax, comps[j].view(1, 8, 8))
            d, rp, rn = float(ex["det"][i, j]), float(reasoning[j, concept]), float(reasoning[k + j, concept])
            ax.set_title(
                f"c{j}: detection {d:.2f}\nr+ {rp:.3f}, r\u2212 {rn:.3f}\ncontrib {float(ex['contrib'][i, j]):.3f}"
                f" ({'present' if rp * d >= rn * (1 - d) else 'absent'})",
                fontsize=6.5,
            )
    fig.suptitle(
        "Robust stable CBC, seed 0: this looks like that. Top-3 components by contribution to the predicted class "
        "p_c = sum_k d_k r+_k + (1 - d_k) r\u2212_k",
        fontsize=7.5,
    )
    fig.tight_layout()
    path = outdir / "robust_stable_cbc_explanations.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    grid = torch.linspace(0, 1.5, 61)
    eps = results[0]["curves"]["eps"]
    for side, label in (("baseline", "stable CBC (margin)"), ("method", "robust stable CBC")):
        radii = torch.tensor([v for r in results for v in r["curves"][side]["radius"]])
        axes[0].plot(grid, [(radii >= e).float().mean() for e in grid], label=label)
        pgd = [sum(r[side][f"pgd_acc@{e:g}"] for r in results) / len(results) for e in eps]
        axes[0].scatter(eps, pgd, marker="x")
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
    paths = [path]
    if "viz" in results[0]["curves"].get("method", {}):
        paths += [_plot_gallery(results, outdir), _plot_explanations(results, outdir)]
    return paths


EXPERIMENT = Experiment(
    id="robust_stable_cbc",
    claim="The robust loss gives clearly higher certified robust accuracy (eps >= 0.5) at a small clean-accuracy cost",
    setup="sklearn digits 64-d, stratified split; stable CBC with Euclidean distance and trainable sigma, Adam; "
    "certified (Theorem 1) and L2 PGD accuracy; the full tier adds the original CBC",
    method_name="robust stable CBC (robust loss)",
    baseline_name="stable CBC (margin loss)",
    checks=[
        Check("cert_acc@0.5", "higher", 0.10),
        Check("cert_acc@1", "higher", 0.05),
        Check("acc", "higher", -0.05),
        Check("pgd_minus_cert_min", "higher", 0.0, against="value"),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    # the robust loss's margin (the radius it pushes every training point past) trades clean for certified accuracy
    ablations={"robust_margin=0.5": {"robust_margin": 0.5}, "robust_margin=2": {"robust_margin": 2.0}},
    diagnosis="The robust loss raises certified accuracy at eps=0.5 on every seed, but the baseline's certified "
    "accuracy swings widely between seeds (its standard deviation, in the metrics table, is several times the "
    "method's), so the paired interval's low end falls under the 0.10 margin although the mean gain is about twice "
    "it. Certified accuracy at eps=1 is near zero for every model and margin: on 64-d digits an L2 radius of 1 "
    "(in [0, 1] pixels) is beyond what these components certify. The clean-accuracy cost exceeds the 5-point "
    "tolerance. The margin ablations show the trade: a smaller robust margin keeps the clean accuracy but gives a "
    "smaller, noisier certified gain; a larger one costs as much clean accuracy as the default without certifying "
    "eps=1. No setting of the one hyperparameter passes all rules at this scale.",
)
