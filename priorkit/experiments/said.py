"""Intrinsic dimension (SAID and DID) of fine-tuning a pretrained vs a randomly initialised mnist1d MLP (card:
adapters-lowrank.md, "Small-scale check on CPU"), and the optional d90 curve of all-MiniLM-L6-v2 on two templated
text tasks.

Per seed: the target task is :func:`priorkit.data.load_mnist1d` with ``shots`` training signals per class (500 in
all; the validation split picks learning rates, the test split gives the metric). Two starting points ``theta0``
of MLP 40-256-256-10: (a) :func:`priorkit.experiments._adapters.pretrained_mnist1d_mlp` (pretrained on mnist1d
regenerated with another data seed and every template rolled by 6 samples) and (b) a random initialisation. Both
get the same freshly initialised head (card: the task head is part of ``theta0``, randomly initialised, and
reparameterised like the rest). Full fine-tuning of each ``theta0`` (Adam over ``full_lrs``, best on validation)
gives ``A_full``; then, for SAID and DID with Fastfood projections, ``d`` is scanned upwards over ``grid``, each
``d`` trained by :func:`priorkit.adapters.said.fit_subspace` (Adam on ``z`` and ``lambda``, ``sub_lrs`` best on
validation, ``sub_epochs`` = twice the full fine-tuning epochs), until the test accuracy reaches 0.9 ``A_full``:
that ``d`` is ``d90``. Everything trains through the engine. A ``d90`` not reached on the grid is recorded as
the next grid point (twice the largest ``d``), a lower bound, with ``reached@...`` = 0.

Method = the pretrained ``theta0``, baseline = the random ``theta0``; metrics are ``log2_d90`` (SAID),
``log2_d90@DID``, ``d90``, ``acc_full``, the curves ``acc@SAID,d=..`` and the Occam-bound stand-in at ``d90``
(``occam_bound``, an assumption: see :func:`priorkit.adapters.said.occam_bound`).

Rules (fixed before the first run, from the card's "Expected: d90(pretrained) <= 1/2 d90(random); SAID d90 <= DID
d90"): the 95% interval of the seed-paired ``log2 d90(pretrained) - log2 d90(random)`` lies at or below -1, for
SAID and for DID; and at the pretrained ``theta0`` the interval of ``log2 d90(SAID) - log2 d90(DID)`` lies at or
below 0.5 (half a grid step: the grid doubles ``d``, so the values are whole numbers, and the tolerance lets seeds
that tie pass while one seed with SAID a full step behind fails).

MiniLM (the ``minilm`` ablation, off in the main tiers): all-MiniLM-L6-v2 (:mod:`priorkit.models.minilm`,
offline) with a mean-pooled linear head, on two sentence tasks generated here from templates (a sentiment-like
task with negation, two labels; a topic-like task, four labels), test sentences built from held-out subjects.
Accuracy at each ``d`` of ``minilm_grid`` (SAID, Fastfood, one run per ``d`` with Adam's learning rate scaled by
``sqrt(200 / d)``, an assumption replacing the dev grid) and the ``d90`` on that grid, against full fine-tuning
(AdamW) of the same parameters. On one CPU thread a subspace step costs one to two seconds (Fastfood over the
~11M reparameterised weights plus the transformer itself), which is why this group sits outside the main budget;
the 11.7M-entry word-embedding table (and the unused pooler) stay frozen at ``theta0`` in both the subspace runs
and full fine-tuning (cost; the paper reparameterises everything).

What was learnt while sizing the full tier (one seed, before the 5-seed bench): the pretrained ``theta0`` is
ahead of the random one at every ``d`` of the curve, but ``d90`` is measured against each ``theta0``'s own full
fine-tuning, and full fine-tuning from a random ``theta0`` on 500 signals is itself weak, so the random network's
90% bar is low and its SAID ``d90`` can come out no larger than the pretrained one's; DID separates the two
starting points more, and at the random ``theta0`` SAID needs a smaller ``d`` than DID. The learning rate picked on
validation is mostly the larger of the two; the Occam stand-in is vacuous (above 1) at these ``d`` and ``n``.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from priorkit.adapters.said import fit_subspace, occam_bound, search_d90
from priorkit.core.seeding import seed_everything
from priorkit.data import load_mnist1d
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.experiments._adapters import few_shot, pretrained_mnist1d_mlp
from priorkit.experiments._common import accuracy_on
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.train import TrainConfig, fit

INITS = ("pretrained", "random")
HIDDEN = (256, 256)  # the widths of pretrained_mnist1d_mlp


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    shots: int = 50  # training signals per class (500 in all)
    pretrain_epochs: int = 30  # source-task pretraining (SGD, cosine; shared helper)
    full_epochs: int = 20  # full fine-tuning (Adam, every parameter)
    full_batch: int = 50
    full_lrs: tuple[float, ...] = (1e-3, 3e-3)
    sub_epochs: int = 40  # card: twice the full fine-tuning epochs
    sub_batch: int = 250  # a subspace step costs the projection whatever the batch: larger batches, same epochs
    sub_lrs: tuple[float, ...] = (1e-2, 3e-2)  # two of the card's grid {1e-3, 3e-3, 1e-2, 3e-2} (CPU budget)
    grid: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    modes: tuple[str, ...] = ("said", "did")
    projection: str = "fastfood"
    short_tensors: str = "pad"  # the biases (256) and the head bias (10) are shorter than most d of the grid
    fraction: float = 0.9
    early_stop: bool = True
    bound_bits: int = 8
    # all-MiniLM-L6-v2 on templated text (the "minilm" ablation)
    minilm: bool = False
    minilm_tasks: tuple[str, ...] = ("sentiment", "topic")
    minilm_grid: tuple[int, ...] = (200, 1000)
    minilm_train: int = 256
    minilm_test: int = 256
    minilm_max_len: int = 16
    minilm_batch: int = 32
    minilm_full_epochs: int = 4  # AdamW, every parameter but the frozen word embeddings
    minilm_full_lr: float = 1e-4
    minilm_sub_epochs: int = 8  # card: twice the full epochs
    # one run per d (no dev grid: CPU cost); Adam's lr at d = minilm_lr_ref_d, scaled by sqrt(ref / d) so that
    # the step in theta (about lr * sqrt(d) per step) stays comparable across d (assumption; a pilot diverged at
    # d = 1000 with the d = 200 learning rate)
    minilm_sub_lr: float = 3e-2
    minilm_lr_ref_d: int = 200
    minilm_exclude: tuple[str, ...] = field(default=("encoder.embeddings.word_embeddings", "encoder.pooler"))


FULL = Config()
QUICK = Config(
    shots=30, pretrain_epochs=10, full_epochs=8, full_lrs=(3e-3,), sub_epochs=16, sub_batch=300, sub_lrs=(3e-2,),
    grid=(16, 128, 1024), minilm_grid=(200,), minilm_train=64, minilm_test=64, minilm_full_epochs=1,
    minilm_sub_epochs=1,
)  # fmt: skip


# ------------------------------------------------------------------------------------------------- mnist1d
def _adam(epochs: int, batch: int, lr: float, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=batch, lr=lr, optimizer="adam", seed=seed, progress=False)


def _starts(seed: int, c: Config) -> dict[str, nn.Module]:
    """The two ``theta0``: the source-pretrained MLP and a random one, with one fresh head for both."""
    seed_everything(seed)
    rand = MLP(40, HIDDEN, 10)
    pre, _ = pretrained_mnist1d_mlp(seed, epochs=c.pretrain_epochs)
    pre.head.load_state_dict(rand.head.state_dict())
    return {"pretrained": pre.train(), "random": rand}


def _full_finetune(model: nn.Module, train: IndexedTensorDataset, val: IndexedTensorDataset, c: Config, seed: int):
    """Full fine-tuning of a copy (Adam, every parameter), best learning rate on validation."""
    best = None
    for lr in c.full_lrs:
        m = copy.deepcopy(model)
        fit(m, train, config=_adam(c.full_epochs, c.full_batch, lr, seed))
        score = accuracy_on(m, val)
        if best is None or score > best[0]:
            best = (score, lr, m)
    return best[2], best[1]


def _scan(model, mode, train, val, test, full_acc, c: Config, seed: int) -> tuple[dict, dict]:
    """The d90 scan of one (theta0, mode): the curve, the chosen learning rates and the training accuracy."""
    lrs, train_acc = {}, {}

    def evaluate(d: int) -> float:
        sub, info = fit_subspace(
            model, d, train, val=val, lrs=c.sub_lrs, config=_adam(c.sub_epochs, c.sub_batch, 1e-3, seed),
            mode=mode, projection=c.projection, seed=seed, short_tensors=c.short_tensors,
        )  # fmt: skip
        lrs[d], train_acc[d] = info["lr"], accuracy_on(sub, train)
        return accuracy_on(sub, test)

    res = search_d90(evaluate, c.grid, full_acc, fraction=c.fraction, early_stop=c.early_stop)
    return {"result": res, "lrs": lrs, "train_acc": train_acc}, res.curve


def _side(model, train, val, test, c: Config, seed: int) -> dict[str, float]:
    full, full_lr = _full_finetune(model, train, val, c, seed)
    out: dict[str, float] = {"acc_full": accuracy_on(full, test), "lr_full": full_lr}
    out["acc_z0"] = accuracy_on(model, test)  # theta0 itself (fresh head: about chance)
    censored = 2 * max(c.grid)
    for mode in c.modes:
        scan, curve = _scan(model, mode, train, val, test, out["acc_full"], c, seed)
        res = scan["result"]
        d90 = res.d90 if res.reached else censored
        tag = "" if mode == "said" else "@DID"
        out[f"d90{tag}"] = float(d90)
        out[f"log2_d90{tag}"] = math.log2(d90)
        out[f"reached{tag}"] = float(res.reached)
        for d, acc in curve.items():
            out[f"acc@{mode.upper()},d={d}"] = acc
            out[f"lr@{mode.upper()},d={d}"] = scan["lrs"][d]
        if res.reached:
            err = 1.0 - scan["train_acc"][res.d90]
            out[f"occam_bound{tag}"] = occam_bound(err, res.d90, len(train), bits=c.bound_bits)
    if "said" in c.modes and "did" in c.modes:
        out["said_minus_did_log2_d90"] = out["log2_d90"] - out["log2_d90@DID"]
    return out


# -------------------------------------------------------------------------------------------------- MiniLM
_SUBJECTS = [
    "the movie", "this phone", "the hotel room", "the new album", "the pasta", "this laptop", "the concert",
    "the service", "the book", "this game", "the coffee", "the museum tour", "the sequel", "this camera",
    "the soup", "the train ride", "the play", "the headphones", "the dessert", "the app",
]  # fmt: skip
_POSITIVE = ["great", "wonderful", "excellent", "fantastic", "lovely", "delightful", "superb", "enjoyable",
             "brilliant", "pleasant"]  # fmt: skip
_NEGATIVE = ["terrible", "awful", "horrible", "disappointing", "dreadful", "boring", "poor", "bad", "mediocre",
             "unpleasant"]  # fmt: skip
_SENT_TEMPLATES = [
    ("{s} was {i}{a}", False), ("honestly , {s} is {i}{a}", False), ("i thought {s} was {i}{a}", False),
    ("{s} was not {i}{a}", True), ("i would not call {s} {i}{a}", True), ("{s} is never {i}{a}", True),
]  # fmt: skip
_INTENS = ["", "really ", "very ", "quite ", "truly "]
_TOPICS = {
    "sports": (["the team", "the striker", "the coach", "the goalkeeper", "the captain", "the referee",
                "the young sprinter", "the defender"],
               ["won the final", "scored twice in the match", "trained before the league game",
                "lost the penalty shootout", "broke the track record", "signed a new contract with the club"]),
    "food": (["the chef", "the baker", "my grandmother", "the waiter", "the new bistro", "the food truck",
              "the restaurant", "the pastry cook"],
             ["served a spicy curry", "baked fresh bread", "cooked the soup slowly", "added garlic to the sauce",
              "roasted vegetables for dinner", "made a chocolate cake"]),
    "tech": (["the engineer", "the startup", "the software team", "the developer", "the chip maker",
              "the phone company", "the hacker", "the lab"],
             ["released a software update", "fixed a bug in the code", "launched a faster processor",
              "trained a neural network", "patched the server", "built a new app"]),
    "weather": (["the forecast", "the storm", "the city", "the coast", "the valley", "the island",
                 "the mountain town", "the region"],
                ["expected heavy rain tonight", "saw snow and strong wind", "warned of a heat wave",
                 "had thick fog this morning", "reported a sudden thunderstorm", "stayed cold and cloudy"]),
}  # fmt: skip
_OPENERS = ["", "yesterday ", "this week ", "according to the news , ", "people said that "]


def _sentences(task: str, n: int, split: str, seed: int) -> tuple[list[str], list[int]]:
    """``n`` labelled sentences of ``task``; ``split="test"`` uses the held-out half of the subjects (``"train"``
    and ``"dev"`` the other half, from different draws)."""
    rng = random.Random(f"{task}:{split}:{seed}")
    texts, labels = [], []
    if task == "sentiment":
        subjects = _SUBJECTS[1::2] if split == "test" else _SUBJECTS[0::2]
        for _ in range(n):
            pol = rng.randrange(2)
            tpl, neg = rng.choice(_SENT_TEMPLATES)
            adj = rng.choice(_POSITIVE if pol else _NEGATIVE)
            texts.append(tpl.format(s=rng.choice(subjects), i=rng.choice(_INTENS), a=adj))
            labels.append(pol ^ int(neg))
    elif task == "topic":
        names = sorted(_TOPICS)
        for _ in range(n):
            k = rng.randrange(len(names))
            subs, preds = _TOPICS[names[k]]
            subs = subs[1::2] if split == "test" else subs[0::2]
            texts.append(f"{rng.choice(_OPENERS)}{rng.choice(subs)} {rng.choice(preds)}")
            labels.append(k)
    else:
        raise ValueError(f"minilm task must be 'sentiment' or 'topic', got {task!r}")
    return texts, labels


class _TextClassifier(nn.Module):
    """MiniLM encoder + masked mean pooling + linear head; inputs ``[B, 2, L]`` (token ids, attention mask)."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))


