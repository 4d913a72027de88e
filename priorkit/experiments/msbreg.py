"""MSBReg vs BYOL without BatchNorm on digits, judged by a linear probe on frozen features (card:
regularizers-theory.md, "Small-scale check on CPU").

Data: scikit-learn's 8x8 digits (the seed's stratified train / test split; labels are used only by the probe).
Views: random shift of +-1 px, intensity scale U(0.8, 1.2), a random 2x2 erasing and Gaussian noise sigma 0.1,
drawn per view from the run's ``(seed, step)`` generator. Networks: encoder MLP 64 -> 256 -> 128 with LayerNorm
(no BatchNorm anywhere, to remove BatchNorm's implicit dispersion), projector and predictor MLPs to 64 (hidden
128, LayerNorm); Adam, batch 256; every arm starts from the same weights and trains through the engine.

Arms: the baseline is BYOL's loss alone on 2 views (EMA target, cosine tau 0.99 -> 1, predictor); the method is
full MSBReg (4 views, multiview centroid + lambda_B Brownian + lambda_SV singular-value terms, the same EMA);
``@byol+disp`` in the method column is BYOL's loss on 2 views plus the two dispersive terms (the card's middle
arm, outside the verdict). Evaluation on the test split: a linear probe trained through the engine on the
frozen, standardised encoder features (the same probe budget for every arm, and for the raw pixels as the
reference ``raw_probe_acc``), and the collapse detectors of :mod:`priorkit.metrics.ssl` on the L2-normalised
projector outputs (``eff_rank``, ``emb_std_scaled``, ...) and on the encoder features (``enc_*``).

Rules (fixed before the first full run, from the card's "Expected: BYOL-with-LayerNorm collapses (effective rank
near 1, probe far below the raw-pixel logistic regression ~95%); with the dispersion terms rank stays high and
probe accuracy ~90%+"): the probe accuracy of MSBReg is at least 5 points above BYOL's (seed-paired), at least
0.88 in absolute terms (the card's "~90%+" with 2 points for the "~"), and the effective rank of MSBReg's
embeddings is at least 3 above BYOL's.

What was learnt while building it (one full-budget seed and the quick tier; the bench's numbers decide): BYOL
with LayerNorm does collapse in the card's sense (the uncentred effective rank of its normalised projections is
about 1 and their per-dimension std about 0, and its training loss goes to about 0), while MSBReg's stay spread.
But the collapse leaves a residual spread of tiny scale whose centred rank stays high, and the standardising
probe (chosen before the first run) reads it back almost as well as MSBReg's features, so the probe gap the card
expects shows only on the unscaled features (``probe_acc_unscaled``, a diagnostic added after the first quick
run, outside the verdict).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from priorkit.core.errors import PriorkitError, check_positive_int, check_range
from priorkit.core.seeding import seed_everything
from priorkit.data import load_digits
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.ood import shift_noise_views
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics import accuracy
from priorkit.metrics.ssl import collapse_metrics
from priorkit.regularizers.msbreg import MSBReg, MSBRegNet
from priorkit.train import TrainConfig, Trainer, predict

__all__ = ["EXPERIMENT", "Config", "digit_views", "linear_probe"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3  # Adam
    enc_hidden: int = 256
    feat_dim: int = 128
    proj_dim: int = 64
    head_hidden: int = 128
    n_views: int = 4  # MSBReg
    baseline_views: int = 2  # BYOL (and the middle arm)
    lambda_b: float = 0.1
    lambda_sv: float = 1.0
    tau_base: float = 0.99
    max_shift: int = 1
    sigma: float = 0.1
    erase: int = 2
    scale: tuple[float, float] = (0.8, 1.2)
    probe_epochs: int = 100
    probe_lr: float = 1e-2  # Adam, on standardised features
    probe_batch: int = 256
    middle_arm: bool = True  # BYOL + the dispersive terms (reported, outside the verdict)


FULL = Config()
QUICK = Config(epochs=12, probe_epochs=30)


# ------------------------------------------------------------------------------------------------ views
def digit_views(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    max_shift: int = 1,
    sigma: float = 0.1,
    erase: int = 2,
    scale: tuple[float, float] = (0.8, 1.2),
) -> torch.Tensor:
    """One augmented view of flat 8x8 digits ``x`` ``[N, 64]``: intensity scale ``U(scale)``, shift of up to
    ``max_shift`` px per axis (zero-filled), an ``erase x erase`` patch set to 0 at a random place, then Gaussian
    noise of std ``sigma``; every draw from ``generator``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != 64:
        raise PriorkitError(f"x must be flat 8x8 digits [N, 64], got {list(getattr(x, 'shape', [])) or type(x)}")
    check_positive_int("erase", erase, 0)
    if erase > 8:
        raise PriorkitError(f"erase must be in [0, 8] (patch side in px), got {erase}")
    lo, hi = scale
    check_range("scale[0]", lo, 0.0)
    check_range("scale[1]", hi, lo)
    n = len(x)
    s = lo + (hi - lo) * torch.rand(n, 1, generator=generator)
    out = shift_noise_views(x * s, generator, max_shift=max_shift, sigma=0.0, image_shape=(8, 8))
    if erase > 0:
        top = torch.randint(0, 8 - erase + 1, (n, 1, 1), generator=generator)
        left = torch.randint(0, 8 - erase + 1, (n, 1, 1), generator=generator)
        rows, cols = torch.arange(8).view(1, 8, 1), torch.arange(8).view(1, 1, 8)
        hole = (rows >= top) & (rows < top + erase) & (cols >= left) & (cols < left + erase)
        out = out * (~hole).reshape(n, 64)
    if sigma > 0:
        out = out + sigma * torch.randn(out.shape, generator=generator)
    return out


