"""GS-LoRA vs full fine-tuning (and LoRA without group sparsity, and GS-LoRA++) on continual class forgetting
(card: adapters-lowrank.md, "Practical Continual Forgetting", "Small-scale check on CPU").

A tiny ViT (8x8 digits, patch 2 -> 16 tokens, width 64, depth 4, MLP 128, softmax head) is pretrained once on
the digits training + validation images (all ten classes; one backbone for every seed, as the paper forgets from
one pretrained model; cached on disk) and then receives three deletion requests: forget {0, 1}, then {2, 3},
then {4, 5}, each from ``shots`` training images per class (forget and retained classes alike, as in the official
few-shot script), the retained classes being those not yet erased. Four runs share the backbone, the few-shot
draws and the budget: GS-LoRA (LoRA r=8 on every FFN linear, bounded forget term, group lasso with warm-up, EMA
evaluation copy, merge after every task), LoRA with alpha = 0 (``@lora_alpha0``), GS-LoRA++ (prototype term in
embedding space, ``@gs_lora_pp``) and full fine-tuning with the same retain and bounded forget terms (the
baseline; no LoRA groups, so no group lasso; AdamW at the usual full-fine-tuning rate ``full_lr``). Seeds change
the few-shot draws, the adapter initialisation and the batch order.

Metrics after each task ``t`` (``_t0`` ... in the per-task keys), on the digits test split with the evaluated model
(the merged EMA copy where it was used): ``acc_f`` (the task's forget classes), ``acc_r`` (its retained classes),
``h`` (the paper's H-mean against the task-start model's ``Acc_f``), ``acc_old`` (classes erased in earlier tasks),
``zero_groups`` (fraction of blocks whose LoRA group norm is < 1% of the largest) and ``acc_r_drop`` (the original
model's accuracy on the task's retained classes minus ``acc_r``). Summaries: ``acc_f`` is the worst (largest) over
tasks, every other metric the mean over tasks; ``proto_gain`` = ``acc_r@gs_lora_pp - acc_r``. Diagnostics outside
the rules: ``acc_f_class_max`` (the better-kept class of each forgotten pair), ``acc_c{k}`` / ``ce0_c{k}`` (test
accuracy of forget class k after its task, and the task-start model's mean CE on its training shots),
``group_ratio`` (smallest over largest group norm) and an extra GS-LoRA run whose bound acts on every forget sample
instead of the batch mean (``@sample_bound``, not in the paper).

Rules, the card's "Expected" (fixed before any run): every method pushes ``acc_f`` below 10% (the 95% upper bound,
for each of the four runs); GS-LoRA keeps Acc_r within 3 points of the start (``acc_r_drop`` <= 0.03) and zeroes at
least half of the groups (``zero_groups`` >= 0.5); full fine-tuning loses more Acc_r (GS-LoRA's ``acc_r`` >= the
baseline's); prototypes add 0-2 points of Acc_r, checked as "cost no more than 1 point" (``proto_gain`` >= -0.01;
a rule on a gain whose expected range starts at 0 needs a tolerance).

What was learnt (development runs on two seeds; the bench decides): the retained-accuracy claims hold (GS-LoRA
stays near the original and above full fine-tuning), but the forgetting does not transfer from four shots: the
pretrained ViT is near-certain on every forget training image, where the forget cross-entropy's gradient
(softmax minus one-hot) vanishes, so the bounded term erases the class of the pair that yields first and leaves the
other intact once the batch mean reaches BND. See ``EXPERIMENT.diagnosis``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from priorkit.adapters.gs_lora import GSLoRA, forgetting_metrics
from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset, load_digits
from priorkit.experiments._adapters import few_shot
from priorkit.experiments._common import accuracy_on
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models.vit import ViT
from priorkit.train import TrainConfig, fit


@dataclass(frozen=True)
class Pretrain:
    """The shared backbone (its hash names the cache file)."""

    epochs: int = 80
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    split_seed: int = 0
    seed: int = 0
    version: int = 1


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    pretrain: Pretrain = Pretrain()
    tasks: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5))
    shots: int = 4  # training images per class, forget and retained classes alike
    epochs: int = 32  # per task (scripts: 100; scaled to the CPU budget)
    batch_size: int = 4  # one retain and one forget batch of this size per step (scripts: 4)
    lr: float = 1e-2  # AdamW, cosine to min_lr (scripts)
    full_lr: float = 1e-3  # full fine-tuning: the usual AdamW fine-tuning rate, not the adapter's
    weight_decay: float = 0.05
    min_lr: float = 1e-5
    beta: float = 0.15  # single-step script
    alpha: float = 0.01  # single-step script (the card's GS-LoRA alpha)
    alpha_warmup: int = 6  # single-step script: 20 of 100 epochs
    bnd_k: float = 3.0  # BND = 3 ln(10) for the softmax head
    w_f: float = 0.5  # GS-LoRA++ (card)
    bnd_pro: float = 1.0  # about the KL between a test embedding and another class's prototype, pretrained model
    ema_epoch: int = 16  # single-step script: 50 of 100 epochs
    ema_decay: float = 0.9
    sample_bound: bool = True  # an extra GS-LoRA run with the per-sample bound ("@sample_bound", not in the paper)


FULL = Config()
QUICK = Config(
    pretrain=Pretrain(epochs=8), tasks=((0, 1), (2, 3)), epochs=6, alpha_warmup=2, ema_epoch=3, sample_bound=False
)

VARIANTS = ("gs_lora", "lora_alpha0", "gs_lora_pp", "full_ft")


@functools.lru_cache(maxsize=4)
def _backbone(pre: Pretrain) -> tuple[dict[str, torch.Tensor], float]:
    """The pretrained ViT's weights and test accuracy (built once, then read from priorkit's cache folder)."""
    from priorkit.zoo.cache import atomic_save, config_hash, zoo_dir

    path = zoo_dir() / f"gs_lora_vit_digits-{config_hash(pre)}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return blob["state"], float(blob["acc"])
    sp = load_digits(image=True, seed=pre.split_seed)
    train = IndexedTensorDataset(torch.cat([sp.train.x, sp.val.x]), torch.cat([sp.train.y, sp.val.y]))
    seed_everything(pre.seed)
    net = ViT()
    cfg = TrainConfig(epochs=pre.epochs, batch_size=pre.batch_size, lr=pre.lr, optimizer="adamw",
                      weight_decay=pre.weight_decay, scheduler="cosine", seed=pre.seed, progress=False)  # fmt: skip
    with torch.enable_grad():
        fit(net, train, config=cfg)
    acc = accuracy_on(net, sp.test)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    atomic_save({"state": state, "acc": acc}, path)
    return state, acc


def pretrained_vit(pre: Pretrain) -> tuple[ViT, float]:
    """A fresh copy of the shared backbone and its test accuracy on the digits test split."""
    state, acc = _backbone(pre)
    net = ViT()
    net.load_state_dict(state)
    return net.eval(), acc


def _subset(data: IndexedTensorDataset, classes: list[int]) -> IndexedTensorDataset:
    keep = torch.isin(data.y, torch.tensor(classes, dtype=torch.long))
    return IndexedTensorDataset(data.x[keep], data.y[keep])


@torch.no_grad()
def _class_ce(model: torch.nn.Module, data: IndexedTensorDataset) -> dict[int, float]:
    """Mean cross-entropy of each class's samples under ``model`` (small: the model is sure of that class)."""
    model.eval()
    ce = F.cross_entropy(model(data.x), data.y, reduction="none")
    return {int(k): float(ce[data.y == k].mean()) for k in torch.unique(data.y)}


