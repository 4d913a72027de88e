"""ProtoGCD vs GCD (contrastive features + semi-supervised k-means) on Fashion-MNIST, over a frozen pretrained
backbone (card: prototypes-fewshot-ood.md).

Data and backbone: Fashion-MNIST; old classes 0-4 with a fraction ``prop_labelled`` of their training samples
labelled, new classes 5-9 all unlabelled; a disjoint test set from the official test split. The paper starts from
DINO's ViT-B/16 and fine-tunes its last block; here the backbone is the zoo's ``fmnist_conv_base5``
(:mod:`priorkit.zoo`), a small conv net priorkit pretrained on classes 0-4 only, so the new classes were never seen
in pretraining (checked with :func:`priorkit.zoo.check_disjoint`). It stays frozen (features cached on disk) and
the methods train an MLP on its 256-d features plus the projector and prototypes (the CPU-scale version of
fine-tuning the last block). No image the backbone trained on is used: old-class samples come from the training
images outside its pretraining subset, so the "unlabelled" old samples' labels never reached the backbone.
Fixed pools (training images per class, test images per class) are drawn once; each seed draws its training and
test samples from them and the labelled subset (:func:`priorkit.data.gcd_split`), and seeds the models.

Views: the paper's crops / flips / colour jitter become a bank of ``bank_views`` augmented pixel views per training
image (random shift, horizontal flip, Gaussian noise) passed once through the frozen backbone; each step draws,
per sample and per view, one of its bank entries (:func:`priorkit.experiments.palm.view_bank`). The features are
z-scored per dimension with the seed's training set's statistics (non-negative with a large shared mean, the raw
features made the MLP collapse to one cluster at the card's learning rate). The balanced
labelled/unlabelled sampler; SGD with momentum and weight decay, cosine decay. ProtoGCD: one prototype per class,
DAPL ratio r ramped from r0 to r1 over ``ramp`` epochs, entropy and separation terms. Baseline (a), GCD-style:
the same MLP, projector, views and budget trained with (1-lam) SimCLR + lam SupCon only, then semi-supervised
k-means (K = number of classes) on the L2-normalised MLP features (labelled samples pinned to their class's
cluster, k-means++ for the new clusters). Also reported (in the method column, ``ablation_*``, when
``Config.ablation`` is set: full tier only): ProtoGCD with r fixed (``ablation_r1``) and without the debiasing
terms, which the card expects to collapse new classes onto old ones. Metric: All / Old / New accuracy on the
unlabelled training samples after one Hungarian match (GCD "v2"); ``test_*`` on the disjoint test split. Every
setting is in :class:`Config` (``QUICK`` and ``FULL``), which the report prints.

Ablations (``Config.backbone`` / ``Config.dataset``): ``random_init`` trains on the same conv architecture
randomly initialised and frozen (pretrained vs scratch features); ``digits_mlp`` is the former setup
(scikit-learn digits, 70/30 split per seed, an MLP backbone trained from scratch on 8x8 pixels with shift + noise
views).

Rule (fixed before the first run, from the card's "Expected": ProtoGCD "All" >= (a) by several points, with a
smaller Old-New gap): All accuracy at least 0.02 above the baseline's, and |Old - New| not larger.

What was learnt on the former digits setup: ProtoGCD's All accuracy was well above the contrastive + k-means
baseline's, but its Old-New gap was larger: the baseline's gap was small because both its accuracies were low
(its contrastive-only features were weak at that budget), while ProtoGCD lifted Old further than New. The
ablation without the debiasing terms collapsed new classes onto old ones, as the card expects. The paper's "more
balanced" claim is against SimGCD, which is not built here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from priorkit.core.errors import check_choice
from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.gcd import GCDSplits, gcd_split
from priorkit.data.ood import shift_noise_views
from priorkit.experiments._fmnist import (
    RANDOM_INIT,
    ZOO_BACKBONE,
    clean,
    frozen_features,
    per_class,
    pick_view,
    standardizer,
    unseen_fmnist,
    view_bank,
)
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.clustering import split_cluster_acc
from priorkit.models import MLP
from priorkit.prototypes.protogcd import ProtoGCD, ProtoGCDRecipe
from priorkit.train import TrainConfig, fit

#: backbones per dataset: the frozen zoo net (pretrained on classes 0-4), the same net randomly initialised
#: ("random_init"), or the former digits setup's MLP trained from scratch on pixels ("mlp")
BACKBONES = {"fashion_mnist": (ZOO_BACKBONE, RANDOM_INIT), "digits": ("mlp",)}
POOL_SEED = 0  # the fixed pools (and their view banks) are drawn once from this seed, so their features cache


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    dataset: str = "fashion_mnist"  # or "digits" (the former setup, with backbone="mlp")
    backbone: str = ZOO_BACKBONE  # frozen zoo features | "random_init" (same net, random weights) | "mlp" (digits)
    epochs: int = 100
    ramp: int = 50  # epochs of the DAPL ratio ramp r0 -> r1
    batch_size: int = 128
    old_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    prop_labelled: float = 0.5
    train_per_class: int = 100  # fashion_mnist: training images per class (old and new), drawn per seed
    pool_per_class: int = 200  # fashion_mnist: fixed pool of training images per class
    test_per_class: int = 100  # fashion_mnist: test images per class, drawn per seed from the pool
    test_pool_per_class: int = 200  # fashion_mnist: fixed pool of test images per class
    bank_views: int = 4  # fashion_mnist: augmented pixel views per pool image, through the backbone once
    flip: bool = True  # fashion_mnist views: random horizontal flip
    hidden: tuple[int, ...] = (256, 128)  # MLP in-256-128 (in: 256 frozen features, or 64 digits pixels)
    proj_dims: tuple[int, ...] = (256, 256, 64)
    max_shift: int = 2  # views: random shift (pixels) along each axis
    sigma: float = 0.1  # views: Gaussian pixel noise
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    tau: float = 0.1
    tau_t: float = 0.05
    r0: float = 0.0
    r1: float = 1.0
    wait: int = 0
    lam: float = 0.35
    w_ent: float = 2.0
    w_sep: float = 0.1
    tau_unsup: float = 1.0
    tau_sup: float = 0.07
    kmeans_iters: int = 100
    ablation: bool = True  # also train the ablation (b), reported as ablation_*
    ablation_r1: float = 0.0
    ablation_w_ent: float = 0.0
    ablation_w_sep: float = 0.0


FULL = Config()
QUICK = Config(epochs=30, ramp=15, ablation=False)
#: the former setup (digits, MLP backbone from scratch on pixels), reachable as an ablation
DIGITS_SETUP = {"dataset": "digits", "backbone": "mlp", "max_shift": 1}


def semi_supervised_kmeans(
    feats: torch.Tensor, labelled: torch.Tensor, y: torch.Tensor, k: int, *, iters: int = 100, seed: int = 0
) -> torch.Tensor:
    """GCD's semi-supervised k-means: labelled samples stay in their class's cluster (ids ``0..n_old-1``), the
    other centroids start by k-means++ on the unlabelled samples; returns the cluster of every sample."""
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(feats.double(), dim=1)
    n_old = int(y[labelled].max()) + 1
    cent = [f[labelled & (y == c)].mean(0) for c in range(n_old)]
    unl = f[~labelled]
    for _ in range(k - n_old):
        d = torch.cdist(unl, torch.stack(cent)).min(1).values ** 2
        cent.append(unl[torch.multinomial(d / d.sum(), 1, generator=g)[0]])
    c = torch.stack(cent)
    assign = torch.empty(len(f), dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(f, c).argmin(1)
        new[labelled] = y[labelled]
        if torch.equal(new, assign):
            break
        assign = new
        c = torch.stack([f[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
    return assign


def _scores(pred: torch.Tensor, y: torch.Tensor, old: torch.Tensor, prefix: str = "") -> dict[str, float]:
    acc = split_cluster_acc(y, pred, old)
    return {
        f"{prefix}all_acc": acc["all"],
        f"{prefix}old_acc": acc["old"],
        f"{prefix}new_acc": acc["new"],
        f"{prefix}old_new_gap": abs(acc["old"] - acc["new"]),
    }


@functools.lru_cache(maxsize=2)
def _pools(backbone: str, pool_per_class: int, test_pool_per_class: int, bank_views: int, max_shift: int,
           sigma: float, flip: bool) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """The fixed pools' features: ``(train banks [N, 1+A, 256], train y, test features, test y)``, original labels."""
    x_tr, y_tr, x_te, y_te = unseen_fmnist()
    g = torch.Generator().manual_seed(POOL_SEED)
    tr = per_class(y_tr, pool_per_class, range(10), g)
    te = per_class(y_te, test_pool_per_class, range(10), g)
    banks = view_bank(backbone, x_tr[tr], bank_views, POOL_SEED, max_shift=max_shift, sigma=sigma, flip=flip)
    return banks, y_tr[tr], frozen_features(backbone, x_te[te]), y_te[te]


