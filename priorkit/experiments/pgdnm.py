"""PGDNM vs conventional training on two-modality digits (card: regularizers-theory.md, "Small-scale check on CPU").

Data: scikit-learn's 8x8 digits made heterogeneous: every image appears as "modality A" (the original) and as
"modality B" (intensity-inverted, then blurred with sigma 0.7), a 50/50 mix; the 70/30 train/test split is drawn per
seed over the source images (stratified by class), so the two copies of an image are always on the same side. Task
"seen": digits 0-6; task "unseen concept": digits 7-9, never seen while heating.

Both sides run :meth:`priorkit.regularizers.pgdnm.PGDNM.recipe` through the engine from the same initial weights, on
the same batches: heat 40 epochs on 0-6 (SGD, lr 0.05, momentum 0.9, weight decay 1e-4, StepLR every 13 epochs by
0.1 -- the paper's 30-of-90 schedule scaled to 40 epochs), then fine-tune 10 epochs without masks at lr x 0.1. The
method heats with the PGDNM hook (the card's CPU policy: one conv + two MLP heads, G = 4 upsampled to 8x8, blur k = 3,
sigma = 1; policy AdamW at 0.01 x lr, cosine to 1e-4 x lr; the released objective mean(S) x CE); the baseline heats
with the same recipe and no masks. Unseen concept: the heated body (the snapshot at the end of heating) gets a new
3-way head (the same initial head on both sides) and is fine-tuned 10 epochs on 7-9 at lr x 0.1 (``unseen_acc``);
a linear probe of the heated body (head only, lr 0.05, 10 epochs) is reported without a rule
(``unseen_probe_acc``). Classifier: two 3x3 conv layers (16 and 32 channels, ReLU, 2x2 max-pool each) and a linear
head.

Rules (fixed before the first full run, from the card's "Expected direction: method >= baseline by ~0.5-2 points"
on "test accuracy on both tasks"): the seen-task test accuracy after fine-tuning and the unseen-concept test accuracy
after fine-tuning are each at least 0.5 point (the low end of the card's range) above the baseline's, as seed-paired
95% intervals over 5 seeds (the card: "effects this small need the 5-seed mean +- std").

Ablations (3 seeds each, same rules): ``no_classifier_scale`` trains the classifier on plain CE while the policy
still learns (separates the code's mean(S) scaling of the classifier's gradient -- an effective learning-rate change
-- from the masks); ``random_masks`` heats with masks whose cells are Beta(1, 1) = U(0, 1) draws through the same
upsample/blur pipeline (mean 0.5, the learned policy's starting density; see ``mask_mean_*``) and plain CE (separates
the learned policy from unlearned multiplicative noise). Reported without a rule: ``log_prob_last_epoch``, the mean
log-probability S of the last heating epoch's masks; at log(G*G) = 2.77 the policy draws near-uniform cells (what a
reward of -CE with no baseline pushes towards: it lowers the likelihood of every sampled mask).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset, load_digits
from priorkit.experiments._common import accuracy_on
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.regularizers.pgdnm import PGDNM, SPEC, mask_to_image, sample_mask
from priorkit.train import Batch, Hook, RunState, TrainConfig, Trainer

_P = SPEC.presets["small"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    seen: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
    unseen: tuple[int, ...] = (7, 8, 9)
    test: float = 0.3
    modality_b_sigma: float = 0.7  # blur of the inverted copies
    width: int = 16  # classifier channels (w, 2w)
    batch_size: int = 32
    heat_epochs: int = 40
    finetune_epochs: int = 10
    probe_epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    step_size: int = 13  # StepLR: the paper's 30 of 90 epochs, scaled to 40
    gamma: float = 0.1
    finetune_factor: float = 0.1  # fine-tuning lr = lr x this (the card)
    policy_lr_ratio: float = 0.01  # policy AdamW lr = lr x this, cosine to lr x 1e-4 (the code)
    grid: int = _P["grid"]
    kernel: int = _P["kernel"]
    sigma: float = _P["sigma"]
    policy_width: int = _P["width"]
    policy_hidden: int = _P["hidden"]
    classifier_scale: bool = _P["classifier_scale"]
    masks: str = "policy"  # "policy" (PGDNM) or "random" (ablation: U(0, 1) cells, plain CE)


FULL = Config()
QUICK = Config(heat_epochs=3, finetune_epochs=1, probe_epochs=1, step_size=2)


class _Net(nn.Module):
    """Two 3x3 conv layers (w, 2w channels; ReLU; 2x2 max-pool) and a linear head, for 8x8 images."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.feature_dim = 2 * width * 4
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _RandomMasks(Hook):
    """Ablation: masks with U(0, 1) cells (Beta(1, 1)) through PGDNM's upsample/blur, in the heating phase only."""

    claims = ("batch.x",)
    shares = ("batch.x",)

    def __init__(self, c: Config) -> None:
        self.c = c

    def transform_batch(self, state: RunState, batch: Batch) -> Batch:
        if state.phase.name != "heat":
            return batch
        ones = torch.ones(len(batch), self.c.grid * self.c.grid)
        cells = sample_mask(ones, ones, seed=state.config.seed * 1_000_003 + 7919 + state.step)
        img = mask_to_image(cells, tuple(batch.x.shape[-2:]), kernel=self.c.kernel, sigma=self.c.sigma)
        batch.x = batch.x * img
        state.log(pgdnm_mask_mean=float(cells.mean()))
        return batch


