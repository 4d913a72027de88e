"""ST-ProtoPNet vs ProtoPNet on ``parts`` (card: prototypes-interpretable.md, "Learning Support and Trivial
Prototypes ...", "Small-scale check on CPU"), same backbone, data, seeds and budget.

Data: ``parts`` 32x32 RGB, 4 classes (2 diagnostic parts + 1 distractor per image). Backbone: Conv4 with two
max-pools (8x8 feature map), trained from scratch. Both models run the same warm / joint / push / last-layer
schedule through :func:`priorkit.prototypes.protopnet_base.protopnet_recipe` with the same epochs, batch size
and learning rates: warm (add-ons + prototypes, backbone frozen), joint (backbone at the card's CPU-check lr
since the backbone is not pretrained; add-ons and prototypes), push, last layer(s).
ST-ProtoPNet: two branches (x2 upsampling add-ons, cosine + ReLU, max-pool), K prototypes per class per branch,
the official coefficients and per-batch alternation, prototype re-normalisation after each step, weight decay
1e-4 and StepLR(20, 0.2) (code defaults). ProtoPNet: k prototypes per class (the same K), the official L2 head,
weight decay 1e-3 and StepLR(5, 0.1) (its code defaults). Every setting is in :class:`Config` (``QUICK`` and
``FULL``), which the report prints.

Claim and rule (fixed before the first run): (1) accuracy: ST-ProtoPNet's test accuracy >= ProtoPNet's - 0.5
points (card: "(c) >= max(a, b) - 0.5 points"; the card's variants (a) trivial-only and (b) support-only are
replaced by the brief's ProtoPNet baseline); (2) mechanism: on the final (pushed) model, the support
prototypes' mean cosine to their nearest other-class prototype exceeds the trivial prototypes' by more than
0.2 (``cross_cos_gap`` > 0.2, card: "should hold robustly"). The support/trivial margins are reported too.

What the runs taught (the figures are in the committed ``results/st_protopnet.json`` and ``results/report.md``).
At the quick tier both models end near chance, so the accuracy rule holds trivially, and the mechanism rule
fails: right before the push the direction is the card's (the discrimination cost does spread the trivial
prototypes and the closeness cost holds the support ones together), but the push then replaces every prototype
by a latent cell, and the cells of this barely trained latent all lie in a narrow cone, which erases the
difference. The quick budget (a few epochs from a random backbone, a few hundred images) is far from the paper's
(ImageNet/iNaturalist-pretrained backbone, 120 epochs, push at 100), as in the ProtoPNet experiment, whose
quick mode also ends near chance. A metric measured on the pre-push prototypes (reported as ``*_before_push``),
or a trained latent, would be needed; the rule is kept as fixed.

With the full budget (a development run on one seed, before the ``*_before_push`` metrics existed) ST-ProtoPNet
matched ProtoPNet's accuracy, but the mechanism rule failed again for another reason: with a trained latent the
pushed prototypes of both branches are near-orthogonal across classes, so the gap is small, and the support
margin came out larger than the trivial one, against the card. The support branch pushed its prototypes onto
only a few distinct patches: the closeness cost pulls same-class support prototypes onto one cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from priorkit.core.seeding import seed_everything
from priorkit.data.parts import parts_splits
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.experiments.protopnet import arm_schedule, train_protopnet, train_prototype_recipe
from priorkit.metrics import accuracy
from priorkit.models import Conv4
from priorkit.prototypes.st_protopnet import (
    STLoss,
    STProtoPNet,
    concat_push_results,
    default_schedule,
    prototype_geometry,
    renormalize_after_step,
)
from priorkit.train import predict

N_CLASSES = 4


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it); both arms share the ProtoPNet-arm fields."""

    n_train: int = 1200
    n_val: int = 50
    n_test: int = 400
    width: int = 32  # Conv4 width
    dim: int = 32  # prototype dimension D
    k: int = 5  # prototypes per class (per branch for ST-ProtoPNet)
    epochs: int = 21
    warm_epochs: int = 3
    push_start: int = 10
    push_every: int = 10
    last_layer_epochs: int = 5
    batch_size: int = 64
    backbone_lr: float = 1e-3  # joint lrs (the backbone's: the card's from-scratch CPU check)
    add_on_lr: float = 3e-3
    prototype_lr: float = 3e-3
    st_push_batch_size: int = 256  # ST-ProtoPNet's push batch (ProtoPNet's schedule default is the same)


FULL = Config()
QUICK = Config(
    n_train=320, width=16, dim=16, k=3, epochs=8, warm_epochs=2, push_start=7, push_every=7, last_layer_epochs=3
)


def _acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return accuracy(predict(model, x), y)


@torch.no_grad()
def _cross_cos(model: STProtoPNet) -> dict[str, float]:
    """Per branch: mean over prototypes of the cosine to the nearest other-class prototype."""
    same = (model.branch_identity @ model.branch_identity.t()) > 0
    out = {}
    for b in ("trivial", "support"):
        p = torch.nn.functional.normalize(model.prototypes(b).flatten(1), dim=1)
        out[b] = float((p @ p.t()).masked_fill(same, float("-inf")).amax(1).mean())
    return out


