"""T-JEPA embeddings vs raw features with 300 labels (card: regularizers-theory.md, "Small-scale check on CPU").

Two tables, each pretrained on all its rows without labels (the card's small model: h=32, 3 encoder layers,
predictor 2 layers of width 16, M=4 target sets, the paper's mask shares, learning rate and EMA range), then the
same MLP (and a linear probe) trained through the engine on 300 labelled rows, once on the flattened target-encoder
embeddings and once on the standardized raw features:

- a generated table (n rows, D=16: 12 columns are nonlinear maps of 4 latent factors plus noise, 4 are pure
  noise; a binary label from a nonlinear function of the latents; the generating maps are fixed, the rows, noise
  and the labelled rows are drawn from the seed); test on every row that is not labelled;
- scikit-learn's bundled ``load_breast_cancer`` (569 rows, 30 numeric features); 300 labelled rows, the other 269
  for test.

On the generated table T-JEPA is also pretrained with ``R = 0`` regularization tokens (the card's ablation), and
the collapse metrics (:func:`priorkit.regularizers.tjepa.collapse_stats`) of both runs are reported. The
embeddings of the ``R = 1`` run before pretraining (``acc_init``: the randomly initialised encoder, a control for
what the embedding alone gives) and halfway through it (``acc_half``) get the same MLP: an in-run budget curve.

Rules (fixed before the first run, from the card's "Expected: embeddings >= raw by a few points in the 300-label
regime; R = 0 shows lower embedding variance (collapse tendency) than R = 1"):

- generated table: the MLP on embeddings beats the MLP on raw features by at least 2 points of test accuracy (the
  low end of "a few points"), decided on the 95% interval of seed-paired differences;
- breast cancer: the MLP on raw features is already near the ceiling (about 95-97% accuracy), so "a few points" is
  not measurable there; the rule is that the embeddings are not worse by more than 1 point;
- collapse: the per-dimension std of the pooled embeddings with ``R = 1`` exceeds that with ``R = 0``
  (``emb_std_gain = emb_std(R=1) - emb_std(R=0) > 0`` on the seed interval).

Budget: the card's 100 epochs at batch 256 (2,400 steps on 6,000 rows) cost about 5 CPU-minutes per pretraining
on this machine; a full seed here must stay near one CPU-minute for three pretrainings, so the pretraining runs
``epochs`` epochs at batch ``batch_size`` (more, smaller steps for the same cost) with the warm-up shortened to one
epoch, and the ``small`` preset turns the paper's dropout (about 0.002) off (every other setting is the card's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.experiments._common import train_and_test
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.regularizers.tjepa import SPEC, TJEPAHook, collapse_stats
from priorkit.train import TrainConfig, fit, predict


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    rows: int = 6000  # generated table
    labelled: int = 300
    epochs: int = 6  # T-JEPA pretraining epochs on the generated table (the card: 100)
    batch_size: int = 128
    warmup_epochs: int = 1
    bc_epochs: int = 12  # pretraining epochs on breast cancer (569 rows)
    bc_batch_size: int = 64
    num_reg: int = 1
    index_quirk: bool = False
    # downstream (the same for embeddings and raw features)
    hidden: tuple[int, ...] = (64, 64)
    down_epochs: int = 100
    down_batch_size: int = 64
    down_lr: float = 1e-3
    down_weight_decay: float = 1e-4


FULL = Config()
QUICK = Config(rows=2000, epochs=2, bc_epochs=3, down_epochs=40)

#: the generating structure of the table is fixed (one task); rows and noise come from the run's seed
_TABLE_SEED = 1234


def make_table(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The card's generated table: ``x`` ``[n, 16]`` (12 nonlinear maps of 4 latent factors + noise, then 4
    pure-noise columns) and a binary label from a nonlinear function of the latents."""
    gs = torch.Generator().manual_seed(_TABLE_SEED)
    w = torch.randn(12, 4, generator=gs) * (torch.rand(12, 4, generator=gs) < 0.6)
    w[torch.arange(12), torch.arange(12) % 4] += 1.0  # every column sees at least one latent
    b = 0.5 * torch.randn(12, generator=gs)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)
    a = z @ w.T + b
    maps = [torch.tanh, torch.sin, lambda t: t * t.abs() / 2, lambda t: torch.nn.functional.softplus(t) - 0.7]
    informative = torch.stack([maps[j % 4](a[:, j]) for j in range(12)], dim=1)
    informative = informative + 0.1 * torch.randn(n, 12, generator=g)
    noise = torch.randn(n, 4, generator=g)
    score = z[:, 0] * z[:, 1] + torch.sin(2 * z[:, 2]) - 0.5 * z[:, 3] ** 2 + 0.5
    return torch.cat([informative, noise], dim=1), (score > 0).long()


