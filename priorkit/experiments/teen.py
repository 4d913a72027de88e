"""TEEN vs the plain prototype classifier in few-shot class-incremental Fashion-MNIST, over a frozen pretrained
backbone (card: prototypes-fewshot-ood.md).

The paper's protocol (CEC / PyCIL session loop): a backbone trained on the base session's classes, frozen; its
classifier replaced by the class means of the base training images; each later session adds new classes from
``shot`` examples each; after every session, test on the test images of all seen classes. Here: Fashion-MNIST
with its official split; the base session is classes 0-4 and its training is the pretraining of the zoo's
``fmnist_conv_base5`` (:mod:`priorkit.zoo`; a small conv net CE-trained by priorkit on training images of
classes 0-4 only, with a linear head where the card trains a cosine classifier: the head is dropped either way),
frozen, its features extracted once and cached on disk; the new classes 5-9 are checked disjoint from the
pretraining classes. Base prototypes are the class means of ``base_per_class`` training images per base class;
the shots of the new classes are drawn from ``pool_per_class`` training images per class; the test set is the
10,000 official test images. With five new classes the sessions add ``way`` classes each (one per session by
default: five incremental sessions). Several shot draws per seed are averaged (the seed decides the draws; the
backbone and the images are fixed). Method: TEEN with the official defaults of alpha (``shift_weight``) and tau
(``softmax_t``). Baseline: the same prototypes with alpha=0 (SimpleCIL). Smaller alphas are reported beside the
rule's (``*@alpha=...``), and so is where the last session's errors go: ``new_to_new_last`` (new test images put
in another new class), ``base_to_new_last`` (base test images put in a new class) and ``new_proto_cos_last``
(the mean cosine between two new classes' prototypes).

``backbone`` chooses the features: the zoo backbone (pretrained), ``"random_init"`` (the same architecture with
random weights, frozen: pretrained vs scratch), or ``"mlp"`` with ``dataset="digits"`` (the card's former CPU
check: an MLP with a cosine classifier trained on digits 0-5 through the engine once per seed, the card's 6
base classes and 2-way sessions). Every setting is in :class:`Config` (``QUICK`` and ``FULL`` are the same
per-seed budget; the tiers differ only in the number of seeds), which the report prints.

Rule (fixed before the first run, from the card's "Expected"): in the last session TEEN's new-class accuracy
is at least 1 point higher, overall accuracy not lower, the new->base confusion rate not higher, and base
accuracy at most 1 point lower than the baseline's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import check_choice
from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.incremental import FSCILData, load_incremental, make_incremental
from priorkit.experiments._fmnist import RANDOM_INIT, frozen_features
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.incremental import average_accuracy, performance_drop, session_metrics
from priorkit.models import MLP
from priorkit.prototypes.teen import SPEC, TEENHead, cosine_logits
from priorkit.train import TrainConfig, fit

_P = SPEC.presets["small"]
#: the zoo backbone of each dataset (pretrained on its classes 0-4); "random_init" is its architecture untrained
ZOO = {"fashion_mnist": "fmnist_conv_base5"}
BACKBONES = {"fashion_mnist": (ZOO["fashion_mnist"], RANDOM_INIT), "digits": ("mlp",)}


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    dataset: str = "fashion_mnist"  # "fashion_mnist" or "digits" (the former setup, with backbone="mlp")
    backbone: str = ZOO["fashion_mnist"]  # zoo name (frozen, pretrained) | "random_init" | "mlp" (digits only)
    base_classes: int = 5
    way: int = 1  # new classes per session
    shot: int = 5
    base_per_class: int = 1000  # fashion_mnist: training images per base class for the base prototypes
    pool_per_class: int = 500  # fashion_mnist: training images per new class the shots are drawn from
    hidden: tuple[int, ...] = (128, 64)  # backbone="mlp" only: the per-seed MLP and its base-session training
    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = _P["temperature"]  # cosine classifier t (TEEN's head; the mlp's base training)
    alpha: float = _P["alpha"]  # TEEN's calibration weight (the baseline uses 0)
    tau: float = _P["tau"]
    draws: int = 20  # shot draws per seed, averaged
    draw_seed_stride: int = 1000  # draw d of seed s uses seed stride * s + d
    alpha_sweep: tuple[float, ...] = (0.1, 0.3)  # also reported; CIFAR-100 uses 0.1, the card expects 0.3-0.5 to help


FULL = Config()
QUICK = Config()  # same per-seed budget; quick runs fewer seeds


class _BaseNet(nn.Module):
    """The former setup's base-session network: an MLP's features and a learnable cosine classifier."""

    def __init__(self, backbone: MLP, num_classes: int, temperature: float) -> None:
        super().__init__()
        self.backbone, self.temperature = backbone, temperature
        self.weight = nn.Parameter(torch.empty(num_classes, backbone.feature_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self.backbone.features(x), self.weight, self.temperature)


def _features(backbone: str, zoo_name: str, x: torch.Tensor) -> torch.Tensor:
    return frozen_features(backbone, x, zoo_name=zoo_name, batch_size=256)


@functools.lru_cache(maxsize=2)
def _fmnist_images(
    zoo_name: str, base_classes: int, base_per_class: int, pool_per_class: int
) -> tuple[torch.Tensor, ...]:
    """``(training images, labels, test images, labels)``: seeded per-class subsets of the training images (of
    the zoo backbone's own split) and all official test images."""
    from priorkit.data.real import load_real
    from priorkit.zoo import CONFIGS

    pre = CONFIGS[zoo_name]
    sp = load_real("fashion_mnist_image", val=pre.val, seed=pre.split_seed)
    g = torch.Generator().manual_seed(0)
    keep = []
    for k in range(sp.num_classes):
        idx = torch.nonzero(sp.train.y == k).squeeze(1)
        n = base_per_class if k < base_classes else pool_per_class
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]].sort().values)
    t = torch.cat(keep)
    return sp.train.x[t], sp.train.y[t], sp.test.x, sp.test.y


