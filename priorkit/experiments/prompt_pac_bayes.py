"""PAC-Bayes bounds of prompted zero-shot classifiers vs a weight-space probe bound (card: regularizers-theory.md,
"Understanding prompt engineering may not require rethinking generalization", "Small-scale check on CPU").

The real pretrained all-MiniLM-L6-v2 (:mod:`priorkit.models.minilm`, offline) plays both encoders. Ten concrete
nouns (CIFAR-10's classes) are the classes; a fixed pool of templated sentences about each noun (more than 200
templates from openers x sentence frames, with adjectives, verbs, places and times) is encoded once, and every
sample is the embedding of a pool sentence of its class plus isotropic Gaussian noise of scale ``sigma`` (set so
that the handcrafted prompt "a photo of a {class}" is right on roughly 70-80% of samples, as the card asks). Train
and test samples are i.i.d. from that one distribution. A prompt is a token sequence put before the class name.

Per seed: the greedy search (:func:`priorkit.theory.prompt_pac_bayes.greedy_prompt_search`, on the training error)
from the empty prompt over the first ``candidates`` whole words of MiniLM's tokenizer in vocabulary order (the single
letters, then words by corpus frequency: the card's "most frequent whole words"), ``search_length`` positions, every
length reported; the handcrafted prompt; the prior is uniform over the tokenizer's whole words
with the length uniform on ``0..max_length`` (the Zipf-by-rank prior is reported beside it). The prompt with the
smallest kl bound among the searched path and the handcrafted prompt is the selected one (every bound holds for
all prompts of the language at once, so selecting by it keeps the guarantee). Baseline: a linear probe on the same
normalised features trained through the engine, its weights quantised to 8 bits, bounded with ``(#weights) 8 ln 2``
nats.

Rules (the card's "Expected", fixed before the first run): for the selected prompt, the kl bound is at most 5
points above the test error (card: "within ~3-5 points"), and at least 0 above it (the bound holds); the Occam form
is also within 5 points; the selected prompt's test error is within 2 points of the best test error among the
reported prompts ("the bound-minimising prompt is among the best on test"); the probe's bound gap is at least 30
points larger than the prompt's (card: the probe's bound ~0.7, "far above its test error").

Embeddings (sentences and prompts) are cached per process, so the first seed pays for the encodings.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.theory.prompt_pac_bayes import (
    CachedEncoder,
    PromptPACBayes,
    RankPrior,
    kl_bound,
    occam_bound,
    quantize_weights,
    quantized_probe_nats,
    whole_words,
)
from priorkit.train import Phase, Recipe, TrainConfig, Trainer

CLASSES = ("airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HANDCRAFTED = ("a", "photo", "of", "a")

OPENERS = (
    "", "yesterday", "in the picture", "honestly", "as expected", "from far away", "according to the report",
    "in the morning", "suddenly", "once again",
)  # fmt: skip
FRAMES = (
    "the {adj} {noun} {verb} {place}",
    "a {adj} {noun} {verb} {place} {time}",
    "i saw a {adj} {noun} {place}",
    "there is a {adj} {noun} {place}",
    "look at that {adj} {noun} {place}",
    "my neighbour's {noun} {verb} {place} {time}",
    "we found a {adj} {noun} {place}",
    "someone left the {adj} {noun} {place}",
    "this {noun} looks {adj} {time}",
    "that {adj} {noun} {verb} again {time}",
    "everyone noticed the {adj} {noun} {place}",
    "the photo shows a {adj} {noun} {place}",
    "a {noun} {verb} {place}, looking {adj}",
    "nobody expected a {adj} {noun} {place}",
    "the {noun} was {adj} {time}",
    "she pointed at the {adj} {noun} {place}",
    "he painted a {adj} {noun} {place}",
    "the children watched a {adj} {noun} {place}",
    "the {adj} old {noun} {verb} {place}",
    "our {noun} {verb} {place} {time}",
    "you can see the {noun} {place}",
    "a small picture of a {adj} {noun}",
    "the story is about a {adj} {noun}",
    "they talked about the {noun} {time}",
)  # fmt: skip
ADJECTIVES = (
    "big", "small", "old", "young", "red", "white", "dark", "beautiful", "strange", "quiet", "fast", "tiny", "huge",
    "dirty", "shiny", "brown", "lonely", "famous",
)  # fmt: skip
VERBS = (
    "is", "stays", "waits", "appears", "moves", "stands", "rests", "remains", "sits", "lingers", "shows up", "stops",
)  # fmt: skip
PLACES = (
    "near the house", "in the field", "by the road", "at the park", "next to the river", "behind the fence",
    "under the bridge", "in the city", "on the hill", "close to the lake", "in the yard", "at the harbour",
)  # fmt: skip
TIMES = ("today", "at night", "this morning", "after lunch", "in winter", "last week", "every day", "at dawn")


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    n_train: int = 20_000
    n_test: int = 10_000
    sentences_per_class: int = 100  # the fixed pool (encoded once); samples are pool sentences + noise
    pool_seed: int = 0
    sigma: float = 0.2  # per-coordinate Gaussian noise on the unit-norm sentence embedding
    candidates: int = 400  # the most frequent whole words (card: 2,000; CPU budget)
    search_length: int = 3  # greedy positions (card: up to 4)
    max_length: int = 4  # the prompt language: lengths 0..4, uniform (covers the 4-token handcrafted prompt)
    delta: float = 0.05
    rank_exponent: float = 1.0
    probe_bits: int = 8
    probe_epochs: int = 10
    probe_batch: int = 256
    probe_lr: float = 0.01


FULL = Config()
QUICK = Config(n_train=2000, n_test=1000, sentences_per_class=30, candidates=40, search_length=2, probe_epochs=5)


def templates() -> list[str]:
    """Opener x frame: the sentence templates (more than 200)."""
    out = []
    for o, f in itertools.product(OPENERS, FRAMES):
        out.append(f if not o else f"{o}, {f}")
    return out


def sentence_pool(per_class: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """``per_class`` distinct templated sentences about each class noun (fixed by ``seed``) and their labels."""
    rng = random.Random(seed)
    temps = templates()
    texts, labels = [], []
    for k, noun in enumerate(CLASSES):
        seen: set[str] = set()
        while len(seen) < per_class:
            t = rng.choice(temps)
            adj, verb, place, time = (rng.choice(v) for v in (ADJECTIVES, VERBS, PLACES, TIMES))
            seen.add(t.format(adj=adj, noun=noun, verb=verb, place=place, time=time))
        texts += sorted(seen)
        labels += [k] * per_class
    return texts, torch.tensor(labels)


_ENCODER: CachedEncoder | None = None
_VOCAB: list[str] | None = None


def encoder() -> tuple[CachedEncoder, list[str]]:
    """The process-wide cached MiniLM encoder and the tokenizer's whole words (loaded on first use)."""
    global _ENCODER, _VOCAB
    if _ENCODER is None:
        from priorkit.models.minilm import MiniLM

        model = MiniLM()
        _ENCODER = CachedEncoder(lambda texts: model.encode(texts, batch_size=512))
        _VOCAB = whole_words(model.tokenizer.get_vocab())
    assert _VOCAB is not None
    return _ENCODER, _VOCAB


