"""Bad input for DRM's public entry points (collected by tests/test_bad_input.py)."""

import torch
from torch import nn

from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.domains import DomainData
from priorkit.regularizers.drm import (
    DRM,
    drm_loss,
    entropy_select,
    head_entropies,
    mixture_weights,
    prototype_scores,
    select_by_scores,
    steer_step,
)


def _m(**kw):
    torch.manual_seed(0)
    return DRM(nn.Linear(6, 5), 5, 4, 3, **kw)


def _logits(k=3, b=6, c=4):
    return torch.randn(k + 1, b, c, generator=torch.Generator().manual_seed(0))


def _nan(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[1] = value
    return t


def _y(*v):
    return torch.tensor(v, dtype=torch.long)


DOM = _y(0, 0, 1, 1, 2, 2)
Y = _y(0, 1, 2, 3, 0, 1)


def _data(domains=3, classes=4):
    ds = IndexedTensorDataset(torch.randn(8, 6), torch.arange(8) % classes)
    return DomainData([ds] * domains, [ds] * domains, ds, [str(k) for k in range(domains)], "t", classes, (6,))


def _params(m):
    return {n: p.detach() for n, p in m.named_parameters()}


CASES = [
    # the model
    ("drm_featurizer_type", lambda: DRM("mlp", 5, 4, 3), r"featurizer must be a torch.nn.Module"),
    ("drm_feature_dim", lambda: DRM(nn.Linear(6, 5), 0, 4, 3), r"feature_dim must be an integer >= 1"),
    ("drm_num_classes", lambda: DRM(nn.Linear(6, 5), 5, 0, 3), r"num_classes must be an integer >= 1"),
    ("drm_num_domains", lambda: DRM(nn.Linear(6, 5), 5, 4, 0), r"num_domains must be an integer >= 1"),
    ("drm_rule", lambda: _m(rule="knn"), r"rule must be one of \['entropy', 'nn', 'cosine', 'pN"),
    ("drm_rule_p0", lambda: _m(rule="p0"), r"rule must be one of"),
    ("drm_prototype_K", lambda: _m(prototype_K=0), r"prototype_K must be an integer >= 1"),
    ("drm_gamma", lambda: _m(gamma=-1.0), r"gamma must be in \[0, inf\)"),
    ("drm_cosine_select", lambda: _m(cosine_select="min"), r"cosine_select must be one of \['argmax', 'argmin'\]"),
    ("drm_cosine_weights", lambda: _m(cosine_weights="abs"), r"cosine_weights must be one of \['softmax', 'raw'\]"),
    ("drm_steer_lr", lambda: _m(steer_lr=0.0), r"steer_lr must be in \(0, inf\)"),
    ("drm_steer_conf", lambda: _m(steer_conf=1.5), r"steer_conf must be in \[0, 1\]"),
    ("drm_disc_depth", lambda: _m(discriminator=True, disc_depth=1), r"disc_depth must be an integer >= 2"),
    ("drm_disc_dropout", lambda: _m(disc_dropout=1.0), r"disc_dropout must be in \[0, 1\)"),
    ("drm_mix_entropy", lambda: _m(mix=True), r"mix must be False with rule 'entropy'"),
    ("drm_nn_without_disc", lambda: _m(discriminator=False, rule="nn"), r"rule 'nn' needs the discriminator"),
    ("drm_configure_key", lambda: _m().configure(rules="nn"), r"DRM setting must be one of"),
    (
        "drm_featurizer_dim",
        lambda: DRM(nn.Linear(6, 7), 5, 4, 3)(torch.randn(2, 6)),
        r"featurizer output must have shape \[batch, feature_dim=5\], got \[2, 7\]",
    ),
    ("drm_forward_domain_range", lambda: _m()(torch.randn(2, 6), _y(0, 3)), r"domain must lie in \[0, 2\]"),
    ("drm_forward_domain_len", lambda: _m()(torch.randn(2, 6), _y(0)), r"domain must have shape \[2\]"),
    ("drm_prototypes_empty", lambda: _m(rule="cosine")(torch.randn(2, 6)), r"prototypes of domains \[0, 1, 2\]"),
    (
        "drm_update_prototypes_nan",
        lambda: _m().update_prototypes(_nan(torch.randn(2, 5)), _y(0, 1)),
        r"features holds 1 NaN",
    ),
    (
        "drm_update_prototypes_shape",
        lambda: _m().update_prototypes(torch.randn(2, 4), _y(0, 1)),
        r"features must have shape \[\*, 5\]",
    ),
    ("drm_phase_data", lambda: _m().phase([1, 2]), r"data must be a priorkit.data.domains.DomainData"),
    ("drm_phase_domains", lambda: _m().phase(_data(domains=2)), r"data has 2 source domains and 4 classes"),
    ("drm_phase_classes", lambda: _m().phase(_data(classes=3)), r"num_classes=4"),
    ("drm_phase_lr", lambda: _m().phase(_data(), lr=0.0), r"lr must be in \(0, inf\)"),
    ("drm_phase_per_domain", lambda: _m().phase(_data(), per_domain=9), r"per_domain \(9\) exceeds the smallest"),
    ("drm_phase_beta1", lambda: _m(discriminator=True).phase(_data(), beta1_d=1.0), r"beta1_d must be in \[0, 1\)"),
    ("drm_steer_empty", lambda: _m().steer(torch.zeros(0, 6)), r"xs must be a non-empty batch"),
    # the loss
    ("drm_loss_shape", lambda: drm_loss(torch.randn(6, 4), Y, DOM), r"head_logits must have shape \[\*, \*, \*\]"),
    ("drm_loss_one_head", lambda: drm_loss(torch.randn(1, 6, 4), Y, DOM), r"K \+ 1 >= 2 heads"),
    ("drm_loss_empty", lambda: drm_loss(torch.randn(4, 0, 4), Y[:0], DOM[:0]), r"non-empty batch"),
    ("drm_loss_nan", lambda: drm_loss(_nan(_logits()), Y, DOM), r"head_logits holds 1 NaN"),
    ("drm_loss_inf", lambda: drm_loss(_nan(_logits(), float("inf")), Y, DOM), r"head_logits holds 1 NaN or infinite"),
    ("drm_loss_int", lambda: drm_loss(_logits().long(), Y, DOM), r"head_logits must be floating point"),
    ("drm_loss_labels", lambda: drm_loss(_logits(), _y(0, 1, 2, 3, 4, 0), DOM), r"y must lie in \[0, 3\]"),
    ("drm_loss_labels_len", lambda: drm_loss(_logits(), Y[:4], DOM), r"y must have shape \[6\]"),
    ("drm_loss_labels_dtype", lambda: drm_loss(_logits(), Y.float(), DOM), r"y must hold integer"),
    ("drm_loss_domain_range", lambda: drm_loss(_logits(), Y, _y(0, 0, 1, 1, 2, 3)), r"domain must lie in \[0, 2\]"),
    ("drm_loss_domain_dtype", lambda: drm_loss(_logits(), Y, DOM.float()), r"domain must hold integer"),
    ("drm_loss_domain_missing", lambda: drm_loss(_logits(), Y, _y(0, 0, 1, 1, 1, 1)), r"domains \[2\] have no rows"),
    # selection rules
    ("head_entropies_shape", lambda: head_entropies(torch.randn(6, 4)), r"head_logits must have shape"),
    ("head_entropies_nan", lambda: head_entropies(_nan(_logits())), r"head_logits holds"),
    ("entropy_select_empty", lambda: entropy_select(torch.randn(4, 0, 4)), r"non-empty batch"),
    ("entropy_select_nan", lambda: entropy_select(_nan(_logits())), r"head_logits holds"),
    ("prototype_scores_rule", lambda: prototype_scores(torch.randn(2, 5), torch.randn(3, 5), "nn"), r"'cosine' or"),
    (
        "prototype_scores_dim",
        lambda: prototype_scores(torch.randn(2, 5), torch.randn(3, 4), "cosine"),
        r"prototypes must have shape \[\*, 5\]",
    ),
    (
        "prototype_scores_nan",
        lambda: prototype_scores(_nan(torch.randn(2, 5)), torch.randn(3, 5), "p2"),
        r"features holds 1 NaN",
    ),
    ("prototype_scores_bad_rule", lambda: prototype_scores(torch.randn(2, 5), torch.randn(3, 5), "l2"), r"rule must"),
    ("select_by_scores_entropy", lambda: select_by_scores(torch.randn(2, 3), "entropy"), r"use entropy_select"),
    ("select_by_scores_shape", lambda: select_by_scores(torch.randn(3), "cosine"), r"scores must have shape"),
    (
        "select_by_scores_flag",
        lambda: select_by_scores(torch.randn(2, 3), "cosine", cosine_select="max"),
        r"cosine_select must be one of",
    ),
    ("mixture_weights_entropy", lambda: mixture_weights(torch.rand(2, 3), "entropy"), r"mixture weights need rule"),
    ("mixture_weights_gamma", lambda: mixture_weights(torch.rand(2, 3), "p2", gamma=-1.0), r"gamma must be in"),
    (
        "mixture_weights_flag",
        lambda: mixture_weights(torch.rand(2, 3), "cosine", cosine_weights="sum"),
        r"cosine_weights must be one of",
    ),
    # steering
    ("steer_step_model", lambda: steer_step(nn.Linear(6, 4), {}, torch.randn(1, 6), lr=0.1, conf=0.5), r"a DRM"),
    (
        "steer_step_batch",
        lambda: steer_step(_m(), _params(_m()), torch.randn(2, 6), lr=0.1, conf=0.5),
        r"\[1, \.\.\.\]",
    ),
    ("steer_step_lr", lambda: steer_step(_m(), _params(_m()), torch.randn(1, 6), lr=0.0, conf=0.5), r"lr must be in"),
    ("steer_step_conf", lambda: steer_step(_m(), _params(_m()), torch.randn(1, 6), lr=0.1, conf=2), r"conf must be in"),
    (
        "steer_step_nan",
        lambda: steer_step(_m(), _params(_m()), _nan(torch.randn(1, 6)), lr=0.1, conf=0.5),
        r"x holds 1 NaN",
    ),
]