# ------------------------------------------------------------------------------------------------ probe
def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
    standardize: bool = True,
) -> float:
    """Test accuracy of a linear classifier trained through the engine (Adam, cross-entropy) on frozen features.

    With ``standardize`` (default) the features are z-scored per dimension with the training set's mean and std (a
    dimension with zero spread is only centred), so one learning rate fits every feature scale and the budget is
    the same for every representation probed; ``standardize=False`` probes the features as they are (a nearly
    collapsed representation then keeps its tiny scale, as in solo-learn's online probe).
    """
    for name, t in (("train_x", train_x), ("test_x", test_x)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise PriorkitError(f"{name} must be a floating-point [N, d] feature matrix, got {getattr(t, 'shape', t)}")
    if test_x.shape[1] != train_x.shape[1]:
        raise PriorkitError(f"test_x must have {train_x.shape[1]} features, got {test_x.shape[1]}")
    mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    if not standardize:
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    num_classes = int(train_y.max()) + 1
    seed_everything(seed)
    probe = nn.Linear(train_x.shape[1], num_classes)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adam", lr=lr, seed=seed, progress=False)
    Trainer(probe, IndexedTensorDataset((train_x - mean) / std, train_y), config=cfg).fit()
    return accuracy(predict(probe, (test_x - mean) / std), test_y)


# ------------------------------------------------------------------------------------------------- runs
def _encoder(c: Config) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, c.enc_hidden), nn.LayerNorm(c.enc_hidden), nn.ReLU(),
        nn.Linear(c.enc_hidden, c.feat_dim), nn.LayerNorm(c.feat_dim), nn.ReLU(),
    )  # fmt: skip


def _views(c: Config) -> Any:
    def views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return digit_views(x, g, max_shift=c.max_shift, sigma=c.sigma, erase=c.erase, scale=c.scale)

    return views


@torch.no_grad()
def _features(net: MSBRegNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    was = net.training
    net.eval()
    out = net.embed(x), net.project(x)
    net.train(was)
    return out


def _probe(c: Config, seed: int, *xy: torch.Tensor, standardize: bool = True) -> float:
    """:func:`linear_probe` with the run's probe budget."""
    return linear_probe(*xy, epochs=c.probe_epochs, lr=c.probe_lr, batch_size=c.probe_batch, seed=seed,
                        standardize=standardize)  # fmt: skip


def _arm(seed: int, c: Config, data: Any, hook: MSBReg) -> tuple[dict[str, float], list[dict[str, Any]]]:
    seed_everything(seed)
    net = MSBRegNet(_encoder(c), c.feat_dim, c.proj_dim, c.head_hidden)
    cfg = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, optimizer="adam", lr=c.lr, seed=seed, progress=False)
    start = time.process_time()
    history = Trainer(net, data.train, recipe=hook.recipe(c.epochs), hooks=[hook], config=cfg).fit()
    seconds = time.process_time() - start
    f_train, _ = _features(net, data.train.x)
    f_test, z_test = _features(net, data.test.x)
    out = {
        "probe_acc": _probe(c, seed, f_train, data.train.y, f_test, data.test.y),
        # diagnostic (added after the first quick run, outside the verdict): the same probe on unscaled features
        "probe_acc_unscaled": _probe(c, seed, f_train, data.train.y, f_test, data.test.y, standardize=False),
        **collapse_metrics(torch.nn.functional.normalize(z_test, dim=1)),
        **collapse_metrics(f_test, "enc_"),
        "train_loss_last": float(history[-1]["loss"]),
        "cpu_seconds": seconds,
    }
    return out, history


