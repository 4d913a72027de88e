"""Essential sparsity: one-shot global magnitude pruning (OMP) vs random pruning (card:
sparsity-compression.md, "Small-scale check on CPU").

Setup A, the real pretrained transformer: all-MiniLM-L6-v2's 36 block linears (Q, K, V, attention output, FFN in/out
of its 6 blocks) pruned at each sparsity of the grid; performance = mean cosine similarity between dense and pruned
sentence embeddings of templated sentences, and the k-fold logistic-regression accuracy of a 2-topic task on the
frozen embeddings. Setup B, pre-train -> prune -> fine-tune: an MLP pre-trained on the lower mnist1d labels, pruned
(hidden layers), fine-tuned on the other labels with the mask fixed. Every setting is in :class:`Config` (``QUICK``
and ``FULL``), which the report prints. Claims (fixed before the first run): on MiniLM, s*(cosine, tol 0.05) of OMP
>= 0.3 and at least 0.1 above random pruning's; past the knee the cosine curve falls >= 3x faster than before it; on
the MLP, OMP's s*(accuracy, tol 1 point) >= random's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from priorkit.core.seeding import seed_everything
from priorkit.data import load_mnist1d
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.experiments._common import accuracy_on
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.sparsity.essential_sparsity import essential_sparsity, knee_sharpness, sparsity_sweep
from priorkit.train import TrainConfig, Trainer


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    grid: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(10))  # sparsities s (must include 0.5)
    # setup A: MiniLM
    sentences_per_topic: int = 150
    sentence_seed: int = 0
    lr_max_iter: int = 2000  # logistic regression on the frozen embeddings
    cv_folds: int = 5
    cos_tol: float = 0.05  # s* tolerance on the cosine curve
    # setup B: MLP pre-train -> prune -> fine-tune on mnist1d
    pretrain_labels: int = 5  # pre-train on labels < pretrain_labels, fine-tune on the others
    mlp_hidden: tuple[int, ...] = (512, 512)
    pretrain_epochs: int = 30
    finetune_epochs: int = 3
    lr: float = 0.05
    batch_size: int = 128
    acc_tol: float = 0.01  # s* tolerance on the accuracy curves (LR and fine-tuned)


FULL = Config()
QUICK = Config(sentences_per_topic=80, pretrain_epochs=15)

_TOPICS = {
    "food": (
        ["chef", "baker", "my aunt", "the cook", "a student"],
        ["baked", "cooked", "tasted", "served", "seasoned"],
        ["bread", "a spicy soup", "fresh pasta", "the apple pie", "grilled fish", "a curry"],
    ),
    "sport": (
        ["the striker", "our team", "the runner", "a goalkeeper", "the coach"],
        ["won", "lost", "played", "trained for", "scored in"],
        ["the final match", "a marathon", "the league game", "the tennis cup", "a football derby", "the relay race"],
    ),
}


def sentences(n_per_topic: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Templated two-topic sentences (food vs sport), deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for label, (subj, verb, obj) in enumerate(_TOPICS.values()):
        combos = list(itertools.product(subj, verb, obj, ("yesterday", "today", "last week", "again")))
        for i in rng.permutation(len(combos))[:n_per_topic]:
            s, v, o, when = combos[i]
            out.append(f"{s.capitalize()} {v} {o} {when}.")
            labels.append(label)
    return out, np.array(labels)


def _minilm_curves(c: Config, seed: int) -> dict[str, list[float]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    from priorkit.models.minilm import MiniLM

    model = MiniLM()
    text, labels = sentences(c.sentences_per_topic, seed=c.sentence_seed)
    tok = model.tokenizer(text, padding=True, return_tensors="pt")
    with torch.no_grad():
        dense = model(tok["input_ids"], tok["attention_mask"])

    def cos_and_lr(pruned: nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            emb = pruned(tok["input_ids"], tok["attention_mask"])
        cos = float(nn.functional.cosine_similarity(emb, dense, dim=1).mean())
        lr = LogisticRegression(max_iter=c.lr_max_iter)
        acc = float(cross_val_score(lr, emb.numpy(), labels, cv=c.cv_folds).mean())
        return cos, acc

    curves: dict[str, list[float]] = {}
    include = lambda name, m: ".layer." in name  # noqa: E731 - the 36 block linears
    for pruner in ("omp", "random"):
        lr_accs: list[float] = []

        def evaluate(pruned: nn.Module, accs: list[float] = lr_accs) -> float:
            cos, acc = cos_and_lr(pruned)
            accs.append(acc)
            return cos

        sweep = sparsity_sweep(model, evaluate, c.grid, pruner=pruner, include=include, seed=seed)
        curves[f"{pruner}_cos"], curves[f"{pruner}_lr"] = sweep.perf, lr_accs
        curves[f"{pruner}_layer_sparsity_at_0.5"] = sweep.layer_sparsity[c.grid.index(0.5)]
    return curves


def _mlp_curves(c: Config, seed: int) -> dict[str, list[float]]:
    data = load_mnist1d(seed=seed)

    def subset(ds: IndexedTensorDataset, labels: range) -> IndexedTensorDataset:
        keep = torch.isin(ds.y, torch.tensor(list(labels)))
        return IndexedTensorDataset(ds.x[keep], ds.y[keep])

    k = c.pretrain_labels
    pre, ft, ft_test = subset(data.train, range(k)), subset(data.train, range(k, 10)), subset(data.test, range(k, 10))
    seed_everything(seed)
    model = MLP(40, c.mlp_hidden, 10)
    Trainer(model, pre, config=TrainConfig(epochs=c.pretrain_epochs, lr=c.lr, batch_size=c.batch_size, seed=seed)).fit()

    def finetune(pruned: nn.Module) -> float:
        Trainer(
            pruned, ft, config=TrainConfig(epochs=c.finetune_epochs, lr=c.lr, batch_size=c.batch_size, seed=seed)
        ).fit()
        return accuracy_on(pruned, ft_test)

    hidden = lambda name, m: name.startswith("body")  # noqa: E731 - keep the task head dense
    curves = {}
    for pruner in ("omp", "random"):
        curves[f"{pruner}_ft_acc"] = sparsity_sweep(
            model, finetune, c.grid, pruner=pruner, include=hidden, seed=seed
        ).perf
    return curves


def run(seed: int, c: Config) -> SeedResult:
    a = _minilm_curves(c, seed)
    b = _mlp_curves(c, seed)
    out: dict[str, dict[str, float]] = {"method": {}, "baseline": {}}
    for side, pruner in (("method", "omp"), ("baseline", "random")):
        cos, lr, ft = a[f"{pruner}_cos"], a[f"{pruner}_lr"], b[f"{pruner}_ft_acc"]
        s_cos = essential_sparsity(c.grid, cos, tol=c.cos_tol)
        out[side].update(
            s_star_cos=s_cos,
            sharpness_cos=knee_sharpness(c.grid, cos, s_cos, tol=c.cos_tol),
            s_star_lr=essential_sparsity(c.grid, lr, tol=c.acc_tol),
            s_star_ft=essential_sparsity(c.grid, ft, tol=c.acc_tol),
            cos_at_0_5=cos[c.grid.index(0.5)],
        )
    return {"method": out["method"], "baseline": out["baseline"], "curves": {**a, **b, "grid": list(c.grid)}}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, title in zip(
        axes,
        ("cos", "lr", "ft_acc"),
        ("MiniLM: cosine to dense", "MiniLM: LR accuracy (k-fold)", "MLP: fine-tuned accuracy"),
    ):
        for pruner, label in (("omp", "one-shot magnitude (OMP)"), ("random", "random")):
            y = np.mean([r["curves"][f"{pruner}_{key}"] for r in results], axis=0)
            ax.plot(results[0]["curves"]["grid"], y, marker="o", label=label)
        ax.set_xlabel("sparsity of target weights")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = outdir / "essential_sparsity_curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="essential_sparsity",
    claim="One-shot global magnitude pruning is flat until a knee (the essential sparsity), then drops sharply",
    setup="all-MiniLM-L6-v2 block linears (real weights) and an mnist1d MLP pre-train/prune/fine-tune, over a "
    "sparsity grid",
    method_name="one-shot global magnitude pruning",
    baseline_name="global random pruning",
    checks=[
        Check("s_star_cos", "higher", 0.1),
        Check("s_star_cos", "higher", 0.3, against="value"),
        Check("sharpness_cos", "higher", 3.0, against="value"),
        Check("s_star_ft", "higher", 0.0),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=1,
    plot=plot,
    diagnosis="Two of the three parts hold: OMP keeps its cosine to the dense model far longer than random "
    "pruning, the cosine curve falls faster past its knee, and in pre-train/prune/fine-tune OMP tolerates more "
    "sparsity than random pruning. The knee on MiniLM (s_star_cos) sits below the paper's 30%: the embedding "
    "cosine at tolerance 0.05 is a stricter measure than the paper's downstream fine-tuned accuracy, and the "
    "downstream probe measured here cannot locate a knee at all - s_star_lr is at the end of the grid for OMP and "
    "random pruning alike (the 2-topic task is solved by any pruned model). The MiniLM part is deterministic "
    "(the same pretrained weights every seed), so its interval has zero width.",
    notes="IMP/LTH mask comparison, ERK random masks and pre-training-checkpoint tracking are not run.",
)
