"""Understanding prompt engineering may not require rethinking generalization, Victor Akinwande, Yiding Jiang,
Dylan Sam and J. Zico Kolter, ICLR 2024.

Prompts hand-tuned or searched for zero-shot classifiers barely overfit. The paper explains why with a classical
bound: a prompt is a discrete token sequence, a language model gives it a prior fixed before the data, and with a
point-mass posterior on the chosen prompt the PAC-Bayes (Occam) bound pays only ``-ln P(prompt)`` nats, a few tens
for a few tokens, so at tens of thousands of training samples the bound is non-vacuous and lands within a few
points of the test error; the bound also ranks prompts well enough to select one. A weight-space bound on a
linear probe over the same features pays ~ (#weights x bits) nats and is uninformative.

Equations (0-1 loss, ``n`` i.i.d. samples, with probability ``>= 1 - delta`` for all prompts at once):

* zero-shot classifier: ``w_k(p) = Enc(text_k(p)) / ||.||``, ``yhat(x) = argmax_k <x / ||x||, w_k(p)>``;
* prior: ``P(p) = P(len) prod_t P(p_t | p_<t)`` (:class:`LMPrior`; :class:`UniformPrior` ``1/|V|`` per token,
  :class:`RankPrior` Zipf by token rank); the length is uniform on ``0..max_length`` (``ln(max_length + 1)`` nats),
  so that prompts of different lengths share one simultaneous guarantee; class-specific prompts add their nats;
  class names that every hypothesis contains cost nothing;
* Occam / Hoeffding: ``R(p) <= R_hat(p) + sqrt((-ln P(p) + ln 1/delta) / (2n))`` (:func:`occam_bound`);
* kl form: ``R(p) <= kl^-1(R_hat(p), (-ln P(p) + ln(2 sqrt(n) / delta)) / n)`` (:func:`kl_bound`), with
  ``kl^-1(q, c) = max{r : kl(q || r) <= c}`` by bisection (:func:`kl_inverse`). Which variant the paper tabulates
  could not be confirmed (card), so both are built; the kl form pays ``ln(2 sqrt n)`` more nats and is the
  tighter one only away from ``R_hat = 1/2`` (small training error or many nats), not everywhere;
* weight-space comparison: a linear probe with ``b``-bit weights under a uniform code has
  ``-ln P = (#weights) b ln 2`` (:func:`quantized_probe_nats`, :func:`quantize_weights`).

Greedy search (:func:`greedy_prompt_search`): from a start prompt, at each of up to ``max_length`` positions try
every candidate token appended before the class name, keep the one with the lowest training error (or bound),
stop at the length limit or, optionally, when the bound stops decreasing. The prior is data-independent, so the
bound stays valid for the searched prompt. Text embeddings are cached per string (:class:`CachedEncoder`); the
search costs ``O(L |V| K)`` encodings.

The encoder is any ``encode(list of str) -> [N, D]`` callable (the experiment uses all-MiniLM-L6-v2 for both
roles, sentences as "images"). No library computes PAC-Bayes prompt bounds; the kl inverse is a 1-D bisection
(``scipy.optimize`` was considered: a fixed-tolerance bisection is simpler to test). Not built: CLIP image
classification and a real language-model prior (neither is available offline); :class:`LMPrior` takes any
next-token log-probability function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_batch,
    check_choice,
    check_labels,
    check_positive_int,
    check_range,
)
from priorkit.core.spec import MethodSpec

__all__ = [
    "CachedEncoder",
    "LMPrior",
    "PromptPACBayes",
    "PromptPrior",
    "RankPrior",
    "SearchStep",
    "UniformPrior",
    "class_texts",
    "greedy_prompt_search",
    "kl_bernoulli",
    "kl_bound",
    "kl_inverse",
    "occam_bound",
    "pac_bayes_bound",
    "prompt_weights",
    "quantize_weights",
    "quantized_probe_nats",
    "whole_words",
    "zero_shot_errors",
    "zero_shot_predict",
]

FORMS = ("kl", "occam")
OBJECTIVES = ("train_error", "bound")
PRIORS = ("uniform", "rank")
Encoder = Callable[[Sequence[str]], torch.Tensor]

SPEC = MethodSpec(
    status="implemented",
    entry="PromptPACBayes",
    missing="CLIP image classification with a real language-model prior is not built (no such models offline): "
    "the experiment scores templated sentences with all-MiniLM-L6-v2 as both encoders, with a uniform or Zipf-by-rank "
    "prior over the tokenizer's whole words; LMPrior takes any next-token log-probability function but none ships",
    presets={
        # card: delta 0.05, both bound forms, greedy search over L <= 4 tokens among the 2,000 most frequent whole
        # words, a uniform prior over the whole-word vocabulary, length uniform on 0..4
        "paper": {"delta": 0.05, "form": "kl", "prior": "uniform", "max_length": 4, "candidates": 2000,
                  "search_length": 4, "objective": "train_error"},
        # CPU budget: 400 candidates and 3 searched positions (the language, and so the prior, still allows 4)
        "small": {"delta": 0.05, "form": "kl", "prior": "uniform", "max_length": 4, "candidates": 400,
                  "search_length": 3, "objective": "train_error"},
    },
)  # fmt: skip


# ------------------------------------------------------------------------------------------------- the bounds


def _check_common(train_error: float, neg_log_prior: float, n: int, delta: float) -> None:
    check_range("train_error", train_error, 0.0, 1.0)
    check_range("neg_log_prior", neg_log_prior, 0.0)
    if not math.isfinite(float(neg_log_prior)):
        raise PriorkitError(f"neg_log_prior must be a finite number of nats >= 0, got {neg_log_prior!r}")
    check_positive_int("n", n)
    check_range("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def kl_bernoulli(q: float, p: float) -> float:
    """``kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p))`` (0 ln 0 = 0; infinite when p excludes q's support)."""
    check_range("q", q, 0.0, 1.0)
    check_range("p", p, 0.0, 1.0)
    out = 0.0
    for a, b in ((q, p), (1.0 - q, 1.0 - p)):
        if a > 0:
            if b <= 0:
                return math.inf
            out += a * math.log(a / b)
    return max(out, 0.0)


def kl_inverse(q: float, c: float, tol: float = 1e-9) -> float:
    """``max{r in [q, 1] : kl(q || r) <= c}`` by bisection to ``tol`` (``q = 0``: ``1 - exp(-c)`` exactly)."""
    check_range("q", q, 0.0, 1.0)
    check_range("c", c, 0.0)
    check_range("tol", tol, 0.0, low_inclusive=False)
    if q >= 1.0:
        return 1.0
    if q == 0.0:
        return -math.expm1(-c)
    if kl_bernoulli(q, 1.0 - 1e-15) <= c:
        return 1.0
    lo, hi = q, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if kl_bernoulli(q, mid) <= c:
            lo = mid
        else:
            hi = mid
    return lo


def occam_bound(train_error: float, neg_log_prior: float, n: int, delta: float = 0.05) -> float:
    """``train_error + sqrt((neg_log_prior + ln 1/delta) / (2 n))`` (may exceed 1: then vacuous)."""
    _check_common(train_error, neg_log_prior, n, delta)
    return train_error + math.sqrt((neg_log_prior + math.log(1.0 / delta)) / (2 * n))


def kl_bound(train_error: float, neg_log_prior: float, n: int, delta: float = 0.05) -> float:
    """``kl^-1(train_error, (neg_log_prior + ln(2 sqrt(n) / delta)) / n)``."""
    _check_common(train_error, neg_log_prior, n, delta)
    return kl_inverse(train_error, (neg_log_prior + math.log(2 * math.sqrt(n) / delta)) / n)


def pac_bayes_bound(train_error: float, neg_log_prior: float, n: int, delta: float = 0.05, form: str = "kl") -> float:
    """:func:`kl_bound` or :func:`occam_bound`."""
    check_choice("form", form, FORMS)
    return (kl_bound if form == "kl" else occam_bound)(train_error, neg_log_prior, n, delta)


def quantized_probe_nats(num_weights: int, bits: int = 8) -> float:
    """``-ln P`` of a ``bits``-bit weight vector under a uniform code: ``num_weights * bits * ln 2``."""
    check_positive_int("num_weights", num_weights)
    check_positive_int("bits", bits)
    return num_weights * bits * math.log(2.0)


def quantize_weights(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric uniform quantisation to ``2^bits - 1`` levels on ``[-max|w|, max|w|]`` (the scale is one more
    number; the count in :func:`quantized_probe_nats` leaves it out, as the card's estimate does)."""
    check_positive_int("bits", bits, 2)
    w = as_tensor("w", w)
    if not w.is_floating_point() or not bool(torch.isfinite(w).all()) or w.numel() == 0:
        raise PriorkitError("w must be a non-empty finite floating-point tensor")
    scale = float(w.abs().max())
    if scale == 0:
        return w.clone()
    half = 2 ** (bits - 1) - 1
    return torch.round(w / scale * half) / half * scale


# ------------------------------------------------------------------------------------------------- the priors


def whole_words(vocab: Mapping[str, int] | Sequence[str]) -> list[str]:
    """The whole words of a WordPiece vocabulary (ASCII letters only, no ``##`` pieces or ``[special]`` tokens), in
    vocabulary-id order: for BERT's vocabulary (MiniLM's tokenizer) the single letters, then words by corpus frequency
    ("the", "of", "and", ...). A data-independent rank for :class:`RankPrior` and the candidate set."""
    items = sorted(vocab.items(), key=lambda kv: kv[1]) if isinstance(vocab, Mapping) else [(w, 0) for w in vocab]
    return [w for w, _ in items if isinstance(w, str) and w.isascii() and w.isalpha()]


class PromptPrior:
    """``-ln P(prompt)`` in nats: the length term plus the tokens' terms; shared or class-specific prompts."""

    def __init__(self, vocab: Sequence[str], max_length: int) -> None:
        vocab = list(vocab)
        if not vocab or not all(isinstance(v, str) and v for v in vocab):
            raise PriorkitError("vocab must be a non-empty sequence of non-empty token strings")
        if len(set(vocab)) != len(vocab):
            raise PriorkitError("vocab must not repeat a token")
        check_positive_int("max_length", max_length, 0)
        self.vocab, self.max_length = vocab, max_length
        self.index = {v: i for i, v in enumerate(vocab)}

    def token_nats(self, prefix: Sequence[str], token: str) -> float:
        raise NotImplementedError

    def _check_tokens(self, tokens: Sequence[str]) -> tuple[str, ...]:
        if isinstance(tokens, str):
            raise PriorkitError(f"prompt must be a sequence of tokens, got the string {tokens!r}")
        tokens = tuple(tokens)
        if len(tokens) > self.max_length:
            raise PriorkitError(f"prompt length must be <= max_length={self.max_length}, got {len(tokens)}: {tokens}")
        bad = [t for t in tokens if t not in self.index]
        if bad:
            raise PriorkitError(f"prompt tokens {bad} are not in the prior's vocabulary ({len(self.vocab)} tokens)")
        return tokens

    def neg_log_prob(self, prompt: Sequence[str] | Sequence[Sequence[str]]) -> float:
        """Nats of a shared prompt (a token sequence) or of class-specific prompts (one sequence per class,
        chosen independently: the sum)."""
        if isinstance(prompt, str):
            raise PriorkitError(f"prompt must be a sequence of tokens, got the string {prompt!r}")
        prompt = list(prompt)
        if prompt and all(not isinstance(p, str) for p in prompt):
            return sum(self.neg_log_prob(p) for p in prompt)
        tokens = self._check_tokens(prompt)
        out = math.log(self.max_length + 1)
        for i, t in enumerate(tokens):
            out += self.token_nats(tokens[:i], t)
        return out


class UniformPrior(PromptPrior):
    """Every token ``1/|V|``: ``-ln P(p) = ln(max_length + 1) + len(p) ln |V|``."""

    def token_nats(self, prefix: Sequence[str], token: str) -> float:
        return math.log(len(self.vocab))


class RankPrior(PromptPrior):
    """Zipf by rank: ``P(token of rank r) = r^-s / sum_{j<=|V|} j^-s`` (rank 1 = first in ``vocab``)."""

    def __init__(self, vocab: Sequence[str], max_length: int, exponent: float = 1.0) -> None:
        super().__init__(vocab, max_length)
        check_range("exponent", exponent, 0.0)
        self.exponent = exponent
        ranks = torch.arange(1, len(self.vocab) + 1, dtype=torch.float64)
        self._log_z = float(torch.logsumexp(-exponent * ranks.log(), 0))

    def token_nats(self, prefix: Sequence[str], token: str) -> float:
        return self.exponent * math.log(self.index[token] + 1) + self._log_z


class LMPrior(PromptPrior):
    """A language-model prior: ``next_token_logprobs(prefix) -> [|V|]`` log-probabilities over ``vocab`` (they
    must sum to 1 over ``vocab``: renormalise a model's distribution onto the prompt language first)."""

    def __init__(
        self, vocab: Sequence[str], max_length: int, next_token_logprobs: Callable[[tuple[str, ...]], torch.Tensor]
    ) -> None:
        super().__init__(vocab, max_length)
        if not callable(next_token_logprobs):
            raise PriorkitError("next_token_logprobs must be a callable prefix -> [|V|] log-probabilities")
        self.next_token_logprobs = next_token_logprobs

    def token_nats(self, prefix: Sequence[str], token: str) -> float:
        lp = torch.as_tensor(self.next_token_logprobs(tuple(prefix)), dtype=torch.float64)
        if lp.shape != (len(self.vocab),):
            raise PriorkitError(f"next_token_logprobs must return [{len(self.vocab)}] values, got {list(lp.shape)}")
        total = float(torch.logsumexp(lp, 0))
        if not math.isfinite(total) or abs(total) > 1e-6:
            raise PriorkitError(f"next_token_logprobs must be normalised over the vocabulary, got log-sum {total}")
        return -float(lp[self.index[token]])


# ------------------------------------------------------------------------------------ the zero-shot classifier


class CachedEncoder:
    """Wraps ``encode(list of str) -> [N, D]`` with a per-string cache and L2 normalisation (embeddings as float32)."""

    def __init__(self, encode: Encoder) -> None:
        if not callable(encode):
            raise PriorkitError(f"encode must be a callable list of str -> [N, D] tensor, got {type(encode).__name__}")
        self.encode, self.cache = encode, {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not len(texts):
            raise PriorkitError("texts must be a non-empty sequence of strings")
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            emb = torch.as_tensor(self.encode(todo)).detach().float()
            if emb.dim() != 2 or emb.shape[0] != len(todo) or not bool(torch.isfinite(emb).all()):
                raise PriorkitError(f"encode must return finite [{len(todo)}, D] embeddings, got {list(emb.shape)}")
            for t, e in zip(todo, F.normalize(emb, dim=1)):
                self.cache[t] = e
        return torch.stack([self.cache[t] for t in texts])


def class_texts(prompt: Sequence[str] | Sequence[Sequence[str]], class_names: Sequence[str]) -> list[str]:
    """``text_k(p)``: the prompt's tokens then the class name (``("a", "photo", "of", "a")`` and ``dog`` give "a
    photo of a dog"); class-specific prompts give one token sequence per class."""
    names = list(class_names)
    if len(names) < 2 or not all(isinstance(c, str) and c for c in names):
        raise PriorkitError("class_names must hold at least 2 non-empty strings")
    if isinstance(prompt, str):
        raise PriorkitError(f"prompt must be a sequence of tokens, got the string {prompt!r}")
    prompt = list(prompt)
    if prompt and all(not isinstance(p, str) for p in prompt):
        if len(prompt) != len(names):
            raise PriorkitError(f"class-specific prompts must give one token sequence per class ({len(names)})")
        return [" ".join([*p, c]) for p, c in zip(prompt, names)]
    return [" ".join([*prompt, c]) for c in names]


def prompt_weights(encoder: Encoder, prompt: Sequence[str], class_names: Sequence[str]) -> torch.Tensor:
    """``W [K, D]``: the normalised text embeddings of the classes' prompted texts."""
    return F.normalize(torch.as_tensor(encoder(class_texts(prompt, class_names))).float(), dim=1)


def _features(x: object) -> torch.Tensor:
    return F.normalize(check_batch("features", as_tensor("features", x), dim=2).float(), dim=1)


def zero_shot_predict(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``argmax_k <x / ||x||, w_k>``."""
    f = _features(features)
    w = check_batch("weights", as_tensor("weights", weights), dim=2).float()
    if w.shape[1] != f.shape[1]:
        raise PriorkitError(f"weights must have {f.shape[1]} columns (the feature dimension), got {list(w.shape)}")
    return (f @ F.normalize(w, dim=1).T).argmax(1)


def zero_shot_errors(
    features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """0-1 error of many classifiers at once: ``weights [H, K, D]`` -> ``[H]`` error rates on ``(features,
    labels)`` (in chunks of ``chunk`` classifiers, so ``N x chunk x K`` scores are in memory)."""
    f = _features(features)
    w = as_tensor("weights", weights).float()
    if w.dim() != 3 or w.shape[2] != f.shape[1] or w.shape[0] == 0:
        raise PriorkitError(f"weights must have shape [H, K, {f.shape[1]}], got {list(w.shape)}")
    y = check_labels("labels", as_tensor("labels", labels), w.shape[1], length=len(f))
    w = F.normalize(w, dim=2)
    out = []
    for s in range(0, w.shape[0], chunk):
        block = w[s : s + chunk]
        scores = (f @ block.reshape(-1, f.shape[1]).T).view(len(f), block.shape[0], block.shape[1])
        out.append((scores.argmax(2) != y.unsqueeze(1)).double().mean(0))
    return torch.cat(out)


@dataclass(frozen=True)
class SearchStep:
    """One prompt on the greedy path: its tokens, training error, prior nats and bound."""

    prompt: tuple[str, ...]
    train_error: float
    neg_log_prior: float
    bound: float


def greedy_prompt_search(
    encoder: Encoder,
    features: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    candidates: Sequence[str],
    prior: PromptPrior,
    *,
    length: int = 4,
    start: Sequence[str] = (),
    objective: str = "train_error",
    form: str = "kl",
    delta: float = 0.05,
    stop_when_bound_rises: bool = True,
) -> list[SearchStep]:
    """Greedy search: append, position by position, the candidate token that minimises ``objective`` (training
    error, or the bound) of the prompted zero-shot classifier; ties go to the earlier candidate. Returns the path
    (the start prompt first); with ``stop_when_bound_rises`` it ends when the best extension's bound is not lower."""
    check_positive_int("length", length, 0)
    check_choice("objective", objective, OBJECTIVES)
    check_choice("form", form, FORMS)
    if not isinstance(prior, PromptPrior):
        raise PriorkitError(f"prior must be a UniformPrior, RankPrior or LMPrior, got {type(prior).__name__}")
    cands = list(candidates)
    if not cands or not all(isinstance(c, str) and c for c in cands):
        raise PriorkitError("candidates must be a non-empty sequence of token strings")
    bad = [c for c in cands if c not in prior.index]
    if bad:
        raise PriorkitError(f"candidates {bad[:5]} are not in the prior's vocabulary")
    names = list(class_names)
    f = _features(features)
    y = check_labels("labels", as_tensor("labels", labels), len(names), length=len(f))
    n = len(f)
    prompt = prior._check_tokens(start)
    if len(prompt) + length > prior.max_length:
        raise PriorkitError(f"len(start) + length must be <= the prior's max_length={prior.max_length}")

    def step_for(p: tuple[str, ...], err: float) -> SearchStep:
        nats = prior.neg_log_prob(p)
        return SearchStep(p, err, nats, pac_bayes_bound(err, nats, n, delta, form))

    w0 = prompt_weights(encoder, prompt, names).unsqueeze(0)
    path = [step_for(prompt, float(zero_shot_errors(f, y, w0)[0]))]
    for _ in range(length):
        texts = [t for c in cands for t in class_texts([*prompt, c], names)]
        w = torch.as_tensor(encoder(texts)).float().view(len(cands), len(names), -1)
        errs = zero_shot_errors(f, y, w).tolist()
        if objective == "train_error":
            best = min(range(len(cands)), key=lambda i: (errs[i], i))
            step = step_for((*prompt, cands[best]), errs[best])
        else:
            steps = [step_for((*prompt, c), e) for c, e in zip(cands, errs)]
            step = min(steps, key=lambda s: s.bound)
        if stop_when_bound_rises and step.bound >= path[-1].bound:
            break
        path.append(step)
        prompt = step.prompt
    return path


# ------------------------------------------------------------------------------------------------- the entry


class PromptPACBayes:
    """Zero-shot prompt classifiers over a text encoder with their PAC-Bayes / Occam bounds and greedy search.

    ``prior`` is a :class:`PromptPrior`, or ``"uniform"`` / ``"rank"`` built over ``vocab`` with prompt lengths
    ``0..max_length``. ``candidates`` (the first ``k`` tokens of the prior's vocabulary, or a token list; default
    all), ``search_length`` (default ``max_length``) and ``objective`` are the defaults of :meth:`search`. So the
    presets apply as ``PromptPACBayes(encode, class_names, vocab=whole_words(tokenizer.get_vocab()),
    **SPEC.presets["paper"])``. ``certify(features, labels, prompt)`` gives the training error, the prior's nats and
    both bounds.
    """

    def __init__(
        self,
        encode: Encoder,
        class_names: Sequence[str],
        prior: PromptPrior | str = "uniform",
        *,
        vocab: Sequence[str] | None = None,
        max_length: int = 4,
        rank_exponent: float = 1.0,
        delta: float = 0.05,
        form: str = "kl",
        candidates: int | Sequence[str] | None = None,
        search_length: int | None = None,
        objective: str = "train_error",
    ) -> None:
        self.encoder = encode if isinstance(encode, CachedEncoder) else CachedEncoder(encode)
        class_texts((), class_names)  # validates the names
        if isinstance(prior, str):
            check_choice("prior", prior, PRIORS)
            if vocab is None:
                raise PriorkitError(f"prior={prior!r} needs vocab (the prompt language's tokens)")
            uniform = prior == "uniform"
            prior = UniformPrior(vocab, max_length) if uniform else RankPrior(vocab, max_length, rank_exponent)
        if not isinstance(prior, PromptPrior):
            raise PriorkitError(f"prior must be a UniformPrior, RankPrior or LMPrior, got {type(prior).__name__}")
        check_range("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_choice("form", form, FORMS)
        check_choice("objective", objective, OBJECTIVES)
        if candidates is None:
            cands = list(prior.vocab)
        elif isinstance(candidates, int) and not isinstance(candidates, bool):
            check_positive_int("candidates", candidates)
            cands = list(prior.vocab[:candidates])
        else:
            cands = list(candidates)
        if search_length is not None:
            check_positive_int("search_length", search_length, 0)
        self.class_names, self.prior, self.delta, self.form = list(class_names), prior, delta, form
        self.candidates, self.objective = cands, objective
        self.search_length = prior.max_length if search_length is None else search_length

    def weights(self, prompt: Sequence[str] | Sequence[Sequence[str]]) -> torch.Tensor:
        return prompt_weights(self.encoder, prompt, self.class_names)

    def predict(self, features: torch.Tensor, prompt: Sequence[str] | Sequence[Sequence[str]]) -> torch.Tensor:
        return zero_shot_predict(features, self.weights(prompt))

    def error(self, features: torch.Tensor, labels: torch.Tensor, prompt: Sequence[str]) -> float:
        return float(zero_shot_errors(features, labels, self.weights(prompt).unsqueeze(0))[0])

    def certify(
        self, features: torch.Tensor, labels: torch.Tensor, prompt: Sequence[str] | Sequence[Sequence[str]]
    ) -> dict[str, float]:
        """``train_error``, ``nats`` (``-ln P``), ``occam`` and ``kl`` bounds, and ``bound`` (this form's)."""
        nats = self.prior.neg_log_prob(prompt)
        err = self.error(features, labels, prompt)
        n = len(features)
        out = {"train_error": err, "nats": nats, "occam": occam_bound(err, nats, n, self.delta),
               "kl": kl_bound(err, nats, n, self.delta)}  # fmt: skip
        out["bound"] = out[self.form]
        return out

    def search(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        candidates: Sequence[str] | None = None,
        *,
        length: int | None = None,
        start: Sequence[str] = (),
        objective: str | None = None,
        stop_when_bound_rises: bool = True,
    ) -> list[SearchStep]:
        """:func:`greedy_prompt_search` with this instance's prior, bound form and (unless given) search settings."""
        return greedy_prompt_search(
            self.encoder, features, labels, self.class_names,
            self.candidates if candidates is None else candidates, self.prior,
            length=self.search_length if length is None else length, start=start,
            objective=self.objective if objective is None else objective, form=self.form, delta=self.delta,
            stop_when_bound_rises=stop_when_bound_rises,
        )  # fmt: skip