def _standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-8)


def _pretrain(
    x: torch.Tensor, seed: int, c: Config, *, epochs: int, batch_size: int, num_reg: int, snapshot: int | None = None
) -> tuple[TJEPAHook, list[dict[str, Any]], dict[str, torch.Tensor]]:
    """T-JEPA (the ``small`` preset) on rows ``x`` through the engine; with ``snapshot``, also the embeddings
    before pretraining (``"init"``) and after ``snapshot`` epochs (``"half"``)."""
    preset = {**SPEC.presets["small"], "epochs": epochs, "warmup_epochs": c.warmup_epochs, "num_reg": num_reg}
    seed_everything(seed)
    hook = TJEPAHook(x.shape[1], index_quirk=c.index_quirk, **preset)
    held: dict[str, torch.Tensor] = {}
    if snapshot is not None:
        held["init"] = hook.model.embed(x)

    def eval_fn(state) -> dict[str, float]:
        if snapshot is not None and state.epoch + 1 == snapshot:
            held["half"] = hook.model.embed(x)
        return {}

    cfg = TrainConfig(batch_size=batch_size, seed=seed, progress=False)
    data = IndexedTensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    history = fit(hook.model, data, hook.recipe(), hooks=[hook], config=cfg, eval_fn=eval_fn)
    return hook, history, held


def _downstream(
    feats: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    seed: int,
    c: Config,
    probe: bool = True,
) -> dict[str, float]:
    """The same MLP (and a linear probe) on standardized ``feats``: test accuracy, AUROC, probe accuracy."""
    f = _standardize(feats)
    tr, te = IndexedTensorDataset(f[train], y[train]), IndexedTensorDataset(f[test], y[test])
    cfg = TrainConfig(
        epochs=c.down_epochs, batch_size=c.down_batch_size, optimizer="adam", lr=c.down_lr,
        weight_decay=c.down_weight_decay, seed=seed,
    )  # fmt: skip
    model, metrics, _ = train_and_test(partial(MLP, f.shape[1], c.hidden, 2), tr, te, cfg)
    p1 = predict(model, te).softmax(1)[:, 1].numpy()
    out = {"acc": metrics["acc"], "auroc": float(roc_auc_score(y[test].numpy(), p1))}
    if probe:
        out["probe_acc"] = train_and_test(partial(MLP, f.shape[1], (), 2), tr, te, cfg)[1]["acc"]
    return out


def _split(n: int, labelled: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7))
    return order[:labelled], order[labelled:]


