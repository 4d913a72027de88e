"""STN vs fixed hyperparameters (a dropout grid and the start value) on scikit-learn digits (card:
regularizers-theory.md, `stn`, "Small-scale check on CPU").

Data: load_digits, a stratified split per seed of about 1,000 train / 250 validation / 547 test images (64-d,
scaled to [0, 1]). Model: an MLP 64 -> 256 -> 256 -> 10. STN (:class:`priorkit.regularizers.stn.STN`): the hidden
layers are STN linear layers, tuning the two per-layer dropout rates and an additive Gaussian input-noise std, all
starting at 0.05, with the card's alternation (2 weight steps of SGD 0.01 / momentum 0.9 at batch 128 with
per-example perturbed hyperparameters, then 1 Adam 3e-3 hyper step on a validation batch of 128, scales tuned with
entropy weight 1e-3, 5 warm-up epochs), ``epochs`` epochs of weight steps (160 rather than the card's 200: the
CPU budget, see ``notes``). Baselines, the same epochs, batch, optimizer and data each, as plain MLPs (dropout after
both hidden layers -- STN's per-example dropout function at one fixed rate -- and input noise std fixed at the
start value 0.05): the card's grid of dropout rates {0, 0.1, ..., 0.8}, the grid's best chosen by validation CE (the
quantity STN descends; the test set is never used to select), and the start value 0.05 alone. Every network is
evaluated at the end of training (no early stopping on any side). Both sides train through the engine.

Rules (fixed before the first full run), from the card's "Expected: STN ~ best grid value (within ~1 point) from a
single run and clearly better than the 0.05 start; the learned dropout rises during training":

- ``test_acc``: STN's test accuracy minus the validation-selected grid point's, 95% interval lower bound >= -0.01
  (the card's "within ~1 point").
- ``test_ce_vs_start`` and ``test_acc_vs_start``: STN's test CE below / test accuracy above the fixed start value's,
  the whole 95% interval beyond 0 ("clearly better than the 0.05 start", on both of the card's metrics).
- ``dropout_rise``: the final dropout rate (mean of the two layers) minus the start 0.05, 95% interval above 0
  ("the learned dropout rises").

Reported without a rule: test CE against the grid's choice, the grid's oracle (best test accuracy over the grid),
the final values of all three hyperparameters and their trajectory (``extra``).

Ablations (diagnosis if it does not reproduce): ``frozen`` (hyper_lr = scale_lr = 0: the same STN network and
perturbations with the hyperparameters held at the start -- separates the tuning from the architecture / the
perturbation noise) and ``hyper_lr_x3`` (Adam 1e-2 on the hyperparameters: is the 160-epoch budget too short for the
rates to reach the grid's region?).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch import nn

from priorkit.core.seeding import seed_everything
from priorkit.data import load_digits
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics import classification_metrics
from priorkit.regularizers.stn import SPEC, STN, Hyper, HyperSpace, StnMLP, per_example_dropout
from priorkit.train import Augment, Recipe, TrainConfig, Trainer, predict

_P = SPEC.presets["small"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    val: float = 250 / 1797
    test: float = 547 / 1797
    hidden: tuple[int, ...] = (256, 256)
    epochs: int = 160  # the card: 200 (cut for the 5 CPU-minute budget of 5 seeds x 11 networks)
    batch_size: int = 128
    lr: float = 0.01  # SGD on the weights (both sides)
    momentum: float = 0.9
    start: float = 0.05  # start value of the two dropout rates and the input-noise std; the baselines' noise std
    grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    train_steps: int = _P["train_steps"]
    val_steps: int = _P["val_steps"]
    warmup_epochs: int = _P["warmup_epochs"]
    hyper_lr: float = _P["hyper_lr"]
    scale_lr: float = _P["scale_lr"]
    perturb_scale: float = _P["perturb_scale"]
    tune_scales: bool = _P["tune_scales"]
    entropy_weight: float = _P["entropy_weight"]
    val_batch_size: int = _P["val_batch_size"]


FULL = Config()
QUICK = Config(epochs=8, warmup_epochs=1, grid=(0.0, 0.4))


def _data(seed: int, c: Config):  # noqa: ANN202
    return load_digits(val=c.val, test=c.test, seed=seed)


def _metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return classification_metrics(predict(model, x), y)


class _Dropout(nn.Module):
    """Fixed-rate dropout through STN's own per-example dropout (the same masks' law on both sides)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return per_example_dropout(x, torch.full((x.shape[0],), self.p, dtype=x.dtype))


