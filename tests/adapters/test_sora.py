import copy
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from priorkit.adapters.sora import (
    SPEC,
    SoraConfig,
    SoraGateAdam,
    SoraHook,
    SoraLinear,
    gate_l1,
    gate_threshold,
    memorization_generalization,
    prune_gated_factors,
    soft_threshold,
    sora_gates,
    sora_lora_params,
    sora_ranks,
    sora_recipe,
    sora_to_lora,
    sparsify_lambdas,
    sparsify_report,
)
from priorkit.core.errors import HookConflictError, PriorkitError
from priorkit.core.seeding import seed_everything
from priorkit.data import gaussian_mixture
from priorkit.models import MLP
from priorkit.train import TrainConfig, fit

TARGETS = ["body.0", "head"]


def _base(seed=0):
    torch.manual_seed(seed)
    return MLP(8, (16,), 4)


def _sora(seed=0, **kw):
    cfg = {"r": 4, "target_modules": TARGETS, **kw}
    torch.manual_seed(seed)
    return get_peft_model(_base(seed), SoraConfig(**cfg))


@torch.no_grad()
def _randomize(model, seed=1, zero=()):
    """B random (so the branch is active), some gates exactly zero."""
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if "lora_B" in n or "lora_A" in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    for gate in sora_gates(model).values():
        for i in zero:
            gate[i] = 0.0
    return model


# ------------------------------------------------------------------------------------------------- functional core
def test_soft_threshold_on_a_hand_made_vector():
    g = torch.tensor([-1.0, -0.5, -0.375, -0.25, -0.125, 0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 2.0])
    exact = torch.tensor([-0.75, -0.25, -0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.125, 0.25, 0.5, 1.75])
    assert torch.equal(soft_threshold(g, 0.25), exact)  # exact zeros at |g| <= xi, shrinkage by exactly xi
    # released order: shrink, then zero |g| < xi with the shrunk values; |g| in (xi, 2 xi) dies, |g| == xi stays
    official = torch.tensor([-0.75, -0.25, 0.0, -0.25, 0.0, 0.0, 0.0, 0.25, 0.0, 0.25, 0.5, 1.75])
    assert torch.equal(soft_threshold(g, 0.25, official=True), official)
    assert torch.equal(soft_threshold(g, 0.0), g)


def test_threshold_modes_and_l1_term():
    assert gate_threshold(3e-4, 8e-4, "official") == 3e-4
    assert gate_threshold(3e-4, 8e-4, "paper") == pytest.approx(2.4e-7)
    gates = [torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.0, -0.5])]
    assert gate_l1(gates).item() == pytest.approx((1 + 2 + 0.5 + 0 + 0.5) / 5)


def test_sparsify_lambdas_follow_the_official_spacings():
    assert sparsify_lambdas(0.0, 7e-4, 7) == pytest.approx(np.linspace(0, 7e-4, 7).tolist())
    log = np.log(np.linspace(np.exp(1e-4), np.exp(1e-3), 4))
    assert sparsify_lambdas(1e-4, 1e-3, 4, "log_linear") == pytest.approx(log.tolist())
    exp = np.exp(np.linspace(np.log(1e-4), np.log(1e-3), 4))
    assert sparsify_lambdas(1e-4, 1e-3, 4, "exp_linear") == pytest.approx(exp.tolist())
    assert memorization_generalization(0.5, 0.3, 1.0, 0.6) == {"memorization": 0.5, "generalization": 0.5}


def test_pruned_factors_reproduce_the_gated_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    gate = torch.tensor([0.7, 0.0, -1.3, 0.0, 0.2], dtype=torch.float64)
    a2, b2 = prune_gated_factors(a, b, gate)
    assert a2.shape == (3, 7) and b2.shape == (6, 3)
    assert torch.allclose(b2 @ a2, (b * gate) @ a, atol=1e-12)