def _run_variant(variant: str, c: Config, seed: int, shots: list[dict[str, Any]], test: Any) -> dict[str, Any]:
    """One run over the task sequence; returns the summary and per-task metrics."""
    model, _ = pretrained_vit(c.pretrain)
    original = pretrained_vit(c.pretrain)[0]
    kw: dict[str, Any] = {
        "beta": c.beta, "alpha": c.alpha, "alpha_warmup": c.alpha_warmup, "bnd_k": c.bnd_k, "ema": True,
        "ema_epoch": c.ema_epoch, "ema_decay": c.ema_decay, "min_lr": c.min_lr, "w_f": c.w_f, "bnd_pro": c.bnd_pro,
    }  # fmt: skip
    if variant == "lora_alpha0":
        kw["alpha"] = 0.0
    elif variant == "sample_bound":
        kw["forget_reduction"] = "sample"
    elif variant == "gs_lora_pp":
        kw["prototype"] = True
    elif variant == "full_ft":
        kw.update(mode="full", alpha=0.0)
    gs = GSLoRA(model, **kw)
    lr = c.full_lr if variant == "full_ft" else c.lr
    per_task: dict[str, float] = {}
    rows = []
    erased: list[int] = []
    for t, task in enumerate(shots):
        f_test, r_test = _subset(test, task["forget"]), _subset(test, task["retain"])
        before = accuracy_on(gs.model, f_test)
        ce0 = _class_ce(gs.model, task["forget_train"])
        cfg = TrainConfig(
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=lr,
            optimizer="adamw",
            weight_decay=c.weight_decay,
            scheduler="cosine",
            seed=seed * 100 + t,
            progress=False,
        )
        rec = gs.forget(task["forget_train"], task["retain_train"], cfg)
        m = forgetting_metrics(gs.eval_model, f_test, r_test, before)
        m["acc_r_drop"] = accuracy_on(original, r_test) - m["acc_r"]
        m["acc_f_before"] = before
        per_class = {k: accuracy_on(gs.eval_model, _subset(test, [k])) for k in task["forget"]}
        m["acc_f_class_max"] = max(per_class.values())
        for k, a in per_class.items():  # which class of the pair survives, and how confident the start model was
            per_task[f"acc_c{k}"], per_task[f"ce0_c{k}"] = a, ce0[k]
        if erased:
            m["acc_old"] = accuracy_on(gs.eval_model, _subset(test, erased))
        if rec.get("zeroed_fraction") is not None:
            norms = list(rec["group_norms"].values())
            m["zero_groups"] = rec["zeroed_fraction"]
            m["group_ratio"] = min(norms) / max(norms) if max(norms) > 0 else 0.0
        erased += list(task["forget"])
        rows.append(m)
        per_task.update({f"{k}_t{t}": v for k, v in m.items()})
    out = {k: sum(r[k] for r in rows) / len(rows) for k in ("acc_r", "h", "acc_r_drop")}
    out["acc_f"] = max(r["acc_f"] for r in rows)
    out["acc_f_class_max"] = max(r["acc_f_class_max"] for r in rows)
    for k in ("zero_groups", "group_ratio"):
        if k in rows[0]:
            out[k] = sum(r[k] for r in rows) / len(rows)
    olds = [r["acc_old"] for r in rows if "acc_old" in r]
    if olds:
        out["acc_old"] = max(olds)
    out.update(per_task)
    return out