def run(seed: int, c: Config) -> SeedResult:
    start = time.process_time()
    # -- generated table: R = num_reg and R = 0
    x_raw, y = make_table(c.rows, seed)
    x = _standardize(x_raw)
    train, test = _split(c.rows, c.labelled, seed)
    snap = max(1, c.epochs // 2)
    hook, hist, snaps = _pretrain(x, seed, c, epochs=c.epochs, batch_size=c.batch_size, num_reg=c.num_reg,
                                     snapshot=snap)  # fmt: skip
    emb = hook.model.embed(x, flatten=False)
    hook0, _, _ = _pretrain(x, seed, c, epochs=c.epochs, batch_size=c.batch_size, num_reg=0)
    emb0 = hook0.model.embed(x, flatten=False)
    meth = _downstream(emb.flatten(1), y, train, test, seed, c)
    base = _downstream(x, y, train, test, seed, c)
    meth["acc_init"] = _downstream(snaps["init"], y, train, test, seed, c, probe=False)["acc"]
    meth["acc_half"] = _downstream(snaps["half"], y, train, test, seed, c, probe=False)["acc"]
    meth["acc_r0"] = _downstream(emb0.flatten(1), y, train, test, seed, c, probe=False)["acc"]
    stats, stats0 = collapse_stats(emb), collapse_stats(emb0)
    meth.update(stats)
    meth.update({f"{k}_r0": v for k, v in stats0.items()})
    meth["emb_std_gain"] = stats["emb_std"] - stats0["emb_std"]
    meth["jepa_loss_last"] = hist[-1]["jepa"]
    curves = {"jepa": [h["jepa"] for h in hist]}
    # -- breast cancer
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    xb = _standardize(torch.tensor(bc.data, dtype=torch.float32))
    yb = torch.tensor(bc.target, dtype=torch.long)
    tr_b, te_b = _split(len(xb), c.labelled, seed)
    hook_b, _, _ = _pretrain(xb, seed, c, epochs=c.bc_epochs, batch_size=c.bc_batch_size, num_reg=c.num_reg)
    mb = _downstream(hook_b.model.embed(xb), yb, tr_b, te_b, seed, c)
    bb = _downstream(xb, yb, tr_b, te_b, seed, c)
    meth.update({f"bc_{k}": v for k, v in mb.items()})
    base.update({f"bc_{k}": v for k, v in bb.items()})
    meth["cpu_seconds"] = time.process_time() - start
    return {"method": meth, "baseline": base, "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.9))
    for ax, key, title in zip(axes[:2], ("acc", "bc_acc"), ("generated table", "breast cancer")):
        vals = [[r["baseline"][key] for r in results], [r["method"][key] for r in results]]
        ax.boxplot(vals, tick_labels=["raw", "T-JEPA"])
        ax.set_title(f"test accuracy, {title}")
    ax = axes[2]
    curve = np.array([r["curves"]["jepa"] for r in results])
    ax.plot(np.arange(1, curve.shape[1] + 1), curve.mean(0), marker="o", ms=3)
    ax.set_xlabel("epoch")
    ax.set_title("JEPA loss (generated table)")
    fig.tight_layout()
    path = outdir / "tjepa_metrics.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="tjepa",
    claim="with 300 labels, an MLP on frozen T-JEPA embeddings beats the same MLP on raw features by at least 2 "
    "points on the generated table and is not worse by more than 1 point on breast cancer (near its ceiling); "
    "without regularization tokens (R = 0) the embeddings vary less across rows than with R = 1",
    setup="generated 16-column table (4 latent factors, nonlinear maps, 4 noise columns, nonlinear binary label) and "
    "load_breast_cancer; T-JEPA small preset (h=32, 3 encoder layers, predictor 2 layers / width 16, M=4, paper "
    "mask shares, lr, EMA 0.996->1, element-wise gradient clamp 1) pretrained on all rows without labels through "
    "the engine; downstream MLP (and linear probe) on 300 labelled rows, the same for embeddings and standardized "
    "raw features",
    method_name="T-JEPA embeddings + MLP",
    baseline_name="raw features + MLP",
    checks=[
        Check("acc", "higher", 0.02),
        Check("bc_acc", "higher", -0.01),
        Check("emb_std_gain", "higher", 0.0, against="value"),
    ],
    diagnosis="The embeddings beat raw features on the generated table on every seed, by less than the 2-point "
    "margin, and breast-cancer accuracy is kept. In-run probes of the encoder before pretraining "
    "(acc_init) and half-way (acc_half) score about as well as the final one, so the gain comes from the "
    "tokenised transformer representation, not from the JEPA pretraining, at this budget (6 epochs; the "
    "card's 100 epochs cost about 5 CPU-minutes per pretraining here, over the experiment's budget). The "
    "regularization tokens do not raise the embedding spread because without them the encoder does not "
    "collapse at this scale either (emb_std_gain near zero), so the rule that asks for a gain has nothing "
    "to measure.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    threads=1,
    notes="What was learnt while building (quick tier and single full-budget seeds, before the lead's 5-seed run): "
    "the MLP on embeddings of the randomly initialised, untrained encoder (acc_init) is about as accurate as on the "
    "pretrained ones, so the gain over raw features on the generated table comes from the tokenised 544-dimensional "
    "expansion rather than from the JEPA objective at this budget; acc_half shows no trend with pretraining. A "
    "one-seed run at 5x the budget (30 epochs) drove the JEPA loss far lower, raised the per-dimension std but "
    "lowered the effective rank of the embeddings to a few directions, and its MLP accuracy fell back to the raw "
    "features' level. Without [REG] tokens (R = 0) the embedding std was not lower than with R = 1 on the seeds "
    "seen, so the collapse rule is not expected to hold at this scale.",
)
