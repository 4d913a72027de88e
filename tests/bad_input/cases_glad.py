"""Bad input for GLAD's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.adapters.glad import (
    GLADRecipe,
    base_novel_accuracy,
    base_novel_split,
    blend_gradients,
    combine_gradients,
    glad_lora,
    global_norm,
    grad_dot,
    gradient_cosine,
    harmonic_mean,
    perturb_,
    project_conflict,
    restore_,
    sam_perturbation,
)
from priorkit.data import IndexedTensorDataset
from priorkit.models import MLP
from priorkit.train import TrainConfig, fit


def _g(*shapes, value=None):
    gen = torch.Generator().manual_seed(0)
    out = [torch.randn(s, generator=gen) for s in (shapes or ((3, 2), (4,)))]
    if value is not None:
        out[0][0, 0] = value
    return out


def _model():
    m = MLP(4, (8,), 3)
    m.body.requires_grad_(False)
    return m


def _fit(x, y, **kw):
    m = _model()
    fit(m, IndexedTensorDataset(x, y), GLADRecipe(m, **kw), config=TrainConfig(batch_size=4, progress=False))


def _lstm():
    class WithLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(4, 4)

    return glad_lora(WithLSTM(), ["rnn"])


def _logits(n=4, c=4):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(1))


_y = torch.tensor([0, 1, 2, 3])
_nan = float("nan")

CASES = [
    # GLADRecipe
    ("recipe_rho", lambda: GLADRecipe(_model(), rho=-0.1), r"rho must be in \[0, inf\)"),
    ("recipe_rule", lambda: GLADRecipe(_model(), rule="pcgrad"), r"rule must be one of \['project', 'blend', 'sam'\]"),
    ("recipe_lam", lambda: GLADRecipe(_model(), lam=1.5), r"lam must be in \[0, 1\]"),
    ("recipe_beta", lambda: GLADRecipe(_model(), beta=-0.5), r"beta must be in \[0, 1\]"),
    ("recipe_lr", lambda: GLADRecipe(_model(), lr=0.0), r"lr must be in \(0, inf\)"),
    ("recipe_lr_nan", lambda: GLADRecipe(_model(), lr=_nan), r"lr must be in"),
    ("recipe_weight_decay", lambda: GLADRecipe(_model(), weight_decay=-1.0), r"weight_decay must be in"),
    ("recipe_betas_len", lambda: GLADRecipe(_model(), betas=(0.9,)), r"betas must be a pair"),
    ("recipe_betas_range", lambda: GLADRecipe(_model(), betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\)"),
    ("recipe_epochs", lambda: GLADRecipe(_model(), epochs=0), r"epochs must be an integer >= 1"),
    ("recipe_schedule", lambda: GLADRecipe(_model(), schedule="step"), r"schedule must be one of \['cosine', 'none'\]"),
    ("recipe_model", lambda: GLADRecipe("mlp"), r"model must be a torch.nn.Module"),
    ("recipe_loss_fn", lambda: GLADRecipe(_model(), loss_fn="ce"), r"loss_fn must be a callable"),
    ("recipe_trainable", lambda: GLADRecipe(_model(), trainable=[]), r"trainable must be a non-empty list"),
    ("recipe_frozen", lambda: GLADRecipe(MLP(4, (8,), 3).requires_grad_(False)), r"no trainable parameters"),
    (
        "recipe_trainable_unknown",
        lambda: _fit(torch.randn(8, 4), _y.repeat(2) % 3, trainable=["nope"]),
        r"trainable name 'nope' matches no parameter",
    ),
    # the step
    ("step_nan_input", lambda: _fit(torch.full((8, 4), _nan), _y.repeat(2) % 3), r"non-finite loss at step 0: ce"),
    ("step_labels", lambda: _fit(torch.randn(8, 4), _y.repeat(2) + 5), r"labels \(batch.target\) must lie in \[0, 2\]"),
    (
        "step_loss_shape",
        lambda: _fit(torch.randn(8, 4), _y.repeat(2) % 3, loss_fn=lambda o, t: o.sum(1)),
        r"loss_fn must return a scalar tensor",
    ),
    # gradient rules
    ("combine_rule", lambda: combine_gradients(_g(), _g(), "mean"), r"rule must be one of"),
    ("combine_lam", lambda: combine_gradients(_g(), _g(), lam=2.0), r"lam must be in \[0, 1\]"),
    ("combine_beta", lambda: combine_gradients(_g(), _g(), "blend", beta=1.5), r"beta must be in \[0, 1\]"),
    ("combine_len", lambda: combine_gradients(_g(), _g()[:1]), r"g and g_sam must hold the same number of tensors"),
    ("combine_shape", lambda: combine_gradients(_g(), _g((2, 3), (4,))), r"g_sam\[0\] must have shape \[3, 2\]"),
    ("combine_nan", lambda: combine_gradients(_g(value=_nan), _g()), r"g\[0\] holds 1 NaN or infinite"),
    ("combine_inf", lambda: combine_gradients(_g(), _g(value=float("inf"))), r"g_sam\[0\] holds 1 NaN or infinite"),
    ("combine_empty", lambda: combine_gradients([], []), r"g must hold at least one tensor"),
    ("combine_tensor", lambda: combine_gradients(torch.ones(3), torch.ones(3)), r"g must be a list of tensors"),
    (
        "combine_int",
        lambda: combine_gradients([torch.ones(2, dtype=torch.long)], [torch.ones(2)]),
        r"g\[0\] must be a floating-point tensor",
    ),
    ("project_lam", lambda: project_conflict(_g(), _g(), lam=-0.1), r"lam must be in \[0, 1\]"),
    ("project_shape", lambda: project_conflict(_g(), _g((3, 2), (5,))), r"g_sam\[1\] must have shape \[4\]"),
    ("blend_beta", lambda: blend_gradients(_g(), _g(), beta=_nan), r"beta must be in \[0, 1\]"),
    ("sam_rho", lambda: sam_perturbation(_g(), rho=-1.0), r"rho must be in \[0, inf\)"),
    ("sam_nan", lambda: sam_perturbation(_g(value=_nan)), r"g\[0\] holds 1 NaN"),
    ("global_norm_empty", lambda: global_norm([]), r"tensors must hold at least one tensor"),
    ("grad_dot_len", lambda: grad_dot(_g(), _g()[:1]), r"g and g_sam must hold the same number"),
    ("cosine_nan", lambda: gradient_cosine(_g(), _g(value=_nan)), r"g_sam\[0\] holds"),
    (
        "perturb_shape",
        lambda: perturb_(_g(), _g((2, 3), (4,))),
        r"eps\[0\] must have shape \[3, 2\] \(as params\[0\]\)",
    ),
    ("perturb_nan", lambda: perturb_(_g(), _g(value=_nan)), r"eps\[0\] holds 1 NaN"),
    ("restore_len", lambda: restore_(_g(), _g()[:1]), r"backup must hold 2 tensors"),
    ("restore_shape", lambda: restore_(_g(), _g((2, 3), (4,))), r"backup\[0\] must have shape \[3, 2\]"),
    # base-to-novel
    ("hm_range", lambda: harmonic_mean(1.2, 0.5), r"base must be in \[0, 1\]"),
    ("hm_nan", lambda: harmonic_mean(0.5, _nan), r"novel must be in \[0, 1\]"),
    ("split_classes", lambda: base_novel_split(1), r"num_classes must be an integer >= 2"),
    ("bn_shape", lambda: base_novel_accuracy(torch.randn(4), _y, [0, 1]), r"logits must have shape \[\*, \*\]"),
    ("bn_empty", lambda: base_novel_accuracy(torch.zeros(0, 4), _y[:0], [0, 1]), r"logits must be a non-empty"),
    ("bn_nan", lambda: base_novel_accuracy(torch.full((4, 4), _nan), _y, [0, 1]), r"logits holds 16 NaN"),
    ("bn_labels", lambda: base_novel_accuracy(_logits(), _y + 1, [0, 1]), r"y must lie in \[0, 3\]"),
    ("bn_labels_len", lambda: base_novel_accuracy(_logits(), _y[:3], [0, 1]), r"y must have shape \[4\]"),
    ("bn_base_all", lambda: base_novel_accuracy(_logits(), _y, [0, 1, 2, 3]), r"base must be a non-empty proper"),
    ("bn_base_range", lambda: base_novel_accuracy(_logits(), _y, [0, 7]), r"base must be a non-empty proper subset"),
    (
        "bn_no_novel",
        lambda: base_novel_accuracy(_logits(), torch.tensor([0, 1, 0, 1]), [0, 1]),
        r"y holds no sample of the novel classes \[2, 3\]",
    ),
    # the PEFT helper
    ("lora_unsupported", _lstm, r"target_modules=\['rnn'\]: PEFT LoRA cannot wrap it"),
    ("lora_rank", lambda: glad_lora(_model(), r=0), r"r must be an integer >= 1"),
    ("lora_dropout", lambda: glad_lora(_model(), lora_dropout=1.0), r"lora_dropout must be in \[0, 1\)"),
    ("lora_alpha", lambda: glad_lora(_model(), lora_alpha=0.0), r"lora_alpha must be in \(0, inf\)"),
    ("lora_targets_empty", lambda: glad_lora(_model(), []), r"target_modules must name at least one module"),
    ("lora_model", lambda: glad_lora("mlp"), r"model must be a torch.nn.Module"),
]
