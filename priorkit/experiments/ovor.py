"""OVOR vs OnePrompt without virtual outlier regularisation, rehearsal-free class-incremental Fashion-MNIST on the
frozen zoo backbone (card: regularizers-theory.md, "Small-scale check on CPU").

Data and backbone as in the ``teen`` experiment (:mod:`priorkit.experiments.teen`), so the two are comparable:
Fashion-MNIST, the frozen zoo backbone ``fmnist_conv_base5`` (a conv net priorkit pretrained on classes 0-4; its
cached 256-d features, read here as the 2 x 2 grid of 64-channel cells they are), the official test images of
every seen class after each task, and :func:`priorkit.data.incremental.make_incremental` for the sessions. The
training images come from :func:`priorkit.experiments._fmnist.unseen_fmnist` (none was seen by the backbone), a
fixed seeded ``train_per_class`` per class. The task structure is the card's, not teen's few-shot one: OVOR is a
many-shot, rehearsal-free CIL method whose masked cross-entropy needs several classes per task, so the ten classes
arrive as five tasks of two (0-1, 2-3, 4-5, 6-7, 8-9), each with all of its training images and none of the
earlier tasks'.

The card's frozen transformer stand-in: a tiny ViT (:class:`priorkit.models.vit.ViT`; width 64, 4 blocks, 4 heads,
MLP 128) over the four backbone cells (a hybrid ViT with 1 x 1 patches: 4 tokens + [CLS]), pretrained WITHOUT labels
by masked-token reconstruction (half of the cells replaced by a learned mask token, their standardised values
regressed from the final tokens) on the training images of all ten classes, then frozen; built once and cached on
disk. OnePrompt (prefix length 4 in layers 0-1, 8 in layers 2-3) and the linear head are the learnable parts.

Arms (same data, seed, initial prompts and head): ``baseline`` = OnePrompt, ``epochs`` regular epochs per task;
``method`` = OVOR, the same regular epochs and then ``vor_epochs`` VOR epochs per task, with the paper's outlier
sampling (boundary point + offsets). Adam with the official per-task cosine schedule over the task's epochs. Metrics
after the last task: ``acc_final`` (all ten classes), ``cross_task_err`` (share of the errors that predict a class
of another task: the confusion VOR targets), ``cross_task_rate`` / ``within_task_rate`` (those errors and the
others over all test images), ``forgetting`` (mean over the first four tasks of their best accuracy minus their
final one) and ``avg_inc_acc`` (mean over tasks of the accuracy on the classes seen so far); the method also reports
``vor_*``, averaged over its VOR epochs: the mean real / outlier energies and the share of real (``E > theta_in``)
and outlier (``E < theta_out``) rows whose hinge is active. Full-tier ablations: ``released`` = the released code's
sampling (shared offsets, no boundary point; the card asks for both), ``lmda0`` = the equal-budget control (the
same VOR epochs, head only on cached features, with ``lmda = 0``: only the cross-entropy trains the head there).

Rule (fixed before the first run, from the card's "Expected: VOR raises final accuracy by a few points and cuts the
cross-task error fraction"): final accuracy at least 2 points higher than the baseline's and a lower cross-task error
fraction, both on the 95% interval of the seed-paired differences.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import check_choice
from priorkit.core.seeding import rng_state, seed_everything, set_rng_state
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.incremental import FSCILData, make_incremental
from priorkit.experiments._fmnist import ZOO_BACKBONE, frozen_features, per_class, unseen_fmnist
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.incremental import average_accuracy
from priorkit.models.vit import ViT
from priorkit.regularizers.ovor import OVOR, SPEC
from priorkit.train import Batch, Phase, Recipe, RunState, TrainConfig, fit

_P = SPEC.presets["small"]
VARIANTS = ("paper", "released")


@dataclass(frozen=True)
class Pretrain:
    """The frozen transformer and its label-free pretraining (its hash names the cache file)."""

    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 128
    mask_ratio: float = 0.5  # share of the 4 cells replaced by the mask token
    epochs: int = 30  # the card's 30 epochs of masked-patch reconstruction
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    version: int = 1


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    train_per_class: int = 300  # training images per class (a fixed seeded draw), also the pretraining set
    classes_per_task: int = 2  # five tasks of two classes
    pretrain: Pretrain = Pretrain()
    epochs: int = 20  # regular epochs per task (card)
    vor_epochs: int = _P["vor_epochs"]  # VOR epochs per task for the method (card: 5)
    batch_size: int = 128  # official
    lr: float = 1e-3  # official Adam rate
    g_layers: tuple[int, ...] = _P["g_layers"]
    g_length: int = _P["g_length"]
    e_layers: tuple[int, ...] = _P["e_layers"]
    e_length: int = _P["e_length"]
    k: int = _P["k"]
    select: int = _P["select"]
    sample_from: int = _P["sample_from"]
    num_per_class: int = _P["num_per_class"]
    cov: float = _P["cov"]
    theta_in: float = _P["theta_in"]
    theta_out: float = _P["theta_out"]
    lmda: float = _P["lmda"]
    huber: bool = _P["huber"]
    variant: str = "paper"  # the method's outlier sampling: "paper" or "released" (an ablation)


FULL = Config()
QUICK = Config(train_per_class=100, pretrain=Pretrain(epochs=8), epochs=6, vor_epochs=2, sample_from=200)


# ------------------------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=2)
def _grids(train_per_class: int) -> tuple[torch.Tensor, ...]:
    """``(train grids, labels, test grids, labels)``: the zoo features ``[N, 64, 2, 2]`` of a fixed seeded draw of
    ``train_per_class`` unseen training images per class and of all official test images, standardised per
    channel with the training draw's statistics."""
    x_tr, y_tr, x_te, y_te = unseen_fmnist()
    idx = per_class(y_tr, train_per_class, range(10), torch.Generator().manual_seed(0))
    f_tr = frozen_features("pretrained", x_tr[idx], zoo_name=ZOO_BACKBONE).view(-1, 64, 2, 2)
    f_te = frozen_features("pretrained", x_te, zoo_name=ZOO_BACKBONE).view(-1, 64, 2, 2)
    mu = f_tr.mean(dim=(0, 2, 3), keepdim=True)
    sd = f_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (f_tr - mu) / sd, y_tr[idx], (f_te - mu) / sd, y_te