def load_data(seed: int, c: Config) -> tuple[GCDSplits, Callable[[torch.Tensor, torch.Generator], torch.Tensor]]:
    """This seed's GCD split (inputs of the trained MLP: view banks or pixels) and its view function."""
    check_choice("dataset", c.dataset, list(BACKBONES))
    check_choice(f"backbone (dataset={c.dataset!r})", c.backbone, BACKBONES[c.dataset])
    if c.dataset == "digits":
        data = gcd_split("digits", old_classes=c.old_classes, prop_labelled=c.prop_labelled, seed=seed)
        return data, partial(shift_noise_views, max_shift=c.max_shift, sigma=c.sigma, image_shape=(8, 8))
    from priorkit.zoo import check_disjoint

    check_disjoint(ZOO_BACKBONE, [k for k in range(10) if k not in c.old_classes], what="new", dataset="fashion_mnist")
    banks, y_tr, te, y_te = _pools(c.backbone, c.pool_per_class, c.test_pool_per_class, c.bank_views, c.max_shift,
                                   c.sigma, c.flip)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    i_tr, i_te = per_class(y_tr, c.train_per_class, range(10), g), per_class(y_te, c.test_per_class, range(10), g)
    # the split is drawn on the samples' pool indices (one column), then the rows are looked up
    idx = gcd_split((i_tr.float().view(-1, 1), y_tr[i_tr]), test_data=(i_te.float().view(-1, 1), y_te[i_te]),
                    old_classes=c.old_classes, prop_labelled=c.prop_labelled, seed=seed, num_classes=10)  # fmt: skip

    z = standardizer(banks[i_tr, 0])  # z-scored with this seed's training set (labelled + unlabelled)

    def rows(d: IndexedTensorDataset, source: torch.Tensor) -> IndexedTensorDataset:
        return IndexedTensorDataset(z(source[d.x[:, 0].long()]), d.y)

    data = GCDSplits(
        rows(idx.labelled, banks), rows(idx.unlabelled, banks), rows(idx.test, te), idx.num_old, idx.num_classes,
        idx.class_order, (te.shape[1],),
    )  # fmt: skip
    return data, pick_view