def _plain(c: Config, p: float, n_in: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = n_in
    for w in c.hidden:
        layers += [nn.Linear(d, w), nn.ReLU(), _Dropout(p)]
        d = w
    return nn.Sequential(*layers, nn.Linear(d, n_out))


def _fixed(seed: int, c: Config, p: float) -> dict[str, float]:
    """A plain MLP with dropout ``p`` on both hidden layers and input noise std ``c.start``, trained by the engine."""
    data = _data(seed, c)
    seed_everything(seed)
    model = _plain(c, p, data.train.x.shape[1], data.num_classes)
    std = c.start
    noise = Augment(lambda x: x + std * torch.randn_like(x), name="input_noise")
    cfg = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum, seed=seed,
                      progress=False)  # fmt: skip
    Trainer(model, data.train, hooks=[noise], config=cfg).fit()
    test, val = _metrics(model, data.test.x, data.test.y), _metrics(model, data.val.x, data.val.y)
    return {"test_acc": test["acc"], "test_ce": test["nll"], "val_ce": val["nll"], "val_acc": val["acc"]}


_BASE_FIELDS = ("val", "test", "hidden", "epochs", "batch_size", "lr", "momentum", "start", "grid")


@functools.lru_cache(maxsize=64)
def _baselines(seed: int, key: tuple) -> dict[str, object]:
    """The grid and the start value for one seed (cached: the ablations change only STN's side)."""
    c = Config(**dict(zip(_BASE_FIELDS, key)))
    start = time.process_time()
    grid = {p: _fixed(seed, c, p) for p in c.grid}
    return {"grid": grid, "start": _fixed(seed, c, c.start), "cpu_seconds": time.process_time() - start}


def _stn(seed: int, c: Config) -> tuple[dict[str, float], STN, list[dict]]:
    data = _data(seed, c)
    space = HyperSpace([Hyper("dropout1", "dropout", c.start), Hyper("dropout2", "dropout", c.start),
                        Hyper("input_noise", "input_noise", c.start)])  # fmt: skip
    seed_everything(seed)
    model = StnMLP(space, data.train.x.shape[1], c.hidden, data.num_classes, dropout=("dropout1", "dropout2"))
    hook = STN(space, data.val.x, data.val.y, train_steps=c.train_steps, val_steps=c.val_steps,
               warmup_epochs=c.warmup_epochs, hyper_lr=c.hyper_lr, scale_lr=c.scale_lr,
               perturb_scale=c.perturb_scale, tune_scales=c.tune_scales, entropy_weight=c.entropy_weight,
               val_batch_size=c.val_batch_size, seed=seed)  # fmt: skip
    recipe = Recipe([hook.phase(c.epochs, lr=c.lr, momentum=c.momentum)])
    cfg = TrainConfig(batch_size=c.batch_size, seed=seed, progress=False)
    history = Trainer(model, data.train, recipe=recipe, hooks=[hook], config=cfg).fit()
    test, val = _metrics(model, data.test.x, data.test.y), _metrics(model, data.val.x, data.val.y)
    out = {"test_acc": test["acc"], "test_ce": test["nll"], "val_ce": val["nll"], "val_acc": val["acc"]}
    return out, hook, history


