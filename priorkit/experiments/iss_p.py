"""ISS-P vs IHT and one-shot pruning on a tiny EDSR (card: sparsity-training.md, iss_p, "Small-scale check").

Data: x2 super-resolution on patches of the photographs bundled with scikit-image and scikit-learn
(:func:`priorkit.data.sr_patches.sr_patches`: HR ``hr_size``^2 patches, LR by antialiased bicubic downscale; the
test patches come from a held-out image, ``coffee``). Model: a tiny EDSR, head conv 3->C, ``blocks`` residual blocks
of two 3x3 convs, a global skip, a pixel-shuffle x2 tail; head and tail are left dense (the code's ``*tail*``
exclusion, the card's "exclude the head and tail"). Adam lr 2e-4 (constant), batch 16, L1 loss, ``steps`` optimizer
steps in total with ``K_p = prune_steps`` for every arm, the same initial weights and batches, all through the engine:
(a) ISS-P, alpha 0.95; (b) IHT, alpha 0 (the same schedule); (c) dense training for ``K_p`` steps, one-shot magnitude
pruning (per layer, the same count), fine-tuning for the rest. Metric: RGB PSNR on the test patches; the bicubic
PSNR and (c)'s dense PSNR at ``K_p`` are reported for reference.

Rules (fixed before the first run, from the card's "Expected: ISS-P >= IHT, with the gap largest at 0.95 (about
0.1-0.3 dB), and ISS-P >= (c)"), at p = 0.95: ISS-P's PSNR at least 0.1 dB above IHT's (the low end of the card's
gap); ISS-P's PSNR at least (c)'s (margin 0). The card's p = 0.9 run is the ablation ``p_0.9``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.data.sr_patches import sr_patches
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.restoration import psnr
from priorkit.sparsity.iss_p import ISSP, SPEC, n_prune
from priorkit.sparsity.masks import MaskSet
from priorkit.train import Phase, Recipe, RunState, TrainConfig, Trainer
from priorkit.train.hooks import Hook

_P = SPEC.presets["small"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    prune_ratio: float = _P["prune_ratio"]
    alpha: float = _P["alpha"]
    channels: int = 16  # the card's 32, halved for the CPU budget
    blocks: int = 4
    hr_size: int = 24  # the card's 32
    n_train: int = 2000  # the card's ~4,000
    n_test: int = 300
    steps: int = 800  # the card's 3,000 ...
    prune_steps: int = 540  # ... and K_p = 2,000, scaled by the same factor
    batch_size: int = 16
    lr: float = 2e-4


FULL = Config()
QUICK = Config(n_train=256, n_test=64, steps=24, prune_steps=16)


class TinyEDSR(nn.Module):
    """EDSR at CPU size: head conv, residual blocks (conv-ReLU-conv + skip), global skip, pixel-shuffle tail."""

    def __init__(self, channels: int = 16, blocks: int = 4, scale: int = 2) -> None:
        super().__init__()
        c = channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))
            for _ in range(blocks)
        )
        self.tail = nn.Sequential(nn.Conv2d(c, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        r = h
        for block in self.body:
            r = r + block(r)
        return self.tail(r + h)


class _OneShotAt(Hook):
    """Baseline (c): dense until ``step``, then per-layer magnitude masks with ISS-P's count, kept to the end."""

    claims = ("weight_parametrization",)

    def __init__(self, model: nn.Module, p: float, step: int) -> None:
        self.masks = MaskSet(model, owner="one_shot", include=lambda n, _m: not n.startswith(("head", "tail")))
        self.p, self.step = p, step
        self.dense_psnr: float | None = None

    def on_fit_start(self, state: RunState) -> None:
        self.masks.attach()

    def on_step_end(self, state: RunState, batch: Any) -> None:
        if state.step + 1 == self.step:
            # the exact count ISS-P uses: a per-layer sparsity giving n_prune zeros
            budgets = {n: n_prune(w.numel(), self.p) / w.numel() for n, w in self.masks.weights().items()}
            self.masks.update(budgets)
            self.masks.zero_pruned_()