def _encode(tokenizer, texts: list[str], labels: list[int], max_len: int) -> IndexedTensorDataset:
    tok = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return IndexedTensorDataset(torch.stack((tok["input_ids"], tok["attention_mask"]), 1), torch.tensor(labels))


def _minilm(seed: int, c: Config) -> dict[str, float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from priorkit.models.minilm import MiniLM

    backbone = MiniLM()
    out: dict[str, float] = {}
    for task in c.minilm_tasks:
        start = time.perf_counter()
        tr_t, tr_y = _sentences(task, c.minilm_train, "train", seed)
        te_t, te_y = _sentences(task, c.minilm_test, "test", seed)
        train = _encode(backbone.tokenizer, tr_t, tr_y, c.minilm_max_len)
        test = _encode(backbone.tokenizer, te_t, te_y, c.minilm_max_len)
        seed_everything(seed)
        clf = _TextClassifier(copy.deepcopy(backbone.encoder), max(tr_y) + 1).train()
        full = copy.deepcopy(clf)
        for name, p in full.named_parameters():
            p.requires_grad_(not any(name == e or name.startswith(e + ".") for e in c.minilm_exclude))
        cfg = TrainConfig(epochs=c.minilm_full_epochs, batch_size=c.minilm_batch, lr=c.minilm_full_lr,
                          optimizer="adamw", seed=seed, progress=False)  # fmt: skip
        fit(full, train, config=cfg)
        acc_full = accuracy_on(full, test)
        out[f"minilm_{task}_acc_full"] = acc_full
        out[f"minilm_{task}_acc_z0"] = accuracy_on(clf, test)

        def evaluate(d: int, clf: nn.Module = clf, train=train, test=test) -> float:
            sub, _ = fit_subspace(
                clf, d, train, lrs=(c.minilm_sub_lr * math.sqrt(c.minilm_lr_ref_d / d),),
                config=_adam(c.minilm_sub_epochs, c.minilm_batch, 1e-3, seed), mode="said",
                projection="fastfood", seed=seed, short_tensors="pad", exclude=c.minilm_exclude,
            )  # fmt: skip
            return accuracy_on(sub, test)

        res = search_d90(evaluate, c.minilm_grid, acc_full, fraction=c.fraction, early_stop=False)
        for d, acc in res.curve.items():
            out[f"minilm_{task}_acc@SAID,d={d}"] = acc
        out[f"minilm_{task}_d90"] = float(res.d90 if res.reached else 2 * max(c.minilm_grid))
        out[f"minilm_{task}_reached"] = float(res.reached)
        out[f"minilm_{task}_seconds"] = time.perf_counter() - start
    return out


# ------------------------------------------------------------------------------------------------- the run
def run(seed: int, c: Config) -> SeedResult:
    data = load_mnist1d(seed=seed)
    train = few_shot(data.train, c.shots, seed)
    starts = _starts(seed, c)
    sides = {init: _side(starts[init], train, data.val, data.test, c, seed) for init in INITS}
    if c.minilm:
        sides["pretrained"].update(_minilm(seed, c))
    return {"method": sides["pretrained"], "baseline": sides["random"]}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 1, figsize=(5.5, 3.4))
    for side, init in (("method", "pretrained"), ("baseline", "random")):
        for mode, ls in (("SAID", "-"), ("DID", "--")):
            keys = sorted(
                {k for r in results for k in r[side] if k.startswith(f"acc@{mode},d=")},
                key=lambda k: int(k.split("=")[1]),
            )
            ds = [int(k.split("=")[1]) for k in keys]
            means = []
            for k in keys:
                vals = [r[side][k] for r in results if k in r[side]]
                means.append(sum(vals) / len(vals))
            if ds:
                ax.plot(ds, means, ls, marker="o", ms=3, label=f"{init} {mode}")
        full = [r[side]["acc_full"] for r in results]
        ax.axhline(0.9 * sum(full) / len(full), color="C0" if init == "pretrained" else "C2", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel("test accuracy (seeds' mean)")
    ax.set_title("mnist1d: accuracy vs d (dotted: 0.9 A_full)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "said_d90.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="said",
    claim="pre-training lowers the intrinsic dimension of fine-tuning at least twofold (d90(pretrained) <= "
    "d90(random) / 2, for SAID and DID), and SAID needs no larger d than DID",
    setup="mnist1d target with 500 training signals (50 per class), MLP 40-256-256-10 pretrained on mnist1d with "
    "another data seed and rolled templates vs randomly initialised, the same fresh head in both; full fine-tuning "
    "(Adam) gives A_full; SAID and DID with per-tensor Fastfood projections (Adam on z and lambda, lr best on "
    "validation, twice the full epochs) over a doubling grid of d until 0.9 A_full on test",
    method_name="pretrained theta0",
    baseline_name="random theta0",
    checks=[
        Check("log2_d90", "lower", 1.0),
        Check("log2_d90@DID", "lower", 1.0),
        Check("said_minus_did_log2_d90", "lower", 0.5, against="value"),
    ],
    notes="d90 is the smallest grid d reaching 0.9 of the same theta0's full fine-tuning accuracy (test), with the "
    "learning rate of every run chosen on validation among two of the card's four (CPU budget); a d90 beyond the grid "
    "is recorded as twice the largest d. The Occam bound (occam_bound) is priorkit's stand-in, an assumption, not the "
    "paper's bound. The 'minilm' ablation adds all-MiniLM-L6-v2 on two templated text tasks (accuracy vs d, d90, "
    "full fine-tuning); it is outside the main budget (one to two seconds per subspace step on one CPU thread).",
    diagnosis="DID reproduces (the pretrained start needs a far smaller subspace than the random one) and SAID ties "
    "DID; SAID's own pretrained-vs-random rule fails because its interval reaches past the factor-2 "
    "margin. In-run metrics show why: d90 is measured against each start's own full fine-tuning "
    "(acc_full), and from a random start on 500 samples that reference is much lower, so the random "
    "start's 90% bar is low and SAID's per-layer scales reach it at small d on some seeds. The pretrained "
    "start's accuracy is above the random one's at every d of the grid (the accuracy-vs-d metrics), which "
    "is the paper's point; the relative d90 measure hides part of it at this scale. The MiniLM two-task "
    "curve is an ablation whose full run did not finish this session.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    ablations={"minilm": {"minilm": True}},
    ablation_seeds=2,  # the minilm group costs minutes per seed on one thread
    threads=1,
)