def _data(seed: int, c: Config) -> dict[str, Any]:
    """Both modalities of every image, split 70/30 by source image; seen and unseen classes relabelled 0.."""
    from scipy.ndimage import gaussian_filter

    sp = load_digits(image=True, val=0.0, test=c.test, seed=seed)
    out: dict[str, Any] = {}
    for part, ds in (("train", sp.train), ("test", sp.test)):
        b = torch.from_numpy(
            gaussian_filter((1.0 - ds.x).numpy(), sigma=(0, 0, c.modality_b_sigma, c.modality_b_sigma))
        )
        x, y = torch.cat([ds.x, b.float()]), torch.cat([ds.y, ds.y])
        mod = torch.cat([torch.zeros(len(ds.y)), torch.ones(len(ds.y))]).long()
        for task, classes in (("seen", c.seen), ("unseen", c.unseen)):
            keep = torch.isin(y, torch.tensor(classes))
            relabel = torch.full((10,), -1, dtype=torch.long)
            relabel[torch.tensor(classes)] = torch.arange(len(classes))
            out[f"{task}_{part}"] = IndexedTensorDataset(x[keep], relabel[y[keep]])
            out[f"{task}_{part}_modality"] = mod[keep]
    return out


def _cfg(seed: int, c: Config) -> TrainConfig:
    return TrainConfig(seed=seed, batch_size=c.batch_size, progress=False)


def _recipe(c: Config, heat_epochs: int, finetune_epochs: int, finetune_lr: float, trainable: Any = None) -> Any:
    return PGDNM.recipe(
        heat_epochs, finetune_epochs, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
        step_size=c.step_size, gamma=c.gamma, finetune_lr=finetune_lr, warmup_epochs=0,
        finetune_trainable=trainable,
    )  # fmt: skip


def _acc_by_modality(model: nn.Module, data: IndexedTensorDataset, mod: torch.Tensor) -> dict[str, float]:
    out = {}
    for k, name in ((0, "A"), (1, "B")):
        keep = mod == k
        out[name] = accuracy_on(model, IndexedTensorDataset(data.x[keep], data.y[keep]))
    return out


