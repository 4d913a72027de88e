"""Bad input for PELA's public entry points (collected by tests/test_bad_input.py)."""

import torch
from torch import nn

from priorkit.adapters.pela import (
    PELA,
    PELALinear,
    capture_outputs,
    feature_distillation_loss,
    logit_distillation_loss,
    pela_compress,
    pela_decompress,
    pela_finetune,
    pela_parameters,
    pela_rank,
    svd_factors,
    weight_perturbation_loss,
)
from priorkit.data import gaussian_mixture
from priorkit.models import MLP
from priorkit.train import Batch, TrainConfig

BLOCKS = ("body.1", "body.3")


def _mlp():
    torch.manual_seed(0)
    return MLP(12, (32, 24), 4)


def _nan(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[1] = value
    return t


def _wp(w=None, f1=None, f2=None, **kw):
    w = torch.randn(5, 4) if w is None else w
    f1 = torch.randn(2, 4) if f1 is None else f1
    f2 = torch.randn(5, 2) if f2 is None else f2
    return weight_perturbation_loss([(w, f1, f2)], **kw)


def _capture(names):
    with capture_outputs(_mlp(), names):
        pass


def _step(pela, x):
    batch = pela.transform_batch(None, Batch(x=x, y=torch.zeros(len(x), dtype=torch.long), index=torch.arange(len(x))))
    batch.output = pela.student(x)
    return pela.extra_loss(None, batch)


def _finetune(student, **kw):
    data = gaussian_mixture(40, num_classes=4, dim=12, seed=0)
    return pela_finetune(student, data.train, config=TrainConfig(epochs=1, progress=False), **kw)


_f = torch.randn(4, 6)

CASES = [
    ("pela_rank_ratio_one", lambda: pela_rank(40, 256, 1), r"ratio \(the compression ratio c\) must be .* > 1"),
    ("pela_rank_ratio_nan", lambda: pela_rank(40, 256, float("nan")), r"ratio .* must be a finite number"),
    ("pela_rank_ratio_inf", lambda: pela_rank(40, 256, float("inf")), r"ratio .* must be a finite number"),
    ("pela_rank_ratio_str", lambda: pela_rank(40, 256, "2"), r"ratio .* must be a finite number"),
    ("pela_rank_zero", lambda: pela_rank(2, 3, 2, name="fc"), r"rank 0 < 1 for fc \(2 -> 3\); use a smaller ratio"),
    ("pela_rank_in_features", lambda: pela_rank(0, 3, 2), r"in_features must be an integer >= 1"),
    ("svd_factors_rank_high", lambda: svd_factors(torch.randn(5, 3), 4), r"rank must be in \[1, 3\]"),
    ("svd_factors_rank_zero", lambda: svd_factors(torch.randn(5, 3), 0), r"rank must be an integer >= 1"),
    ("svd_factors_shape", lambda: svd_factors(torch.randn(5), 1), r"weight must be a non-empty \[out, in\] matrix"),
    ("svd_factors_empty", lambda: svd_factors(torch.zeros(0, 3), 1), r"weight must be a non-empty"),
    ("svd_factors_nan", lambda: svd_factors(_nan(torch.randn(4, 3)), 1), r"weight holds 1 NaN"),
    ("svd_factors_dtype", lambda: svd_factors(torch.ones(4, 3, dtype=torch.long), 1), r"weight must be floating"),
    ("pela_linear_rank", lambda: PELALinear(4, 5, 0), r"rank must be an integer >= 1"),
    ("compress_model_type", lambda: pela_compress("mlp", 2), r"model must be a torch.nn.Module"),
    ("compress_ratio", lambda: pela_compress(_mlp(), 0.5), r"ratio \(the compression ratio c\) must be"),
    ("compress_no_linear", lambda: pela_compress(nn.Conv2d(3, 4, 3), 2), r"no nn.Linear layer"),
    ("compress_skip_dead", lambda: pela_compress(_mlp(), 2, skip=["attn"]), r"skip entries \['attn'\] match no"),
    ("compress_skip_str", lambda: pela_compress(_mlp(), 2, skip="head"), r"skip must be a sequence"),
    ("compress_skip_all", lambda: pela_compress(_mlp(), 2, skip=["body", "head"]), r"no nn.Linear left"),
    ("compress_min_out", lambda: pela_compress(_mlp(), 2, min_out=0), r"min_out must be an integer >= 1"),
    ("compress_twice", lambda: pela_compress(pela_compress(_mlp(), 2), 2), r"already holds PELALinear"),
    (
        "compress_mha",
        lambda: pela_compress(nn.ModuleDict({"attn": nn.MultiheadAttention(16, 2)}), 2),
        r"attn.out_proj is a projection of nn.MultiheadAttention.*add 'attn.out_proj' to skip",
    ),
    ("decompress_dense", lambda: pela_decompress(_mlp()), r"model holds no PELALinear layer"),
    ("parameters_type", lambda: pela_parameters([1, 2]), r"model must be a torch.nn.Module"),
    ("fd_empty", lambda: feature_distillation_loss([], []), r"student_features must hold at least one"),
    ("fd_tensor", lambda: feature_distillation_loss(_f, _f), r"must be sequences of block outputs"),
    (
        "fd_count",
        lambda: feature_distillation_loss([_f, _f], [_f]),
        r"has 2 .* teacher_features has 1",
    ),
    ("fd_shape", lambda: feature_distillation_loss([_f], [_f.T]), r"student feature 0 has shape \[4, 6\] but teacher"),
    ("fd_nan", lambda: feature_distillation_loss([_nan(_f)], [_f]), r"student feature 0 holds 1 NaN"),
    ("fd_inf_teacher", lambda: feature_distillation_loss([_f], [_nan(_f, float("inf"))]), r"teacher feature 0 holds"),
    ("fd_empty_tensor", lambda: feature_distillation_loss([torch.zeros(0, 3)], [torch.zeros(0, 3)]), r"non-empty"),
    ("logit_shape", lambda: logit_distillation_loss(torch.randn(4, 3), torch.randn(4, 5)), r"student logits has shape"),
    ("logit_nan", lambda: logit_distillation_loss(torch.randn(4, 3), _nan(torch.randn(4, 3))), r"teacher logits holds"),
    ("logit_dtype", lambda: logit_distillation_loss(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3)), r"floating"),
    ("wp_empty", lambda: weight_perturbation_loss([]), r"pairs must hold at least one \(W, F1, F2\)"),
    ("wp_eps", lambda: _wp(eps=-1.0), r"eps must be in \[0, inf\)"),
    ("wp_norm", lambda: _wp(norm="spectral"), r"wp_norm must be one of \['max', 'fro'\]"),
    ("wp_shapes", lambda: _wp(f2=torch.randn(5, 3)), r"pairs\[0\]: W \[5, 4\], F1 \[2, 4\], F2 \[5, 3\] do not fit"),
    ("wp_vector", lambda: _wp(w=torch.randn(5)), r"pairs\[0\] W must be a non-empty matrix"),
    ("wp_nan", lambda: _wp(f1=_nan(torch.randn(2, 4))), r"pairs\[0\] F1 holds 1 NaN"),
    ("wp_triple", lambda: weight_perturbation_loss([(torch.randn(2, 2),)]), r"pairs\[0\] must be a \(W, F1, F2\)"),
    ("capture_names", lambda: _capture(["body.9"]), r"names \['body.9'\] name no module"),
    ("capture_str", lambda: _capture("body.1"), r"names must be a sequence of module names"),
    ("hook_blocks_missing", lambda: PELA(_mlp(), ["body.7"]), r"blocks \['body.7'\] name no module"),
    ("hook_blocks_empty", lambda: PELA(_mlp(), (), alpha=1.0), r"blocks must name at least one module when alpha"),
    ("hook_blocks_repeat", lambda: PELA(_mlp(), ["body.1", "body.1"]), r"blocks must not repeat"),
    ("hook_alpha", lambda: PELA(_mlp(), BLOCKS, alpha=-1.0), r"alpha must be in \[0, inf\)"),
    ("hook_beta_nan", lambda: PELA(_mlp(), BLOCKS, beta=float("nan")), r"beta must be in"),
    ("hook_gamma_inf", lambda: PELA(_mlp(), BLOCKS, gamma=float("inf")), r"gamma must be finite"),
    ("hook_eps", lambda: PELA(_mlp(), BLOCKS, eps=-0.1), r"eps must be in"),
    ("hook_wp_norm", lambda: PELA(_mlp(), BLOCKS, wp_norm="l2"), r"wp_norm must be one of"),
    ("hook_ratio", lambda: PELA(_mlp(), BLOCKS, ratio=1), r"ratio \(the compression ratio c\)"),
    ("hook_skip", lambda: PELA(_mlp(), BLOCKS, skip=["nope"]), r"skip entries \['nope'\]"),
    ("hook_nan_input", lambda: _step(PELA(_mlp(), BLOCKS), _nan(torch.randn(3, 12))), r"student feature 0 holds"),
    (
        "hook_logit_shape",
        lambda: PELA(_mlp(), (), alpha=0.0, beta=1.0).extra_loss(
            None, Batch(x=torch.randn(3, 12), y=torch.zeros(3), index=torch.arange(3), output=torch.randn(3, 7))
        ),
        r"student logits has shape \[3, 7\] but teacher logits has \[3, 4\]",
    ),
    ("finetune_dense", lambda: _finetune(_mlp()), r"student holds no PELALinear layer"),
    ("finetune_classes", lambda: _finetune(pela_compress(_mlp(), 2), num_classes=0), r"num_classes must be an integer"),
    ("finetune_head", lambda: _finetune(pela_compress(_mlp(), 2), num_classes=3, head="fc"), r"head \['fc'\] name no"),
    (
        "finetune_head_type",
        lambda: _finetune(pela_compress(_mlp(), 2), num_classes=3, head="body.1"),
        r"head 'body.1' must be an nn.Linear or PELALinear, got ReLU",
    ),
]