def run(seed: int, c: Config) -> SeedResult:
    train, _, test = parts_splits(c.n_train, c.n_val, c.n_test, seed=seed, n_classes=N_CLASSES)
    x, y = train.images, train.labels

    seed_everything(seed)
    st = STProtoPNet(Conv4(3, c.width, N_CLASSES, pools=2), N_CLASSES, c.k, c.dim)
    st_sched = default_schedule(**arm_schedule(c), push_batch_size=c.st_push_batch_size)
    before: dict = {}

    def before_push(state) -> dict[str, float]:  # prototype geometry right before the (last) push
        before.update(_cross_cos(state.model))
        before["acc_before_last_push"] = _acc(state.model, test.images, test.labels)
        return dict(before)

    _, pushes = train_prototype_recipe(
        st, x, y, st_sched, seed, loss=STLoss(), after_step=renormalize_after_step, before_push=before_push
    )
    with torch.no_grad():
        out = st.outputs(test.images)
    geo = prototype_geometry(st, x, y)
    meth = {
        "acc": _acc(st, test.images, test.labels),
        "acc_trivial_branch": float((out.logits["trivial"].argmax(1) == test.labels).float().mean()),
        "acc_support_branch": float((out.logits["support"].argmax(1) == test.labels).float().mean()),
        "trivial_cross_cos": geo["trivial"]["nearest_cross_cos"],
        "support_cross_cos": geo["support"]["nearest_cross_cos"],
        "cross_cos_gap": geo["support"]["nearest_cross_cos"] - geo["trivial"]["nearest_cross_cos"],
        "trivial_margin": geo["trivial"]["margin"],
        "support_margin": geo["support"]["margin"],
        "unique_pushed_trivial": float(pushes["trivial"].n_unique),
        "unique_pushed_support": float(pushes["support"].n_unique),
        "trivial_cross_cos_before_push": before["trivial"],
        "support_cross_cos_before_push": before["support"],
        "acc_before_last_push": before["acc_before_last_push"],
    }

    pp, _, _ = train_protopnet(x, y, c, 3, N_CLASSES, seed)  # the ProtoPNet experiment's arm, same budget
    base = {"acc": _acc(pp, test.images, test.labels)}
    return {
        "method": meth,
        "baseline": base,
        "curves": {"model": st, "push": pushes, "train_images": x, "test": test},
    }


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from priorkit.prototypes.viz import prototype_gallery, this_looks_like_that

    outdir = Path(outdir)
    paths: list[Path] = []
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.6))
    vals = [[r["baseline"]["acc"] for r in results], [r["method"]["acc"] for r in results]]
    axes[0].boxplot(vals, tick_labels=["ProtoPNet", "ST-ProtoPNet"])
    axes[0].set_title("parts test accuracy", fontsize=9)
    tv = [r["method"]["trivial_cross_cos"] for r in results]
    sv = [r["method"]["support_cross_cos"] for r in results]
    axes[1].boxplot([tv, sv], tick_labels=["trivial", "support"])
    axes[1].set_title("cosine to nearest other-class prototype", fontsize=9)
    fig.tight_layout()
    paths.append(outdir / "st_protopnet_acc_geometry.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    art = results[0].get("curves") or {}
    if "model" not in art:
        return paths
    model, pushes, test, imgs = art["model"], art["push"], art["test"], art["train_images"]
    names = [f"{c}: " + " + ".join(test.part_names[i] for i in test.class_parts[c].tolist()) for c in range(N_CLASSES)]
    for b in ("trivial", "support"):
        paths.append(
            prototype_gallery(
                pushes[b], imgs, outdir / f"st_protopnet_gallery_{b}.png", class_names=names, title=f"{b} prototypes"
            )
        )
    both = concat_push_results(pushes["trivial"], pushes["support"])
    for i in range(3):
        idx = int(torch.nonzero(test.labels == i, as_tuple=True)[0][0])
        paths.append(
            this_looks_like_that(
                model,
                test.images[idx],
                both,
                imgs,
                outdir / f"st_protopnet_explain_{i}.png",
                k=4,
                label=int(test.labels[idx]),
                class_names=[str(c) for c in range(N_CLASSES)],
            )
        )
    return paths


EXPERIMENT = Experiment(
    id="st_protopnet",
    claim="Support prototypes sit nearer the decision boundary than trivial ones (nearest cross-class cosine "
    "higher by > 0.2) and ST-ProtoPNet's accuracy is at least ProtoPNet's - 0.5 points",
    setup="parts 32x32, 4 classes; Conv4 (8x8 map) from scratch; ST-ProtoPNet (two branches, alternation) vs "
    "ProtoPNet, same warm/joint/push/last-layer budget",
    method_name="ST-ProtoPNet",
    baseline_name="ProtoPNet",
    checks=[Check("acc", "higher", -0.005), Check("cross_cos_gap", "higher", 0.2, against="value")],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    diagnosis="Accuracy holds; the mechanism rule fails because of the push, not the training objective. Measured on "
    "the same runs: before the last push the support prototypes sit much closer to other classes than the trivial "
    "ones (support_cross_cos_before_push against trivial_cross_cos_before_push in the metrics table), the card's "
    "geometry, well past the 0.2 gap. The push then replaces every prototype by its nearest training latent cell; "
    "with this trained latent the cells of different classes are near-orthogonal, so both branches' pushed "
    "prototypes end at a similar, small cross-class cosine and the gap shrinks below 0.2. The closeness cost also "
    "pulls same-class support prototypes onto the same few cells (unique_pushed_support against "
    "unique_pushed_trivial). The paper measures its geometry on pretrained ImageNet-scale backbones whose patch "
    "space is rich enough to hold boundary cells; the parts data at CPU scale is not.",
    notes="cross_cos_gap = support_cross_cos - trivial_cross_cos, each the mean over a branch's prototypes of the "
    "cosine to the nearest prototype of another class (final, pushed model). In the explanations, prototypes "
    "0..M-1 are trivial and M..2M-1 support.",
)
