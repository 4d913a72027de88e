"""Turbo-VBI (chain support prior) vs its i.i.d.-prior special case and magnitude pruning at matched non-zeros
(card: sparsity-compression.md, turbo_vbi, "Small-scale check on CPU").

Data: scikit-learn's 8x8 digits (1,437 / 360). Model: MLP 64-128-128-10 (ReLU), pre-trained dense for
``dense_epochs`` (Adam 1e-3). From the same dense weights: (1) Turbo-VBI, every Linear Bayesian, ``rounds`` turbo
rounds of ``t_a`` epochs of Module A (Adam 1e-3, local reparameterisation, KL over the training-set size) each
followed by ``t_b`` Module-B sweeps, chain prior with ``beta = 0.5``; then the deterministic network with
``w = 0`` where ``pi < 0.5`` and ``ft_epochs`` of masked fine-tuning; (2) the same algorithm with the i.i.d. prior
(``beta = 0``, sparse Bayesian learning), its mask the same number of non-zeros as (1), chosen by the highest ``pi``;
(3) global magnitude pruning of the dense model to the same number of non-zeros, fine-tuned for the whole post-
pre-training budget (``rounds x t_a + ft_epochs`` epochs). All training through the engine. Metrics: test accuracy,
compression (prunable weights / non-zeros), removed hidden neurons (incoming row all zero), mean contiguous non-zero
runs per row.

Rules (fixed before the first run, from the card's "Expected: all three within ~1-2 points accuracy; Turbo-VBI with
beta > 0 shows clearly fewer runs per row (clustered support) and more fully removed neurons than beta = 0 and
magnitude pruning"): accuracy no more than 2 points below each baseline's; runs per row lower than each baseline's
and removed neurons higher than each baseline's (the paired interval must exclude a tie: coded as a margin of 1e-6,
since a margin of 0 lets an all-zero interval pass; the first full run had margin 0, which contradicted this sentence,
and was rerun with the margin that implements it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from priorkit.data import load_digits
from priorkit.experiments._common import accuracy_on
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.sparsity.masks import MaskSet, keep_masks
from priorkit.sparsity.turbo_vbi import SPEC, TurboVBI, bayesianize, debayesianize, runs_per_row
from priorkit.train import Phase, Recipe, TrainConfig, Trainer

_P = SPEC.presets["small"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    hidden: tuple[int, ...] = (128, 128)
    dense_epochs: int = 30
    rounds: int = 10  # K turbo rounds
    t_a: int = _P["t_a"]
    t_b: int = _P["t_b"]
    ft_epochs: int = 5
    alpha: float = _P["alpha"]
    beta: float = _P["beta"]
    precision_ratio: float = _P["precision_ratio"]
    lr: float = 1e-3
    batch_size: int = 64
    test: float = 0.2


FULL = Config()
QUICK = Config(dense_epochs=3, rounds=2, t_a=1, t_b=3, ft_epochs=1)


def mlp(hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = 64
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, 10))


def _fit(model: nn.Module, train: Any, epochs: int, c: Config, seed: int, hooks: list | None = None) -> None:
    phase = Phase("fit", epochs=epochs, optimizer=lambda m: torch.optim.Adam(
        [p for p in m.parameters() if p.requires_grad], lr=c.lr))  # fmt: skip
    cfg = TrainConfig(epochs=epochs, batch_size=c.batch_size, seed=seed, progress=False)
    Trainer(model, train, recipe=Recipe([phase]), hooks=hooks or [], config=cfg).fit()


def _structure(model: nn.Sequential, masks: dict[str, torch.Tensor], hidden_layers: list[str]) -> dict[str, float]:
    nnz = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    removed = sum(int((~masks[n].any(dim=1)).sum()) for n in hidden_layers)
    runs = sum(runs_per_row(m) for m in masks.values()) / len(masks)
    return {"compression": total / max(nnz, 1), "nonzeros": float(nnz), "removed_neurons": float(removed),
            "runs_per_row": runs}  # fmt: skip


def _bayes(dense: nn.Module, train: Any, c: Config, seed: int, prior: str) -> tuple[nn.Sequential, dict]:
    model = copy.deepcopy(dense)
    bayesianize(model, precision_ratio=c.precision_ratio)
    hook = TurboVBI(model, len(train), alpha=c.alpha, beta=c.beta, prior=prior, t_a=c.t_a, t_b=c.t_b)
    _fit(model, train, c.rounds * c.t_a, c, seed, [hook])
    support = {n: layer.support.clone() for n, layer in hook.layers.items()}
    return model, support


def _masked_finetune(model: nn.Sequential, masks: dict[str, torch.Tensor], train: Any, epochs: int, c: Config,
                     seed: int, owner: str) -> None:  # fmt: skip
    ms = MaskSet(model, owner=owner).attach()
    ms.set(masks)
    ms.zero_pruned_()
    if epochs:
        _fit(model, train, epochs, c, seed)


def run(seed: int, c: Config) -> SeedResult:
    sp = load_digits(val=0.0, test=c.test, seed=seed)
    train, test = sp.train, sp.test
    torch.manual_seed(seed)
    dense = mlp(c.hidden)
    _fit(dense, train, c.dense_epochs, c, seed)
    names = [n for n, m in dense.named_modules() if isinstance(m, nn.Linear)]
    hidden_layers = names[:-1]

    turbo, support = _bayes(dense, train, c, seed, "chain")
    masks = debayesianize(turbo)
    _masked_finetune(turbo, masks, train, c.ft_epochs, c, seed, "turbo_vbi")
    method = {"acc": accuracy_on(turbo, test), **_structure(turbo, masks, hidden_layers)}
    nnz = int(method["nonzeros"])
    total = sum(m.numel() for m in masks.values())
    sparsity = 1.0 - nnz / total

    iid, iid_support = _bayes(dense, train, c, seed, "iid")
    iid_natural = debayesianize(iid)
    iid_masks = keep_masks({n: s.float() for n, s in iid_support.items()}, sparsity, scope="global")
    _masked_finetune(iid, iid_masks, train, c.ft_epochs, c, seed, "turbo_vbi_iid")
    iid_row = {"acc": accuracy_on(iid, test), **_structure(iid, iid_masks, hidden_layers)}

    mag = copy.deepcopy(dense)
    mag_masks = keep_masks({n: mag.get_submodule(n).weight.detach().abs() for n in names}, sparsity, scope="global")
    _masked_finetune(mag, mag_masks, train, c.rounds * c.t_a + c.ft_epochs, c, seed, "magnitude")
    mag_row = {"acc": accuracy_on(mag, test), **_structure(mag, mag_masks, hidden_layers)}

    out_m: dict[str, float] = {"compression": method["compression"], "dense_acc": accuracy_on(dense, test)}
    out_b: dict[str, float] = {}
    for key in ("acc", "runs_per_row", "removed_neurons"):
        out_m[f"{key}_vs_iid"], out_b[f"{key}_vs_iid"] = method[key], iid_row[key]
        out_m[f"{key}_vs_magnitude"], out_b[f"{key}_vs_magnitude"] = method[key], mag_row[key]
    natural_nnz = sum(int(m.sum()) for m in iid_natural.values())
    return {"method": out_m, "baseline": out_b,
            "extra": {"iid_natural_compression": total / max(natural_nnz, 1), "magnitude_compression":
                      mag_row["compression"], "iid_compression": iid_row["compression"]}}  # fmt: skip


EXPERIMENT = Experiment(
    id="turbo_vbi",
    claim="At matched non-zeros and within ~1-2 points of accuracy, the structured (chain) support prior leaves "
    "clustered weights (fewer runs per row) and more fully removed neurons than the i.i.d. prior and magnitude "
    "pruning",
    setup="8x8 digits, MLP 64-128-128-10 pre-trained dense; 10 turbo rounds (2 epochs of Bayesian training + 10 "
    "Module-B sweeps), masked fine-tuning; baselines matched to Turbo-VBI's non-zeros, same post-pre-training epochs",
    method_name="Turbo-VBI (chain prior, beta 0.5)",
    baseline_name="i.i.d. prior (beta 0, top-pi at matched non-zeros) / global magnitude + fine-tune",
    checks=[
        Check("acc_vs_iid", "higher", -0.02),
        Check("acc_vs_magnitude", "higher", -0.02),
        Check("runs_per_row_vs_iid", "lower", 1e-6),
        Check("runs_per_row_vs_magnitude", "lower", 1e-6),
        Check("removed_neurons_vs_iid", "higher", 1e-6),
        Check("removed_neurons_vs_magnitude", "higher", 1e-6),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    diagnosis="The clustering half of the claim reproduces: at matched non-zeros the chain prior leaves far fewer "
    "runs of non-zeros per row than the i.i.d. prior and than magnitude pruning (runs_per_row_*). No neuron is fully "
    "removed by any arm at this compression (removed_neurons_* are 0 for all three; compression): the chain prior "
    "runs along each neuron's inputs, so it clusters weights inside a row but has no term that empties a whole row "
    "(the card's 2-D grid prior, which couples neighbouring neurons, is not built). The ablations show the knobs: a "
    "stronger coupling (beta_1) and a sparser prior (alpha_active_0.1) do remove neurons, but not reliably more than "
    "the baselines over 3 seeds. Accuracy ties the i.i.d. prior but trails magnitude pruning beyond the 2-point "
    "tolerance: "
    "the Bayesian arms spend the post-pre-training epochs under the KL pull, magnitude pruning spends them "
    "fine-tuning (same epochs, acc_vs_magnitude).",
    ablations={
        # stronger clustering (the card's range of beta is [0.3, 1])
        "beta_1": {"beta": 1.0},
        # a sparser prior (prior active fraction sigmoid(2 alpha) = 0.1 instead of 0.2)
        "alpha_active_0.1": {"alpha": -1.0986},
    },
)
