"""ProtoPNet vs the same backbone without prototypes on ``parts`` (card: prototypes-interpretable.md,
"ProtoPNet base", "Small-scale check on CPU"; the card's digits check runs too in full mode, as extra numbers).

Data: ``parts`` 32x32 RGB, 4 classes (2 diagnostic parts + 1 distractor per image); Conv4 backbone with two
max-pools (an 8x8 feature map), trained from scratch. ProtoPNet: regular add-on to D, k prototypes per class
(1x1), the official loss (CE + 0.8 Clst - 0.08 Sep + 1e-4 L1) and schedule (Adam; warm: add-on and prototypes,
backbone frozen; joint: the backbone at the card's CPU-check lr since the backbone is not pretrained, add-on and
prototypes, StepLR(5, 0.1); push then last-layer epochs at lr 1e-4). The run ends on a push + last-layer stage, so the
reported model is the interpretable one. Baseline: the same Conv4 with global average pooling and a linear head
(Adam with weight decay), as many passes over the data as ProtoPNet's epochs plus last-layer epochs. Every
setting is in :class:`Config` (``QUICK`` and ``FULL``), which the report prints; the full tier also runs the
card's digits check (8x8 digits, 10 classes) as extra numbers.

Rule (fixed before the first run): ProtoPNet's test accuracy is at most 2 points below the baseline's (card: "within
about 2 points"). The method's metrics also carry the distance-kernel speed (``kernel_gflops``, ``matmul_gflops``,
``kernel_ratio``: the expansion-form kernel vs a plain matmul of the same M, N, K, timed single-threaded), the
accuracy right before the last push, the number of unique pushed patches, the shrink factor of the off-class
weights' L1 during the last last-layer stage (``offclass_l1_shrink``) and the largest shrink that stage's Adam steps
could reach at all (``offclass_l1_shrink_max``, :func:`adam_travel_bound`).

The card also expects "The wrong-class weights' L1 norm shrinks by more than 5x during the last-layer phase". That
is not checked, because it cannot hold at the official last-layer optimiser in the step count of this check (nor
of the card's digits check): see ``notes`` (the bound is computed there from the config).

What was learnt: the quick budget (a few epochs, two of them warm with a frozen *random* backbone) leaves the
prototypes far from any latent patch, so the push destroys most of what the head had learnt and ProtoPNet is far
below the baseline; with the full budget the latent space is organised before the pushes and the push costs
little. The paper starts from an ImageNet-pretrained backbone, which this from-scratch CPU check does not have.
The off-class weights barely move in the last-layer stage: the cross-entropy gradient on a wrong-class weight
pushes it further negative while the 1e-4 L1 pull is tiny, and Adam at lr 1e-4 moves a weight by about 1e-4 per
step whatever the gradient's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from priorkit.core.errors import check_positive_int
from priorkit.core.seeding import seed_everything
from priorkit.data import load_digits
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.parts import parts_splits
from priorkit.experiments._kernels import distance_kernel_gflops
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics import accuracy
from priorkit.models import Conv4
from priorkit.prototypes.protopnet import ProtoPNet
from priorkit.prototypes.protopnet_base import PhaseSchedule, PushResult, protopnet_recipe
from priorkit.train import RunState, TrainConfig, Trainer, predict


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it). The ProtoPNet-arm fields (``width`` ... ``prototype_lr``)
    are the ones :func:`train_protopnet` reads, shared by the family's experiments."""

    n_train: int = 1600
    n_val: int = 100
    n_test: int = 400
    width: int = 32  # Conv4 width
    dim: int = 32  # prototype dimension D
    k: int = 5  # prototypes per class
    epochs: int = 21
    warm_epochs: int = 5
    push_start: int = 10
    push_every: int = 10
    last_layer_epochs: int = 10
    batch_size: int = 64
    backbone_lr: float = 1e-3  # joint lrs (the backbone's: the card's from-scratch CPU check)
    add_on_lr: float = 3e-3
    prototype_lr: float = 3e-3
    baseline_lr: float = 1e-3
    baseline_weight_decay: float = 1e-3
    # the distance kernel at the ProtoPNet paper's CUB size (2000 prototypes, D=128, 7x7 maps), one thread
    kernel_batch: int = 64
    kernel_dim: int = 128
    kernel_map: int = 7
    kernel_prototypes: int = 2000
    kernel_repeats: int = 9
    # the card's digits check (extra numbers): 8x8 digits, 10 classes
    digits: bool = True
    digits_test_fraction: float = 0.3
    digits_width: int = 32
    digits_dim: int = 32
    digits_k: int = 10


