"""TMV-HLP vs direct nearest-prototype zero-shot recognition on digits (card: prototypes-fewshot-ood.md).

Data (:func:`priorkit.data.zeroshot.digits_zeroshot`, per the card): scikit-learn digits, two semantic views per
class (7-segment attributes; all-MiniLM-L6-v2 embeddings of "zero" ... "nine"), two splits of unseen classes.
f_A: logistic regression per segment, f_V: ridge, both trained on a random subset of the seen-class samples (the
seed picks the subset); low-level view: PCA of the target pixels. TMV-HLP with the card's defaults (d = min(50,
smallest view) when ``dim`` is None). Every setting is in :class:`Config` (``QUICK`` and ``FULL`` are the same
per-seed budget; the tiers differ only in the number of seeds), which the report prints. Metric: unseen-class
accuracy averaged over the splits.

Baselines: DAP-style nearest attribute prototype in attribute space (the ``baseline`` side) and nearest word
prototype (reported as ``acc_word``); the "embedding alone" ablation (nearest prototype in the multi-view
embedding, no propagation) is reported on the method side as ``acc_embedding``.

Rules (fixed before the first run, from the card's "embedding alone beats either baseline, and embedding +
hypergraph propagation beats embedding alone; the margin may be a few points"): method accuracy >= DAP + 0.02,
method accuracy >= nearest-word accuracy (``gain_over_word`` >= 0) and method accuracy >= embedding alone
(``gain_over_embedding`` >= 0).

What development taught (the figures are in the committed ``results/tmv_hlp.json`` and ``results/report.md``).
The per-segment classifiers trained on seen digits transfer badly (a strong projection domain shift: DAP is near
chance), and the propagation from 2 prototype nodes per class among ~1,600 instance nodes with the card's
row-normalised P and alpha = 0.99 sends most instances of a split to one class; the nearest-word baseline was the
strongest. Class-mass normalisation of F (Zhu et al.) did not fix it either, so the claim is not expected to
hold at this scale with the card's settings. ``top_class_share`` (the largest share of a split's instances given
one class, averaged over the splits) shows the collapse of the propagation.

Measured ablations (``ablations``, full budget): ``alpha_0.9`` (shorter propagation: with a row-stochastic P the
closed form sums ``alpha^t P^t Y``, and as alpha nears 1 the long walks, which forget their start, dominate, so
every node receives about the same mixture of the prototypes' labels) and ``words_low_alpha_0.9`` (the same
without the attribute view, ``use_views``: the attribute classifiers barely transfer to the unseen digits, and
their view pulls the multi-view embedding below the word view alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from priorkit.baselines.fewshot import nearest_prototype
from priorkit.data.zeroshot import digits_zeroshot
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.prototypes.tmv_hlp import embedding_nearest_prototype, tmv_hlp


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    splits: tuple[tuple[int, ...], ...] = ((7, 8, 9), (2, 5, 8))  # the unseen classes of each split
    train_fraction: float = 0.9  # of the seen-class samples, for f_A / f_V and the embedding
    dim: int | None = None  # embedding dimension d; None = min(50, smallest view)
    power: float = 4.0  # p
    k: int = 30  # hyperedge size
    alpha: float = 0.99  # propagation
    ridge: float = 1e-4
    pca_dim: int = 20  # low-level view
    weighting: str = "gaussian_mean"
    use_views: tuple[str, ...] = ("low", "attributes", "words")  # the views of the embedding and the hypergraph


FULL = Config()
QUICK = Config()  # same per-seed budget; quick runs fewer seeds


def _acc(scores: torch.Tensor, unseen: tuple[int, ...], y: torch.Tensor) -> float:
    return float((torch.tensor(unseen)[scores.argmax(1)] == y).double().mean())


def one_split(unseen: tuple[int, ...], seed: int, c: Config = FULL) -> dict[str, float]:
    d = digits_zeroshot(unseen, seed=seed)
    xs, ys = d.seen_x, d.seen_y
    keep = torch.from_numpy(np.random.default_rng(seed).permutation(len(ys))[: int(c.train_fraction * len(ys))])
    xs, ys = xs[keep], ys[keep]
    out = tmv_hlp(
        xs,
        ys,
        d.unseen_x,
        d.views,
        d.seen,
        d.unseen,
        dim=c.dim,
        power=c.power,
        k=c.k,
        alpha=c.alpha,
        ridge=c.ridge,
        pca_dim=c.pca_dim,
        weighting=c.weighting,
        use_views=c.use_views,
    )
    views, protos = out.views, out.class_vectors
    u = list(d.unseen)
    pred = out.scores.argmax(1)
    return {
        "acc": _acc(out.scores, d.unseen, d.unseen_y),
        "top_class_share": float(torch.bincount(pred, minlength=len(u)).max()) / len(pred),
        "acc_embedding": _acc(embedding_nearest_prototype(out), d.unseen, d.unseen_y),
        "acc_dap": _acc(nearest_prototype(views["attributes"], protos["attributes"][u]), d.unseen, d.unseen_y),
        "acc_word": _acc(nearest_prototype(views["words"], protos["words"][u], "cosine"), d.unseen, d.unseen_y),
    }


def run(seed: int, c: Config) -> SeedResult:
    per = [one_split(s, seed, c) for s in c.splits]
    mean = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    method = {
        "acc": mean["acc"],
        "acc_embedding": mean["acc_embedding"],
        "gain_over_word": mean["acc"] - mean["acc_word"],
        "gain_over_embedding": mean["acc"] - mean["acc_embedding"],
        "top_class_share": mean["top_class_share"],
    }
    for s, p in zip(c.splits, per):
        method["acc_" + "".join(map(str, s))] = p["acc"]
    baseline = {"acc": mean["acc_dap"], "acc_word": mean["acc_word"]}
    return {"method": method, "baseline": baseline}


EXPERIMENT = Experiment(
    id="tmv_hlp",
    claim="Transductive multi-view embedding + hypergraph label propagation beats direct nearest-prototype "
    "zero-shot recognition (attribute or word space) and the embedding alone",
    setup=(
        "digits, two splits of unseen classes; views: PCA of the pixels, 7-segment attribute probabilities "
        "(logistic), MiniLM word vectors (ridge); multi-view CCA embedding and hypergraph propagation"
    ),
    method_name="TMV-HLP (multi-view CCA + heterogeneous hypergraph propagation)",
    baseline_name="DAP-style nearest attribute prototype",
    checks=[
        Check("acc", "higher", 0.02),
        Check("gain_over_word", "higher", 0.0, against="value"),
        Check("gain_over_embedding", "higher", 0.0, against="value"),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=1,
    ablations={
        # the propagation weight alpha (card: 0.99, an assumption on the Zhou et al. variant)
        "alpha_0.9": {"alpha": 0.9},
        # the same without the attribute view (the card makes the views configurable)
        "words_low_alpha_0.9": {"alpha": 0.9, "use_views": ("low", "words")},
    },
    diagnosis="Two causes, each shown by an ablation. First, the propagation at the card's alpha collapses: with "
    "the row-stochastic P the long random walks dominate the closed form, every instance receives about the "
    "same mixture of the prototypes' labels, and nearly all instances of a split go to one class "
    "(top_class_share near 1, acc near the share of one class). A shorter propagation (ablation alpha_0.9) "
    "spreads the predictions and beats the embedding alone (gain_over_embedding), as the card expects, but "
    "still not the nearest word prototype. Second, the attribute view hurts: the per-segment classifiers "
    "trained on the seen digits barely transfer (the DAP baseline is near chance), and in the multi-view "
    "embedding this view pulls the embedding alone below the word view alone (acc_embedding against "
    "acc_word). Without it (ablation words_low_alpha_0.9, low-level and word views only) the embedding and "
    "the propagation beat the nearest word prototype, so the claim's direction holds once both are changed.",
)
