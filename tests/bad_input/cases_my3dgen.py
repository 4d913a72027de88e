"""Bad input for My3DGen's public entry points (collected by tests/test_bad_input.py)."""

import torch
from torch import nn

from priorkit.adapters.my3dgen import (
    My3DGen,
    identity_loss,
    lazy_adam,
    lora_config,
    mirror_yaw_pair,
    parameter_accounting,
    reconstruction_loss,
    symmetry_loss,
)


class _Gen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 16)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, w, yaw):
        return self.conv(self.fc(torch.cat([w, yaw.reshape(-1, 1)], 1)).view(-1, 1, 4, 4))


def _phi():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4))


def _img(n=2, value=None):
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    if value is not None:
        x[0, 0, 1, 1] = value
    return x


def _yaws(n=3):
    return torch.tensor([0.3, 0.5, 0.7][:n])


def _model(**kw):
    args = {"w_init": torch.zeros(2)}
    args.update(kw)
    poses = args.pop("poses", _yaws())
    return My3DGen(args.pop("generator", _Gen()), args.pop("features", _phi()), poses, **args)


def _recipe(**kw):
    return _model().recipe(**kw)


_NAN = float("nan")

CASES = [
    # lora_config
    ("lora_config_r_zero", lambda: lora_config(_Gen(), r=0), r"r must be an integer >= 1"),
    ("lora_config_r_float", lambda: lora_config(_Gen(), r=1.5), r"r must be an integer >= 1"),
    ("lora_config_r_too_large", lambda: lora_config(_Gen(), r=2), r"r must be <= 1 for layer 'conv'"),
    ("lora_config_alpha_zero", lambda: lora_config(_Gen(), lora_alpha=0.0), r"lora_alpha must be in \(0, inf\)"),
    ("lora_config_alpha_nan", lambda: lora_config(_Gen(), lora_alpha=_NAN), r"lora_alpha must be in"),
    ("lora_config_model_type", lambda: lora_config("net"), r"model must be a torch.nn.Module"),
    ("lora_config_no_layers", lambda: lora_config(nn.Sequential(nn.ReLU())), r"no nn.Linear or nn.Conv2d layer"),
    ("lora_config_unknown_target", lambda: lora_config(_Gen(), target_modules=["fc2"]), r"target_modules: no module"),
    ("lora_config_empty_targets", lambda: lora_config(_Gen(), target_modules=[]), r"target_modules must be a non"),
    ("lora_config_string_targets", lambda: lora_config(_Gen(), target_modules="fc"), r"target_modules must be a"),
    (
        "lora_config_unsupported_type",
        lambda: lora_config(nn.Sequential(nn.Conv1d(2, 2, 3)), target_modules=["0"]),
        r"layer '0' is a Conv1d; My3DGen's LoRA supports nn.Linear and nn.Conv2d",
    ),
    ("lora_config_kernel", lambda: lora_config(nn.Sequential(nn.Conv2d(2, 2, (1, 3)))), r"square kernel"),
    ("lora_config_groups", lambda: lora_config(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))), r"groups=1"),
    ("lora_config_dilation", lambda: lora_config(nn.Sequential(nn.Conv2d(2, 2, 3, dilation=2))), r"dilation"),
    (
        "lora_config_padding_mode",
        lambda: lora_config(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))),
        r"padding_mode='zeros'",
    ),
    # mirror_yaw_pair
    ("mirror_amplitude_zero", lambda: mirror_yaw_pair(amplitude=0.0), r"amplitude must be in \(0, inf\)"),
    ("mirror_amplitude_nan", lambda: mirror_yaw_pair(amplitude=_NAN), r"amplitude must be in"),
    ("mirror_frames", lambda: mirror_yaw_pair(frames=1), r"frames must be an integer >= 2"),
    # losses
    ("rec_shape", lambda: reconstruction_loss(_img(2), _img(3)), r"real must have shape \[2, 1, 4, 4\]"),
    ("rec_fake_nan", lambda: reconstruction_loss(_img(2, _NAN), _img(2)), r"fake holds 1 NaN"),
    ("rec_real_inf", lambda: reconstruction_loss(_img(2), _img(2, float("inf"))), r"real holds 1 NaN or infinite"),
    ("rec_empty", lambda: reconstruction_loss(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4)), r"fake must be a non"),
    (
        "rec_dims",
        lambda: reconstruction_loss(torch.zeros(2, 16), torch.zeros(2, 16)),
        r"fake must be a non-empty batch",
    ),
    (
        "rec_dtype",
        lambda: reconstruction_loss(torch.zeros(2, 1, 4, 4, dtype=torch.long), _img()),
        r"fake must be float",
    ),
    ("rec_type", lambda: reconstruction_loss([[0.0]], _img()), r"fake must be a torch.Tensor"),
    ("sym_shape", lambda: symmetry_loss(_phi(), _img(2), _img(3)), r"image2 must have shape \[2, 1, 4, 4\]"),
    ("sym_nan", lambda: symmetry_loss(_phi(), _img(2, _NAN), _img(2)), r"image1 holds 1 NaN"),
    ("sym_nan2", lambda: symmetry_loss(_phi(), _img(2), _img(2, _NAN)), r"image2 holds 1 NaN"),
    ("sym_features_shape", lambda: symmetry_loss(lambda x: x.sum(), _img(), _img()), r"features\(images\) must return"),
    ("id_shape", lambda: identity_loss(_phi(), _img(2), _img(1)), r"real must have shape \[2, 1, 4, 4\]"),
    ("id_nan", lambda: identity_loss(_phi(), _img(2), _img(2, _NAN)), r"real holds 1 NaN"),
    # lazy_adam
    ("lazy_adam_lr", lambda: lazy_adam([torch.zeros(1)], lr=0.0), r"lr must be in \(0, inf\)"),
    ("lazy_adam_beta", lambda: lazy_adam([torch.zeros(1)], betas=(0.0, 1.0)), r"betas\[1\] must be in \[0, 1\)"),
    ("lazy_adam_betas_len", lambda: lazy_adam([torch.zeros(1)], betas=(0.9,)), r"betas must be a pair"),
    ("lazy_adam_eps", lambda: lazy_adam([torch.zeros(1)], eps=0.0), r"eps must be in \(0, inf\)"),
    ("lazy_adam_interval", lambda: lazy_adam([torch.zeros(1)], interval=0), r"interval must be an integer >= 1"),
    ("accounting_type", lambda: parameter_accounting(None), r"model must be a torch.nn.Module"),
    # My3DGen
    ("model_generator_type", lambda: _model(generator=lambda w, y: w), r"generator must be a torch.nn.Module"),
    ("model_features_type", lambda: _model(features=lambda x: x), r"features must be a torch.nn.Module"),
    ("model_adapter", lambda: _model(adapter="dora"), r"adapter must be one of \['lora', 'full', 'none'\]"),
    ("model_poses_2d", lambda: _model(poses=torch.zeros(3, 2)), r"poses must be a non-empty 1-D tensor"),
    ("model_poses_empty", lambda: _model(poses=torch.zeros(0)), r"poses must be a non-empty 1-D tensor"),
    ("model_poses_int", lambda: _model(poses=torch.arange(3)), r"poses must be floating point"),
    ("model_poses_nan", lambda: _model(poses=torch.tensor([0.1, _NAN])), r"poses holds 1 NaN"),
    ("model_w_init_shape", lambda: _model(w_init=torch.zeros(2, 2)), r"w_init must have shape \[3, \*\]"),
    ("model_w_init_3d", lambda: _model(w_init=torch.zeros(3, 2, 1)), r"w_init must be a latent \[d\]"),
    ("model_w_init_nan", lambda: _model(w_init=torch.tensor([0.0, _NAN])), r"w_init holds 1 NaN"),
    ("model_r", lambda: _model(r=0), r"r must be an integer >= 1"),
    ("model_alpha", lambda: _model(lora_alpha=-1.0), r"lora_alpha must be in"),
    ("model_anchors_count", lambda: _model().anchors(_img(2)), r"images must hold one image per anchor pose \(3\)"),
    ("model_anchors_nan", lambda: _model().anchors(_img(3, _NAN)), r"images holds 1 NaN"),
    ("model_forward_index", lambda: _model()(torch.tensor([0, 3])), r"anchor index must be a 1-D tensor in \[0, 2\]"),
    ("recipe_project_epochs", lambda: _recipe(project_epochs=-1), r"project_epochs must be an integer >= 0"),
    ("recipe_tune_epochs", lambda: _recipe(tune_epochs=1.5), r"tune_epochs must be an integer >= 0"),
    ("recipe_no_phase", lambda: _recipe(project_epochs=0, tune_epochs=0), r"the recipe has no phase"),
    ("recipe_project_lr", lambda: _recipe(project_lr=0.0), r"project_lr must be in \(0, inf\)"),
    ("recipe_lr", lambda: _recipe(lr=-1.0), r"lr must be in \(0, inf\)"),
    ("recipe_betas", lambda: _recipe(betas=(1.2, 0.99)), r"betas\[0\] must be in \[0, 1\)"),
    ("recipe_interval", lambda: _recipe(lazy_interval=0), r"lazy_interval must be an integer >= 1"),
    ("recipe_sym_weight", lambda: _recipe(sym_weight=-0.1), r"sym_weight must be in \[0, inf\)"),
    ("recipe_sym_weight_nan", lambda: _recipe(sym_weight=_NAN), r"sym_weight must be in"),
    ("recipe_id_weight", lambda: _recipe(id_weight=-1.0), r"id_weight must be in \[0, inf\)"),
    ("recipe_amplitude", lambda: _recipe(yaw_amplitude=0.0), r"yaw_amplitude must be in \(0, inf\)"),
]