FULL = Config()
QUICK = Config(
    n_train=480, width=16, dim=16, k=3, epochs=9, warm_epochs=2, push_start=8, push_every=8, last_layer_epochs=5,
    kernel_batch=16, kernel_repeats=5, digits=False,
)  # fmt: skip


class ArmConfig(Protocol):
    """The fields of an experiment's config that :func:`train_protopnet` reads (the family's ProtoPNet arm)."""

    width: int
    dim: int
    k: int
    epochs: int
    warm_epochs: int
    push_start: int
    push_every: int
    last_layer_epochs: int
    batch_size: int
    backbone_lr: float
    add_on_lr: float
    prototype_lr: float


def adam_travel_bound(lr: float, first_step: int, n_steps: int, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """The farthest one parameter can move in Adam steps ``first_step + 1 .. first_step + n_steps`` (no weight
    decay), whatever the gradients: step t moves it by ``lr |m_t| / (1 - b1^t) / sqrt(v_t / (1 - b2^t))``, and
    Cauchy-Schwarz on the two moment sums bounds ``|m_t| / sqrt(v_t)`` by ``(1 - b1) / sqrt(1 - b2) *
    sqrt(sum_{k<t} (b1^2 / b2)^k)``. Equal to ``lr`` per step at t = 1, it grows to about 7.3 ``lr`` per step
    (torch's default betas) for adversarial gradient sequences; a gradient of steady sign moves ``lr`` per step."""
    check_positive_int("first_step", first_step, 0)
    check_positive_int("n_steps", n_steps, 0)
    b1, b2 = betas
    r = b1 * b1 / b2
    total = 0.0
    for t in range(first_step + 1, first_step + n_steps + 1):
        geo = float(t) if r == 1.0 else (1.0 - r**t) / (1.0 - r)
        total += (1.0 - b1) / math.sqrt(1.0 - b2) * math.sqrt(geo) * math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
    return lr * total


def last_layer_steps(c: ArmConfig, n_train: int) -> tuple[int, int]:
    """``(steps per last-layer stage, number of last-layer stages)`` of the family's arm on ``n_train`` images."""
    schedule = PhaseSchedule(**arm_schedule(c))
    return c.last_layer_epochs * -(-n_train // c.batch_size), len(schedule.push_epochs())


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return accuracy(predict(model, x), y)


def arm_schedule(c: ArmConfig) -> dict[str, Any]:
    """The :class:`PhaseSchedule` fields the family's experiments set from their config (epochs, warm, push,
    last-layer epochs, joint lrs, batch size); other fields keep the schedule's defaults."""
    return dict(
        epochs=c.epochs,
        warm_epochs=c.warm_epochs,
        push_start=c.push_start,
        push_every=c.push_every,
        last_layer_epochs=c.last_layer_epochs,
        joint_lrs={"backbone": c.backbone_lr, "add_on": c.add_on_lr, "prototypes": c.prototype_lr},
        batch_size=c.batch_size,
    )


def train_prototype_recipe(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    schedule: PhaseSchedule,
    seed: int,
    *,
    before_push: Callable[[RunState], Mapping[str, float] | None] | None = None,
    **recipe_kw: Any,
) -> tuple[list[dict[str, Any]], Any]:
    """Train a prototype model of the ProtoPNet family through the engine on (x, y), pushing onto the same
    images; returns (history, last push result). Shared by the family's experiments (method and baselines)."""
    recipe = protopnet_recipe(model, schedule, push_data=(x, y), before_push=before_push, **recipe_kw)
    hist = recipe.fit(model, IndexedTensorDataset(x, y), TrainConfig(seed=seed, progress=False))
    return hist, recipe.record.last


def train_protopnet(
    x: torch.Tensor,
    y: torch.Tensor,
    c: ArmConfig,
    in_ch: int,
    n_classes: int,
    seed: int,
    *,
    before_push: Callable[[RunState], Mapping[str, float] | None] | None = None,
    after_step: Callable[[nn.Module, str], None] | None = None,
    **schedule_kw: Any,
) -> tuple[ProtoPNet, PushResult, PhaseSchedule]:
    """The family's ProtoPNet arm on a from-scratch Conv4 (two pools): ``c.k`` prototypes of dim ``c.dim`` per
    class, the official loss, and the warm / joint / push / last-layer schedule of :func:`arm_schedule` (the
    from-scratch joint backbone lr is ``SPEC.presets['small']``'s); ``schedule_kw`` overrides schedule fields
    (StepLR, ...); ``after_step(model, stage)`` runs after every optimiser step."""
    kw = arm_schedule(c)
    kw.update(schedule_kw)
    schedule = PhaseSchedule(**kw)
    seed_everything(seed)
    model = ProtoPNet(Conv4(in_ch, c.width, n_classes, pools=2), n_classes, c.k, c.dim)
    _, push = train_prototype_recipe(model, x, y, schedule, seed, before_push=before_push, after_step=after_step)
    return model, push, schedule


def train_backbone_baseline(
    x: torch.Tensor,
    y: torch.Tensor,
    in_ch: int,
    width: int,
    n_classes: int,
    epochs: int,
    seed: int,
    *,
    batch_size: int,
    lr: float,
    weight_decay: float,
) -> Conv4:
    """The backbone without prototypes (Conv4 + GAP + linear), Adam, through the engine."""
    seed_everything(seed)
    model = Conv4(in_ch, width, n_classes, pools=2)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adam", lr=lr, weight_decay=weight_decay,
                      seed=seed, progress=False)  # fmt: skip
    Trainer(model, IndexedTensorDataset(x, y), config=cfg).fit()
    model.eval()
    return model


def _pair(train_x, train_y, test_x, test_y, in_ch: int, c: Config, n_classes: int, seed: int):
    seen: dict = {"last_layer_steps": 0}

    def off_class(m: nn.Module) -> torch.Tensor:
        return m.last_layer.weight.detach()[(1.0 - m.prototype_identity.t()).bool()].abs()

    def before_push(state: RunState) -> dict[str, float]:  # the last write is the one before the last push
        m = state.model
        seen["acc_before_push"] = _acc(m, test_x, test_y)
        seen["off_before"] = off_class(m).clone()
        seen["steps_before"] = seen["last_layer_steps"]
        return {"test_acc": seen["acc_before_push"]}

    def after_step(m: nn.Module, stage: str) -> None:
        if stage == "last_layer":
            seen["last_layer_steps"] += 1

    model, push, schedule = train_protopnet(
        train_x, train_y, c, in_ch, n_classes, seed, before_push=before_push, after_step=after_step
    )
    l1_before = float(seen["off_before"].sum())
    l1_after = float(off_class(model).sum())
    # the farthest Adam's steps of the last last-layer stage can move one weight, and the L1 left if every
    # off-class weight moved that far towards 0
    travel = adam_travel_bound(
        schedule.last_layer_lrs["last_layer"], seen["steps_before"], seen["last_layer_steps"] - seen["steps_before"]
    )
    floor = float((seen["off_before"] - travel).clamp_min(0.0).sum())
    meth = {
        "acc": _acc(model, test_x, test_y),
        "acc_before_last_push": seen["acc_before_push"],
        "unique_pushed_patches": float(push.n_unique),
        "offclass_l1_shrink": l1_before / max(l1_after, 1e-12),
        "offclass_l1_shrink_max": l1_before / floor if floor > 0 else None,
    }
    n_epochs = c.epochs + c.last_layer_epochs * len(schedule.push_epochs())
    base_model = train_backbone_baseline(
        train_x, train_y, in_ch, c.width, n_classes, n_epochs, seed,
        batch_size=c.batch_size, lr=c.baseline_lr, weight_decay=c.baseline_weight_decay,
    )  # fmt: skip
    return model, push, meth, {"acc": _acc(base_model, test_x, test_y)}


def run(seed: int, c: Config) -> SeedResult:
    train, _, test = parts_splits(c.n_train, c.n_val, c.n_test, seed=seed, n_classes=4)
    model, push, meth, base = _pair(train.images, train.labels, test.images, test.labels, 3, c, 4, seed)
    kb = distance_kernel_gflops(
        c.kernel_batch, c.kernel_dim, c.kernel_map, c.kernel_map, c.kernel_prototypes, repeats=c.kernel_repeats,
        threads=1,
    )  # fmt: skip
    meth.update({k: kb[k] for k in ("kernel_gflops", "matmul_gflops", "kernel_ratio")})
    if c.digits:  # the card's digits check: 8x8 digits, 10 classes
        d = load_digits(image=True, val=0.0, test=c.digits_test_fraction, seed=seed)
        cd = replace(c, width=c.digits_width, dim=c.digits_dim, k=c.digits_k)
        _, _, dm, db = _pair(d.train.x, d.train.y, d.test.x, d.test.y, 1, cd, 10, seed)
        meth["digits_acc"], base["digits_acc"] = dm["acc"], db["acc"]
    return {
        "method": meth,
        "baseline": base,
        "curves": {"model": model, "push": push, "train_images": train.images, "test": test},
    }


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from priorkit.prototypes.viz import prototype_gallery, this_looks_like_that

    outdir = Path(outdir)
    paths: list[Path] = []
    fig, ax = plt.subplots(figsize=(3.2, 2.6))
    vals = [[r["baseline"]["acc"] for r in results], [r["method"]["acc"] for r in results]]
    ax.boxplot(vals, tick_labels=["Conv4 + linear", "ProtoPNet"])
    ax.set_title("parts test accuracy", fontsize=9)
    fig.tight_layout()
    paths.append(outdir / "protopnet_acc.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    art = results[0].get("curves") or {}
    if "model" not in art:
        return paths
    model, push, test = art["model"], art["push"], art["test"]
    names = [f"{c}: " + " + ".join(test.part_names[i] for i in test.class_parts[c].tolist()) for c in range(4)]
    short = [f"class {c}" for c in range(4)]
    paths.append(prototype_gallery(push, art["train_images"], outdir / "protopnet_gallery.png", class_names=names))
    for i in range(3):
        idx = int(torch.nonzero(test.labels == i, as_tuple=True)[0][0])
        paths.append(
            this_looks_like_that(
                model,
                test.images[idx],
                push,
                art["train_images"],
                outdir / f"protopnet_explain_{i}.png",
                k=3,
                label=int(test.labels[idx]),
                class_names=short,
            )
        )
    return paths


def _shrink_note(c: Config) -> str:
    """Why the card's ">5x off-class L1 shrink" is not a check: the bound on the last-layer stage's Adam steps,
    computed from the full tier's config (so it cannot go stale)."""
    lr = PhaseSchedule().last_layer_lrs["last_layer"]
    steps, stages = last_layer_steps(c, c.n_train)
    steady, worst = lr * steps * stages, adam_travel_bound(lr, 0, steps * stages)
    return (
        "Off-class L1 shrink: the card expects 'The wrong-class weights' L1 norm shrinks by more than 5x during "
        "the last-layer phase'. The paper's last-layer stage (its Sec. 2.2, paraphrased: the quote could not be "
        "checked against the paper's text here) aims at off-class weights near 0, starting from -0.5, and gives "
        "no factor. It is not a check here because it cannot hold in this run. "
        f"The stage is Adam at the official lr {lr:g} with the L1 coefficient 1e-4 (settings.py: "
        "last_layer_optimizer_lr, coefs['l1']); Adam moves a weight by about lr per step whatever the gradient's "
        "size (plain SGD would move it by lr * 1e-4 per step under the L1 term alone). The full tier takes "
        f"{steps} last-layer steps per push ({c.last_layer_epochs} epochs of {-(-c.n_train // c.batch_size)} "
        f"batches) and {stages} pushes: a steady pull moves an off-class weight from -0.5 by at most {steady:.3g} "
        f"over the whole run, and even the worst case of Adam's step (adam_travel_bound) allows {worst:.3g}, so "
        f"the off-class L1 can shrink at most {0.5 / (0.5 - worst):.2f}x, while 5x needs a move of 0.4 (to -0.1). "
        "The card's digits check takes fewer steps still. In the paper's CUB run (30 augmented copies of each "
        "of the 5,994 training images by img_aug.py, batch 80, 20 last-layer epochs per push) the stage takes "
        "about 45,000 steps, room to move a weight by 4.5, so a large shrink belongs to that long stage, not to "
        "this short check. offclass_l1_shrink_max is the per-seed ceiling of offclass_l1_shrink over the last "
        "last-layer stage."
    )


EXPERIMENT = Experiment(
    id="protopnet",
    claim="ProtoPNet's accuracy is within 2 points of the same backbone without prototypes, with case-based "
    "explanations",
    setup="parts 32x32, 4 classes; Conv4 (8x8 map) + ProtoPNet head vs Conv4 + GAP + linear; official loss and "
    "warm/joint/push/last-layer schedule; full tier adds the card's digits check",
    method_name="ProtoPNet",
    baseline_name="Conv4 + linear head",
    checks=[Check("acc", "higher", -0.02)],
    diagnosis="The baseline (the same Conv4 without prototypes) classifies the parts test set perfectly on every "
    "seed, so the rule compares ProtoPNet with a ceiling. ProtoPNet is within the 2-point margin on "
    "average and on most seeds; the interval's low end passes the margin because one seed lands a few "
    "points lower. Measured in the same runs: the accuracy before the last push is about the same as "
    "after it (acc_before_last_push), so the push does not cost the accuracy; the gap is the prototype "
    "layer's, and the card's digits check (digits_acc) shows the same small cost on another dataset. The "
    "paper's within-1-point result is on CUB with an ImageNet-pretrained backbone; a from-scratch Conv4 "
    "at 21 epochs is the CPU stand-in.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="kernel_gflops / matmul_gflops / kernel_ratio time the prototype-distance kernel against a matmul of "
    "the same size (M = kernel_batch * kernel_map^2, N = kernel_prototypes, K = kernel_dim), single-threaded. "
    + _shrink_note(FULL),
)
