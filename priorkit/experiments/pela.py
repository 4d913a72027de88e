"""PELA on an mnist1d MLP: SVD only vs intermediate training with CE, CE + L_fd and CE + L_fd + L_wp, then transfer
(card: adapters-lowrank.md, "Small-scale check on CPU").

Per seed: a teacher MLP 40-256-256-10 is trained on mnist1d (:func:`priorkit.data.load_mnist1d`; SGD with momentum,
cosine) and factorized with ``pela_compress`` at ``c = 2`` (``body.0``: rank 17, ``body.2``: rank 64; the head is
skipped by name), about half the parameters. Four students of that factorization: (i) the SVD truncation with no
training; (ii) the intermediate stage with cross-entropy only; (iii) CE + ``alpha * L_fd`` over the two hidden
activations (``body.1``, ``body.3``; the MLP's "blocks"); (iv) (iii) + ``gamma * L_wp`` (max-entry norm,
``eps = 1e-3``). (ii)-(iv) train for the same epochs on the teacher's training data with the teacher's optimizer
and learning rate (the paper reuses the pre-training recipe: DeiT's lr, 1 warm-up epoch, cosine), all parameters
trainable. Then each student and the dense teacher are fine-tuned alike on the downstream task
:func:`priorkit.experiments._adapters.mnist1d_source` (mnist1d regenerated with another data seed and every class
template rolled by 6 samples) for transfer. Metrics: test accuracy (``acc``, the teacher's task; ``ft_acc``, the
downstream task) and parameter counts. Method: (iii); baseline: (ii); (i), (iv) and the teacher are ``*@svd``,
``*@wp`` and ``*@teacher`` beside the method's metrics; ``acc@dense_stage`` is a control, the dense teacher given
the same stage with CE (does the gain come from the factorization or from the extra epochs?). Ablation ``ratio_4``:
the same at ``c = 4``.

Rules (fixed before the first run, from the card's "Expected: (i) loses several points; (iii) comes back to within
about 1 point of the teacher with about half the parameters and beats (ii); (iv) ~ (iii)", and its headline claim
that the compressed model stays about as good downstream): (iii)'s accuracy is higher than (ii)'s; (iii) is at most
1 point below the teacher (``acc_vs_teacher``) and at most 1 point below the fine-tuned teacher downstream
(``ft_acc_vs_teacher``); its parameter count is at most 0.55 of the teacher's (``param_ratio``); the SVD truncation
alone loses at least 3 points (``svd_drop``, "several"); (iv) is within 1 point of (iii) either way (``wp_vs_fd``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from priorkit.adapters.pela import PELA, pela_finetune, pela_parameters
from priorkit.core.seeding import seed_everything
from priorkit.data import load_mnist1d
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.experiments._adapters import mnist1d_source
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics import classification_metrics
from priorkit.models import MLP
from priorkit.train import Phase, Recipe, TrainConfig, fit, predict

BLOCKS = ("body.1", "body.3")  # the hidden activations: the MLP's block outputs


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    hidden: tuple[int, ...] = (256, 256)
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # teacher pre-training on mnist1d (SGD, cosine)
    teacher_epochs: int = 30
    lr: float = 0.05
    # PELA
    ratio: float = 2.0
    alpha: float = 1.0  # L_fd weight of (iii) and (iv)
    gamma: float = 1.0  # L_wp weight of (iv)
    eps: float = 1e-3
    wp_norm: str = "max"
    # intermediate stage: the pre-training recipe (same lr), 1 warm-up epoch then cosine, per step
    stage_epochs: int = 20
    warmup_epochs: int = 1
    # downstream fine-tuning on mnist1d_source (SGD, cosine; the same for every model)
    ft_epochs: int = 15
    ft_lr: float = 0.01


FULL = Config()
QUICK = Config(teacher_epochs=8, stage_epochs=3, ft_epochs=3)


def warmup_cosine(opt: torch.optim.Optimizer, steps_per_epoch: int, *, epochs: int, warmup_epochs: int) -> object:
    """Per-step schedule: linear warm-up over ``warmup_epochs``, then cosine to zero (the DeiT scheduler's shape)."""
    total, warm = max(1, epochs * steps_per_epoch), warmup_epochs * steps_per_epoch

    def factor(it: int) -> float:
        if it < warm:
            return (it + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (it - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _sgd(c: Config, lr: float, epochs: int, seed: int, scheduler: str = "cosine") -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=c.batch_size, lr=lr, momentum=c.momentum,
                       weight_decay=c.weight_decay, scheduler=scheduler, seed=seed, progress=False)  # fmt: skip


def _stage(pela: PELA, train: IndexedTensorDataset, c: Config, seed: int, distill: bool) -> nn.Module:
    """One intermediate stage of ``c.stage_epochs`` on the teacher's data; ``distill=False`` is CE only (ii)."""
    cfg = _sgd(c, c.lr, c.stage_epochs, seed, scheduler="none")  # the phase brings its own optimizer and schedule
    fit(pela.student, train, _stage_recipe(c), hooks=[pela] if distill else [], config=cfg)
    return pela.student


def _stage_recipe(c: Config) -> Recipe:
    opt = partial(torch.optim.SGD, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    sched = partial(warmup_cosine, epochs=c.stage_epochs, warmup_epochs=c.warmup_epochs)
    return Recipe([Phase("pela", epochs=c.stage_epochs, optimizer=lambda m: opt(m.parameters()), scheduler=sched,
                         interval="step")])  # fmt: skip


def _metrics(model: nn.Module, test: IndexedTensorDataset) -> dict[str, float]:
    return classification_metrics(predict(model, test), test.y)


def _finetune(model: nn.Module, c: Config, seed: int) -> float:
    """Downstream accuracy after fine-tuning a copy of ``model`` on mnist1d_source (all parameters train)."""
    src = mnist1d_source()
    model = copy.deepcopy(model).requires_grad_(True)  # the PELA stage froze the teacher
    cfg = _sgd(c, c.ft_lr, c.ft_epochs, seed)
    seed_everything(seed)
    if pela_parameters(model)["layers"]:
        pela_finetune(model, src.train, config=cfg)
    else:
        fit(model, src.train, config=cfg)
    return classification_metrics(predict(model, src.test), src.test.y)["acc"]


def run(seed: int, c: Config) -> SeedResult:
    data = load_mnist1d(seed=seed)
    seed_everything(seed)
    teacher = MLP(40, c.hidden, 10)
    fit(teacher, data.train, config=_sgd(c, c.lr, c.teacher_epochs, seed))
    teacher.eval()
    dense_params = sum(p.numel() for p in teacher.parameters())

    def make(alpha: float, gamma: float) -> PELA:
        return PELA(teacher, BLOCKS, ratio=c.ratio, alpha=alpha, beta=0.0, gamma=gamma, eps=c.eps, wp_norm=c.wp_norm)

    svd = make(0.0, 0.0).student  # (i)
    ce = _stage(make(0.0, 0.0), data.train, c, seed, distill=False)  # (ii)
    fd = _stage(make(c.alpha, 0.0), data.train, c, seed, distill=True)  # (iii)
    wp = _stage(make(c.alpha, c.gamma), data.train, c, seed, distill=True)  # (iv)
    dense = copy.deepcopy(teacher).requires_grad_(True)  # control: the dense teacher given the same stage (CE)
    fit(dense, data.train, _stage_recipe(c), config=_sgd(c, c.lr, c.stage_epochs, seed, scheduler="none"))

    t_acc = _metrics(teacher, data.test)["acc"]
    t_ft = _finetune(teacher, c, seed)
    params = pela_parameters(fd)["total"]
    base = {**_metrics(ce, data.test), "ft_acc": _finetune(ce, c, seed), "params": float(params)}
    meth = {**_metrics(fd, data.test), "ft_acc": _finetune(fd, c, seed), "params": float(params)}
    svd_acc, wp_acc = _metrics(svd, data.test)["acc"], _metrics(wp, data.test)["acc"]
    meth.update({
        "acc@teacher": t_acc,
        "acc@svd": svd_acc,
        "acc@wp": wp_acc,
        "acc@dense_stage": _metrics(dense, data.test)["acc"],
        "ft_acc@teacher": t_ft,
        "ft_acc@svd": _finetune(svd, c, seed),
        "ft_acc@wp": _finetune(wp, c, seed),
        "params@teacher": float(dense_params),
        "acc_vs_teacher": meth["acc"] - t_acc,
        "ft_acc_vs_teacher": meth["ft_acc"] - t_ft,
        "param_ratio": params / dense_params,
        "svd_drop": t_acc - svd_acc,
        "wp_vs_fd": wp_acc - meth["acc"],
    })  # fmt: skip
    return {"method": meth, "baseline": base}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    names = ["teacher", "(i) SVD", "(ii) CE", "(iii) CE+fd", "(iv) +wp"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, key, title in zip(axes, ("acc", "ft_acc"), ("mnist1d (teacher's task)", "downstream (after fine-tune)")):
        vals = [
            [r["method"][f"{key}@teacher"] for r in results],
            [r["method"][f"{key}@svd"] for r in results],
            [r["baseline"][key] for r in results],
            [r["method"][key] for r in results],
            [r["method"][f"{key}@wp"] for r in results],
        ]
        ax.boxplot(vals, tick_labels=names)
        ax.set_title(f"test accuracy: {title}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = outdir / "pela_accuracy.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="pela",
    claim="c = 2 halves the parameters; the SVD truncation alone loses several points, and CE + feature distillation "
    "from the dense teacher recovers to within 1 point of it, beats CE alone, and transfers as well as the teacher; "
    "adding the weight-perturbation term changes little",
    setup="mnist1d, teacher MLP 40-256-256-10 (SGD, cosine), pela_compress at c = 2 (head kept dense); intermediate "
    "stage on the teacher's data at equal epochs for every variant; downstream fine-tune on mnist1d regenerated with "
    "another data seed and shifted templates, the same recipe for every model",
    method_name="PELA (iii) CE + L_fd",
    baseline_name="(ii) CE only",
    checks=[
        Check("acc", "higher", 0.0),
        Check("acc_vs_teacher", "higher", -0.01, against="value"),
        Check("ft_acc_vs_teacher", "higher", -0.01, against="value"),
        Check("param_ratio", "lower", 0.55, against="value"),
        Check("svd_drop", "higher", 0.03, against="value"),
        Check("wp_vs_fd", "higher", -0.01, against="value"),
        Check("wp_vs_fd", "lower", 0.01, against="value"),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="Learnt while building (seed 0 of the full budget, before the 5-seed bench): the mnist1d MLP teacher "
    "fits its training set exactly and generalizes far less well, and its trained weights have a fast-decaying "
    "spectrum, so the c = 2 truncation costs it only about a point or two of test accuracy, fewer than the card's "
    "'several'; at c = 4 (ablation ratio_4) the truncation alone collapses. The intermediate stage lifts every "
    "compressed student well above the teacher, and the dense teacher given the same stage (acc@dense_stage) gains "
    "much less: on this small, over-fitted task the low-rank factorization acts as a regularizer. The teacher's "
    "hidden features add nothing over cross-entropy here ((iii) about equal to (ii) at c = 2, below it at c = 4): "
    "matching an over-fitted teacher's training-set features pulls the student toward the teacher's solution, "
    "while the paper's teachers are distilled on their large pre-training corpus.",
    diagnosis="Where the rules fail, they fail on the teacher side of the card's picture, not on the code: "
    "acc@dense_stage shows that extra training of the dense teacher does not reach the compressed students, so the "
    "factorization itself generalizes better on this over-fitted MLP, and the SVD truncation at c = 2 removes too "
    "little to cost several points (svd_drop; ratio_4 shows the truncation does cost them at c = 4). With the "
    "teacher's features carrying no information beyond the labels here, L_fd cannot beat CE alone; the property "
    "tests check that L_fd, L_logit and L_wp are the paper's terms and that the student runs once per step.",
    ablations={"ratio_4": {"ratio": 4.0}},
    threads=1,
)
