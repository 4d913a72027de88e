"""EvalProtoPNet (TesNet-style ProtoPNet + SDFA + SA) vs ProtoPNet on ``parts``: consistency, stability, accuracy
(card: prototypes-interpretable.md, ``eval_protopnet``, "Small-scale check on CPU").

Data: ``parts`` 32x32 RGB, 4 classes (2 diagnostic parts + 1 distractor per image, random places); keypoints are
the part centres (``PartsData.keypoints``, all 13 part types, visible when present). Both models: the same Conv4
backbone (two max-pools: a 16x16 shallow map after the first block, an 8x8 deep map), trained from scratch, the
same D, K prototypes per class, epochs, warm epochs, batch size, learning rates (warm: add-on and prototypes,
backbone frozen; joint: the backbone at a from-scratch lr since it is not pretrained, add-on and prototypes,
weight decay on backbone and add-on) and StepLR (the repo's step over joint epochs, scaled to the budget).

* Method: :class:`~priorkit.prototypes.eval_protopnet.EvalProtoPNet` with the official loss (CE + 0.8 Clst - 0.08
  Sep + 1e-4 Orth + 0.5 L_align, L_align after the warm epochs, tau = 0.1), SA head (its own theta lr),
  prototypes re-normalised after every step, shallow layer ``body.0``, no push.
* Baseline: priorkit's :class:`~priorkit.prototypes.protopnet.ProtoPNet` (regular add-on, L2 + log activation,
  official loss), with a push after the last epoch and then last-layer epochs, so the scored model is the
  interpretable, pushed one.
* Scores (:mod:`priorkit.metrics.interpretability`) on the test split: own-class prototypes' maps (EvalProtoPNet:
  projection maps; ProtoPNet: log-similarity maps), bicubic upsampling, the card's box half-size, a part
  threshold, stability noise N(0, std^2) added to the model input (both models take raw [0, 1] images, so
  "normalised space" is the image space here), noise seed = run seed.

Every setting is in :class:`Config` (``QUICK`` and ``FULL``, fixed before the first run), which the report
prints; the full tier also trains the ablation (the same EvalProtoPNet without SDFA) and reports it as ``nosdfa_*``
in the method's metrics.

Claim and rule (fixed before the first run): the improved model's consistency is at least 5 points above
ProtoPNet's and its stability at least 2 points above (scores on 0..100). Accuracy is reported, not checked.

Every run also reports ``part_hit_rate`` (priorkit's diagnostic, added after the first run without touching rule,
budget or seeds): 100 x the fraction of (test image, own-class prototype) pairs whose box covers any part. The
paper's stability counts a pair that covers no part with and without noise as stable, so it must be read with it.

What the runs taught (the figures are in the committed ``results/eval_protopnet.json`` and
``results/report.md``). At the quick tier the ProtoPNet baseline is degenerate: as in the ``protopnet``
experiment, the push after a few from-scratch epochs wrecks it (accuracy near chance) and most of its prototypes
sit on the background; background boxes that cover no part stay "stable" under noise, so there the stability rule
measures the metric's blind spot rather than SDFA, while consistency clearly favours EvalProtoPNet. A quick-size
run of the same model without SDFA changed neither score beyond seed noise. With the full budget both scores
move in the paper's direction against ProtoPNet; the no-SDFA ablation shows that SDFA itself mainly raises
stability, and that most of the consistency gain comes from the TesNet-style base (projection activation, cosine
Clst/Sep, orthogonality, SA, no push) rather than from the alignment loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from priorkit.core.seeding import seed_everything
from priorkit.data.parts import parts_splits
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.experiments.protopnet import train_protopnet, train_prototype_recipe
from priorkit.metrics import accuracy
from priorkit.metrics.interpretability import interpretability_scores
from priorkit.models import Conv4
from priorkit.prototypes.eval_protopnet import (
    EvalProtoPNet,
    default_schedule,
    make_loss_fn,
    renormalize_prototypes,
    visual_push,
)
from priorkit.prototypes.protopnet_base import upsample_map
from priorkit.train import predict

N_CLASSES = 4


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it). Both arms share the Conv4 / prototype / schedule fields;
    the ProtoPNet baseline reads them through :func:`~priorkit.experiments.protopnet.train_protopnet`."""

    n_train: int = 1200
    n_val: int = 50
    n_test: int = 400
    width: int = 32  # Conv4 width
    dim: int = 32  # prototype dimension D
    k: int = 4  # prototypes per class
    epochs: int = 25
    warm_epochs: int = 5
    step_size: int = 7  # joint StepLR step (the repo's 3 over 7 joint epochs, scaled)
    gamma: float = 0.2  # joint StepLR factor
    last_layer_epochs: int = 10  # ProtoPNet's last-layer epochs after its push
    batch_size: int = 32
    backbone_lr: float = 1e-3  # joint lrs (the backbone's: from scratch)
    add_on_lr: float = 3e-3
    prototype_lr: float = 3e-3
    sa_lr: float = 1e-6  # EvalProtoPNet's SA theta
    ablation: bool = True  # also train EvalProtoPNet without SDFA (``nosdfa_*``)
    half_size: float = 4.0  # box half-size in pixels (card)
    part_thresh: float = 0.8
    noise_std: float = 0.2  # stability noise

    @property
    def push_start(self) -> int:
        """ProtoPNet's one push: after the last epoch."""
        return self.epochs - 1

    @property
    def push_every(self) -> int:
        return self.epochs - 1