def run(seed: int, c: Config) -> SeedResult:
    data = load_digits(seed=seed)
    views = _views(c)
    common = {"tau_base": c.tau_base, "tau_schedule": "cosine", "augment": views}
    byol = MSBReg(n_views=c.baseline_views, attraction="byol", lambda_b=0.0, lambda_sv=0.0, **common)
    base, base_hist = _arm(seed, c, data, byol)
    msb = MSBReg(n_views=c.n_views, attraction="centroid", lambda_b=c.lambda_b, lambda_sv=c.lambda_sv, **common)
    meth, meth_hist = _arm(seed, c, data, msb)
    base["raw_probe_acc"] = _probe(c, seed, data.train.x, data.train.y, data.test.x, data.test.y)
    if c.middle_arm:
        mid_hook = MSBReg(n_views=c.baseline_views, attraction="byol", lambda_b=c.lambda_b, lambda_sv=c.lambda_sv,
                          **common)  # fmt: skip
        mid, _ = _arm(seed, c, data, mid_hook)
        meth.update({f"{k}@byol+disp": v for k, v in mid.items()})
    curves = {
        side: [h.get("eff_rank") for h in hist] for side, hist in (("baseline", base_hist), ("method", meth_hist))
    }
    return {"method": meth, "baseline": base, "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    arms = [("BYOL", "baseline", ""), ("BYOL+disp", "method", "@byol+disp"), ("MSBReg", "method", "")]
    arms = [a for a in arms if all(f"probe_acc{a[2]}" in r[a[1]] for r in results)]
    for ax, key in zip(axes[:2], ("probe_acc", "eff_rank")):
        ax.boxplot([[r[side][f"{key}{suf}"] for r in results] for _, side, suf in arms],
                   tick_labels=[a[0] for a in arms])  # fmt: skip
        ax.set_title(f"test {key}")
    raw = [r["baseline"]["raw_probe_acc"] for r in results]
    axes[0].axhline(sum(raw) / len(raw), color="0.5", ls="--", lw=1, label="raw pixels")
    axes[0].legend(fontsize=8)
    ax = axes[2]
    for side, label in (("baseline", "BYOL"), ("method", "MSBReg")):
        curve = torch.tensor([r["curves"][side] for r in results], dtype=torch.float64).mean(0)
        ax.plot(curve, label=label)
    ax.set_xlabel("epoch")
    ax.set_title("effective rank of predictions (train)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = outdir / "msbreg_metrics.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="msbreg",
    claim="Without BatchNorm, MSBReg's explicit forces keep the embeddings dispersed where BYOL collapses: "
    "linear-probe accuracy at least 5 points above BYOL's and at least 0.88 (the card: ~90%+), effective rank at "
    "least 3 above BYOL's, same data, views, networks and budget",
    setup="scikit-learn digits 8x8; LayerNorm MLP encoder 64-256-128, projector / predictor to 64; views: shift, "
    "intensity scale, 2x2 erasing, noise; BYOL (2 views) vs MSBReg (4 views), both with the cosine EMA target; linear "
    "probe through the engine on the frozen standardised encoder features",
    method_name="MSBReg",
    baseline_name="BYOL (LayerNorm, 2 views)",
    checks=[
        Check("probe_acc", "higher", 0.05),
        Check("probe_acc", "higher", 0.88, against="value"),
        Check("eff_rank", "higher", 3.0),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="The linear probe z-scores the frozen encoder features (fixed before the first run); probe_acc_unscaled "
    "is the same probe on the features as they are (diagnostic, outside the verdict). Collapse detectors: eff_rank "
    "(uncentred effective rank of the normalised projections; 1 = complete collapse), eff_rank_centered, emb_std and "
    "emb_std_scaled (per-dimension std of the normalised projections, times sqrt(d): ~1 spread, 0 collapsed), and the "
    "same on the encoder features (enc_*). The middle arm (BYOL's loss + the two dispersive terms, 2 views) is "
    "reported as *@byol+disp in the method column, the raw-pixel probe as raw_probe_acc in the baseline column.",
    diagnosis="If the probe-gap rule fails while the rank rule holds: BYOL's embeddings collapse (eff_rank and "
    "emb_std_scaled of the baseline near their collapsed values 1 and 0) to a residual spread of small scale whose "
    "centred rank (enc_eff_rank_centered) stays high, and the z-scoring probe is blind to that scale; compare "
    "probe_acc_unscaled, where the collapsed features keep their scale.",
    threads=1,
)
