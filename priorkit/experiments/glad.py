"""GLAD vs plain LoRA (and SAM-LoRA) under a domain shift (card: adapters-lowrank.md, "Small-scale check on CPU").

No CLIP here: the stand-in is an MLP 64-256-256-10 pretrained on scikit-learn digits
(:func:`~priorkit.experiments._adapters.pretrained_digits_mlp`). The few-shot target is 8 shots per class of a
shifted domain (additive Gaussian noise sigma = 2 on the 0-16 scale). PEFT LoRA (r = 2, alpha 1, dropout 0.25,
every Linear layer) is trained for the same number of steps with plain AdamW (the baseline), with GLAD
(``rule="project"``) and with SAM (``rule="sam"``, reported as ``*@sam``; ``Config.variants`` may add
``"blend"``). All runs start from the same pretrained weights and the same LoRA initialisation, see the same
batches and use the same AdamW and cosine schedule; only the gradient given to AdamW differs.

Metrics: ``acc_a`` (test split, the training shift: noise sigma 2), ``acc_b`` (test split, an unseen stronger
shift: noise sigma 4 after a one-pixel translation of every image in a random direction; the
domain-generalisation proxy), ``sharpness`` (:func:`lora_sharpness`: the mean increase of the few-shot training
loss under 20 random Gaussian perturbations of the LoRA tensors of global norm 0.05), and for GLAD the mean
``cos(g, g_sam)`` and the fraction of steps with a conflict. ``acc_a@pretrained`` / ``acc_b@pretrained`` (in the
baseline's column) are the pretrained network before adaptation.

Rules (the card's "Expected: GLAD >= LoRA on (b) by about 1-3 points on average, with lower sharpness; (a) within
about 1 point"), on seed-paired differences: ``acc_b`` at least 1 point above LoRA's (the low end of the range),
``sharpness`` lower than LoRA's, ``acc_a`` no more than 1 point below LoRA's.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from priorkit.adapters.glad import GLADRecipe, glad_lora
from priorkit.core.errors import PriorkitError, check_positive_int, check_range
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.experiments._adapters import add_noise, few_shot, pretrained_digits_mlp
from priorkit.experiments._common import accuracy_on, train_and_test
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.train import Recipe, TrainConfig, soft_cross_entropy

__all__ = ["EXPERIMENT", "FULL", "QUICK", "Config", "lora_sharpness", "translate"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    shots: int = 8  # per class, from the noisy (sigma 2) training split
    sigma_train: float = 2.0  # noise of the target domain, 0-16 scale (test (a) uses the same)
    sigma_shift: float = 4.0  # noise of the unseen shift (test (b)), after a one-pixel translation
    steps: int = 200  # optimizer steps (epochs = steps / steps per epoch)
    batch_size: int = 16
    lr: float = 5e-3  # AdamW, cosine to 0 over the steps
    weight_decay: float = 1e-2
    rank: int = 2
    lora_alpha: float = 1.0
    lora_dropout: float = 0.25
    rho: float = 0.05
    lam: float = 1.0
    beta: float = 0.5  # the blend variant's weight of g_sam
    variants: tuple[str, ...] = ("sam",)  # extra rules run beside GLAD (reported as metric@rule)
    sharp_radius: float = 0.05
    sharp_draws: int = 20  # 10 antithetic pairs
    pretrain_epochs: int = 40


FULL = Config()
QUICK = Config(steps=50, sharp_draws=6)


def translate(data: IndexedTensorDataset, seed: int, pixels: int = 1) -> IndexedTensorDataset:
    """Shift every 8x8 digit by ``pixels`` in one of the four directions (drawn from ``seed``), filling with 0."""
    check_positive_int("pixels", pixels)
    x = data.x.view(-1, 8, 8)
    g = torch.Generator().manual_seed(seed)
    direction = torch.randint(4, (len(x),), generator=g)
    out = torch.zeros_like(x)
    k = pixels
    out[direction == 0, :, k:] = x[direction == 0, :, :-k]  # right
    out[direction == 1, :, :-k] = x[direction == 1, :, k:]  # left
    out[direction == 2, k:, :] = x[direction == 2, :-k, :]  # down
    out[direction == 3, :-k, :] = x[direction == 3, k:, :]  # up
    return IndexedTensorDataset(out.reshape(len(x), -1), data.y)


@torch.no_grad()
def lora_sharpness(
    model: nn.Module, data: IndexedTensorDataset, *, radius: float = 0.05, draws: int = 20, seed: int = 0
) -> float:
    """Mean increase of the cross-entropy on ``data`` (eval mode) when the trainable (LoRA) tensors move by a
    random Gaussian direction of global norm ``radius``, over ``draws`` perturbations from ``seed``.

    The draws come in antithetic pairs (``+d`` and ``-d``), so the first-order term ``<grad L, d>`` cancels
    exactly and the mean is the curvature term (``radius^2 / (2 dim) * tr H`` to second order); the loss is
    evaluated in float64 on a copy, since at this radius the rise is far below float32's resolution of the loss.
    """
    check_range("radius", radius, 0.0, low_inclusive=False)
    check_positive_int("draws", draws, 2)
    if draws % 2:
        raise PriorkitError(f"draws must be even (antithetic pairs), got {draws}")
    net = copy.deepcopy(model).double().eval()
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise PriorkitError("lora_sharpness: model has no trainable (LoRA) parameters")
    x, y = data.x.double(), data.y
    base = float(soft_cross_entropy(net(x), y))
    g = torch.Generator().manual_seed(seed)
    backup = [p.detach().clone() for p in params]
    rises = []
    for _ in range(draws // 2):
        d = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        scale = radius / float(torch.sqrt(sum((t * t).sum() for t in d)))
        for sign in (1.0, -1.0):
            for p, t, b in zip(params, d, backup):
                p.copy_(b + sign * scale * t)
            rises.append(float(soft_cross_entropy(net(x), y)) - base)
    return sum(rises) / len(rises)


def _mean_logged(history: list[dict[str, Any]], key: str) -> float | None:
    vals = [h[key] for h in history if key in h]
    return sum(vals) / len(vals) if vals else None


def run(seed: int, c: Config) -> SeedResult:
    pre, sp, _ = pretrained_digits_mlp(seed, epochs=c.pretrain_epochs)  # warm the cache before any seeding
    train = few_shot(add_noise(sp.train, c.sigma_train, seed=1000 + seed), c.shots, seed)
    test_a = add_noise(sp.test, c.sigma_train, seed=2000 + seed)
    test_b = add_noise(translate(sp.test, seed=3000 + seed), c.sigma_shift, seed=4000 + seed)
    spe = -(-len(train) // c.batch_size)
    epochs = -(-c.steps // spe)
    cfg = TrainConfig(epochs=epochs, batch_size=c.batch_size, seed=seed, progress=False)

    def make() -> nn.Module:
        return glad_lora(copy.deepcopy(pre), "all-linear", r=c.rank, lora_alpha=c.lora_alpha,
                         lora_dropout=c.lora_dropout)  # fmt: skip

    def glad_recipe(rule: str):  # noqa: ANN202
        return lambda m: GLADRecipe(m, epochs=epochs, rho=c.rho, rule=rule, lam=c.lam, beta=c.beta, lr=c.lr,
                                    weight_decay=c.weight_decay, schedule="cosine")  # fmt: skip

    def adamw(m: nn.Module) -> Recipe:  # the same optimizer, schedule and trainable tensors, one plain backward
        phase = glad_recipe("project")(m).phases[0]
        return Recipe([dataclasses.replace(phase, name="adamw", manual=False, loss=None)])

    def measure(model: nn.Module, metrics: dict[str, float], curves: dict[str, Any]) -> dict[str, Any]:
        return {
            "acc_a": metrics["acc"],
            "nll_a": metrics["nll"],
            "acc_b": accuracy_on(model, test_b),
            "sharpness": lora_sharpness(model, train, radius=c.sharp_radius, draws=c.sharp_draws, seed=seed),
            "cos_g_gsam": _mean_logged(curves["history"], "glad_cos"),
            "conflict_frac": _mean_logged(curves["history"], "glad_conflict"),
        }

    base_model, m, cur = train_and_test(make, train, test_a, cfg, recipe=adamw)
    baseline = measure(base_model, m, cur)
    del baseline["cos_g_gsam"], baseline["conflict_frac"]
    baseline["acc_a@pretrained"] = accuracy_on(pre, test_a)
    baseline["acc_b@pretrained"] = accuracy_on(pre, test_b)
    model, m, cur = train_and_test(make, train, test_a, cfg, recipe=glad_recipe("project"))
    method = measure(model, m, cur)
    for rule in c.variants:
        vm, m, cur = train_and_test(make, train, test_a, cfg, recipe=glad_recipe(rule))
        method.update({f"{k}@{rule}": v for k, v in measure(vm, m, cur).items()})
    return {"method": method, "baseline": baseline}


EXPERIMENT = Experiment(
    id="glad",
    claim="GLAD beats plain LoRA on an unseen, stronger domain shift by at least 1 point (the card: 1-3 points), "
    "with lower sharpness, and stays within 1 point on the training shift; same data, steps and AdamW",
    setup="MLP 64-256-256-10 pretrained on digits; PEFT LoRA on every Linear layer adapted on 8 shots per class of "
    "noisy digits (sigma 2); tests: the same shift (a) and noise sigma 4 plus one-pixel translations (b); plain "
    "AdamW vs GLAD (project rule) vs SAM, the same steps, batches and initialisation",
    method_name="GLAD (LoRA + projected SAM gradient)",
    baseline_name="LoRA + AdamW",
    checks=[
        Check("acc_b", "higher", 0.01),
        Check("sharpness", "lower", 0.0),
        Check("acc_a", "higher", -0.01),
    ],
    notes="GLAD's projection acts only on steps where <g, g_sam> < 0. In the runs made while building it (one full "
    "seed, the quick tier) cos(g, g_sam) stayed high at rho = 0.05 and conflicts were rare to absent "
    "(conflict_frac), so g~ = g on nearly every step and GLAD differed from plain LoRA mainly through the dropout "
    "masks its second pass draws; LoRA itself moved the pretrained network's accuracy little on either test "
    "(acc_a@pretrained, acc_b@pretrained). The sharpness metric follows the card (global norm 0.05 over the LoRA "
    "tensors) with antithetic draws in float64: at that radius the rise is a small curvature term, far "
    "below float32's resolution of the loss. The ablations rho=0.5 and rho=2 are where conflicts occur.",
    diagnosis="conflict_frac (metrics table) measures how often the card's projection rule acts at all: when the SAM "
    "gradient rarely conflicts with the plain one at rho = 0.05, GLAD's update equals plain AdamW's on almost every "
    "step and a difference from LoRA can only come from dropout noise. The measured ablations rho=0.5 and rho=2 "
    "(same rules, 3 seeds) show the effect when the rule is active on more steps (conflict_frac there); the "
    "card's combination rule is itself an assumption (the paper's rule is not given).",
    ablations={"rho=0.5": {"rho": 0.5}, "rho=2": {"rho": 2.0}},
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=10,
    quick_seeds=2,
    threads=1,
)
