"""Bad input for OVOR's public entry points (collected by tests/test_bad_input.py)."""

import torch
from torch import nn

from priorkit.data import IndexedTensorDataset
from priorkit.models.vit import ViT
from priorkit.regularizers.ovor import (
    OVOR,
    OnePrompt,
    OnePromptViT,
    VirtualOutliers,
    boundary_indices,
    cosine_factor,
    energy,
    kth_neighbour_distance,
    masked_cross_entropy,
    masked_logits,
    oneprompt_num_params,
    outlier_candidates,
    prefix_attention,
    select_outliers,
    synthesize_outliers,
    vor_loss,
)
from priorkit.train import TrainConfig

SMALL = {"k": 5, "select": 10, "sample_from": 20, "num_per_class": 8, "id_batch_size": 16}
LAYOUT = {"g_layers": (0,), "g_length": 2, "e_layers": (1,), "e_length": 4}


def _vit():
    return ViT(image_size=2, patch_size=1, in_channels=4, num_classes=1, dim=16, depth=2, heads=2, mlp_dim=32)


def _r(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _nan(t):
    t = t.clone()
    t[0, 0] = float("nan")
    return t


def _y(*v):
    return torch.tensor(v, dtype=torch.long)


def _learner(**kw):
    return OVOR(_vit(), 4, **LAYOUT, **{"vor_epochs": 1, **SMALL, **kw})


def _task(labels=(0, 1), n=24):
    y = torch.tensor(labels).repeat(n // len(labels))
    return IndexedTensorDataset(_r(len(y), 4, 2, 2), y)


def _cfg():
    return TrainConfig(epochs=1, batch_size=16, lr=1e-3, optimizer="adam", progress=False)


class _NoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)


def _vor(**kw):
    args = {"x": _r(48, 4, 2, 2), "y": _y(0, 1).repeat(24), "start": 0, "end": 2}
    return VirtualOutliers(**{**args, **SMALL, **kw})


CASES = [
    # masked cross-entropy
    ("masked_logits_range", lambda: masked_logits(_r(4, 3), 2, 5), r"start, end\) must satisfy .* <= 3"),
    ("masked_logits_order", lambda: masked_logits(_r(4, 3), 2, 2), r"0 <= start < end"),
    ("masked_logits_shape", lambda: masked_logits(_r(4), 0, 1), r"logits must have shape \[\*, \*\]"),
    ("masked_ce_earlier_label", lambda: masked_cross_entropy(_r(2, 4), _y(0, 3), 2, 4), r"current task's classes"),
    ("masked_ce_label_range", lambda: masked_cross_entropy(_r(2, 4), _y(2, 4), 2, 4), r"y must lie in \[0, 3\]"),
    ("masked_ce_label_dtype", lambda: masked_cross_entropy(_r(2, 4), torch.ones(2), 0, 4), r"y must hold integer"),
    ("masked_ce_label_length", lambda: masked_cross_entropy(_r(2, 4), _y(1, 1, 1), 0, 4), r"y must have shape \[2\]"),
    ("masked_ce_nan", lambda: masked_cross_entropy(_nan(_r(2, 4)), _y(1, 1), 0, 4), r"logits holds 1 NaN"),
    ("masked_ce_empty", lambda: masked_cross_entropy(_r(0, 4), _y(), 0, 4), r"logits must be a non-empty batch"),
    ("masked_ce_start_type", lambda: masked_cross_entropy(_r(2, 4), _y(1, 1), 0.5, 4), r"start must be an integer"),
    # energy and the VOR loss
    ("energy_shape", lambda: energy(_r(3)), r"logits must have shape \[\*, \*\]"),
    ("vor_loss_columns", lambda: vor_loss(_r(4, 2), _r(4, 3)), r"same classes \(columns\), got 2 and 3"),
    ("vor_loss_nan", lambda: vor_loss(_nan(_r(4, 2)), _r(4, 2)), r"id_logits holds 1 NaN"),
    ("vor_loss_ood_inf", lambda: vor_loss(_r(4, 2), _r(4, 2) / 0), r"ood_logits holds"),
    ("vor_loss_empty", lambda: vor_loss(_r(0, 2), _r(4, 2)), r"id_logits must be a non-empty batch"),
    ("vor_loss_lmda", lambda: vor_loss(_r(4, 2), _r(4, 2), lmda=-1.0), r"lmda must be in \[0, inf\)"),
    ("vor_loss_theta", lambda: vor_loss(_r(4, 2), _r(4, 2), theta_in=float("nan")), r"theta_in must be in"),
    ("vor_loss_theta_inf", lambda: vor_loss(_r(4, 2), _r(4, 2), theta_out=float("inf")), r"theta_out must be finite"),
    ("vor_loss_dims", lambda: vor_loss(_r(4), _r(4, 2)), r"id_logits must have 2 dimensions"),
    # k-NN and outlier synthesis
    ("knn_k_too_large", lambda: kth_neighbour_distance(_r(3, 2), _r(4, 2), 5), r"k must be at most .* \(4\)"),
    ("knn_k_zero", lambda: kth_neighbour_distance(_r(3, 2), _r(4, 2), 0), r"k must be an integer >= 1"),
    ("knn_width", lambda: kth_neighbour_distance(_r(3, 2), _r(4, 3), 1), r"same width, got 2 and 3"),
    ("knn_backend", lambda: kth_neighbour_distance(_r(3, 2), _r(4, 2), 1, knn="annoy"), r"knn must be one of"),
    ("knn_nan", lambda: kth_neighbour_distance(_nan(_r(3, 2)), _r(4, 2), 1), r"queries holds 1 NaN"),
    ("knn_empty", lambda: kth_neighbour_distance(_r(0, 2), _r(4, 2), 1), r"queries must be a non-empty batch"),
    ("boundary_select", lambda: boundary_indices(_r(6, 2), 2, 7), r"select must be at most the number of features"),
    ("boundary_select_zero", lambda: boundary_indices(_r(6, 2), 2, 0), r"select must be an integer >= 1"),
    ("candidates_index", lambda: outlier_candidates(_r(6, 2), _y(6)), r"boundary must hold at least one row index"),
    ("candidates_index_float", lambda: outlier_candidates(_r(6, 2), torch.ones(2)), r"boundary must be a 1-D integer"),
    ("candidates_cov", lambda: outlier_candidates(_r(6, 2), _y(1), cov=0.0), r"cov must be in \(0, inf\)"),
    ("candidates_sample_from", lambda: outlier_candidates(_r(6, 2), _y(1), sample_from=0), r"sample_from must be"),
    ("select_count", lambda: select_outliers(_r(5, 2), _r(6, 2), 2, 6), r"outliers \(6\) must be at most the 5"),
    ("select_count_zero", lambda: select_outliers(_r(5, 2), _r(6, 2), 2, 0), r"count must be an integer >= 1"),
    ("synth_classes", lambda: synthesize_outliers(_r(60, 3), 0), r"num_classes must be an integer >= 1"),
    ("synth_nan", lambda: synthesize_outliers(_nan(_r(60, 3)), 2), r"features holds 1 NaN"),
    ("synth_k", lambda: synthesize_outliers(_r(30, 3), 2, k=50, select=5), r"k must be at most the number of bank"),
    ("synth_dims", lambda: synthesize_outliers(_r(30), 2), r"features must have 2 dimensions"),
    ("cosine_epoch", lambda: cosine_factor(3, 3), r"epoch must be an integer in \[0, 2\]"),
    ("cosine_total", lambda: cosine_factor(0, 0), r"total must be an integer >= 1"),
    # prompts and the prompted model
    (
        "prefix_shape",
        lambda: prefix_attention(_vit().blocks[0].attn, _r(2, 5, 16), (_r(2, 3, 8), _r(2, 3, 8))),
        r"prefix keys and values must both have shape \[2 or 1, L, 16\]",
    ),  # fmt: skip
    (
        "prefix_kv_mismatch",
        lambda: prefix_attention(_vit().blocks[0].attn, _r(2, 5, 16), (_r(1, 3, 16), _r(1, 2, 16))),
        r"prefix keys and values must both have shape",
    ),  # fmt: skip
    ("prefix_x_dims", lambda: prefix_attention(_vit().blocks[0].attn, _r(5, 16)), r"x must have shape \[\*, \*, \*\]"),
    ("prefix_heads", lambda: prefix_attention(_vit().blocks[0].attn, _r(2, 5, 15)), r"divisible by the attention's 2"),
    ("prefix_no_heads", lambda: prefix_attention(nn.Module(), _r(2, 5, 16)), r"must expose heads or num_heads"),
    ("oneprompt_odd_length", lambda: OnePrompt(8, 4, e_length=5, e_layers=(2,)), r"e_length must be an even integer"),
    ("oneprompt_layer_range", lambda: OnePrompt(8, 4, g_layers=(0, 4)), r"g_layers must hold distinct layer indices"),
    ("oneprompt_layer_dup", lambda: OnePrompt(8, 4, g_layers=(1, 1)), r"g_layers must hold distinct"),
    ("oneprompt_layers_int", lambda: OnePrompt(8, 4, g_layers=2), r"g_layers must be a sequence of layer indices"),
    ("oneprompt_dim", lambda: OnePrompt(0, 4), r"dim must be an integer >= 1"),
    ("oneprompt_params_dim", lambda: oneprompt_num_params(0), r"dim must be an integer >= 1"),
    ("model_encoder_type", lambda: OnePromptViT("vit", 3), r"encoder must be a torch.nn.Module"),
    ("model_no_blocks", lambda: OnePromptViT(_NoBlocks(), 3), r"encoder must have `blocks`"),
    ("model_layer_range", lambda: OnePromptViT(_vit(), 3, g_layers=(0, 3)), r"g_layers must hold distinct .* \[0, 1\]"),
    ("model_classes", lambda: OnePromptViT(_vit(), 0, **LAYOUT), r"num_classes must be an integer >= 1"),
    ("model_input_shape", lambda: OnePromptViT(_vit(), 3, **LAYOUT)(_r(2, 3, 2, 2)), r"ViT expects inputs of shape"),
    # the VOR hook
    ("vor_hook_labels", lambda: _vor(y=_y(0, 2).repeat(24)), r"y must lie in \[0, 1\]"),
    ("vor_hook_earlier_labels", lambda: _vor(start=1, end=3), r"task's classes \[1, 3\), got 0"),
    ("vor_hook_k", lambda: _vor(k=60), r"k \(60\) and select \(10\) must be at most the task's 48"),
    ("vor_hook_count", lambda: _vor(num_per_class=200), r"must be at most select \* sample_from \(200\)"),
    (
        "vor_hook_too_few",
        lambda: _vor(num_per_class=1, id_batch_size=8),
        r"at least the number of real batches per epoch \(6",
    ),
    ("vor_hook_knn", lambda: _vor(knn="annoy"), r"knn must be one of"),
    ("vor_hook_x_nan", lambda: _vor(x=_nan(_r(48, 4))), r"x holds 1 NaN"),
    ("vor_hook_cov", lambda: _vor(cov=-1.0), r"cov must be in \(0, inf\)"),
    # the driver
    ("ovor_vor_epochs", lambda: _learner(vor_epochs=-1), r"vor_epochs must be an integer >= 0"),
    ("ovor_lmda", lambda: _learner(lmda=-0.5), r"lmda must be in \[0, inf\)"),
    ("ovor_select", lambda: _learner(select=0), r"select must be an integer >= 1"),
    ("ovor_knn", lambda: _learner(knn="hnsw"), r"knn must be one of"),
    ("ovor_encoder", lambda: OVOR(nn.Linear(3, 3), 4), r"encoder must have `blocks`"),
    ("ovor_order", lambda: _learner().learn_task(_task((2, 3)), _cfg()), r"next contiguous block .* starting at 0"),
    ("ovor_gap", lambda: _learner().learn_task(_task((0, 2)), _cfg()), r"next contiguous block .* got \[0, 2\]"),
    ("ovor_label_range", lambda: _learner().learn_task(_task((3, 4)), _cfg()), r"labels must lie in \[0, 3\]"),
    ("ovor_config", lambda: _learner().learn_task(_task(), {"epochs": 1}), r"config must be a priorkit.train"),
    (
        "ovor_empty",
        lambda: _learner().learn_task(IndexedTensorDataset(_r(0, 4, 2, 2), _y()), _cfg()),
        r"train_data must be a non-empty dataset",
    ),  # fmt: skip
    ("ovor_predict_first", lambda: _learner().predict(_r(2, 4, 2, 2)), r"predict needs at least one learned task"),
]
