"""Bad input for pros_gan's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.prototypes.pros_gan import (
    HashMLP,
    ProSGAN,
    dpsh_recipe,
    hash_loss,
    pairwise_likelihood_loss,
    pgd_targeted_attack,
    pros_gan_recipe,
)


def _att():
    torch.manual_seed(0)
    return ProSGAN(HashMLP(6, 4, hidden=8), 6, 3, proto_hidden=8, feat_dim=4, hidden=8)


def _nan():
    x = torch.rand(5, 6)
    x[0, 0] = float("nan")
    return x


Y = torch.tensor([0, 1, 2, 0, 1])

CASES = [
    ("constructor_num_classes", lambda: ProSGAN(HashMLP(4, 4, hidden=4), 4, 1), r"num_classes must be"),
    ("constructor_d_every", lambda: ProSGAN(HashMLP(4, 4, hidden=4), 4, 3, d_every=0), r"d_every must be"),
    ("prototype_code_labels_out_of_range", lambda: _att().prototype_code(torch.tensor([5])), r"labels must lie"),
    ("prototype_code_labels_width", lambda: _att().prototype_code(torch.ones(2, 7)), r"labels must have shape"),
    ("attack_wrong_shape", lambda: _att().attack(torch.rand(2, 5), torch.tensor([0, 1])), r"x must have shape"),
    ("attack_nan", lambda: _att().attack(_nan(), Y), r"x holds 1 NaN"),
    ("attack_empty", lambda: _att().attack(torch.rand(0, 6), Y[:0]), r"x must be a non-empty"),
    ("attack_dtype", lambda: _att().attack(torch.ones(5, 6, dtype=torch.long), Y), r"x must be floating"),
    ("attack_labels_out_of_range", lambda: _att().attack(torch.rand(5, 6), Y + 3), r"labels must lie"),
    ("recipe_attacker", lambda: pros_gan_recipe(HashMLP(6, 4), torch.rand(5, 6), Y), r"attacker must be"),
    ("recipe_x_nan", lambda: pros_gan_recipe(_att(), _nan(), Y), r"x holds"),
    ("recipe_x_shape", lambda: pros_gan_recipe(_att(), torch.rand(5, 7), Y), r"x must have shape"),
    ("recipe_x_empty", lambda: pros_gan_recipe(_att(), torch.rand(0, 6), Y[:0]), r"x must be a non-empty"),
    ("recipe_y_length", lambda: pros_gan_recipe(_att(), torch.rand(5, 6), Y[:3]), r"y must have shape"),
    ("recipe_y_float", lambda: pros_gan_recipe(_att(), torch.rand(5, 6), Y.float()), r"y must hold integer"),
    ("recipe_y_out_of_range", lambda: pros_gan_recipe(_att(), torch.rand(5, 6), Y + 3), r"labels must lie"),
    ("recipe_steps", lambda: pros_gan_recipe(_att(), torch.rand(5, 6), Y, steps=0), r"steps must be"),
    ("dpsh_model", lambda: dpsh_recipe("net"), r"model must be"),
    ("dpsh_eta", lambda: dpsh_recipe(HashMLP(6, 4), eta=-1.0), r"eta must be"),
    ("pgd_eps", lambda: pgd_targeted_attack(HashMLP(4, 4), torch.rand(2, 4), torch.ones(2, 4), eps=0.0), r"eps must"),
    ("hash_loss_shape", lambda: hash_loss(torch.rand(2, 4), torch.rand(2, 5)), r"prototype_code must have"),
    ("likelihood_S_shape", lambda: pairwise_likelihood_loss(torch.rand(2, 4), torch.rand(3, 4), torch.rand(2, 2)),
     r"S must have shape"),
]