def run(seed: int, c: Config) -> SeedResult:
    start = time.process_time()
    base = _baselines(seed, tuple(getattr(c, f) for f in _BASE_FIELDS))
    t0 = time.process_time()
    stn, hook, history = _stn(seed, c)
    stn_seconds = time.process_time() - t0
    grid, fixed = base["grid"], base["start"]
    chosen = min(grid, key=lambda p: grid[p]["val_ce"])
    oracle = max(grid, key=lambda p: grid[p]["test_acc"])
    v = hook.values()
    rise = (v["dropout1"] + v["dropout2"]) / 2 - c.start
    method = {
        "test_acc": stn["test_acc"],
        "test_ce": stn["test_ce"],
        "test_acc_vs_start": stn["test_acc"],
        "test_ce_vs_start": stn["test_ce"],
        "dropout_rise": rise,
        "val_ce": stn["val_ce"],
        "dropout1_final": v["dropout1"],
        "dropout2_final": v["dropout2"],
        "input_noise_final": v["input_noise"],
        "hyper_steps": float(hook.hyper_steps),
    }
    baseline = {
        "test_acc": grid[chosen]["test_acc"],
        "test_ce": grid[chosen]["test_ce"],
        "test_acc_vs_start": fixed["test_acc"],
        "test_ce_vs_start": fixed["test_ce"],
        "val_ce": grid[chosen]["val_ce"],
        "grid_choice": chosen,
        "grid_oracle_test_acc": grid[oracle]["test_acc"],
    }
    keys = ("stn_dropout1", "stn_dropout2", "stn_input_noise")
    trajectory = {k: [round(h[k], 4) for h in history if k in h] for k in keys}
    return {"method": method, "baseline": baseline,
            "extra": {"trajectory_per_epoch": trajectory, "grid": {str(p): r for p, r in grid.items()},
                      "stn_cpu_seconds": stn_seconds, "baseline_cpu_seconds": base["cpu_seconds"],
                      "cpu_seconds": time.process_time() - start}}  # fmt: skip


EXPERIMENT = Experiment(
    id="stn",
    claim="One STN run tuning two dropout rates and an input-noise scale from 0.05 reaches the test accuracy of the "
    "best fixed dropout of a 9-point grid (within 1 point), beats the fixed start value 0.05 on test CE and "
    "accuracy, and raises its dropout rates during training (a schedule)",
    setup="scikit-learn digits (~1,000 train / 250 validation / 547 test, split per seed); MLP 64-256-256-10 whose "
    "hidden layers are STN layers (method) or plain linear layers with fixed dropout and input noise (baselines); "
    "SGD 0.01 momentum 0.9, batch 128, the same epochs for every network; the grid's point chosen by validation CE",
    method_name="STN (dropout x2 + input noise tuned online)",
    baseline_name="fixed dropout: grid's val-CE choice / start value 0.05",
    checks=[
        Check("test_acc", "higher", -0.01),
        Check("test_ce_vs_start", "lower", 0.0),
        Check("test_acc_vs_start", "higher", 0.0),
        Check("dropout_rise", "higher", 0.0, against="value"),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    threads=1,
    diagnosis="Three of four rules hold: STN's test accuracy is above the validation-chosen grid point's and its test "
    "loss and accuracy clearly beat the fixed start value. The fourth does not: the learned dropout rates end near "
    "their start (dropout1_final, dropout2_final, dropout_rise), so the gain is not tuned dropout. The frozen "
    "ablation (hyperparameter learning rates 0: the STN layers and the perturbation only) already beats the grid "
    "point, so most of the gain comes from the best-response architecture and the perturbed training; a 3x "
    "hyperparameter learning rate (hyper_lr_x3) moves the rates more but not consistently upward over 3 seeds.",
    ablations={"frozen": {"hyper_lr": 0.0, "scale_lr": 0.0}, "hyper_lr_x3": {"hyper_lr": 1e-2}},
    notes="Deviations from the card: 160 epochs instead of 200 for every network (one seed is 11 trainings: 9 grid "
    "points, the start value and STN; at 200 epochs one seed measured 60 CPU-seconds on one thread, the whole "
    "5-seed budget with no margin), no early stopping on either side (every network is measured after the same "
    "epochs), the input-noise hyperparameter is an additive Gaussian std in (0, 1) (the card names an "
    "'input-noise scale'; the official code's 'inscale' is a multiplicative jitter), the baselines keep the "
    "input noise at the start value 0.05 (the card's grid is over dropout only), and the split is stratified "
    "(1,002 / 249 / 546 rather than exactly 1,000 / 250 / 547).",
)