# ------------------------------------------------------------------------------------------------- the PEFT tuner
def test_layers_forward_and_trainable_tensors():
    base = _base()
    model = get_peft_model(copy.deepcopy(base), SoraConfig(r=4, target_modules=["body.0"], modules_to_save=["head"]))
    layer = model.base_model.model.body[0]
    assert isinstance(layer, SoraLinear) and layer.lora_gate["default"].shape == (4,)
    assert model.peft_config["default"].peft_type.value == "SORA"
    trainable = sorted(n.removeprefix("base_model.model.") for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["body.0.lora_A.default.weight", "body.0.lora_B.default.weight", "body.0.lora_gate.default",
                         "head.modules_to_save.default.bias", "head.modules_to_save.default.weight"]  # fmt: skip
    _randomize(model)
    x = torch.randn(5, 8)
    a, b, g = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_gate["default"]
    w0 = base.body[0]
    hand = w0(x) + layer.scaling["default"] * ((x @ a.T) * g) @ b.T
    assert torch.allclose(layer(x), hand, atol=1e-6)
    assert layer.scaling["default"] == 16 / 4  # official alpha 16


def test_gate_of_ones_is_plain_lora():
    sora = _randomize(_sora(gate_init="ones"))
    lora = get_peft_model(_base(), LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS))
    lora.load_state_dict({k: v for k, v in sora.state_dict().items() if "lora_gate" not in k})
    x = torch.randn(7, 8)
    assert torch.equal(sora(x), lora(x))


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = _randomize(_sora(), zero=[1])
    x = torch.randn(6, 8)
    y = model(x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_base(), tmp_path)
    assert isinstance(loaded.peft_config["default"], SoraConfig)
    assert torch.equal(loaded(x), y)
    assert sora_ranks(loaded) == {"body.0": 3, "head": 3}


def test_merge_and_unload_equals_the_unmerged_forward():
    model = _randomize(_sora(), zero=[0, 2])
    x = torch.randn(9, 8)
    y = model(x)
    w = model.base_model.model.body[0].base_layer.weight.detach().clone()
    model.merge_adapter()
    assert torch.allclose(model(x), y, atol=1e-6)
    model.unmerge_adapter()
    assert torch.allclose(model.base_model.model.body[0].base_layer.weight, w, atol=1e-6)
    merged = copy.deepcopy(model).merge_and_unload()
    assert isinstance(merged.body[0], nn.Linear) and torch.allclose(merged(x), y, atol=1e-6)
    with model.disable_adapter():  # the base output (the weight went through merge/unmerge: 1e-6)
        assert torch.allclose(model(x), _base()(x), atol=1e-6)


def test_export_to_stock_lora_has_identical_outputs_and_loads(tmp_path):
    model = _randomize(_sora(), zero=[1, 3])
    with torch.no_grad():
        model.base_model.model.head.lora_gate["default"].zero_()  # head: r' = 0 leaves target_modules
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(32, 8)
    y = model(x)
    lora = sora_to_lora(model)
    cfg = lora.peft_config["default"]
    assert type(cfg) is LoraConfig and cfg.peft_type.value == "LORA"
    assert set(cfg.target_modules) == {"body.0"} and list(cfg.rank_pattern.values()) == [2]
    assert list(cfg.alpha_pattern.values()) == [4.0 * 2]  # s r' keeps the scaling s = 16 / 4
    assert isinstance(lora.base_model.model.body[0], LoraLinear) and isinstance(lora.base_model.model.head, nn.Linear)
    assert (lora(x) - y).abs().max() < 1e-6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input unchanged
    lora.save_pretrained(tmp_path)
    stock = PeftModel.from_pretrained(_base(), tmp_path)
    assert (stock(x) - y).abs().max() < 1e-6
    n_params = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert n_params == sora_lora_params(model)[0] == 2 * (8 + 16)


