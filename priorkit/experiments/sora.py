"""SoRA vs LoRA on mnist1d adapted from a shifted source task (card: adapters-lowrank.md, "Small-scale check on CPU").

Base: MLP 40-256-256-10 pretrained on an mnist1d source variant (another data seed, templates rolled by 6 samples;
:func:`~priorkit.experiments._adapters.pretrained_mnist1d_mlp`). Target: standard mnist1d, 1,000 training samples
(100 per class, drawn from the seed), the 400-sample validation split and the 1,000-sample test split. Every arm
adapts the same pretrained network on all three Linear layers (``body.0``, ``body.2``, ``head``) with the official
SoRA recipe (:func:`~priorkit.adapters.sora.sora_recipe`: AdamW with weight decay 0.1 on the LoRA factors, linear
warm-up over 6 % then linear decay, gradient clipping to norm 0.1, the same batches):

- (a) the baseline, PEFT LoRA r = 8 (alpha 16, so scaling 2 like SoRA's);
- (b) SoRA r = 8 with lambda2 = 3e-4 (the method, the official script's value, fixed before any run), and with
  lambda2 = 1e-4 and 1e-3 (``*@lambda2=...``);
- (c) PEFT LoRA whose per-module rank is the method's final r' (``rank_pattern``, ``alpha_pattern`` = 2 r', modules
  with r' = 0 left out), trained from a fresh initialisation with the same recipe (``*@lora_same_ranks``).

Metrics: ``acc`` (test), ``retained_frac`` (retained LoRA parameters / those of r = 8 on every module: LoRA 1.0),
``retained_params``; ``acc_minus_same_rank_lora`` (method - (c), per seed); ``acc@pretrained`` (no adaptation).
The full tier then runs the sparsifying scheduler on the method's model (stages raising lambda2 to
``sparsify_stop``, learning rate 0 as in the released schedule script) and reports memorization, generalization and
``retained_frac`` per stage (``*@stageK``).

Rules (the card's "Expected: at 50-70 % retained parameters SoRA is within about 0.5 point of LoRA r = 8 and at
least as good as (c)"), fixed before any result: the method's ``retained_frac`` lies in [0.5, 0.7] (its 95 %
interval), its accuracy is at most 0.5 points below LoRA r = 8 (paired interval above -0.005), and at most 0.5
points below (c) (the same non-inferiority margin for "at least as good").
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import LoraConfig, get_peft_model
from torch import nn

from priorkit.adapters.sora import SoraConfig, SoraHook, sora_recipe, sparsify_report
from priorkit.core.seeding import seed_everything
from priorkit.data import load_mnist1d
from priorkit.experiments._adapters import few_shot, pretrained_mnist1d_mlp
from priorkit.experiments._common import accuracy_on
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.train import TrainConfig, fit

__all__ = ["EXPERIMENT", "FULL", "QUICK", "Config"]

TARGETS = ("body.0", "body.2", "head")


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    train_size: int = 1000  # from mnist1d's training split, train_size // 10 per class
    pretrain_epochs: int = 30  # source-task pretraining (pretrained_mnist1d_mlp's default)
    r: int = 8
    lora_alpha: float = 16.0  # scaling alpha / r = 2, the official SoRA value, for every arm
    epochs: int = 15  # 480 steps (batch 32); one full seed stays near a minute on one thread of a busy machine
    batch_size: int = 32
    lr: float = 3e-3  # AdamW (and the gates' Adam); chosen on LoRA r = 8 alone (8e-4 under-fits at this budget)
    weight_decay: float = 0.1
    warmup_ratio: float = 0.06
    max_grad_norm: float = 0.1
    lambda1: float = 10.0 * 24 / 576  # official lambda 10 over 576 gates (DeBERTaV3-base); the same per gate here
    lambda2: float = 3e-4  # the method (run_glue_sora_no_schedule.sh)
    lambda2_extra: tuple[float, ...] = (1e-4, 1e-3)  # the card's other values, reported as *@lambda2=...
    threshold_mode: str = "official"
    official_threshold: bool = False  # the exact proximal operator
    sparsify_stop: float = 1e-2  # sparsifying scheduler after the method's run (0 stages: off)
    sparsify_num: int = 4  # thresholds from lambda2 to sparsify_stop, the first is the main run's
    sparsify_epochs: int = 2  # per stage (learning rate 0: the released schedule script's exhausted schedule)


FULL = Config()
QUICK = Config(pretrain_epochs=5, epochs=3, lambda2_extra=(), sparsify_num=0)


def _lora_config(c: Config, ranks: dict[str, int] | None = None) -> LoraConfig:
    if ranks is None:
        return LoraConfig(r=c.r, lora_alpha=c.lora_alpha, target_modules=list(TARGETS))
    keep = {n: k for n, k in ranks.items() if k > 0}
    s = c.lora_alpha / c.r
    return LoraConfig(r=max(keep.values()), lora_alpha=c.lora_alpha, target_modules=sorted(keep),
                      rank_pattern={re.escape(n): k for n, k in keep.items()},
                      alpha_pattern={re.escape(n): s * k for n, k in keep.items()})  # fmt: skip


def run(seed: int, c: Config) -> SeedResult:
    pre, _ = pretrained_mnist1d_mlp(seed, epochs=c.pretrain_epochs)
    data = load_mnist1d(seed=seed)
    train = few_shot(data.train, c.train_size // 10, seed)
    cfg = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, seed=seed, progress=False)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"train": accuracy_on(m, train), "val": accuracy_on(m, data.val), "test": accuracy_on(m, data.test)}

    def arm(config: LoraConfig, stages: bool = False) -> list[dict[str, Any]]:
        seed_everything(seed)
        model = get_peft_model(copy.deepcopy(pre), config)
        hook = SoraHook.from_config(config) if isinstance(config, SoraConfig) else None
        sparsify = {"sparsify_stop": c.sparsify_stop, "sparsify_num": c.sparsify_num,
                    "sparsify_epochs": c.sparsify_epochs} if stages and c.sparsify_num >= 2 else {}  # fmt: skip
        recipe = sora_recipe(model, len(train), c.batch_size, epochs=c.epochs, lr=c.lr, weight_decay=c.weight_decay,
                             warmup_ratio=c.warmup_ratio, max_grad_norm=c.max_grad_norm, hook=hook,
                             evaluate=evaluate, **sparsify)  # fmt: skip
        return sparsify_report(fit(model, train, recipe, hooks=[hook] if hook else [], config=cfg))

    def sora(lambda2: float, stages: bool = False) -> list[dict[str, Any]]:
        config = SoraConfig(r=c.r, lora_alpha=c.lora_alpha, target_modules=list(TARGETS), lambda1=c.lambda1,
                            lambda2=lambda2, threshold_mode=c.threshold_mode,
                            official_threshold=c.official_threshold)  # fmt: skip
        return arm(config, stages)

    def measure(row: dict[str, Any]) -> dict[str, float]:
        out = {"acc": row["test"], "train_acc": row["train"], "val_acc": row["val"]}
        if "retained_params" in row:
            out["retained_params"] = row["retained_params"]
            out["retained_frac"] = row["retained_params"] / row["full_params"]
        return out

    baseline = measure(arm(_lora_config(c))[0])
    rows = sora(c.lambda2, stages=True)
    method = measure(rows[0])
    baseline.update(retained_params=rows[0]["full_params"], retained_frac=1.0)
    baseline["acc@pretrained"] = accuracy_on(pre, data.test)
    ranks = rows[0]["ranks"]
    if any(k > 0 for k in ranks.values()):
        same = measure(arm(_lora_config(c, ranks))[0])
    else:  # every gate closed: (c) is the pretrained network itself
        same = {"acc": accuracy_on(pre, data.test)}
    baseline["acc@lora_same_ranks"] = same["acc"]
    method["acc_minus_same_rank_lora"] = method["acc"] - same["acc"]
    for k, n in ranks.items():
        method[f"rank_{k}"] = n
    for row in rows[1:]:
        st = row["sora_stage"]
        method[f"memorization@stage{st}"] = row["memorization"]
        method[f"generalization@stage{st}"] = row["generalization"]
        method[f"retained_frac@stage{st}"] = row["retained_params"] / row["full_params"]
    for lam in c.lambda2_extra:
        extra = measure(sora(lam)[0])
        method.update({f"{k}@lambda2={lam:g}": v for k, v in extra.items() if k in ("acc", "retained_frac")})
    return {"method": method, "baseline": baseline}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    """Test accuracy against retained LoRA parameters (the card's metric), every arm and seed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    arms = [("LoRA r=8", "baseline", "acc", "retained_frac")]
    m0 = results[0]["method"]
    arms.append(("SoRA (method)", "method", "acc", "retained_frac"))
    for k in sorted(m0):
        if k.startswith("acc@lambda2="):
            lam = k.split("=", 1)[1]
            arms.append((f"SoRA lambda2={lam}", "method", k, f"retained_frac@lambda2={lam}"))
    for label, side, acc_key, frac_key in arms:
        xs = [r[side][frac_key] for r in results]
        ys = [r[side][acc_key] for r in results]
        ax.scatter(xs, ys, label=label, s=18)
    xs = [r["method"]["retained_frac"] for r in results]
    ax.scatter(xs, [r["baseline"]["acc@lora_same_ranks"] for r in results], label="LoRA, SoRA's ranks", s=18,
               marker="x")  # fmt: skip
    ax.set_xlabel("retained LoRA parameters (fraction of r = 8)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "sora_acc_vs_params.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="sora",
    claim="At 50-70 % retained LoRA parameters SoRA (r = 8, lambda2 = 3e-4) is within 0.5 point of LoRA r = 8 and "
    "no worse (0.5-point margin) than LoRA with SoRA's per-module ranks trained from scratch; same data and budget",
    setup="MLP 40-256-256-10 pretrained on a shifted-template mnist1d source task; target: standard mnist1d with "
    "1,000 training samples; PEFT LoRA / SoRA on all three Linear layers, the official SoRA recipe (AdamW wd 0.1, "
    "linear warm-up/decay, clipping 0.1; gates by Adam + proximal step) for every arm, the same batches",
    method_name="SoRA r=8 (lambda2 3e-4)",
    baseline_name="LoRA r=8",
    checks=[
        Check("acc", "higher", -0.005),
        Check("acc_minus_same_rank_lora", "higher", -0.005, against="value"),
        Check("retained_frac", "higher", 0.5, against="value"),
        Check("retained_frac", "lower", 0.7, against="value"),
    ],
    notes="Choices made before any SoRA result: lambda1 keeps the official per-gate L1 pressure (the script's 10 "
    "spread over DeBERTaV3-base's 576 gates, here 24; the raw 10 is an ablation); lr was set on LoRA r = 8 alone; the "
    "sparsifying stages run at learning rate 0, as the released schedule script does in effect (its linear schedule "
    "is exhausted after the main run), so they only soft-threshold the gates. The retained fraction depends on "
    "lambda2 times the number of steps (each step shrinks every gate by lambda2) against the task gradient: a short "
    "CPU run closes fewer gates at the official lambda2 than the 14k-step GLUE runs, which is why the card's larger "
    "lambda2 values are reported beside it and lambda2 = 1e-3 is an ablation decided by the same rules.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    ablations={
        # the released thresholding (zeroes |g| < 2 lambda2 in effect)
        "official_threshold": {"official_threshold": True, "lambda2_extra": (), "sparsify_num": 0},
        # the script's lambda 10 unscaled: 24 times the official per-gate L1 pressure
        "lambda1_official_raw": {"lambda1": 10.0, "lambda2_extra": (), "sparsify_num": 0},
        # the card's largest lambda2 as the method: the rules decided at a sparser operating point
        "lambda2_1e-3": {"lambda2": 1e-3, "lambda2_extra": (), "sparsify_num": 0},
    },
    diagnosis="At the official lambda2 the gates close too few rank components in a run this short: the retained "
    "fraction stays above the card's 50-70% band, and accuracy sits just under LoRA r=8 and under LoRA trained from "
    "scratch at SoRA's final ranks, with intervals that reach the margin. The ablations move along the sparsity / "
    "accuracy curve without finding the card's operating point: lambda2 = 1e-3 lands inside the band but costs more "
    "accuracy, the unscaled official lambda1 prunes far below the band at a clear accuracy loss, and the released "
    "thresholding behaves like the exact operator. On this mnist1d MLP the gated search buys no accuracy over a LoRA "
    "of the same final ranks, so the paper's advantage (found on DeBERTaV3 / GLUE over 14k steps) does not show at "
    "this scale.",
    threads=1,
)