def _on_features(data: FSCILData, embed: Callable[[torch.Tensor], torch.Tensor]) -> FSCILData:
    """``data`` with every example replaced by its features (the shots redrawn from the same seed)."""

    def f(d: IndexedTensorDataset) -> IndexedTensorDataset:
        return IndexedTensorDataset(embed(d.x), d.y)

    feats = dataclasses.replace(data, base_train=f(data.base_train), pool=f(data.pool), test=f(data.test))
    return feats.redraw(data.seed)


def session_data(seed: int, c: Config) -> FSCILData:
    """The FSCIL sessions of the configured setup, on frozen features."""
    check_choice("dataset", c.dataset, list(BACKBONES))
    check_choice(f"backbone (dataset={c.dataset!r})", c.backbone, BACKBONES[c.dataset])
    if c.dataset == "digits":
        data = load_incremental("digits", base_classes=c.base_classes, way=c.way, shot=c.shot, seed=seed)
        seed_everything(seed)
        backbone = MLP(64, c.hidden, c.base_classes)
        cfg = TrainConfig(
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            scheduler="cosine",
            seed=seed,
            progress=False,
        )
        fit(_BaseNet(backbone, data.num_base, c.temperature), data.base_train, config=cfg)  # classifier dropped
        backbone.eval()
        with torch.no_grad():
            return _on_features(data, backbone.features)
    from priorkit.zoo import check_disjoint

    zoo_name = ZOO[c.dataset]
    check_disjoint(zoo_name, range(c.base_classes, 10), what="new", dataset=c.dataset)
    x_tr, y_tr, x_te, y_te = _fmnist_images(zoo_name, c.base_classes, c.base_per_class, c.pool_per_class)
    f_tr, f_te = _features(c.backbone, zoo_name, x_tr), _features(c.backbone, zoo_name, x_te)
    return make_incremental(f_tr, y_tr, f_te, y_te, base_classes=c.base_classes, way=c.way, shot=c.shot, seed=seed)


def _evaluate(data: FSCILData, alpha: float, c: Config) -> dict[str, float]:
    """One shot draw on features: run all sessions with calibration weight ``alpha``; per-session metrics."""
    head = TEENHead(
        data.input_shape[0], data.num_classes, data.num_base, alpha=alpha, tau=c.tau, temperature=c.temperature
    )
    head.fit_base(data.base_train.x, data.base_train.y)
    out: dict[str, float] = {}
    accs = []
    for s in range(data.num_sessions):
        if s > 0:
            sup = data.sessions[s - 1]
            head.add_session(sup.x, sup.y, calibrate=True)
        test = data.test_upto(s)
        with torch.no_grad():
            pred = head(test.x).argmax(1)
        m = session_metrics(pred, test.y, data.num_base)
        accs.append(m["acc"])
        out[f"acc_s{s}"] = m["acc"]
        if s > 0:
            for k in ("base_acc", "new_acc", "hm", "new_to_base"):
                out[f"{k}_s{s}"] = m[k]
    last = data.num_sessions - 1
    new, base = test.y >= data.num_base, test.y < data.num_base
    protos = F.normalize(head.prototypes[data.num_base : head.num_seen], dim=1)
    pairs = torch.triu_indices(len(protos), len(protos), 1)
    out.update(
        # where the last session's errors go: new images to another new class, base images to a new class
        new_to_new_last=float(((pred[new] >= data.num_base) & (pred[new] != test.y[new])).double().mean()),
        base_to_new_last=float((pred[base] >= data.num_base).double().mean()),
        # mean cosine between two new classes' prototypes (how far calibration pulls them together)
        new_proto_cos_last=float((protos @ protos.T)[pairs[0], pairs[1]].mean()) if len(protos) > 1 else 0.0,
        acc_last=accs[-1],
        base_acc_last=out[f"base_acc_s{last}"],
        new_acc_last=out[f"new_acc_s{last}"],
        hm_last=out[f"hm_s{last}"],
        new_to_base_last=out[f"new_to_base_s{last}"],
        pd=performance_drop(accs),
        avg_acc=average_accuracy(accs),
    )
    return out