def _train(data: GCDSplits, views: Callable, seed: int, c: Config, **overrides: object) -> ProtoGCD:
    seed_everything(seed)
    in_dim = clean(data.labelled.x).shape[1]
    model = ProtoGCD(MLP(in_dim, c.hidden, data.num_classes), data.num_classes, proj_dims=c.proj_dims)
    settings = dict(
        epochs=c.epochs, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, tau=c.tau, tau_t=c.tau_t,
        r0=c.r0, r1=c.r1, ramp=c.ramp, wait=c.wait, lam=c.lam, w_ent=c.w_ent, w_sep=c.w_sep,
        tau_unsup=c.tau_unsup, tau_sup=c.tau_sup,
    )  # fmt: skip
    recipe = ProtoGCDRecipe(data.train_labelled_mask, **{**settings, **overrides}, augment=views)
    fit(model, data.train, recipe, config=TrainConfig(epochs=c.epochs, batch_size=c.batch_size, seed=seed,
                                                     progress=False))  # fmt: skip
    return model


def run(seed: int, c: Config) -> SeedResult:
    data, views = load_data(seed, c)
    unl, old_u = data.unlabelled, data.unlabelled_old_mask
    x_unl, x_test = clean(unl.x), data.test.x
    # method
    model = _train(data, views, seed, c)
    method = _scores(model.predict(x_unl), unl.y, old_u)
    method.update(_scores(model.predict(x_test), data.test.y, data.test_old_mask, "test_"))
    if c.ablation:  # ablation (b): no ratio ramp, no debiasing terms (full tier only, for time)
        abl = _train(data, views, seed, c, r1=c.ablation_r1, w_ent=c.ablation_w_ent, w_sep=c.ablation_w_sep)
        method.update(_scores(abl.predict(x_unl), unl.y, old_u, "ablation_"))
    # baseline (a): contrastive representation + semi-supervised k-means
    gcd = _train(data, views, seed, c, objective="contrastive")
    gcd.eval()
    with torch.no_grad():
        feats = torch.cat([gcd.features(clean(data.train.x)), gcd.features(x_test)])
    n_tr = len(data.train)
    lab = torch.cat([data.train_labelled_mask, torch.zeros(len(data.test), dtype=torch.bool)])
    y_all = torch.cat([data.train.y, data.test.y])
    assign = semi_supervised_kmeans(feats, lab, y_all, data.num_classes, iters=c.kmeans_iters, seed=seed)
    pred_u = assign[:n_tr][~data.train_labelled_mask]
    baseline = _scores(pred_u, unl.y, old_u)
    baseline.update(_scores(assign[n_tr:], data.test.y, data.test_old_mask, "test_"))
    return {"method": method, "baseline": baseline}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    keys = ("all_acc", "old_acc", "new_acc")
    sides = [("baseline", "", "GCD (SupCon+SimCLR, SS-k-means)"), ("method", "", "ProtoGCD")]
    if "ablation_all_acc" in results[0]["method"]:
        sides.append(("method", "ablation_", "ablation r=0, no L_ent/L_sep"))
    fig, ax = plt.subplots(figsize=(5.5, 3))
    for i, (side, pre, label) in enumerate(sides):
        vals = [sum(r[side][pre + k] for r in results) / len(results) for k in keys]
        ax.bar([j + 0.27 * i for j in range(len(keys))], vals, width=0.27, label=label)
    ax.set_xticks([j + 0.27 for j in range(len(keys))], ["All", "Old", "New"])
    ax.set_ylabel("accuracy (unlabelled train, Hungarian)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "protogcd_acc.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="protogcd",
    claim="Unified, debiased prototypes give higher All accuracy than contrastive features + semi-supervised "
    "k-means, with a smaller Old-New gap",
    setup="Fashion-MNIST GCD: old classes 0-4 partly labelled, new classes 5-9 unlabelled; frozen zoo backbone "
    "fmnist_conv_base5 (conv net pretrained by priorkit on classes 0-4; images it trained on are not used); an MLP "
    "+ projector + prototypes trained on its features (the CPU-scale version of fine-tuning the last block); two "
    "views drawn from a bank of augmented pixel views (shift, flip, noise) per image; balanced labelled/unlabelled "
    "sampler; SGD with cosine decay",
    method_name="ProtoGCD (DAPL + L_ent + L_sep + SimCLR/SupCon)",
    baseline_name="GCD (SupCon + SimCLR, semi-supervised k-means)",
    checks=[Check("all_acc", "higher", 0.02), Check("old_new_gap", "lower", 0.0)],
    diagnosis="ProtoGCD's All accuracy is above GCD's on average on the pretrained backbone, but with 5 seeds the "
    "paired interval still touches the margin; in both ablations (the backbone randomly initialised, and the former "
    "digits setup) the All gain clears it. The Old/New balance rule does not hold: on the pretrained backbone the "
    "gap's interval is wide, and in both ablations ProtoGCD's Old-New gap is larger than GCD's, so the debiasing "
    "terms raise accuracy here without balancing old and new classes.",
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="ablation_* (method column): ProtoGCD with r fixed at 0 and w_ent = w_sep = 0.",
    ablations={"random_init": {"backbone": RANDOM_INIT}, "digits_mlp": DIGITS_SETUP},
)