def sample(
    pool: torch.Tensor, per_class: int, n: int, sigma: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` i.i.d. samples: a class uniformly, one of its ``per_class`` pool sentences (the pool is grouped by
    class) uniformly, plus ``sigma`` Gaussian noise per coordinate."""
    y = torch.randint(len(CLASSES), (n,), generator=g)
    pick = y * per_class + torch.randint(per_class, (n,), generator=g)
    return pool[pick] + sigma * torch.randn(n, pool.shape[1], generator=g), y


def _probe(xtr, ytr, xte, yte, c: Config, seed: int) -> dict[str, float]:
    """Linear probe on normalised features through the engine, then ``probe_bits``-bit weights and their bound."""
    ftr, fte = F.normalize(xtr, dim=1), F.normalize(xte, dim=1)
    torch.manual_seed(seed)
    probe = torch.nn.Linear(ftr.shape[1], len(CLASSES))
    phase = Phase("fit", epochs=c.probe_epochs, optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=c.probe_lr))
    cfg = TrainConfig(batch_size=c.probe_batch, seed=seed, progress=False)
    Trainer(probe, TensorDataset(ftr, ytr), recipe=Recipe([phase]), config=cfg).fit()
    with torch.no_grad():
        probe.weight.copy_(quantize_weights(probe.weight, c.probe_bits))
        probe.bias.copy_(quantize_weights(probe.bias, c.probe_bits))
        train_err = float((probe(ftr).argmax(1) != ytr).double().mean())
        test_err = float((probe(fte).argmax(1) != yte).double().mean())
    nats = quantized_probe_nats(probe.weight.numel() + probe.bias.numel(), c.probe_bits)
    kl = kl_bound(train_err, nats, len(ftr), c.delta)
    return {"train_err": train_err, "test_err": test_err, "nats": nats, "bound_kl": kl,
            "bound_occam": occam_bound(train_err, nats, len(ftr), c.delta), "bound_gap": kl - test_err}  # fmt: skip


def run(seed: int, c: Config) -> SeedResult:
    enc, vocab = encoder()
    texts, _ = sentence_pool(c.sentences_per_class, c.pool_seed)
    pool = enc(texts)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = sample(pool, c.sentences_per_class, c.n_train, c.sigma, g)
    xte, yte = sample(pool, c.sentences_per_class, c.n_test, c.sigma, g)
    rank = RankPrior(vocab, c.max_length, c.rank_exponent)
    pb = PromptPACBayes(enc, CLASSES, "uniform", vocab=vocab, max_length=c.max_length, delta=c.delta, form="kl",
                        candidates=c.candidates, search_length=c.search_length)  # fmt: skip
    path = pb.search(xtr, ytr, stop_when_bound_rises=False)
    prompts = {f"len{len(s.prompt)}": s.prompt for s in path}
    prompts["handcrafted"] = HANDCRAFTED
    rows = {}
    for name, p in prompts.items():
        cert = pb.certify(xtr, ytr, p)
        test_err = pb.error(xte, yte, p)
        nats_rank = rank.neg_log_prob(p)
        rows[name] = {
            "prompt": " ".join(p),
            "train_err": cert["train_error"],
            "test_err": test_err,
            "nats": cert["nats"],
            "bound_kl": cert["kl"],
            "bound_occam": cert["occam"],
            "bound_kl_rank": kl_bound(cert["train_error"], nats_rank, c.n_train, c.delta),
        }
    chosen = min(rows, key=lambda k: rows[k]["bound_kl"])
    best_test = min(r["test_err"] for r in rows.values())
    sel = rows[chosen]
    method = {
        "train_err": sel["train_err"],
        "test_err": sel["test_err"],
        "bound_kl": sel["bound_kl"],
        "bound_occam": sel["bound_occam"],
        "bound_kl_rank": sel["bound_kl_rank"],
        "nats": sel["nats"],
        "bound_gap": sel["bound_kl"] - sel["test_err"],
        "occam_gap": sel["bound_occam"] - sel["test_err"],
        "selection_regret": sel["test_err"] - best_test,
        "selected_length": float(len(prompts[chosen])),
        "handcrafted_test_err": rows["handcrafted"]["test_err"],
        "handcrafted_bound_kl": rows["handcrafted"]["bound_kl"],
    }
    for name, r in rows.items():
        for k in ("train_err", "test_err", "bound_kl", "bound_occam"):
            method[f"{k}@{name}"] = r[k]
    baseline = _probe(xtr, ytr, xte, yte, c, seed)
    return {"method": method, "baseline": baseline, "prompts": {k: r["prompt"] for k, r in rows.items()},
            "curves": rows}  # fmt: skip


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    names = list(results[0]["curves"])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = range(len(names))
    for key, label, style in (("test_err", "test error", "o-"), ("train_err", "train error", "s--"),
                              ("bound_kl", "kl bound", "^-"), ("bound_occam", "Occam bound", "v-")):  # fmt: skip
        vals = torch.tensor([[r["curves"][n][key] for n in names] for r in results])
        ax.plot(xs, vals.mean(0), style, label=label)
    probe = torch.tensor([r["baseline"]["bound_kl"] for r in results]).mean()
    ax.axhline(float(probe), color="0.4", ls=":", label="8-bit probe kl bound")
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("error / bound")
    ax.set_title("prompted MiniLM zero-shot classifiers (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "prompt_pac_bayes_bounds.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="prompt_pac_bayes",
    claim="the PAC-Bayes bound of the bound-selected (greedily searched or handcrafted) prompt is non-vacuous and "
    "within 5 points above its test error (Occam form too), the selection is within 2 points of the best test "
    "error, while an 8-bit linear probe's weight-space bound is at least 30 points further from its test error",
    setup="all-MiniLM-L6-v2 (real, offline) as text and 'image' encoder; 10 CIFAR-10 nouns; templated sentences "
    "about each noun plus Gaussian noise as samples; prior uniform over the tokenizer's whole words, prompt length "
    "uniform on 0..max_length; greedy search on the training error; delta 0.05",
    method_name="prompt PAC-Bayes (kl bound, bound-selected prompt)",
    baseline_name="8-bit linear probe, weight-space bound",
    checks=[
        Check("bound_gap", "lower", 0.05, against="value"),
        Check("bound_gap", "higher", 0.0, against="value"),
        Check("occam_gap", "lower", 0.05, against="value"),
        Check("selection_regret", "lower", 0.02, against="value"),
        Check("bound_gap", "lower", 0.30),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    threads=1,
)
