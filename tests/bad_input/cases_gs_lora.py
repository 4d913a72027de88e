"""Bad input for GS-LoRA's public entry points (collected by tests/test_bad_input.py)."""

from types import SimpleNamespace

import torch

from priorkit.adapters.gs_lora import (
    GSLoRA,
    GSLoRALoss,
    alpha_at,
    block_group,
    bounded_forget_loss,
    class_prototypes,
    default_bnd,
    forgetting_metrics,
    group_lasso,
    h_mean,
    lora_groups,
    prototype_kl,
    prototype_loss,
    zeroed_fraction,
)
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.models.vit import ViT
from priorkit.train import Batch, TrainConfig

NAN, INF = float("nan"), float("inf")


def _vit():
    torch.manual_seed(0)
    return ViT(depth=1, dim=8, heads=2, mlp_dim=16)


def _gs(**kw):
    return GSLoRA(_vit(), **kw)


def _ds(y, x=None):
    y = torch.tensor(y, dtype=torch.long)
    return IndexedTensorDataset(torch.rand(len(y), 1, 8, 8) if x is None else x, y)


def _forget(forget=None, retain=None, config=None):
    cfg = config if config is not None else TrainConfig(epochs=1, batch_size=2, progress=False)
    _gs().forget(forget if forget is not None else _ds([0, 1]), retain if retain is not None else _ds([2, 3]), cfg)


def _nan_x(n=2):
    x = torch.rand(n, 1, 8, 8)
    x[0, 0, 0, 0] = NAN
    return x


def _nan(t, value=NAN):
    t = t.clone()
    t.view(-1)[0] = value
    return t


def _y(*v):
    return torch.tensor(v, dtype=torch.long)


def _extra_loss_without_forget_batch():
    hook = GSLoRALoss(beta=0.1, bnd=1.0)
    batch = Batch(x=torch.rand(2, 1, 8, 8), y=_y(0, 1), index=torch.arange(2))
    hook.extra_loss(SimpleNamespace(net=_vit()), batch)


class _NotAModel:
    pass