def run(seed: int, c: Config) -> SeedResult:
    sp = load_digits(image=True, seed=c.pretrain.split_seed)
    _, pre_acc = pretrained_vit(c.pretrain)
    # the few-shot training sets of every task, drawn once per seed and shared by the four runs
    shots = []
    erased: list[int] = []
    for t, forget in enumerate(c.tasks):
        retain = [k for k in range(10) if k not in erased and k not in forget]
        shots.append({
            "forget": list(forget),
            "retain": retain,
            "forget_train": few_shot(_subset(sp.train, list(forget)), c.shots, seed * 100 + t),
            "retain_train": few_shot(_subset(sp.train, retain), c.shots, seed * 100 + 50 + t),
        })  # fmt: skip
        erased += list(forget)
    res = {v: _run_variant(v, c, seed, shots, sp.test) for v in VARIANTS}
    method = dict(res["gs_lora"])
    for v in ("lora_alpha0", "gs_lora_pp", "full_ft"):
        method.update({f"{k}@{v}": x for k, x in res[v].items()})
    if c.sample_bound:
        method.update(
            {f"{k}@sample_bound": x for k, x in _run_variant("sample_bound", c, seed, shots, sp.test).items()}
        )
    method["proto_gain"] = res["gs_lora_pp"]["acc_r"] - res["gs_lora"]["acc_r"]
    method["pretrained_acc"] = pre_acc
    return {"method": method, "baseline": dict(res["full_ft"])}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    keys = [k for k in results[0]["method"] if k.startswith("acc_r_t") and "@" not in k]
    tasks = sorted(int(k.rsplit("_t", 1)[1]) for k in keys)
    names = {"gs_lora": "GS-LoRA", "lora_alpha0": "LoRA (alpha=0)", "gs_lora_pp": "GS-LoRA++", "full_ft": "full FT"}
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, title in zip(axes, ("acc_f", "acc_r", "zero_groups"), ("Acc_f", "Acc_r", "zeroed groups")):
        for v, label in names.items():
            side, suffix = ("baseline", "") if v == "full_ft" else ("method", "" if v == "gs_lora" else f"@{v}")
            vals = [[r[side].get(f"{key}_t{t}{suffix}") for t in tasks] for r in results]
            if any(x is None for row in vals for x in row):
                continue
            ax.plot(tasks, torch.tensor(vals).mean(0).tolist(), marker="o", label=label)
        ax.set_xlabel("task")
        ax.set_xticks(tasks)
        ax.set_title(title + " (mean over seeds)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "gs_lora_tasks.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="gs_lora",
    claim="GS-LoRA erases each requested pair of classes (Acc_f < 10%, as do LoRA without group sparsity, GS-LoRA++ "
    "and full fine-tuning) while keeping retained accuracy within 3 points of the original, switches off at least "
    "half of the per-block LoRA groups, keeps more retained accuracy than full fine-tuning, and prototypes cost no "
    "retained accuracy (card: they add 0-2 points)",
    setup="tiny ViT (8x8 digits, patch 2, width 64, depth 4, MLP 128) pretrained once on digits train+val; three "
    "continual deletion requests {0,1}, {2,3}, {4,5} from few-shot training sets; the four runs share the backbone, "
    "the few-shot draws and the budget",
    method_name="GS-LoRA",
    baseline_name="full fine-tuning (same retain + bounded forget losses)",
    checks=[
        Check("acc_r", "higher", 0.0),
        Check("acc_r_drop", "lower", 0.03, against="value"),
        Check("zero_groups", "higher", 0.5, against="value"),
        Check("acc_f", "lower", 0.10, against="value"),
        Check("acc_f@lora_alpha0", "lower", 0.10, against="value"),
        Check("acc_f@gs_lora_pp", "lower", 0.10, against="value"),
        Check("acc_f@full_ft", "lower", 0.10, against="value"),
        Check("proto_gain", "higher", -0.01, against="value"),
    ],
    notes="One backbone (pretrained once, cached under priorkit's cache folder) serves every seed; seeds vary the "
    "few-shot draws, adapter initialisations and batch orders. The budget is a third of the scripts' 100 epochs per "
    "task (CPU), with the alpha warm-up and EMA start at the scripts' fractions of the run. Full fine-tuning uses "
    "AdamW at 1e-3 (the adapter's 1e-2 would wreck a full network); it has no LoRA groups, so no group lasso. "
    "The @sample_bound run is a diagnosis, not the method.",
    diagnosis="Forgetting (acc_f rules): the task-start model is near-certain on every forget training shot (ce0_c* "
    "close to 0), where the gradient of the forget cross-entropy (softmax minus one-hot) vanishes; the bounded term "
    "then raises the CE of whichever class of the pair yields first until the batch mean reaches BND and leaves the "
    "other class of the pair recognised (acc_f_class_max near 1 while its partner is near 0, acc_c*). Bounding "
    "every sample instead of the batch mean (@sample_bound) does not help: the surviving class still receives no "
    "gradient. GS-LoRA++'s prototype term acts on the embedding, not through the saturated softmax, and erases both "
    "classes more often (acc_f@gs_lora_pp). The paper's CosFace head (bounded cosine logits with a margin, BND "
    "near the largest attainable CE) does not saturate this way. Group sparsity (zero_groups rule): at a third of "
    "the scripts' epochs the group lasso shrinks the groups unevenly (group_ratio below LoRA alpha=0's) without "
    "taking any below 1% of the largest; the budget is the suspect (a longer development run did switch a block "
    "off), not measured here because an epochs ablation exceeds the CPU budget.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    threads=1,
)
