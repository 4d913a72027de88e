"""Bad input for the prompt_pac_bayes public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.theory.prompt_pac_bayes import (
    CachedEncoder,
    LMPrior,
    PromptPACBayes,
    RankPrior,
    UniformPrior,
    class_texts,
    greedy_prompt_search,
    kl_bound,
    kl_inverse,
    occam_bound,
    pac_bayes_bound,
    quantize_weights,
    quantized_probe_nats,
    zero_shot_errors,
    zero_shot_predict,
)

VOCAB = ["a", "the", "photo", "dog", "cat"]
NAMES = ["dog", "cat"]


def _enc(texts):
    return torch.stack([torch.full((4,), float(len(t))) + torch.arange(4.0) * (i % 3) for i, t in enumerate(texts)])


def _f(n=6, d=4):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def _pb():
    return PromptPACBayes(_enc, NAMES, UniformPrior(VOCAB, 2))


def _y(*v):
    return torch.tensor(v, dtype=torch.long)


def _nan(t):
    t = t.clone()
    t[1, 1] = float("nan")
    return t


CASES = [
    ("occam_train_error", lambda: occam_bound(1.5, 10.0, 100), r"train_error must be in \[0, 1\]"),
    ("occam_nats_negative", lambda: occam_bound(0.1, -1.0, 100), r"neg_log_prior must be in \[0, inf\)"),
    ("occam_nats_inf", lambda: occam_bound(0.1, float("inf"), 100), r"neg_log_prior must be a finite number"),
    ("occam_n", lambda: occam_bound(0.1, 10.0, 0), r"n must be an integer >= 1"),
    ("kl_delta", lambda: kl_bound(0.1, 10.0, 100, delta=0.0), r"delta must be in \(0, 1\)"),
    ("bound_form", lambda: pac_bayes_bound(0.1, 10.0, 100, form="catoni"), r"form must be one of"),
    ("kl_inverse_q", lambda: kl_inverse(-0.1, 1.0), r"q must be in \[0, 1\]"),
    ("kl_inverse_c", lambda: kl_inverse(0.1, -1.0), r"c must be in \[0, inf\)"),
    ("kl_inverse_tol", lambda: kl_inverse(0.1, 1.0, tol=0.0), r"tol must be in \(0, inf\)"),
    ("probe_nats_bits", lambda: quantized_probe_nats(10, 0), r"bits must be an integer >= 1"),
    ("probe_nats_weights", lambda: quantized_probe_nats(0, 8), r"num_weights must be an integer >= 1"),
    ("quantize_nan", lambda: quantize_weights(_nan(_f()), 8), r"w must be a non-empty finite"),
    ("quantize_bits", lambda: quantize_weights(_f(), 1), r"bits must be an integer >= 2"),
    ("uniform_vocab_empty", lambda: UniformPrior([], 2), r"vocab must be a non-empty sequence"),
    ("uniform_vocab_repeat", lambda: UniformPrior(["a", "a"], 2), r"vocab must not repeat a token"),
    ("uniform_max_length", lambda: UniformPrior(VOCAB, -1), r"max_length must be an integer >= 0"),
    ("prior_too_long", lambda: UniformPrior(VOCAB, 1).neg_log_prob(("a", "the")), r"prompt length must be <= max"),
    ("prior_unknown_token", lambda: UniformPrior(VOCAB, 2).neg_log_prob(("zebra",)), r"not in the prior's vocab"),
    ("prior_string_prompt", lambda: UniformPrior(VOCAB, 2).neg_log_prob("a photo"), r"prompt must be a sequence"),
    ("rank_exponent", lambda: RankPrior(VOCAB, 2, exponent=-1.0), r"exponent must be in \[0, inf\)"),
    ("lm_not_callable", lambda: LMPrior(VOCAB, 2, 3), r"next_token_logprobs must be a callable"),
    ("lm_shape", lambda: LMPrior(VOCAB, 2, lambda p: torch.zeros(3)).neg_log_prob(("a",)),
     r"next_token_logprobs must return \[5\] values"),
    ("encoder_not_callable", lambda: CachedEncoder("minilm"), r"encode must be a callable"),
    ("encoder_bad_output", lambda: CachedEncoder(lambda t: torch.zeros(1, 4))(["a", "b"]),
     r"encode must return finite \[2, D\]"),
    ("encoder_texts", lambda: CachedEncoder(_enc)("a dog"), r"texts must be a non-empty sequence of strings"),
    ("class_texts_names", lambda: class_texts(("a",), ["dog"]), r"class_names must hold at least 2"),
    ("class_texts_per_class", lambda: class_texts([("a",), ("b",), ("c",)], NAMES),
     r"class-specific prompts must give one token sequence per class \(2\)"),
    ("predict_dim", lambda: zero_shot_predict(_f(), torch.randn(2, 5)), r"weights must have 4 columns"),
    ("predict_nan", lambda: zero_shot_predict(_nan(_f()), torch.randn(2, 4)), r"features holds 1 NaN"),
    ("predict_empty", lambda: zero_shot_predict(torch.zeros(0, 4), torch.randn(2, 4)), r"features must be a non-empty"),
    ("errors_shape", lambda: zero_shot_errors(_f(), _y(0, 1, 0, 1, 0, 1), torch.randn(2, 4)),
     r"weights must have shape \[H, K, 4\]"),
    ("errors_labels", lambda: zero_shot_errors(_f(), _y(0, 1, 0, 1, 0, 2), torch.randn(3, 2, 4)),
     r"labels must lie in \[0, 1\]"),
    ("errors_labels_len", lambda: zero_shot_errors(_f(), _y(0, 1), torch.randn(3, 2, 4)),
     r"labels must have shape \[6\]"),
    ("search_objective", lambda: greedy_prompt_search(_enc, _f(), _y(0, 1, 0, 1, 0, 1), NAMES, VOCAB,
                                                      UniformPrior(VOCAB, 2), length=1, objective="test"),
     r"objective must be one of"),
    ("search_prior", lambda: greedy_prompt_search(_enc, _f(), _y(0, 1, 0, 1, 0, 1), NAMES, VOCAB, "uniform"),
     r"prior must be a UniformPrior"),
    ("search_candidates", lambda: greedy_prompt_search(_enc, _f(), _y(0, 1, 0, 1, 0, 1), NAMES, ["zebra"],
                                                       UniformPrior(VOCAB, 2), length=1),
     r"candidates \['zebra'\] are not in the prior's vocabulary"),
    ("search_length", lambda: greedy_prompt_search(_enc, _f(), _y(0, 1, 0, 1, 0, 1), NAMES, VOCAB,
                                                   UniformPrior(VOCAB, 2), length=3),
     r"len\(start\) \+ length must be <= the prior's max_length=2"),
    ("entry_form", lambda: PromptPACBayes(_enc, NAMES, UniformPrior(VOCAB, 2), form="pinsker"), r"form must be one of"),
    ("entry_delta", lambda: PromptPACBayes(_enc, NAMES, UniformPrior(VOCAB, 2), delta=1.0), r"delta must be in"),
    ("entry_prior", lambda: PromptPACBayes(_enc, NAMES, None), r"prior must be a UniformPrior"),
    ("entry_prior_name", lambda: PromptPACBayes(_enc, NAMES, "zipf", vocab=VOCAB), r"prior must be one of"),
    ("entry_prior_vocab", lambda: PromptPACBayes(_enc, NAMES, "uniform"), r"prior='uniform' needs vocab"),
    ("entry_candidates", lambda: PromptPACBayes(_enc, NAMES, vocab=VOCAB, candidates=0),
     r"candidates must be an integer >= 1"),
    ("entry_search_length", lambda: PromptPACBayes(_enc, NAMES, vocab=VOCAB, search_length=-1),
     r"search_length must be an integer >= 0"),
    ("entry_objective", lambda: PromptPACBayes(_enc, NAMES, vocab=VOCAB, objective="acc"), r"objective must be one of"),
    ("entry_names", lambda: PromptPACBayes(_enc, ["dog"], UniformPrior(VOCAB, 2)), r"class_names must hold at least 2"),
    ("entry_certify_labels", lambda: _pb().certify(_f(), _y(0, 1, 0, 1, 0, 3), ("a",)), r"labels must lie in \[0, 1\]"),
]  # fmt: skip