def _fit(model: nn.Module, data: Any, c: Config, seed: int, hooks: list) -> None:
    def loss(state: RunState, batch: Any) -> dict[str, torch.Tensor]:
        return {"l1": F.l1_loss(batch.output, batch.y)}

    epochs = -(-c.steps * c.batch_size // len(data.train))
    plan_steps = c.steps

    def batches(state: RunState) -> list[list[int]]:  # exactly `steps` batches in total, seeded, epoch by epoch
        g = torch.Generator().manual_seed(seed * 1000 + state.epoch)
        order = torch.randperm(len(data.train), generator=g).tolist()
        per = len(data.train) // c.batch_size
        left = plan_steps - state.epoch * per
        return [order[i * c.batch_size : (i + 1) * c.batch_size] for i in range(min(per, left))]

    phase = Phase("fit", epochs=epochs, loss=loss, batches=batches,
                  optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=c.lr))  # fmt: skip
    cfg = TrainConfig(epochs=epochs, batch_size=c.batch_size, seed=seed, progress=False)
    Trainer(model, data.train, recipe=Recipe([phase], loss_fn=None), hooks=hooks, config=cfg).fit()


@torch.no_grad()
def _psnr(model: nn.Module, test: Any) -> float:
    model.eval()
    x, y = test.tensors
    return psnr(torch.cat([model(x[s : s + 128]) for s in range(0, len(x), 128)]), y)


def _arm(c: Config, data: Any, seed: int, make_hooks: Any) -> tuple[float, list]:
    torch.manual_seed(seed)
    model = TinyEDSR(c.channels, c.blocks)
    hooks = make_hooks(model)
    _fit(model, data, c, seed, hooks)
    return _psnr(model, data.test), hooks


def run(seed: int, c: Config) -> SeedResult:
    data = sr_patches(hr_size=c.hr_size, n_train=c.n_train, n_test=c.n_test, seed=seed)
    excl = ("head*", "tail*")

    def issp(alpha: float):
        return lambda m: [ISSP(m, prune_ratio=c.prune_ratio, alpha=alpha, prune_steps=c.prune_steps, exclude=excl)]

    psnr_issp, hooks = _arm(c, data, seed, issp(c.alpha))
    sparsity = hooks[0].masks.sparsity()
    psnr_iht, _ = _arm(c, data, seed, issp(0.0))
    psnr_c, _ = _arm(c, data, seed, lambda m: [_OneShotAt(m, c.prune_ratio, c.prune_steps)])
    x, y = data.test.tensors
    bicubic = psnr(F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1), y)
    return {
        "method": {"psnr_vs_iht": psnr_issp, "psnr_vs_oneshot": psnr_issp, "sparsity": sparsity},
        "baseline": {"psnr_vs_iht": psnr_iht, "psnr_vs_oneshot": psnr_c},
        "extra": {"bicubic_psnr": bicubic},
    }


EXPERIMENT = Experiment(
    id="iss_p",
    claim="At 95% sparsity from scratch, iterative soft shrinkage beats IHT by about 0.1-0.3 dB and is at least as "
    "good as dense training + one-shot magnitude pruning + fine-tuning",
    setup="x2 SR on patches of bundled photographs (test: a held-out image), tiny EDSR (head/tail dense), Adam "
    "2e-4, batch 16, L1; every arm the same steps, K_p, initial weights and batches",
    method_name="ISS-P (alpha 0.95)",
    baseline_name="IHT (alpha 0) / dense + one-shot magnitude at K_p + fine-tune",
    checks=[Check("psnr_vs_iht", "higher", 0.1), Check("psnr_vs_oneshot", "higher", 0.0)],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    diagnosis="Not reproduced at this scale: soft shrinkage trails IHT slightly at p = 0.95 and ties dense + "
    "one-shot pruning (psnr_vs_iht, psnr_vs_oneshot); the card's second ratio (p_0.9) looks the same, and a doubled "
    "budget (steps_1600) widens the gap to IHT rather than closing it. With alpha = 0.95 a shrunk weight keeps "
    "0.95^j of its value after j selections, so for a few hundred iterations the network trains with a mass of "
    "small, not-yet-zero weights that the hard mask then removes at once; the paper's K_p is about 100k iterations, "
    "hundreds of times the K_p here, and its claim is that this regrowth pays off over a long search. Measured here: "
    "at a few hundred to a thousand iterations it does not.",
    ablations={
        # the card's second sparsity, where it expects the smaller gap
        "p_0.9": {"prune_ratio": 0.9},
        # a longer budget (if K_p is what the small run lacks)
        "steps_1600": {"steps": 1600, "prune_steps": 1080},
    },
)
