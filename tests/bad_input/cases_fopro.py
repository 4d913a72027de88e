"""Bad input for FoPro's public entry points: (name, callable, regex naming the argument)."""

import torch

from priorkit.models import MLP
from priorkit.prototypes import fopro as fp

NAN = float("nan")
_Z = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
_P = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
_Y = torch.tensor([0, 1, 2, 0, 1, 2])
_F = torch.zeros(6, dtype=torch.bool)


def _model():
    cfg = fp.FoProConfig(epochs=4, init_epoch=0, clean_epoch=1, relation_epoch=2, relation_epochs=1, low_dim=4,
                         proj_hidden=8, queue_size=8, batch_size=4)  # fmt: skip
    return fp.FoPro(MLP(5, (8,), 3), 3, cfg)


def _recipe(x, y, domain):
    return lambda: _model().recipe((x, y), domain)


_X = torch.randn(6, 5)
_D = torch.tensor([0, 0, 0, 1, 1, 1])

CASES = [
    ("fopro_config_cleaning", lambda: fp.FoProConfig(cleaning="rule_a"), "cleaning"),
    ("fopro_config_epochs_order", lambda: fp.FoProConfig(init_epoch=30, clean_epoch=25), "init_epoch"),
    ("fopro_model_feature_dim", lambda: fp.FoPro(torch.nn.Linear(3, 3), 4), "feature_dim"),
    ("fopro_model_num_classes", lambda: fp.FoPro(MLP(5, (8,), 3), 1), "num_classes"),
    ("fopro_recipe_labels_range", _recipe(_X, _Y + 5, _D), "train y"),
    ("fopro_recipe_labels_dtype", _recipe(_X, _Y.float(), _D), "train y"),
    ("fopro_recipe_x_dtype", _recipe(_X.long(), _Y, _D), "train x"),
    ("fopro_recipe_empty", _recipe(_X[:0], _Y[:0], _D[:0]), "train x"),
    ("fopro_recipe_domain_shape", _recipe(_X, _Y, _D[:3]), "domain"),
    ("fopro_recipe_domain_values", _recipe(_X, _Y, _D + 2), "domain"),
    ("fopro_recipe_train_type", lambda: _model().recipe("digits", _D), "train"),
    ("init_prototypes_labels", lambda: fp.init_prototypes(_Z, _Y + 3, 3), "y must lie"),
    ("prototype_logits_shape", lambda: fp.prototype_logits(_Z, _P[:, :3], _Y, _F), "prototypes"),
    ("prototype_logits_mask", lambda: fp.prototype_logits(_Z, _P, _Y, _F.long()), "fewshot"),
    ("prototype_logits_temperature", lambda: fp.prototype_logits(_Z, _P, _Y, _F, temperature=-1.0), "temperature"),
    ("soft_targets_alpha", lambda: fp.soft_targets(torch.randn(6, 3), torch.randn(6, 3), _Y, _F, 2.0), "alpha"),
    ("clean_rule_a_labels", lambda: fp.clean_rule_a(torch.rand(6, 3), _Y + 3, _F), "y must lie"),
    ("clean_rule_a_gamma", lambda: fp.clean_rule_a(torch.rand(6, 3), _Y, _F, 1.5), "gamma"),
    ("clean_relation_mask", lambda: fp.clean_relation(torch.rand(6, 3), _Y, _F.long()), "fewshot"),
    ("clean_fusion_shape", lambda: fp.clean_fusion(torch.rand(6, 3), torch.rand(6, 2), _Y, _F), "rel_prob"),
    ("dist_sim_shape", lambda: fp.dist_sim(_Z, _P[:, :2], _Y), "prototypes"),
    ("ema_prototypes_mu", lambda: fp.ema_prototypes(_P, _Z, _Y, ~_F, 1.5), "mu"),
    ("ema_prototypes_keys", lambda: fp.ema_prototypes(_P, _Z[:, :2], _Y, ~_F), "keys"),
    ("density_shape", lambda: fp.density_from_stats(torch.ones(3), torch.ones(2), torch.ones(3)), "visits"),
    ("soft_cls_loss_shape", lambda: fp.soft_cls_loss(torch.randn(6, 3), _Y, torch.rand(6, 2), torch.ones(6)), "soft"),
    ("instance_logits_temperature", lambda: fp.instance_logits(_Z, _Z, _P, 0.0), "temperature"),
    ("margin_cosine_labels", lambda: fp.margin_cosine_logits(torch.rand(6, 3), _Y + 3), "y must lie"),
    ("fopro_lr_total", lambda: fp.fopro_lr(0, 0.1, 1, 0), "total"),
    ("memory_update_nan", lambda: fp.FoProMemory(3, 4, 8).update(torch.full((6, 4), NAN), _Y, ~_F, 0.9), "keys"),
    ("memory_enqueue_nan", lambda: fp.FoProMemory(3, 4, 8).enqueue(torch.full((2, 4), NAN)), "keys"),
    ("memory_enqueue_shape", lambda: fp.FoProMemory(3, 4, 8).enqueue(torch.ones(2, 3)), "keys"),
]
