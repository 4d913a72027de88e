"""Bad input for ProtoGCD's public entry points (collected by tests/test_bad_input.py)."""

import torch

from priorkit.prototypes.protogcd import (
    ProtoGCD,
    ProtoGCDRecipe,
    balanced_indices,
    dapl_loss,
    dapl_targets,
    ood_score,
    protogcd_loss,
    ratio_schedule,
)


def _args(**kw):
    a = dict(proj=torch.randn(8, 5), logits=torch.randn(8, 3), prototypes=torch.randn(3, 6),
             labels=torch.tensor([0, 1, 0, 0]), labelled=torch.tensor([True, True, False, False]))  # fmt: skip
    a.update(kw)
    return a


def _loss(**kw):
    a = _args(**kw)
    return protogcd_loss(a["proj"], a["logits"], a["prototypes"], a["labels"], a["labelled"], ratio=0.5)


def _nan(shape):
    t = torch.randn(*shape)
    t[1, 1] = float("nan")
    return t


CASES = [
    ("loss_logits_shape", lambda: _loss(logits=torch.randn(7, 3)), r"logits must have shape"),
    ("loss_logits_nan", lambda: _loss(logits=_nan((8, 3))), r"logits"),
    ("loss_proj_inf", lambda: _loss(proj=torch.full((8, 5), float("inf"))), r"proj"),
    ("loss_proj_dtype", lambda: _loss(proj=torch.ones(8, 5, dtype=torch.long)), r"proj must be"),
    ("loss_proj_empty", lambda: _loss(proj=torch.zeros(0, 5)), r"proj must be"),
    ("loss_labels_dtype", lambda: _loss(labels=torch.zeros(4)), r"labels must be"),
    ("loss_labels_range", lambda: _loss(labels=torch.tensor([7, 1, 0, 0])), r"labels of labelled samples"),
    ("loss_labelled_dtype", lambda: _loss(labelled=torch.ones(4, dtype=torch.long)), r"labelled must be"),
    ("recipe_labelled_dtype", lambda: ProtoGCDRecipe(torch.ones(4)), r"labelled must be"),
    ("recipe_labelled_all", lambda: ProtoGCDRecipe(torch.ones(4, dtype=torch.bool)), r"labelled must mark"),
    ("recipe_objective", lambda: ProtoGCDRecipe(torch.tensor([True, False]), objective="simgcd"), r"objective"),
    ("recipe_ramp", lambda: ProtoGCDRecipe(torch.tensor([True, False]), epochs=5, ramp=10), r"ramp"),
    ("recipe_augment", lambda: ProtoGCDRecipe(torch.tensor([True, False]), augment=1), r"augment"),
    ("dapl_ratio", lambda: dapl_targets(torch.randn(4, 3), 1.5), r"ratio"),
    ("dapl_views", lambda: dapl_loss(torch.randn(5, 3), 0.5), r"n_views"),
    ("ratio_epoch", lambda: ratio_schedule(10, 5, ramp=2), r"epoch"),
    ("balanced_labelled", lambda: balanced_indices(torch.ones(5, dtype=torch.bool), torch.Generator()), r"labelled"),
    ("ood_kind", lambda: ood_score(torch.randn(3, 4), "odin"), r"kind"),
    ("model_feat_dim", lambda: ProtoGCD(torch.nn.Linear(3, 3), 4), r"feat_dim"),
]