FULL = Config()
QUICK = Config(n_train=240, n_test=200, width=16, epochs=8, warm_epochs=2, step_size=3, last_layer_epochs=5,
               ablation=False)  # fmt: skip


@torch.no_grad()
def _scores(model: torch.nn.Module, test, c: Config, seed: int) -> dict[str, float]:
    model.eval()
    s = interpretability_scores(
        model.similarity_maps,
        test.images,
        test.keypoints(),
        test.labels,
        N_CLASSES,
        half_size=c.half_size,
        part_thresh=c.part_thresh,
        noise_std=c.noise_std,
        seed=seed,
    )
    # predict restores the module mode; the model is in eval mode here already (set above; the recipe's fit
    # also leaves it in eval mode), which is what the old local _acc left behind for the figures
    return {**s, "acc": accuracy(predict(model, test.images, batch_size=500), test.labels)}


def _train_eval(train, c: Config, seed: int, align: bool) -> EvalProtoPNet:
    seed_everything(seed)
    model = EvalProtoPNet(Conv4(3, c.width, N_CLASSES, pools=2), N_CLASSES, c.k, c.dim, align=align)
    schedule = default_schedule(
        c.epochs,
        c.warm_epochs,
        step_size=c.step_size,
        gamma=c.gamma,
        batch_size=c.batch_size,
        joint_lrs={"backbone": c.backbone_lr, "add_on": c.add_on_lr, "prototypes": c.prototype_lr, "sa": c.sa_lr},
    )
    train_prototype_recipe(
        model, train.images, train.labels, schedule, seed, loss=make_loss_fn(), after_step=renormalize_prototypes
    )
    return model


def _train_protopnet(train, c: Config, seed: int):
    # one push, after the last epoch (``c.push_start``); the same StepLR as the method
    model, push, _ = train_protopnet(
        train.images, train.labels, c, 3, N_CLASSES, seed, joint_step_size=c.step_size, joint_gamma=c.gamma
    )
    return model, push


