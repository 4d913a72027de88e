"""SaRA vs full fine-tuning and LoRA on a domain shift of digits (card: adapters-lowrank.md, "Small-scale check").

An MLP 64-256-256-10 pretrained on digits (:func:`~priorkit.experiments._adapters.pretrained_digits_mlp`) is
adapted to inverted digits (``x -> 1 - x`` on the [0, 1] scale, the card's ``16 - x``) from ``shots`` training
images per class by (i) full fine-tuning, (ii) PEFT LoRA ``r = 4`` on all three Linear layers (stock
``peft.LoraConfig``), (iii) SaRA (the smallest ``fraction`` of every tensor, lambda_rank, one re-selection at half
the steps). All three use AdamW with the same lr, weight decay, per-step cosine schedule, gradient clip, batches
and number of steps, trained through the engine. Metrics: accuracy on the inverted test set (``acc_new``) and on
the original test set (``acc_orig``, with ``drop_orig`` = pretrained accuracy minus it). The magnitude-ablation
check zeroes the 10 % (and 20 %) smallest ``|w|`` of the pretrained MLP, over all tensors together (SaRA's
absolute-threshold view), and measures the change of its original-test accuracy.

Rules (written from the card's "Expected" before any run; LoRA's values are on the baseline side as ``*@lora``):

- new task: SaRA within 2 points of full fine-tuning (``acc_new``, margin -0.02) and of LoRA (the per-seed
  difference ``acc_new_minus_lora``, 95 % interval above -0.02);
- prior kept: SaRA's drop on the original task at least 3 points smaller than full fine-tuning's (``drop_orig``,
  the card's "clearly smaller ... (several points)");
- ablation: zeroing the 10 % smallest ``|w|`` changes accuracy by under 1 point (``ablation_change``, the
  absolute change, 95 % interval below 0.01).

A variant of SaRA is reported beside the verdict (full tier): without the nuclear-norm term (``*@no_rank``);
``VARIANTS`` also holds ``no_reselect`` and ``global_fraction`` for ``Config.variants``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from priorkit.adapters.sara import SaRA, magnitude_ablation
from priorkit.experiments._adapters import few_shot, invert, pretrained_digits_mlp
from priorkit.experiments._common import accuracy_on, train_and_test
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.train import Phase, Recipe, TrainConfig

LORA_TARGETS = ["body.0", "body.2", "head"]  # every Linear of the MLP


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    shots: int = 20  # training images per class of the shifted task (200 in all)
    epochs: int = 30
    batch_size: int = 20  # 10 steps per epoch: 300 steps at 30 epochs
    lr: float = 1e-3  # AdamW, the same for the three methods
    weight_decay: float = 1e-2  # AdamW's decoupled decay (SaRA's paper value), the same for all
    grad_clip: float = 1.0  # the paper's clip, the same for all
    fraction: float = 0.10  # SaRA: the smallest 10 % of every tensor
    fraction_scope: str = "tensor"
    rank_weight: float = 5e-4  # lambda_rank (paper)
    reselect_at_frac: float = 0.5  # re-selection after half the steps (paper: 2500 of 5005)
    lora_r: int = 4
    lora_alpha: int = 8  # PEFT's default
    ablation_fracs: tuple[float, ...] = (0.10, 0.20)  # the first decides the rule
    variants: tuple[str, ...] = ("no_rank",)  # SaRA variants (VARIANTS) reported as *@name
    pretrain_epochs: int = 40


FULL = Config()
QUICK = Config(epochs=8, ablation_fracs=(0.10,), variants=(), pretrain_epochs=20)

VARIANTS: dict[str, dict[str, Any]] = {
    "no_rank": {"rank_weight": 0.0},
    "no_reselect": {"reselect_at": None},
    "global_fraction": {"fraction_scope": "global"},
}


def _train_config(c: Config, seed: int) -> TrainConfig:
    return TrainConfig(epochs=c.epochs, batch_size=c.batch_size, seed=seed, progress=False)


def _adamw_recipe(c: Config, model: nn.Module) -> Recipe:
    """AdamW on the parameters that require grad (all for full fine-tuning, LoRA's A/B under PEFT), per-step
    cosine schedule without warm-up and the clip: the optimizer settings SaRA's own recipe uses."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def opt(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=c.lr, weight_decay=c.weight_decay)

    def cosine(o: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(1, c.epochs * steps_per_epoch))

    phase = Phase("adapt", epochs=c.epochs, trainable=names, optimizer=opt, scheduler=cosine, interval="step",
                  grad_clip=c.grad_clip)  # fmt: skip
    return Recipe([phase])


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(seed: int, c: Config) -> SeedResult:
    pre, sp, pre_acc = pretrained_digits_mlp(seed, epochs=c.pretrain_epochs)
    train = few_shot(invert(sp.train), c.shots, seed)
    test_new, test_orig = invert(sp.test), sp.test
    cfg = _train_config(c, seed)
    steps = c.epochs * -(-len(train) // c.batch_size)
    n_params = _count(pre)

    def measure(model: nn.Module, metrics: dict[str, float]) -> dict[str, float]:
        acc_orig = accuracy_on(model, test_orig)
        return {"acc_new": metrics["acc"], "acc_orig": acc_orig, "drop_orig": pre_acc - acc_orig}

    # (i) full fine-tuning
    full, m, _ = train_and_test(lambda: copy.deepcopy(pre), train, test_new, cfg,
                                recipe=lambda mod: _adamw_recipe(c, mod))  # fmt: skip
    base = {**measure(full, m), "trainable_frac": 1.0}

    # (ii) stock PEFT LoRA r=4 on all Linear layers (A random, B zero: starts at the pretrained function)
    def make_lora() -> nn.Module:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
        return get_peft_model(copy.deepcopy(pre), lcfg)

    lora, m, _ = train_and_test(make_lora, train, test_new, cfg, recipe=lambda mod: _adamw_recipe(c, mod))
    lora_m = measure(lora, m)
    lora_m["trainable_frac"] = sum(p.numel() for p in lora.parameters() if p.requires_grad) / n_params
    base.update({f"{k}@lora": v for k, v in lora_m.items()})

    # (iii) SaRA
    def sara(**over: Any) -> dict[str, float]:
        holder: dict[str, SaRA] = {}
        kw = dict(fraction=c.fraction, fraction_scope=c.fraction_scope, rank_weight=c.rank_weight,
                  reselect_at=round(c.reselect_at_frac * steps), lr=c.lr, weight_decay=c.weight_decay,
                  grad_clip=c.grad_clip, seed=seed)  # fmt: skip
        kw.update(over)

        def make() -> nn.Module:
            model = copy.deepcopy(pre)
            holder["hook"] = SaRA(model, **kw)
            holder["start"] = holder["hook"].trainable_count()  # type: ignore[assignment]
            return model

        model, metrics, _ = train_and_test(make, train, test_new, cfg, lambda mod: [holder["hook"]],
                                           recipe=lambda mod: holder["hook"].recipe(c.epochs))  # fmt: skip
        hook = holder["hook"]
        out = measure(model, metrics)
        out["trainable_frac"] = float(holder["start"]) / n_params  # type: ignore[arg-type]
        out["trainable_frac_after_reselect"] = hook.trainable_count() / n_params
        return out

    meth = sara()
    meth["acc_new_minus_lora"] = meth["acc_new"] - lora_m["acc_new"]
    for name in c.variants:
        meth.update({f"{k}@{name}": v for k, v in sara(**VARIANTS[name]).items()})

    # the paper's motivating analysis on the pretrained network
    for i, frac in enumerate(c.ablation_fracs):
        change = abs(accuracy_on(magnitude_ablation(pre, frac), test_orig) - pre_acc)
        meth["ablation_change" if i == 0 else f"ablation_change@{frac:.0%}"] = change
    base["pretrained_acc_orig"] = pre_acc
    base["pretrained_acc_new"] = accuracy_on(pre, test_new)
    return {"method": meth, "baseline": base}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    rows = [("full FT", "baseline", ""), ("LoRA r=4", "baseline", "@lora"), ("SaRA", "method", "")]
    fig, ax = plt.subplots(figsize=(5, 3))
    for j, key in enumerate(("acc_new", "acc_orig")):
        means = [sum(r[side][key + suf] for r in results) / len(results) for _, side, suf in rows]
        ax.bar([i + 0.38 * j for i in range(len(rows))], means, width=0.38,
               label="shifted test (new task)" if j == 0 else "original test (prior)")  # fmt: skip
    ax.set_xticks([i + 0.19 for i in range(len(rows))], [name for name, _, _ in rows])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.25)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    path = outdir / "sara_acc.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="sara",
    claim="Re-training only the 10% smallest-|w| entries of each tensor (SaRA) adapts a pretrained digits MLP to "
    "inverted digits within 2 points of full fine-tuning and of LoRA r=4, forgets the original task at least 3 "
    "points less than full fine-tuning, and zeroing the 10% smallest |w| of the pretrained MLP changes its accuracy "
    "by less than 1 point",
    setup="MLP 64-256-256-10 pretrained on digits (train split), adapted to inverted digits (1 - x) from 20 images "
    "per class; full fine-tuning, PEFT LoRA r=4 (alpha 8) on all Linear layers and SaRA, each with AdamW, the same "
    "lr, decay, per-step cosine schedule, clip, batches and steps, through the engine; accuracy on the inverted and "
    "the original test split",
    method_name="SaRA (10% per tensor, lambda_rank 5e-4, re-selection at half)",
    baseline_name="full fine-tuning (LoRA r=4 as *@lora)",
    checks=[
        Check("acc_new", "higher", -0.02),
        Check("acc_new_minus_lora", "higher", -0.02, against="value"),
        Check("drop_orig", "lower", 0.03),
        Check("ablation_change", "lower", 0.01, against="value"),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    threads=1,
    ablations={
        # the one setting shared by the three methods that SaRA is most sensitive to: its trainable entries start
        # near zero and AdamW moves each by about lr per step, so the lr bounds how far they can go in 300 steps
        "lr_3e-3": {"lr": 3e-3, "variants": ()},
        "lr_1e-2": {"lr": 1e-2, "variants": ()},
    },
    diagnosis="Not an implementation bug (the property tests check the mask, the gathered gradient, the decay, the "
    "nuclear-norm gradient, re-selection and resume): inverting the input moves every first-layer pre-activation by "
    "the row sums of the weights, far more than SaRA's near-zero entries can travel at the common lr of 1e-3 in "
    "300 AdamW steps (each moves about lr per step), so SaRA barely leaves the pretrained function: it keeps the "
    "original task but does not learn the new one, and LoRA r=4 also under-fits at this lr while full fine-tuning "
    "adapts and forgets the original task. The lr ablations (lr_3e-3, lr_1e-2, same rules) measure the dependence: "
    "with a larger lr SaRA's new-task accuracy rises toward full fine-tuning's, and the forgetting rises with it.",
    notes="The rules and the lr were fixed before any run. Full fine-tuning forgets the original digits almost "
    "entirely on this shift (the inverted task reuses the same weights with opposite-sign inputs), so the 'prior "
    "kept' rule is easy for any method that stays near the pretrained weights; the new-task rules are the hard part. "
    "Zeroing the smallest 10-20 % of |w| of the pretrained MLP leaves its test predictions essentially unchanged, as "
    "the paper's motivating analysis says. The variant without the nuclear-norm term (*@no_rank) is reported "
    "beside the verdict.",
)