def session_data(c: Config, seed: int = 0) -> FSCILData:
    """The tasks as :func:`make_incremental` sessions: task 0 is the "base session", every later session brings
    ``classes_per_task`` classes with all of their ``train_per_class`` images (shot = the whole class)."""
    f_tr, y_tr, f_te, y_te = _grids(c.train_per_class)
    k = c.classes_per_task
    return make_incremental(f_tr, y_tr, f_te, y_te, base_classes=k, way=k, shot=c.train_per_class, seed=seed)


def task_sets(data: FSCILData) -> list[IndexedTensorDataset]:
    """The training set of each task, in order."""
    return [data.base_train, *data.sessions]


# ------------------------------------------------------------------------------------ frozen transformer
def _vit(pre: Pretrain) -> ViT:
    return ViT(image_size=2, patch_size=1, in_channels=64, num_classes=1, dim=pre.dim, depth=pre.depth,
               heads=pre.heads, mlp_dim=pre.mlp_dim)  # fmt: skip


class MaskedTokens(nn.Module):
    """Masked-token reconstruction around a ViT: ``mask_ratio`` of each grid's cells (drawn per sample) are replaced
    by a learned mask token after the patch embedding; a linear decoder regresses their input values from the
    final tokens."""

    def __init__(self, vit: ViT, mask_ratio: float) -> None:
        super().__init__()
        self.vit, self.mask_ratio = vit, mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.feature_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(vit.feature_dim, vit.in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.vit
        t = v.patch_embed(x).flatten(2).transpose(1, 2)
        b, n, _ = t.shape
        ranks = torch.rand(b, n).argsort(dim=1).argsort(dim=1)
        mask = ranks < max(1, round(self.mask_ratio * n))
        t = torch.where(mask.unsqueeze(-1), self.mask_token.expand(b, n, -1), t)
        t = torch.cat([v.cls_token.expand(b, -1, -1), t], dim=1) + v.pos_embed
        for blk in v.blocks:
            t = blk(t)
        pred = self.decoder(v.norm(t)[:, 1:])
        return pred, x.flatten(2).transpose(1, 2), mask


def _mtm_loss(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
    pred, target, mask = batch.output
    return {"mtm": F.mse_loss(pred[mask], target[mask])}


@functools.lru_cache(maxsize=2)
def _pretrained_state(pre: Pretrain, train_per_class: int) -> dict[str, torch.Tensor]:
    """The frozen transformer's weights (built once through the engine, then read from priorkit's cache)."""
    from priorkit.zoo.cache import atomic_save, config_hash, zoo_dir

    path = zoo_dir() / f"ovor_mtm_vit-{config_hash(pre)}-n{train_per_class}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)["state"]
    f_tr, y_tr, _, _ = _grids(train_per_class)
    outer = rng_state()  # building the cache must not change the caller's random stream
    seed_everything(pre.seed)
    model = MaskedTokens(_vit(pre), pre.mask_ratio)
    cfg = TrainConfig(epochs=pre.epochs, batch_size=pre.batch_size, lr=pre.lr, optimizer="adamw",
                      weight_decay=pre.weight_decay, scheduler="cosine", seed=pre.seed, progress=False)  # fmt: skip
    try:
        with torch.enable_grad():  # labels are carried by the dataset but never used
            fit(model, IndexedTensorDataset(f_tr, y_tr), Recipe([Phase("mtm", epochs=pre.epochs, loss=_mtm_loss)]),
                config=cfg)  # fmt: skip
    finally:
        set_rng_state(outer)
    state = {k: v.detach().clone() for k, v in model.vit.state_dict().items()}
    atomic_save({"state": state}, path)
    return state


def frozen_encoder(pre: Pretrain, train_per_class: int) -> ViT:
    """A fresh copy of the pretrained transformer."""
    vit = _vit(pre)
    vit.load_state_dict(_pretrained_state(pre, train_per_class))
    return vit.eval()


# ----------------------------------------------------------------------------------------------- one arm
def cil_metrics(accs: list[list[float]], pred: torch.Tensor, y: torch.Tensor, per_task: int) -> dict[str, float]:
    """Final accuracy, average incremental accuracy, forgetting and the cross-task share of the final errors.

    ``accs[t]``: after task ``t``, the accuracy on the seen classes' test images followed by the accuracy on each
    task ``j <= t``'s test images; ``pred`` / ``y``: the final predictions and labels (classes of task ``j`` are
    ``j * per_task .. (j + 1) * per_task - 1``)."""
    last = len(accs) - 1
    wrong = pred != y
    cross = wrong & (pred // per_task != y // per_task)
    forget = [max(accs[t][1 + j] for t in range(j, last)) - accs[last][1 + j] for j in range(last)]
    return {
        "acc_final": float((~wrong).double().mean()),
        "avg_inc_acc": average_accuracy([row[0] for row in accs]),
        "forgetting": sum(forget) / len(forget) if forget else 0.0,
        "cross_task_err": float(cross.sum() / wrong.sum()) if bool(wrong.any()) else 0.0,
        "cross_task_rate": float(cross.double().mean()),
        "within_task_rate": float((wrong & ~cross).double().mean()),
    }


def run_arm(c: Config, seed: int, data: FSCILData, vor_epochs: int) -> tuple[dict[str, float], list[float]]:
    """One learner over the task sequence: metrics and the accuracy on the seen classes after each task. With VOR
    epochs the metrics also hold the VOR diagnostics averaged over every VOR epoch of every task: the mean
    energies and the share of real / outlier rows whose hinge is active."""
    check_choice("variant", c.variant, VARIANTS)
    encoder = frozen_encoder(c.pretrain, c.train_per_class)
    seed_everything(seed)
    learner = OVOR(
        encoder, data.num_classes, g_layers=c.g_layers, g_length=c.g_length,
        e_layers=c.e_layers, e_length=c.e_length, vor_epochs=vor_epochs, k=c.k, select=c.select,
        sample_from=c.sample_from, num_per_class=c.num_per_class, cov=c.cov, theta_in=c.theta_in,
        theta_out=c.theta_out, lmda=c.lmda, huber=c.huber, add_boundary_point=c.variant == "paper",
        shared_offsets=c.variant == "released", id_batch_size=c.batch_size,
    )  # fmt: skip
    cfg = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, optimizer="adam", scheduler="cosine",
                      seed=seed, progress=False)  # fmt: skip
    k = c.classes_per_task
    accs: list[list[float]] = []
    vor_records: list[dict[str, Any]] = []
    for t, train in enumerate(task_sets(data)):
        out = learner.learn_task(train, cfg)
        vor_records += [h for h in out["history"] if "vor" in h]
        test = data.test_upto(t)
        pred = learner.predict(test.x).argmax(1)
        hit = (pred == test.y).double()
        accs.append([float(hit.mean())] + [float(hit[test.y // k == j].mean()) for j in range(t + 1)])
    metrics = cil_metrics(accs, pred, test.y, k)
    for key in ("id_energy", "ood_energy", "id_active", "ood_active") if vor_records else ():
        metrics[f"vor_{key}"] = sum(h[key] for h in vor_records) / len(vor_records)
    return metrics, [row[0] for row in accs]


def run(seed: int, c: Config) -> SeedResult:
    data = session_data(c, seed)
    base, base_curve = run_arm(c, seed, data, vor_epochs=0)
    meth, meth_curve = run_arm(c, seed, data, vor_epochs=c.vor_epochs)
    return {"method": meth, "baseline": base, "curves": {"baseline": base_curve, "method": meth_curve}}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for side, label in (("baseline", "OnePrompt"), ("method", "OVOR")):
        acc = torch.tensor([r["curves"][side] for r in results]).mean(0)
        axes[0].plot(range(1, len(acc) + 1), acc, marker="o", label=label)
    axes[0].set_xlabel("task")
    axes[0].set_ylabel("test accuracy (seen classes)")
    axes[0].legend(fontsize=7)
    keys = ("acc_final", "cross_task_rate", "within_task_rate")
    for i, side in enumerate(("baseline", "method")):
        vals = [sum(r[side][k] for r in results) / len(results) for k in keys]
        axes[1].bar([j + 0.4 * i for j in range(len(keys))], vals, width=0.4, label=side)
    axes[1].set_xticks([j + 0.2 for j in range(len(keys))], ["final acc", "cross-task err", "within-task err"],
                       fontsize=8)  # fmt: skip
    axes[1].set_title("after the last task")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "ovor_tasks.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="ovor",
    claim="Virtual outlier regularisation raises the final class-incremental accuracy of OnePrompt by a few points "
    "(at least 2) and lowers the share of errors that go to a class of another task",
    setup="Fashion-MNIST, rehearsal-free class-incremental: five tasks of two classes; frozen zoo backbone "
    "fmnist_conv_base5 (as in teen) whose 2x2 feature grid feeds a tiny frozen ViT pretrained without labels by "
    "masked-token reconstruction; OnePrompt prefix prompts + linear head trained per task with the masked "
    "cross-entropy (Adam, official cosine); test on the official test images of all seen classes; OVOR (regular + "
    "VOR epochs) vs OnePrompt (regular epochs only)",
    method_name="OVOR",
    baseline_name="OnePrompt (no VOR)",
    checks=[Check("acc_final", "higher", 0.02), Check("cross_task_err", "lower", 0.0)],
    ablations={"released": {"variant": "released"}, "lmda0": {"lmda": 0.0}},
    ablation_seeds=2,  # the FULL budget (5 seeds + two ablations) stays near 6 CPU-minutes
    notes="What the quick tier and single full-budget seeds showed before the full bench: (1) the outlier hinge "
    "never fires here (vor_ood_active is 0 in every VOR epoch): the outliers are drawn around the unit-normalised "
    "features (both samplings), while the head sees the encoder's LayerNorm-ed [CLS] features, whose norm is about "
    "the square root of their width, so the head's logits at the outliers stay near zero and their energy stays "
    "above theta_out; only the real-feature term acts (vor_id_active is 1: theta_in = -15 is never reached), "
    "raising each task's logits, and the paper's and the released sampling train identically (the released "
    "ablation). (2) Within a two-class task the classes are almost perfectly separated (within_task_rate near 0 "
    "in both arms), so nearly every error is a cross-task one in both arms and the card's cross-task error "
    "fraction cannot fall; cross_task_rate (cross-task errors over all test images) is the informative number. "
    "(3) The card's baseline trains fewer epochs per task than OVOR; the lmda0 ablation (the VOR epochs with "
    "lmda = 0) measures how much of the accuracy change comes from the extra head-only epochs and the longer "
    "schedule rather than from the VOR term.",
    diagnosis="OVOR raises the final accuracy over OnePrompt on every seed, by less than the 2-point margin at the "
    "interval's low end. The lambda=0 ablation (the same extra VOR epochs with the regulariser switched "
    "off) recovers most of that gain, so the extra head epochs rather than the virtual outliers carry it; "
    "the outlier hinge seldom fires here because the synthesised outliers' energies already sit above the "
    "threshold (logged hinge activity), and the released sampling trains the same way. The cross-task "
    "rule cannot pass at this scale: within-task errors are near zero in both arms, so almost every error "
    "is cross-task and the fraction stays near one, although the absolute cross-task error rate falls "
    "(cross_task_rate).",
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