CASES = [
    # the driver
    ("gs_lora_model", lambda: GSLoRA(_NotAModel()), r"model must be a torch.nn.Module"),
    ("gs_lora_mode", lambda: _gs(mode="half"), r"mode must be one of \['lora', 'full'\]"),
    ("gs_lora_rank", lambda: _gs(r=0), r"r must be an integer >= 1"),
    ("gs_lora_lora_alpha", lambda: _gs(lora_alpha=0.0), r"lora_alpha must be in \(0, inf\)"),
    ("gs_lora_beta_negative", lambda: _gs(beta=-1.0), r"beta must be in \[0, inf\)"),
    ("gs_lora_beta_nan", lambda: _gs(beta=NAN), r"beta must be in \[0, inf\)"),
    ("gs_lora_beta_inf", lambda: _gs(beta=INF), r"beta must be a finite number"),
    ("gs_lora_beta_empty", lambda: _gs(beta=()), r"beta must be a number or a non-empty per-task sequence"),
    ("gs_lora_beta_item", lambda: _gs(beta=(0.1, -1.0)), r"beta\[1\] must be in \[0, inf\)"),
    ("gs_lora_w_f", lambda: _gs(w_f=-0.5), r"w_f must be in \[0, inf\)"),
    ("gs_lora_alpha", lambda: _gs(alpha=-0.1), r"alpha must be in \[0, inf\)"),
    ("gs_lora_alpha_full", lambda: _gs(mode="full", alpha=0.1), r"mode='full' has no LoRA groups.*alpha must be 0"),
    ("gs_lora_alpha_warmup", lambda: _gs(alpha_warmup=-1), r"alpha_warmup must be an integer >= 0"),
    ("gs_lora_bnd", lambda: _gs(bnd=0.0), r"bnd must be in \(0, inf\)"),
    ("gs_lora_bnd_inf", lambda: _gs(bnd=INF), r"bnd must be a finite number"),
    ("gs_lora_bnd_k", lambda: _gs(bnd_k=0.0), r"bnd_k must be in \(0, inf\)"),
    ("gs_lora_bnd_pro", lambda: _gs(bnd_pro=-1.0), r"bnd_pro must be in \(0, inf\)"),
    ("gs_lora_proto_space", lambda: _gs(proto_space="pixels"), r"proto_space must be one of \['embedding', 'logits'\]"),
    ("gs_lora_proto_copies", lambda: _gs(proto_copies=0), r"proto_copies must be an integer >= 1"),
    ("gs_lora_proto_augment", lambda: _gs(proto_augment=3), r"proto_augment must be a callable"),
    ("gs_lora_ema_decay", lambda: _gs(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
    ("gs_lora_ema_epoch", lambda: _gs(ema_epoch=-2), r"ema_epoch must be an integer >= 0"),
    ("gs_lora_reinit_a", lambda: _gs(reinit_a=-1.0), r"reinit_a must be in \[0, inf\)"),
    ("gs_lora_min_lr", lambda: _gs(min_lr=NAN), r"min_lr must be in \[0, inf\)"),
    ("gs_lora_head", lambda: _gs(head="classifier"), r"head must name exactly one module"),
    ("gs_lora_num_classes", lambda: _gs(num_classes=1), r"num_classes must be an integer >= 2"),
    ("gs_lora_target_modules_str", lambda: _gs(target_modules="fc1"), r"target_modules must be a non-empty sequence"),
    ("gs_lora_target_modules_empty", lambda: _gs(target_modules=()), r"target_modules must be a non-empty sequence"),
    ("gs_lora_group_fn", lambda: _gs(group_fn=3), r"group_fn must be a callable"),
    ("forget_config", lambda: _forget(config={"epochs": 1}), r"config must be a priorkit.train.TrainConfig"),
    ("forget_empty", lambda: _forget(forget=_ds([])), r"forget_data must hold at least one sample"),
    ("forget_labels_range", lambda: _forget(forget=_ds([0, 12])), r"forget_data labels must lie in \[0, 9\]"),
    ("forget_retain_nan", lambda: _forget(retain=_ds([2, 3], _nan_x())), r"retain_data inputs holds 1 NaN"),
    (
        "forget_inputs_dtype",
        lambda: _forget(forget=_ds([0, 1], torch.ones(2, 1, 8, 8, dtype=torch.long))),
        r"forget_data inputs must be a floating-point tensor",
    ),
    ("forget_overlap", lambda: _forget(retain=_ds([1, 3])), r"forget_data and retain_data share class\(es\) \[1\]"),
    ("forget_dataset_type", lambda: _forget(forget=[1, 2]), r"forget_data must be a torch Dataset"),
    # the hook
    ("loss_beta", lambda: GSLoRALoss(beta=-1.0, bnd=1.0), r"beta must be in \[0, inf\)"),
    ("loss_bnd", lambda: GSLoRALoss(beta=0.1, bnd=0.0), r"bnd must be in \(0, inf\)"),
    ("loss_proto_space", lambda: GSLoRALoss(beta=0.1, bnd=1.0, proto_space="x"), r"proto_space must be one of"),
    (
        "loss_prototypes_shape",
        lambda: GSLoRALoss(beta=0.1, bnd=1.0, prototypes=torch.zeros(4)),
        r"prototypes must have shape \[\*, \*\]",
    ),  # fmt: skip
    (
        "loss_prototypes_nan",
        lambda: GSLoRALoss(beta=0.1, bnd=1.0, prototypes=_nan(torch.zeros(3, 2))),
        r"prototypes holds 1 NaN",
    ),  # fmt: skip
    (
        "loss_proto_mask",
        lambda: GSLoRALoss(beta=0.1, bnd=1.0, prototypes=torch.zeros(3, 2), proto_mask=torch.ones(2, dtype=torch.bool)),
        r"proto_mask must have shape \[3\]",
    ),  # fmt: skip
    ("loss_no_forget_batch", _extra_loss_without_forget_batch, r"needs the forget batch in batch.extras"),
    # the functional core
    ("default_bnd_classes", lambda: default_bnd(1), r"num_classes must be an integer >= 2"),
    ("default_bnd_k", lambda: default_bnd(10, k=-1.0), r"bnd_k must be in \(0, inf\)"),
    ("bounded_shape", lambda: bounded_forget_loss(torch.zeros(4), _y(0), 1.0), r"logits must have shape \[\*, \*\]"),
    ("bounded_empty", lambda: bounded_forget_loss(torch.zeros(0, 3), _y(), 1.0), r"logits must be a non-empty"),
    ("bounded_nan", lambda: bounded_forget_loss(_nan(torch.zeros(2, 3)), _y(0, 1), 1.0), r"logits holds 1 NaN"),
    ("bounded_inf", lambda: bounded_forget_loss(_nan(torch.zeros(2, 3), INF), _y(0, 1), 1.0), r"logits holds 1"),
    ("bounded_labels", lambda: bounded_forget_loss(torch.zeros(2, 3), _y(0, 3), 1.0), r"y must lie in \[0, 2\]"),
    ("bounded_labels_len", lambda: bounded_forget_loss(torch.zeros(2, 3), _y(0), 1.0), r"y must have shape \[2\]"),
    ("bounded_bnd", lambda: bounded_forget_loss(torch.zeros(2, 3), _y(0, 1), -1.0), r"bnd must be in \(0, inf\)"),
    (
        "bounded_reduction",
        lambda: bounded_forget_loss(torch.zeros(2, 3), _y(0, 1), 1.0, reduction="sum"),
        r"reduction must be one of \['batch', 'sample'\]",
    ),
    ("gs_lora_forget_reduction", lambda: _gs(forget_reduction="max"), r"forget_reduction must be one of"),
    ("loss_forget_reduction", lambda: GSLoRALoss(beta=0.1, bnd=1.0, forget_reduction="x"), r"forget_reduction must"),
    ("block_group_type", lambda: block_group(3), r"name must be a parameter name \(str\)"),
    ("lora_groups_model", lambda: lora_groups("model"), r"model must be a torch.nn.Module"),
    ("lora_groups_fn", lambda: lora_groups(_vit(), group_fn="blocks"), r"group_fn must be a callable"),
    ("group_lasso_type", lambda: group_lasso([torch.zeros(2)]), r"groups must be a mapping"),
    ("group_lasso_empty_group", lambda: group_lasso({"b0": []}), r"group 'b0' holds no parameter"),
    ("zeroed_empty", lambda: zeroed_fraction([]), r"norms must hold at least one group norm"),
    ("zeroed_negative", lambda: zeroed_fraction([1.0, -0.1]), r"norms must be finite and >= 0"),
    ("zeroed_nan", lambda: zeroed_fraction([1.0, NAN]), r"norms must be finite and >= 0"),
    ("zeroed_rel", lambda: zeroed_fraction([1.0], rel=2.0), r"rel must be in \[0, 1\]"),
    ("alpha_at_epoch", lambda: alpha_at(-1, 0.1, 2), r"epoch must be an integer >= 0"),
    ("alpha_at_alpha", lambda: alpha_at(0, NAN, 2), r"alpha must be in \[0, inf\)"),
    ("alpha_at_warmup", lambda: alpha_at(0, 0.1, -3), r"alpha_warmup must be an integer >= 0"),
    ("prototype_kl_shape", lambda: prototype_kl(torch.zeros(2, 3), torch.zeros(2, 4)), r"mu must have shape \[2, 3\]"),
    ("prototype_kl_empty", lambda: prototype_kl(torch.zeros(0, 3), torch.zeros(0, 3)), r"e must be a non-empty"),
    ("prototype_kl_nan", lambda: prototype_kl(_nan(torch.zeros(2, 3)), torch.zeros(2, 3)), r"e holds 1 NaN"),
    ("prototype_kl_mu_inf", lambda: prototype_kl(torch.zeros(2, 3), _nan(torch.zeros(2, 3), INF)), r"mu holds 1"),
    (
        "prototype_loss_missing_class",
        lambda: prototype_loss(
            torch.zeros(2, 3),
            _y(0, 1),
            None,
            None,
            torch.zeros(4, 3),
            w_f=0.5,
            mask=torch.tensor([True, False, True, True]),
        ),
        r"y_f: no prototype for class\(es\) \[1\]",
    ),  # fmt: skip
    (
        "prototype_loss_labels",
        lambda: prototype_loss(torch.zeros(2, 3), _y(0, 7), None, None, torch.zeros(4, 3), w_f=0.5),
        r"y_f must lie in \[0, 3\]",
    ),
    (
        "prototype_loss_w_f",
        lambda: prototype_loss(torch.zeros(2, 3), _y(0, 1), None, None, torch.zeros(4, 3), w_f=-1.0),
        r"w_f must be in \[0, inf\)",
    ),
    (
        "prototype_loss_retain",
        lambda: prototype_loss(torch.zeros(2, 3), _y(0, 1), None, None, torch.zeros(4, 3), w_f=0.5, w_r=0.1),
        r"w_r > 0 needs the retain embeddings",
    ),
    (
        "prototype_loss_dim",
        lambda: prototype_loss(torch.zeros(2, 5), _y(0, 1), None, None, torch.zeros(4, 3), w_f=0.5),
        r"e_f must have shape \[\*, 3\]",
    ),
    (
        "prototype_loss_bnd_pro",
        lambda: prototype_loss(torch.zeros(2, 3), _y(0, 1), None, None, torch.zeros(4, 3), w_f=0.5, bnd_pro=0.0),
        r"bnd_pro must be in \(0, inf\)",
    ),
    ("class_prototypes_space", lambda: class_prototypes(_vit(), _ds([0, 1]), 10, space="x"), r"space must be one of"),
    ("class_prototypes_copies", lambda: class_prototypes(_vit(), _ds([0, 1]), 10, copies=0), r"copies must be an"),
    ("class_prototypes_labels", lambda: class_prototypes(_vit(), _ds([0, 11]), 10), r"data labels must lie in"),
    ("class_prototypes_empty", lambda: class_prototypes(_vit(), _ds([]), 10), r"data must hold at least one sample"),
    ("class_prototypes_head", lambda: class_prototypes(_vit(), _ds([0]), 10, head="fc"), r"head must name exactly"),
    ("h_mean_range", lambda: h_mean(1.2, 0.0, 0.5), r"acc_f_before must be in \[0, 1\]"),
    ("h_mean_nan", lambda: h_mean(1.0, NAN, 0.5), r"acc_f must be in \[0, 1\]"),
    ("metrics_empty", lambda: forgetting_metrics(_vit(), _ds([]), _ds([2]), 1.0), r"forget_test must hold at least"),
    ("metrics_before", lambda: forgetting_metrics(_vit(), _ds([0]), _ds([2]), 2.0), r"acc_f_before must be in"),
]
