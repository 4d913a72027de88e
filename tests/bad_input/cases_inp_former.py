"""Bad input for inp_former's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.prototypes.inp_former import (
    ConvEncoder,
    INPFormer,
    anomaly_map,
    coherence_distance,
    image_score,
    inp_former_recipe,
    pretrain_encoder_recipe,
    soft_mining_loss,
)


def _m():
    torch.manual_seed(0)
    enc = ConvEncoder(channels=8, depth=2)
    return INPFormer(enc, 8, num_inp=2, num_heads=2, num_decoder_blocks=2, encoder_groups=((0,), (1,)),
                     decoder_groups=((0,), (1,)))  # fmt: skip


def _img(n=2):
    return torch.rand(n, 3, 8, 8)


def _nan():
    x = _img()
    x[0, 1, 2, 3] = float("nan")
    return x


CASES = [
    ("forward_nan", lambda: _m()(_nan()), r"images holds 1 NaN"),
    ("forward_inf", lambda: _m()(_img().fill_(float("inf"))), r"images holds .* NaN or infinite"),
    ("forward_wrong_rank", lambda: _m()(torch.rand(3, 8, 8)), r"images must have 4 dimensions"),
    ("forward_empty", lambda: _m()(torch.rand(0, 3, 8, 8)), r"images must be a non-empty"),
    ("forward_dtype", lambda: _m()(torch.ones(2, 3, 8, 8, dtype=torch.long)), r"images must be floating"),
    ("forward_channels", lambda: _m()(torch.rand(2, 4, 8, 8)), r"images must have shape \[\*, 3, \*, \*\]"),
    ("predict_nan", lambda: _m().predict(_nan()), r"images holds"),
    ("predict_mode", lambda: _m().predict(_img(), mode="knn"), r"mode must be one of"),
    ("recipe_model", lambda: inp_former_recipe(torch.nn.Linear(2, 2), _img(), iters=2), r"model must be an INPFormer"),
    ("recipe_images_nan", lambda: inp_former_recipe(_m(), _nan(), iters=2), r"images holds"),
    ("recipe_iters", lambda: inp_former_recipe(_m(), _img(), iters=0), r"iters must be"),
    ("recipe_grad_clip", lambda: inp_former_recipe(_m(), _img(), iters=2, grad_clip=0.0), r"grad_clip must be"),
    ("pretrain_encoder_type", lambda: pretrain_encoder_recipe(torch.nn.Conv2d(3, 3, 1), _img()), r"encoder must be"),
    ("pretrain_images_empty", lambda: pretrain_encoder_recipe(ConvEncoder(), torch.rand(0, 3, 8, 8)),
     r"images must be a non-empty"),
    ("coherence_shape", lambda: coherence_distance(torch.rand(2, 4, 8), torch.rand(3, 2, 8)), r"inps must have"),
    ("soft_mining_lengths", lambda: soft_mining_loss([torch.rand(1, 2, 2, 2)], []), r"en and de must be"),
    ("anomaly_map_lengths", lambda: anomaly_map([], [], 8), r"en and de must be"),
    ("image_score_ratio", lambda: image_score(torch.rand(2, 1, 4, 4), 0.0), r"top_ratio must be"),
]