def run(seed: int, c: Config) -> SeedResult:
    data = session_data(seed, c)
    sums: dict[str, dict[str, float]] = {"method": {}, "baseline": {}}
    for d in range(c.draws):
        draw = data.redraw(c.draw_seed_stride * seed + d)
        for side, alpha in (("method", c.alpha), ("baseline", 0.0)):
            for k, v in _evaluate(draw, alpha, c).items():
                sums[side][k] = sums[side].get(k, 0.0) + v / c.draws
        for alpha in c.alpha_sweep:  # reported beside the rule's alpha, never used by the checks
            res = _evaluate(draw, alpha, c)
            for k in ("acc_last", "base_acc_last", "new_acc_last", "new_to_base_last", "new_to_new_last"):
                key = f"{k}@alpha={alpha}"
                sums["method"][key] = sums["method"].get(key, 0.0) + res[k] / c.draws
    curves: dict = {side: [sums[side][f"acc_s{s}"] for s in range(data.num_sessions)] for side in sums}
    curves["alpha"] = c.alpha
    return {"method": sums["method"], "baseline": sums["baseline"], "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    alpha = results[0]["curves"]["alpha"]
    for side, label in (("baseline", "prototypes (alpha=0)"), ("method", f"TEEN (alpha={alpha})")):
        acc = torch.tensor([r["curves"][side] for r in results]).mean(0)
        axes[0].plot(range(len(acc)), acc, marker="o", label=label)
    axes[0].set_xlabel("session")
    axes[0].set_ylabel("test accuracy (seen classes)")
    axes[0].legend(fontsize=7)
    keys = ("base_acc_last", "new_acc_last", "new_to_base_last")
    for i, side in enumerate(("baseline", "method")):
        vals = [sum(r[side][k] for r in results) / len(results) for k in keys]
        axes[1].bar([j + 0.4 * i for j in range(len(keys))], vals, width=0.4, label=side)
    axes[1].set_xticks([j + 0.2 for j in range(len(keys))], ["base acc", "new acc", "new->base"], fontsize=8)
    axes[1].set_title("last session")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "teen_sessions.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="teen",
    claim="Calibrating new prototypes towards base prototypes raises new-class and overall accuracy in the last "
    "session and lowers new->base confusion, with base accuracy within 1 point",
    setup="Fashion-MNIST FSCIL: base session = classes 0-4, frozen zoo backbone fmnist_conv_base5 (conv net "
    "pretrained by priorkit on them, features cached) with class-mean prototypes; incremental sessions add the new "
    "classes 5-9 from a few shots each; test on the official test images of all seen classes; several shot draws "
    "per seed; TEEN vs the same prototypes with alpha=0",
    ablations={
        "random_init": {"backbone": RANDOM_INIT},
        "digits_mlp": {"dataset": "digits", "backbone": "mlp", "base_classes": 6, "way": 2},
    },
    diagnosis=(
        "TEEN lowers new->base confusion as the card expects (new_to_base_last), but the errors move rather than "
        "vanish: calibration pulls every new prototype towards the same few base prototypes and so towards each "
        "other (new_proto_cos_last rises), new test images go to the wrong new class (new_to_new_last rises) and "
        "base test images to new classes (base_to_new_last rises), so new-class, base and overall accuracy fall. "
        "Here there are 5 base classes (60-100 in the paper), all clothing, while three of the five new classes "
        "are footwear, so every calibration target is a mix of the same clothing prototypes. Smaller alphas "
        "(*@alpha=0.1/0.3) shrink the losses without turning them into gains; the random_init ablation shows the "
        "same pattern on untrained features (not a pretraining effect); the digits_mlp ablation (the card's former "
        "digits check) raises new-class accuracy but costs base accuracy."
    ),
    method_name="TEEN",
    baseline_name="prototype classifier (alpha=0)",
    checks=[
        Check("new_acc_last", "higher", 0.01),
        Check("acc_last", "higher", 0.0),
        Check("new_to_base_last", "lower", 0.0),
        Check("base_acc_last", "higher", -0.01),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
