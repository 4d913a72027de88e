"""SORSA: the card's property tests, PEFT round trips, the regularizer hook in the engine, and refusals."""

import json
from types import SimpleNamespace

import pytest

peft = pytest.importorskip("peft")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from torch import nn  # noqa: E402

from priorkit.adapters.sorsa import (  # noqa: E402
    SPEC,
    SorsaConfig,
    SorsaHook,
    SorsaLinear,
    orthonormal_reg,
    orthonormality,
    sorsa_delta,
    sorsa_factors,
    svd_init,
)
from priorkit.core.errors import PriorkitError  # noqa: E402
from priorkit.data import IndexedTensorDataset  # noqa: E402
from priorkit.train import Hook, Phase, Recipe, TrainConfig, fit  # noqa: E402


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3))


def _sorsa(seed=0, **kw):
    kw = {"r": 4, "target_modules": ["0", "2"], **kw}
    return get_peft_model(_net(seed), SorsaConfig(**kw))


def _perturb(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(scale * torch.randn(p.shape, generator=g))


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return IndexedTensorDataset(x, (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long())


def _train(model, hooks=(), epochs=2, **cfg):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    tc = TrainConfig(epochs=epochs, batch_size=32, optimizer="adamw", lr=1e-2, progress=False, **cfg)
    resume = cfg.get("ckpt_dir") is not None and cfg.get("stop_after_epoch") is None
    return fit(model, _data(), Recipe([Phase("adapt", epochs=epochs, trainable=names)]), hooks=list(hooks),
               config=tc, resume=resume)  # fmt: skip


X = torch.randn(7, 12, generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------------------- the card's properties
def test_init_keeps_the_function_and_factors_are_the_top_svd():
    base = _net()
    y0, w0 = base(X), base[0].weight.detach().clone()
    pm = _sorsa()
    layer = pm.base_model.model[0]
    assert isinstance(layer, SorsaLinear)
    u, s, vh = layer.lora_B["default"].weight, layer.lora_S["default"], layer.lora_A["default"].weight
    merged = layer.get_base_layer().weight + layer.get_delta_weight("default")
    assert (merged - w0).abs().max() < 1e-5
    assert (pm(X) - y0).abs().max() < 1e-5
    eye = torch.eye(4)
    assert torch.allclose(u.T @ u, eye, atol=1e-5) and torch.allclose(vh @ vh.T, eye, atol=1e-5)
    assert torch.all(s[:-1] >= s[1:])
    assert torch.allclose(s, torch.linalg.svdvals(w0)[:4], atol=1e-5)
    trained = {n.split(".")[3] for n, p in pm.named_parameters() if p.requires_grad}  # base_model.model.<i>.<name>
    assert trained == {"lora_A", "lora_B", "lora_S"}


def test_scale_alpha_over_r_and_functional_init_agree():
    w = torch.randn(9, 6, generator=torch.Generator().manual_seed(0))
    up, sp, vhp, res = svd_init(w, 3, scaling=0.5)
    assert torch.allclose(res + sorsa_delta(up, sp, vhp, 0.5), w, atol=1e-5)
    layer = _sorsa(lora_alpha=2.0).base_model.model[2]
    assert layer.scaling["default"] == 0.5  # alpha / r
    assert _sorsa().base_model.model[2].scaling["default"] == 1.0  # alpha=None: scale 1 (official default)


def test_svd_runs_in_float32_for_half_precision_weights():
    w = torch.randn(16, 12, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    up, sp, vhp, res = svd_init(w, 4)
    assert {t.dtype for t in (up, sp, vhp, res)} == {torch.bfloat16}
    ref = svd_init(w.float(), 4)
    assert torch.allclose(res.float(), ref[3], atol=2e-2) and torch.allclose(sp.float(), ref[1], atol=2e-2)


def test_merge_then_unmerge_restores_the_residual_and_merged_equals_unmerged():
    pm = _sorsa()
    _perturb(pm)
    layers = [m for m in pm.modules() if isinstance(m, SorsaLinear)]
    residual = [m.get_base_layer().weight.detach().clone() for m in layers]
    y = pm(X)
    for m in layers:
        m.merge()
    assert torch.allclose(pm(X), y, atol=1e-5)
    for m in layers:
        m.unmerge()
    for m, w in zip(layers, residual):
        assert (m.get_base_layer().weight - w).abs().max() < 1e-6
    assert torch.allclose(pm(X), y, atol=1e-6)


def test_regularizer_matches_the_hand_formula_on_a_6x3_example():
    g = torch.Generator().manual_seed(0)
    u, vh = torch.randn(6, 3, generator=g), torch.randn(3, 6, generator=g)

    def fro(a):
        return sum(float(v) ** 2 for v in a.flatten()) ** 0.5

    hand = (fro(u.T @ u - torch.eye(3)) + fro(vh @ vh.T - torch.eye(3))) / 2
    assert orthonormal_reg([(u, vh)]).item() == pytest.approx(hand, rel=1e-6)
    assert orthonormal_reg([(u, torch.ones(3), vh)]).item() == pytest.approx(hand, rel=1e-6)  # triples too
    # two layers: the mean over K = 4 matrices; eps smooths each norm
    two = orthonormal_reg([(u, vh), (u, vh)], eps=0.5)
    eps_hand = ((fro(u.T @ u - torch.eye(3)) ** 2 + 0.5) ** 0.5 + (fro(vh @ vh.T - torch.eye(3)) ** 2 + 0.5) ** 0.5) / 2
    assert two.item() == pytest.approx(eps_hand, rel=1e-6)
    q = torch.linalg.qr(torch.randn(6, 3, generator=g)).Q
    assert orthonormality(q).item() < 1e-5 and orthonormality(q.T, rows=True).item() < 1e-5


class _Grads(Hook):
    """Records the adapter gradients of the first step."""

    def __init__(self):
        self.grads = None

    def on_after_backward(self, state):
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in state.model.named_parameters() if p.grad is not None}


def test_gamma_zero_reproduces_the_unregularized_gradients_exactly():
    plain, zero = _Grads(), _Grads()
    _train(_sorsa(), [plain], epochs=1)
    hist = _train(_sorsa(), [SorsaHook(gamma=0.0), zero], epochs=1)
    assert plain.grads.keys() == zero.grads.keys() and len(plain.grads) == 6
    assert all(torch.equal(plain.grads[k], zero.grads[k]) for k in plain.grads)
    assert "sorsa_ortho" not in hist[0] and hist[0]["sorsa_orth_err"] > 0  # logged, not added


def test_gamma_adds_gamma_times_the_regularizer_gradient():
    plain, reg = _Grads(), _Grads()
    _train(_sorsa(), [plain], epochs=1)
    pm = _sorsa()
    _perturb(pm, 0.0)  # same start
    factors = sorsa_factors(pm)
    params = [t for f in factors for t in f]
    expected = torch.autograd.grad(orthonormal_reg(factors), params, allow_unused=True)
    _train(pm, [SorsaHook(gamma=0.3), reg], epochs=1)
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    by_param = {id(p): g for p, g in zip(params, expected)}
    for n, p in pm.named_parameters():
        if n in names:
            extra = by_param[id(p)]
            want = plain.grads[n] + (0.3 * extra if extra is not None else 0)
            assert torch.allclose(reg.grads[n], want, atol=1e-6), n


def test_released_lr_scaling_and_decoupled_step():
    pm = _sorsa()
    _perturb(pm)
    reg = orthonormal_reg(sorsa_factors(pm)).item()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=0.02)
    state = SimpleNamespace(model=pm, optimizer=opt, log=lambda **kw: None)
    term = SorsaHook(gamma=4e-4, lr_scaled=True).extra_loss(state, None)["sorsa_ortho"]
    assert term.item() == pytest.approx(4e-4 / 0.02 * reg, rel=1e-6)
    # decoupled: theta <- theta - lr * gamma * grad L_reg after the optimizer step, nothing in the loss
    hook = SorsaHook(gamma=0.5, reg_mode="decoupled")
    assert hook.extra_loss(state, None) == {}
    factors = sorsa_factors(pm)
    vecs = [t for f in factors for t in (f[0], f[2])]
    grads = torch.autograd.grad(orthonormal_reg(factors), vecs)
    want = [(v - 0.02 * 0.5 * g).detach() for v, g in zip(vecs, grads)]
    sigma = [f[1].detach().clone() for f in factors]
    hook.on_step_end(state, None)
    assert all(torch.allclose(v, w, atol=1e-7) for v, w in zip(vecs, want))
    assert all(torch.equal(f[1], s) for f, s in zip(factors, sigma))  # sigma is not regularized


def test_training_moves_only_the_adapter_and_the_regularizer_pulls_to_orthonormal():
    free, held = _sorsa(), _sorsa()
    frozen = {n: p.detach().clone() for n, p in free.named_parameters() if not p.requires_grad}
    _train(free, [SorsaHook(gamma=0.0)], epochs=3)
    _train(held, [SorsaHook(gamma=1.0)], epochs=3)
    for n, p in free.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert orthonormal_reg(sorsa_factors(held)) < orthonormal_reg(sorsa_factors(free))


# ------------------------------------------------------------------------------------------------ PEFT round trips
def test_save_load_on_the_original_base_and_merge_and_unload(tmp_path):
    pm = _sorsa(gamma=1e-3)
    _train(pm, [SorsaHook.from_config(pm.peft_config["default"])], epochs=2)
    pm.eval()
    y = pm(X)
    pm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "SORSA" and saved["gamma"] == 1e-3 and saved["lora_alpha"] is None
    loaded = PeftModel.from_pretrained(_net(), tmp_path)  # the ORIGINAL weights: SVD init rebuilds W_r
    cfg = loaded.peft_config["default"]
    assert isinstance(cfg, SorsaConfig) and cfg.gamma == 1e-3
    assert torch.allclose(loaded(X), y, atol=1e-6)
    merged = loaded.merge_and_unload()
    assert not any(isinstance(m, SorsaLinear) for m in merged.modules())
    assert torch.allclose(merged(X), y, atol=1e-5)


def test_disabled_adapter_runs_the_residual():
    pm = _sorsa()
    residual = _net()
    with torch.no_grad():
        for i in (0, 2):
            residual[i].weight.copy_(pm.base_model.model[i].get_base_layer().weight)
    with pm.disable_adapter():
        assert torch.equal(pm(X), residual(X))


def test_engine_resume_is_bit_identical(tmp_path):
    ref = _sorsa()
    _train(ref, [SorsaHook(gamma=0.1)], epochs=3)
    part = _sorsa()
    _train(part, [SorsaHook(gamma=0.1)], epochs=3, ckpt_dir=str(tmp_path), stop_after_epoch=0)
    again = _sorsa()
    _train(again, [SorsaHook(gamma=0.1)], epochs=3, ckpt_dir=str(tmp_path))
    for (n, a), (_, b) in zip(ref.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), n


# --------------------------------------------------------------------------------------------------------- refusals
def test_unsupported_layers_ranks_and_options_are_refused():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(PriorkitError, match=r"torch.nn.Linear layers only.*'0'.*Conv2d"):
        get_peft_model(conv, SorsaConfig(r=2, target_modules=["0"]))
    with pytest.raises(PriorkitError, match=r"r must be <= min\(out_features, in_features\) = 3"):
        get_peft_model(_net(), SorsaConfig(r=4, target_modules=["4"]))
    with pytest.raises(PriorkitError, match="use_dora must be False"):
        SorsaConfig(r=2, target_modules=["0"], use_dora=True)
    with pytest.raises(PriorkitError, match=r"init_lora_weights must be one of \[True, False\]"):
        SorsaConfig(r=2, target_modules=["0"], init_lora_weights="pissa")
    with pytest.raises(PriorkitError, match="no active SORSA adapter"):
        _train(get_peft_model(_net(), LoraConfig(r=2, target_modules=["0"])), [SorsaHook()], epochs=1)
    with pytest.raises(PriorkitError, match="adapter_names"):
        _sorsa().eval()(X, adapter_names=["default"] * len(X))


def test_presets_build_the_config():
    assert SPEC.entry == "SorsaConfig" and SPEC.status == "implemented"
    for name, preset in SPEC.presets.items():
        cfg = SorsaConfig(**preset)
        assert cfg.r == preset["r"] and cfg.gamma == preset["gamma"], name
        assert isinstance(SorsaHook.from_config(cfg), SorsaHook)