def _side(seed: int, c: Config, d: dict[str, Any], method: bool) -> dict[str, float]:
    """One side: heat + fine-tune on the seen task (one recipe), then the unseen-concept fine-tune and probe."""
    seed_everything(seed)
    net = _Net(c.width, len(c.seen))
    new_head = nn.Linear(net.feature_dim, len(c.unseen))  # the same initial unseen head on both sides
    hooks: list[Hook] = []
    hook = None
    if method and c.masks == "policy":
        hook = PGDNM(
            1, grid=c.grid, width=c.policy_width, hidden=c.policy_hidden, kernel=c.kernel, sigma=c.sigma,
            classifier_scale=c.classifier_scale, policy_lr=c.lr * c.policy_lr_ratio,
            policy_lr_min=c.lr * c.policy_lr_ratio * 1e-2,
        )  # fmt: skip
        hooks = [hook]
    elif method:
        hooks = [_RandomMasks(c)]
    heated: dict[str, Any] = {}

    def snapshot(state: RunState) -> dict[str, float]:
        heated.update(copy.deepcopy(state.model.state_dict()))
        return {"seen_acc_heat": accuracy_on(state.model, d["seen_test"])}

    recipe = _recipe(c, c.heat_epochs, c.finetune_epochs, c.lr * c.finetune_factor)
    recipe.phases[0].on_end = snapshot
    history = Trainer(net, d["seen_train"], recipe=recipe, hooks=hooks, config=_cfg(seed, c)).fit()
    r: dict[str, float] = {"seen_acc": accuracy_on(net, d["seen_test"])}
    r["seen_acc_heat"] = next(h["seen_acc_heat"] for h in history if "seen_acc_heat" in h)
    by_mod = _acc_by_modality(net, d["seen_test"], d["seen_test_modality"])
    r["seen_acc@A"], r["seen_acc@B"] = by_mod["A"], by_mod["B"]
    means = [h["pgdnm_mask_mean"] for h in history if "pgdnm_mask_mean" in h]
    if means:
        r["mask_mean_first_epoch"], r["mask_mean_last_epoch"] = means[0], means[-1]
    logp = [h["pgdnm_log_prob"] for h in history if "pgdnm_log_prob" in h]
    if logp:  # mean S of the last heating epoch; log(G*G) would be masks of uniform U(0, 1) cells
        r["log_prob_last_epoch"] = logp[-1]

    def unseen_model() -> nn.Module:
        body = _Net(c.width, len(c.seen))
        body.load_state_dict(heated)
        return nn.Sequential(body.body, copy.deepcopy(new_head))

    ft = unseen_model()  # fine-tune everything on the unseen concepts (no heating epochs: the body is heated)
    Trainer(ft, d["unseen_train"], recipe=_recipe(c, 0, c.finetune_epochs, c.lr * c.finetune_factor),
            config=_cfg(seed, c)).fit()  # fmt: skip
    r["unseen_acc"] = accuracy_on(ft, d["unseen_test"])
    probe = unseen_model()  # linear probe: the new head only
    Trainer(probe, d["unseen_train"], recipe=_recipe(c, 0, c.probe_epochs, c.lr, trainable=["1"]),
            config=_cfg(seed, c)).fit()  # fmt: skip
    r["unseen_probe_acc"] = accuracy_on(probe, d["unseen_test"])
    return r


def run(seed: int, c: Config) -> SeedResult:
    start = time.process_time()
    d = _data(seed, c)
    method = _side(seed, c, d, method=True)
    baseline = _side(seed, c, d, method=False)
    return {"method": method, "baseline": baseline, "extra": {"cpu_seconds": time.process_time() - start}}


EXPERIMENT = Experiment(
    id="pgdnm",
    claim="Heating a classifier with policy-gradient noise masks and then fine-tuning it without masks beats the same "
    "two-stage budget without masks by at least 0.5 point (the card: 0.5-2) in test accuracy on the heated label "
    "set and on an unseen-concept label set",
    setup="scikit-learn 8x8 digits in two modalities (original; inverted and blurred, sigma 0.7), every image in both, "
    "70/30 split by image; heat on digits 0-6, fine-tune on 0-6 and, from the heated body with a new head, on the "
    "unseen digits 7-9; a 2-conv CNN (16/32 channels); both sides share the recipe, initial weights, batches and "
    "budget, the baseline heats without masks",
    method_name="PGDNM heat + fine-tune",
    baseline_name="plain heat + fine-tune",
    checks=[Check("seen_acc", "higher", 0.005), Check("unseen_acc", "higher", 0.005)],
    diagnosis="Not reproduced, and the in-run metrics show why: the learned policy does not learn structure. Its "
    "mean log-density per image ends at log 16 (log_prob_last_epoch: the log-sum-exp over 16 cells of Beta(1, 1) "
    "densities) and its masks keep half the signal on average from the first to the last epoch "
    "(mask_mean_first_epoch, mask_mean_last_epoch): with reward -CE and no baseline, REINFORCE lowers the "
    "likelihood of every sampled mask and drives the Beta heads to uniform. What hurts is the released classifier "
    "loss mean(S) x CE, which scales the classifier's gradient by mean(S) during heating: without it "
    "(no_classifier_scale) PGDNM ties the baseline, and uniform random masks through the same pipeline "
    "(random_masks) tie it too. So on these two-modality digits neither learned nor random noise masks help; the "
    "gap is the gradient scale of the code's single-loss form.",
    ablations={"no_classifier_scale": {"classifier_scale": False}, "random_masks": {"masks": "random"}},
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    threads=1,
    notes="The card's CPU check at its stated budget (40 heating + 10 fine-tuning epochs, 5 seeds). The classifier's "
    "learning rate (0.05 instead of the paper's 0.1, for a CNN without BatchNorm) and the StepLR period (13 epochs: "
    "the paper's 30/90 scaled) were set before any run and are the same on both sides; the policy's rates follow "
    "the code's ratios to it. The fine-tuning warm-up of the README (7 of 10 epochs) is off, as in the card's check.",
)