def run(seed: int, c: Config) -> SeedResult:
    train, _, test = parts_splits(c.n_train, c.n_val, c.n_test, seed=seed, n_classes=N_CLASSES)
    model = _train_eval(train, c, seed, align=True)
    meth = _scores(model, test, c, seed)
    if c.ablation:
        abl = _scores(_train_eval(train, c, seed, align=False), test, c, seed)
        meth.update({f"nosdfa_{k}": v for k, v in abl.items()})
    base_model, base_push = _train_protopnet(train, c, seed)
    base = _scores(base_model, test, c, seed)
    return {
        "method": meth,
        "baseline": base,
        "curves": {
            "model": model, "base_model": base_model, "base_push": base_push, "train": train, "test": test,
            "half_size": c.half_size,
        },
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# figures


def _score_figure(results: list[SeedResult], path: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    keys = ["consistency", "stability", "part_hit_rate", "acc"]
    keys = [k for k in keys if k in results[0]["method"]]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.6), squeeze=False)
    axes = axes[0]
    for ax, k in zip(axes, keys):
        vals = [[r["baseline"][k] for r in results], [r["method"][k] for r in results]]
        names = ["ProtoPNet", "EvalProtoPNet"]
        if "nosdfa_" + k in results[0]["method"]:
            vals.insert(1, [r["method"]["nosdfa_" + k] for r in results])
            names.insert(1, "no SDFA")
        for i, v in enumerate(vals):
            ax.bar(i, float(np.mean(v)), color=["#999999", "#88aadd", "#3366cc"][-len(vals) :][i])
            ax.scatter([i] * len(v), v, color="k", s=8, zorder=3)
        ax.set_xticks(range(len(vals)), names, fontsize=7)
        ax.set_title(k + (" (0-100)" if k != "acc" else " (test)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@torch.no_grad()
def _argmax_figure(models: dict, test, path: Path, half_size: float, n_images: int = 6) -> Path:
    """Each model's own-class prototype boxes (argmax of the upsampled map, ``half_size``) on class-0 test images,
    with the part keypoints: a consistent prototype keeps its box on the same part across the row."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    idx = torch.nonzero(test.labels == 0, as_tuple=True)[0][:n_images]
    kp = test.keypoints()[idx]
    colours = ["yellow", "cyan", "magenta", "lime", "orange", "white"]
    fig, axes = plt.subplots(len(models), len(idx), figsize=(1.4 * len(idx), 1.6 * len(models)), squeeze=False)
    for r, (name, model) in enumerate(models.items()):
        model.eval()
        maps = model.similarity_maps(test.images[idx])
        k = model.prototypes_per_class
        up = upsample_map(maps[:, :k], tuple(test.images.shape[2:]))
        for col in range(len(idx)):
            ax = axes[r, col]
            ax.imshow(test.images[idx[col]].permute(1, 2, 0).numpy(), interpolation="nearest")
            vis = kp[col, :, 2] > 0
            ax.scatter(kp[col, vis, 0], kp[col, vis, 1], marker="x", color="red", s=12)
            for j in range(k):
                flat = int(up[col, j].flatten().argmax())
                y, x = divmod(flat, up.shape[-1])
                ax.add_patch(
                    Rectangle(
                        (x - half_size - 0.5, y - half_size - 0.5),
                        2 * half_size + 1,
                        2 * half_size + 1,
                        fill=False,
                        edgecolor=colours[j % len(colours)],
                        linewidth=1.0,
                    )
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle("class-0 prototypes' argmax boxes (colour = prototype), x = part keypoints", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")

    from priorkit.prototypes.viz import prototype_gallery, this_looks_like_that

    outdir = Path(outdir)
    paths = [_score_figure(results, outdir / "eval_protopnet_scores.png")]
    art = results[0].get("curves") or {}
    if "model" not in art:
        return paths
    model, base, train, test = art["model"], art["base_model"], art["train"], art["test"]
    models = {"EvalProtoPNet": model, "ProtoPNet": base}
    paths.append(_argmax_figure(models, test, outdir / "eval_protopnet_boxes.png", art["half_size"]))
    names = [f"{c}: " + " + ".join(test.part_names[i] for i in test.class_parts[c].tolist()) for c in range(N_CLASSES)]
    push = visual_push(model, train.images, train.labels)
    paths.append(
        prototype_gallery(
            push,
            train.images,
            outdir / "eval_protopnet_gallery.png",
            class_names=names,
            title="EvalProtoPNet prototypes (nearest own-class training patch; not pushed)",
        )
    )
    paths.append(
        prototype_gallery(
            art["base_push"],
            train.images,
            outdir / "eval_protopnet_protopnet_gallery.png",
            class_names=names,
            title="ProtoPNet baseline prototypes (pushed training patches)",
        )
    )
    weights = model.class_weights().detach()
    short = [f"class {c}" for c in range(N_CLASSES)]
    for i in range(2):
        j = int(torch.nonzero(test.labels == i, as_tuple=True)[0][0])
        paths.append(
            this_looks_like_that(
                model,
                test.images[j],
                push,
                train.images,
                outdir / f"eval_protopnet_explain_{i}.png",
                k=3,
                label=int(test.labels[j]),
                weights=weights,
                class_names=short,
            )
        )
    return paths


EXPERIMENT = Experiment(
    id="eval_protopnet",
    claim="SDFA + SA (on a TesNet-style ProtoPNet) give higher consistency and stability scores than ProtoPNet",
    setup="parts 32x32, 4 classes; same Conv4 backbone (16x16 shallow, 8x8 deep map), prototypes, epochs, lrs and "
    "StepLR; EvalProtoPNet (official loss, SA head, no push) vs ProtoPNet (pushed + last layer); consistency and "
    "stability on the test keypoints; the full tier adds the no-SDFA ablation",
    method_name="EvalProtoPNet (SDFA + SA)",
    baseline_name="ProtoPNet",
    checks=[Check("consistency", "higher", 5.0), Check("stability", "higher", 2.0)],
    diagnosis="Consistency rises far above the 5-point margin; stability rises on average but varies widely between "
    "seeds, so its interval reaches below the 2-point margin. Stability is measured from the prototypes' "
    "activation peaks under input noise on 32x32 parts images with 8x8 feature maps: a one-cell move of a "
    "peak changes a part hit, so the score is coarse at this resolution and five seeds do not resolve a "
    "gain of the paper's size.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="consistency / stability on 0..100 (the paper's scale); acc is test accuracy (reported, not checked); "
    "nosdfa_* (full tier) is the same model trained without the alignment loss.",
)
