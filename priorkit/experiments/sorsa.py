"""SORSA vs LoRA and PiSSA adapting a pretrained digits MLP to inverted digits (card adapters-lowrank.md, "SORSA",
"Small-scale check on CPU").

Setup: :func:`priorkit.experiments._adapters.pretrained_digits_mlp` (MLP 64-256-256-10 trained on digits' train
split), target task = the same split with inverted intensities (:func:`invert`). Rank ``r`` adapters on the two
hidden Linear layers (``body.0``, ``body.2``; the head stays frozen), trained through the engine with AdamW at the
card's learning rate for about 300 steps, every variant from the same pretrained weights and with the same batch
order: LoRA (PEFT default init: Kaiming A, zero B), PiSSA (PEFT ``init_lora_weights="pissa"``), SORSA with
``gamma`` = 0 and with the card's ``gamma`` in {1e-3, 1e-2} (``reg_mode="loss"``, as released). LoRA and PiSSA use
``lora_alpha = r`` (scale 1), SORSA ``alpha=None`` (scale 1, the official default). The full tier also runs SORSA
with the released trainer's ``gamma / lr`` factor (``@released``) and with the ``"decoupled"`` regularizer step
(``@decoupled``, an assumption of the card).

Metrics (per variant): ``steps`` = optimizer steps until the training loss reaches ``threshold``, the training
loss being the mean minibatch cross-entropy over the last ``window`` steps (read per step by a hook, before each
update); a run that never gets there counts the whole budget (``reached`` = 0), so a speed-up against it is a lower
bound. ``speedup`` = LoRA's steps / the variant's steps (same seed). ``acc``: test accuracy on inverted digits.
``ortho_err``: SORSA's ``L_reg`` (the mean of ``||U_p^T U_p - I||_F`` and ``||V_p^T V_p - I||_F`` over both
layers) after training, ``ortho_err_max`` its maximum over the steps. The card's optional drift analysis, on the
merged weights against the pretrained ones (top-``r`` SVD triplets, mean over both layers): ``sv_drift`` = mean
``|sigma_t - sigma_0|``, ``vec_drift`` = mean ``1 - |<u_t, u_0>|``.

Rules (fixed before the first run, from the card's "Expected"): SORSA (gamma 1e-3) and PiSSA each reach the loss
threshold at least 1.3x faster than LoRA (``speedup`` >= 1.3); with gamma > 0 (1e-3 and 1e-2) the orthonormality
error stays below 1e-2 over the whole run (``ortho_err_max``), while with gamma = 0 it ends at least 2x larger than
with gamma 1e-3 (``ortho_ratio@gamma=0``, the card's "clearly larger"); SORSA's final accuracy is no more than
1 point below LoRA's (the card's "within about 1 point", one-sided).

Measured diagnoses (full tier, outside the verdict): ``released_lr_scaling`` runs every SORSA variant with the
released trainer's ``gamma / lr`` factor, ``budget_3x`` three times the card's step budget. What was learnt while
building it is in ``EXPERIMENT.notes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from priorkit.adapters.sorsa import SorsaConfig, SorsaHook, orthonormal_reg, sorsa_factors
from priorkit.core.seeding import seed_everything
from priorkit.experiments._adapters import invert, pretrained_digits_mlp
from priorkit.experiments._common import accuracy_on
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.train import Batch, Hook, Phase, Recipe, RunState, TrainConfig, fit


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    rank: int = 4
    targets: tuple[str, ...] = ("body.0", "body.2")
    lora_alpha: float = 4.0  # LoRA / PiSSA scale alpha / r = 1, as SORSA's alpha=None
    lr: float = 1e-3  # AdamW, constant (the card)
    weight_decay: float = 0.0  # the paper's SORSA run uses none
    batch_size: int = 64
    epochs: int = 18  # 18 x 17 batches of digits' 1,079 training images = 306 steps (the card: 300)
    threshold: float = 0.1  # training loss to reach (the card)
    window: int = 10  # steps averaged into "the training loss"
    gamma: float = 1e-3  # the method's gamma (the card: {1e-3, 1e-2})
    other_gammas: tuple[float, ...] = (0.0, 1e-2)  # also run (the rules use both)
    lr_scaled: bool = False  # SORSA variants back-propagate (gamma / lr) L_reg, as the released trainer does
    report_thresholds: tuple[float, ...] = (1.0, 0.5)  # looser loss thresholds, reported (steps_loss<t>)
    extra_variants: tuple[str, ...] = ("released", "decoupled")  # reported, outside the rules
    pretrain_epochs: int = 40


FULL = Config()
QUICK = Config(epochs=4, extra_variants=(), pretrain_epochs=20)


class _StepLog(Hook):
    """Per-step minibatch cross-entropy (from the step's own forward, before the update) and, for SORSA models,
    the regularizer's value after the update."""

    def __init__(self) -> None:
        self.loss: list[float] = []
        self.orth: list[float] = []

    def on_step_end(self, state: RunState, batch: Batch) -> None:
        self.loss.append(float(F.cross_entropy(batch.output.detach(), batch.y)))
        factors = sorsa_factors(state.model)
        if factors:
            with torch.no_grad():
                self.orth.append(float(orthonormal_reg(factors)))


def steps_to_threshold(losses: list[float], threshold: float, window: int) -> tuple[int, bool]:
    """``(steps, reached)``: the first step count whose last-``window`` mean loss is <= ``threshold`` (the whole
    budget, ``reached=False``, when that never happens)."""
    for i in range(window - 1, len(losses)):
        if sum(losses[i - window + 1 : i + 1]) / window <= threshold:
            return i + 1, True
    return len(losses), False


def _top_svd(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, _ = torch.linalg.svd(w.detach().double(), full_matrices=False)
    return u[:, :r], s[:r]


def _drift(merged: nn.Module, pretrained: dict[str, torch.Tensor], r: int) -> dict[str, float]:
    sv, vec = [], []
    mods = dict(merged.named_modules())
    for name, w0 in pretrained.items():
        u0, s0 = _top_svd(w0, r)
        ut, st = _top_svd(mods[name].weight, r)
        sv.append((st - s0).abs().mean().item())
        vec.append((1 - (ut * u0).sum(0).abs()).mean().item())
    return {"sv_drift": sum(sv) / len(sv), "vec_drift": sum(vec) / len(vec)}


def _adapt(variant: str, gamma: float, seed: int, c: Config) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Adapt a fresh copy of seed ``seed``'s pretrained MLP with one variant; returns (metrics, curves)."""
    model, splits, _ = pretrained_digits_mlp(seed, c.pretrain_epochs)
    train, test = invert(splits.train), invert(splits.test)
    pretrained = {t: dict(model.named_modules())[t].weight.detach().clone() for t in c.targets}
    seed_everything(seed)
    hooks: list[Hook] = []
    if variant in ("lora", "pissa"):
        init = True if variant == "lora" else "pissa"
        cfg: Any = LoraConfig(r=c.rank, lora_alpha=c.lora_alpha, target_modules=list(c.targets), init_lora_weights=init)
    else:
        cfg = SorsaConfig(
            r=c.rank,
            target_modules=list(c.targets),
            gamma=gamma,
            reg_mode="decoupled" if variant == "decoupled" else "loss",
            reg_lr_scaled=variant == "released" or (variant == "sorsa" and c.lr_scaled),
        )
        hooks.append(SorsaHook.from_config(cfg))
    pm = get_peft_model(model, cfg)
    log = _StepLog()
    names = [n for n, p in pm.named_parameters() if p.requires_grad]  # PEFT's trainable tensors only
    recipe = Recipe([Phase("adapt", epochs=c.epochs, trainable=names)])
    tc = TrainConfig(
        epochs=c.epochs,
        batch_size=c.batch_size,
        optimizer="adamw",
        lr=c.lr,
        weight_decay=c.weight_decay,
        seed=seed,
        progress=False,
    )
    fit(pm, train, recipe, hooks=[*hooks, log], config=tc)
    steps, reached = steps_to_threshold(log.loss, c.threshold, c.window)
    out: dict[str, Any] = {"steps": float(steps), "reached": float(reached)}
    for t in c.report_thresholds:
        out[f"steps_loss{t:g}"] = float(steps_to_threshold(log.loss, t, c.window)[0])
    out.update({
        "acc": accuracy_on(pm, test),
        "final_loss": sum(log.loss[-c.window :]) / c.window,
    })  # fmt: skip
    if log.orth:
        out["ortho_err"], out["ortho_err_max"] = log.orth[-1], max(log.orth)
    out.update(_drift(pm.merge_and_unload(), pretrained, c.rank))
    return out, {"loss": log.loss, "orth": log.orth}


def _g(x: float) -> str:
    return f"{x:g}"


def _speedups(m: dict[str, Any], base: dict[str, Any], c: Config) -> None:
    m["speedup"] = base["steps"] / m["steps"]
    for t in c.report_thresholds:
        m[f"speedup_loss{t:g}"] = base[f"steps_loss{t:g}"] / m[f"steps_loss{t:g}"]


def run(seed: int, c: Config) -> SeedResult:
    curves = {}
    base, curves["lora"] = _adapt("lora", 0.0, seed, c)
    meth, curves["sorsa"] = _adapt("sorsa", c.gamma, seed, c)
    _speedups(meth, base, c)
    extra: dict[str, tuple[str, float]] = {"pissa": ("pissa", 0.0)}
    extra.update({f"gamma={_g(g)}": ("sorsa", g) for g in c.other_gammas})
    extra.update({v: (v, c.gamma) for v in c.extra_variants})
    for key, (variant, gamma) in extra.items():
        m, curves[key] = _adapt(variant, gamma, seed, c)
        _speedups(m, base, c)
        if "ortho_err" in m:
            m["ortho_ratio"] = m["ortho_err"] / meth["ortho_err"] if meth["ortho_err"] > 0 else None
        meth.update({f"{k}@{key}": v for k, v in m.items()})
    return {"method": meth, "baseline": base, "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    keys = list(results[0]["curves"])
    for key in keys:
        loss = torch.tensor([r["curves"][key]["loss"] for r in results]).mean(0)
        axes[0].plot(torch.arange(1, len(loss) + 1), loss, label=key, lw=1)
        orth = [r["curves"][key]["orth"] for r in results]
        if orth[0]:
            o = torch.tensor(orth).mean(0)
            axes[1].plot(torch.arange(1, len(o) + 1), o, label=key, lw=1)
    axes[0].axhline(0.1, color="0.5", ls="--", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("minibatch training loss (mean over seeds)")
    axes[0].legend(fontsize=7)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("SORSA L_reg (orthonormality error)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "sorsa_curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="sorsa",
    claim="SORSA and PiSSA reach the training-loss threshold at least 1.3x faster than LoRA; with gamma > 0 the "
    "orthonormality error stays below 1e-2, with gamma = 0 it ends at least 2x larger; SORSA's accuracy is within "
    "1 point of LoRA's (not lower by more)",
    setup="sklearn digits: MLP 64-256-256-10 pretrained on the train split, adapted to inverted intensities with "
    "rank-4 adapters on both hidden layers (head frozen); AdamW, same pretrained weights, batches and budget for "
    "every variant",
    method_name="SORSA (gamma 1e-3)",
    baseline_name="LoRA (PEFT default init)",
    checks=[
        Check("speedup", "higher", 1.3, against="value"),
        Check("speedup@pissa", "higher", 1.3, against="value"),
        Check("ortho_err_max", "lower", 1e-2, against="value"),
        Check("ortho_err_max@gamma=0.01", "lower", 1e-2, against="value"),
        Check("ortho_ratio@gamma=0", "higher", 2.0, against="value"),
        Check("acc", "higher", -0.01),
    ],
    notes="Learnt while building it (one full-budget seed and the two ablations on that seed; the bench's five "
    "seeds decide): (1) inverting the digits is a large shift for a rank-4 adapter on the hidden layers with the "
    "head frozen, and within the card's ~300 steps no variant brought the training loss down to 0.1, so "
    "'speedup' is censored at the budget (1 when neither gets there); the looser thresholds (steps_loss1, "
    "steps_loss0.5 and their speedups) show SORSA and PiSSA well ahead of LoRA, which stalled near ln(10) "
    "(uniform predictions), and with three times the budget SORSA got to 0.1 while LoRA did not. (2) In the "
    "card's 'loss' reading (AdamW on L_train + gamma L_reg) gamma = 1e-3 or 1e-2 does not hold the singular "
    "vectors orthonormal: AdamW normalizes each coordinate's step, so a regularizer gradient that is small next "
    "to the task gradient barely changes the update, and the error grows to the same order as with gamma = 0. "
    "The released trainer back-propagates (gamma / lr) L_reg (sorsalib SORSATrainer), a weight lr-times larger: "
    "with it (metrics @released, ablation released_lr_scaling) the final error is small. (3) The 'decoupled' "
    "step lr * gamma * grad is tiny at these settings and its run is indistinguishable from gamma = 0.",
    diagnosis="Two causes, both measured. Speed: within the card's 300 steps no variant reaches training loss 0.1, so "
    "the speed rules are censored at the budget (speed-up 1 by construction); the earlier thresholds "
    "(steps_loss1, steps_loss0.5) show SORSA and PiSSA far ahead of LoRA, which stalls near uniform predictions, "
    "and with three times the budget (budget_3x) SORSA reaches 0.1 while the paired speed-up against LoRA is still "
    "censored by LoRA never reaching it. Orthonormality: in the card's plain-gamma reading AdamW's per-coordinate "
    "normalisation drowns the small regulariser gradient, so gamma = 1e-3 and 1e-2 end no more orthonormal than "
    "gamma = 0; the released trainer's gamma / lr factor (released_lr_scaling) brings the vectors far closer to "
    "orthonormal than gamma = 0 (that ratio rule passes), though not under the card's 1e-2 at gamma = 1e-3. "
    "Accuracy is far above LoRA's at equal steps.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    # measured diagnoses (full tier, 3 seeds each; the rules above are unchanged): the released trainer's gamma / lr
    # factor on every SORSA variant, and three times the card's step budget
    ablations={
        "released_lr_scaling": {"lr_scaled": True, "extra_variants": ()},
        "budget_3x": {"epochs": 54, "extra_variants": ()},
    },
    threads=1,
)