def test_export_keeps_modules_to_save_and_mixed_batches_use_the_gate(tmp_path):
    torch.manual_seed(0)
    model = _randomize(get_peft_model(_base(), SoraConfig(r=4, target_modules=["body.0"], modules_to_save=["head"])))
    with torch.no_grad():
        model.base_model.model.head.modules_to_save["default"].weight.mul_(1.5)  # a trained head
    x = torch.randn(10, 8)
    y = model(x)
    lora = sora_to_lora(model)
    assert (lora(x) - y).abs().max() < 1e-6
    lora.save_pretrained(tmp_path)
    assert (PeftModel.from_pretrained(_base(), tmp_path)(x) - y).abs().max() < 1e-6
    model.eval()
    with model.disable_adapter():
        y_base = model(x)
    mixed = model(x, adapter_names=["default", "__base__"] * 5)
    assert torch.allclose(mixed[0::2], y[0::2], atol=1e-5) and torch.allclose(mixed[1::2], y_base[1::2], atol=1e-5)


def test_export_in_float64_is_exact_to_1e_12():
    model = _randomize(_sora(), zero=[2]).double()
    x = torch.randn(16, 8, dtype=torch.float64)
    assert (sora_to_lora(model)(x) - model(x)).abs().max() < 1e-12


def test_unsupported_layers_and_ranks_are_refused():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(PriorkitError, match=r"torch.nn.Linear layers only; target module '0' is Conv2d"):
        get_peft_model(conv, SoraConfig(r=2, target_modules=["0", "2"]))
    with pytest.raises(PriorkitError, match=r"r=8 exceeds min\(in, out\) = 4"):
        get_peft_model(_base(), SoraConfig(r=8, target_modules=["head"]))
    with pytest.raises(PriorkitError, match="use_dora"):
        SoraConfig(r=2, target_modules=["head"], use_dora=True)
    with pytest.raises(PriorkitError, match="init_lora_weights must be one of"):
        SoraConfig(r=2, target_modules=["head"], init_lora_weights="pissa")


def test_presets_build_configs():
    assert SPEC.entry == "SoraConfig"
    for preset in SPEC.presets.values():
        assert SoraConfig(**preset).lambda2 == preset["lambda2"]


# ------------------------------------------------------------------------------------------ optimizer and engine
def test_gate_adam_is_adam_then_the_proximal_step():
    g0 = torch.tensor([0.5, -0.2, 1e-4, 2.0])
    grad = torch.tensor([0.1, -0.3, 0.0, 0.2])
    for mode, lr, lam in (("official", 1e-2, 3e-2), ("paper", 1e-2, 5.0)):
        p, q = nn.Parameter(g0.clone()), nn.Parameter(g0.clone())
        p.grad, q.grad = grad.clone(), grad.clone()
        SoraGateAdam([p], lr=lr, lambda2=lam, threshold_mode=mode, eps=1e-6).step()
        torch.optim.Adam([q], lr=lr, eps=1e-6).step()
        assert torch.equal(p.detach(), soft_threshold(q.detach(), gate_threshold(lam, lr, mode)))


def _train(model, hooks, *, epochs=3, lambda2=None, **cfg):
    data = gaussian_mixture(160, num_classes=4, dim=8, seed=0)
    hook = next((h for h in hooks if isinstance(h, SoraHook)), None)
    extra = {k: cfg.pop(k) for k in list(cfg) if k.startswith("sparsify") or k in ("evaluate", "stage_lr")}
    recipe = sora_recipe(model, len(data.train), 16, epochs=epochs, lr=1e-2, hook=hook, **extra)
    resume = cfg.get("ckpt_dir") is not None and cfg.get("stop_after_epoch") is None
    return fit(model, data.train, recipe, hooks=hooks, config=TrainConfig(batch_size=16, seed=0, progress=False,
                                                                          **cfg), resume=resume)  # fmt: skip


def test_training_sparsifies_gates_and_only_adapters_move():
    model = _sora(lambda1=1.0, lambda2=5e-3)
    base = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    hook = SoraHook.from_config(model.peft_config["default"])
    history = _train(model, [hook], epochs=4)
    gates = torch.cat(list(sora_gates(model).values()))
    assert (gates == 0).any() and len(hook.rank_history) == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    assert "sora_l1" in history[0] and 0 < history[-2]["gates_nonzero"] < 1
    assert sora_ranks(model) == hook.rank_history[-1]


def test_l1_term_adds_lambda1_sign_over_n_to_the_gate_gradient():
    x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))

    def grads(lambda1):
        model = _randomize(_sora())
        loss = nn.functional.cross_entropy(model(x), y)
        gates = list(sora_gates(model).values())
        (loss + lambda1 * gate_l1(gates)).backward()
        return torch.cat([g.grad for g in gates]), torch.cat([g.detach() for g in gates])

    plain, _ = grads(0.0)
    reg, g = grads(2.0)
    assert torch.allclose(reg - plain, 2.0 * torch.sign(g) / g.numel(), atol=1e-6)


def test_main_optimizer_holding_the_gates_is_refused():
    model = _sora()
    data = gaussian_mixture(40, num_classes=4, dim=8, seed=0)
    recipe = sora_recipe(model, len(data.train), 16, epochs=1)
    opt = lambda m: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad])  # noqa: E731
    recipe.phases[0].optimizer = opt
    with pytest.raises(HookConflictError, match="also updates the SoRA gates"):
        fit(model, data.train, recipe, hooks=[SoraHook()], config=TrainConfig(batch_size=16, progress=False))
    with pytest.raises(PriorkitError, match="no SoRA layers"):
        fit(_base(), data.train, hooks=[SoraHook()], config=TrainConfig(epochs=1, progress=False))


def test_sparsifying_stages_report_and_only_threshold_at_lr_zero():
    model = _sora(lambda1=0.5, lambda2=1e-3)
    hook = SoraHook.from_config(model.peft_config["default"])
    snap = {}

    def evaluate(m):
        snap.setdefault("a", [p.detach().clone() for n, p in m.named_parameters() if "lora_A" in n])
        return {"train": 0.8 + 0.1 * len(snap.setdefault("calls", [])), "val": 0.5}

    history = _train(model, [hook], epochs=2, evaluate=evaluate, sparsify_stop=5e-2, sparsify_num=3,
                     sparsify_epochs=1)  # fmt: skip
    rows = sparsify_report(history)
    assert [r["sora_stage"] for r in rows] == [0, 1, 2]
    assert [r["lambda2"] for r in rows] == pytest.approx([1e-3, 2.55e-2, 5e-2])
    assert rows[1]["memorization"] == pytest.approx(0.8 / 0.8) and rows[1]["generalization"] == 1.0
    assert rows[2]["retained_params"] <= rows[1]["retained_params"] <= rows[0]["retained_params"]
    # official stages: the exhausted schedule (lr 0) leaves A unchanged, the gates are only thresholded
    after = [p.detach() for n, p in model.named_parameters() if "lora_A" in n]
    assert all(torch.equal(a, b) for a, b in zip(snap["a"], after))


def test_engine_resume_is_bit_identical(tmp_path):
    def run(**cfg):
        model = _sora(lambda1=1.0, lambda2=3e-3)
        hook = SoraHook.from_config(model.peft_config["default"])
        _train(model, [hook], epochs=3, **cfg)
        return model, hook

    full, h_full = run()
    run(ckpt_dir=str(tmp_path), stop_after_epoch=0)
    again, h_again = run(ckpt_dir=str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), again.state_dict().values()))
    assert h_full.rank_history == h_again.rank_history
    assert h_full.optimizer.state_dict()["state"][0]["exp_avg"].equal(h_again.optimizer.state_dict()["state"][0]
                                                                      ["exp_avg"])  # fmt: skip


def test_lora_baseline_trains_through_the_same_recipe():
    seed_everything(0)
    model = get_peft_model(_base(), LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    _train(model, [], epochs=1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
    assert math.isfinite(sum(p.sum().item() for p in model.parameters()))
