"""My3DGen: the conv factorisation and scaling through PEFT, mirrored pose pairs, the symmetry/identity losses,
the lazy personalisation recipe through the engine, PEFT round trips and checkpoint resume."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

peft = pytest.importorskip("peft")

from peft import PeftModel, get_peft_model  # noqa: E402

from priorkit.adapters.my3dgen import (  # noqa: E402
    SPEC,
    My3DGen,
    identity_loss,
    lazy_adam,
    lora_config,
    mirror_yaw_pair,
    parameter_accounting,
    reconstruction_loss,
    symmetry_loss,
)
from priorkit.core.errors import NonFiniteLossError, PriorkitError  # noqa: E402
from priorkit.data.heads import render_heads, sample_identities  # noqa: E402
from priorkit.train import TrainConfig, fit  # noqa: E402


class TinyGen(nn.Module):
    """``G(w, yaw)``: Linear -> 4x4 map -> nearest x2 -> 3x3 conv -> 8x8 image (a miniature of the check's)."""

    def __init__(self, w_dim: int = 4, c: int = 4) -> None:
        super().__init__()
        self.c = c
        self.fc = nn.Linear(w_dim + 1, c * 16)
        self.act = nn.LeakyReLU(0.2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, w, yaw):
        h = self.act(self.fc(torch.cat([w, yaw.reshape(-1, 1)], 1))).view(-1, self.c, 4, 4)
        return torch.sigmoid(self.conv(self.up(h)))


class SymmetricGen(nn.Module):
    """Symmetric by construction: ``G(w, y) = g(w, y) + flip(g(w, -y))``, so ``G(w, -y) = flip(G(w, y))``."""

    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.g = g

    def forward(self, w, yaw):
        return self.g(w, yaw) + torch.flip(self.g(w, -yaw), dims=[-1])


class Phi(nn.Module):
    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                                 nn.Linear(3 * (size // 2) ** 2, 6))  # fmt: skip
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _gen(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyGen(**kw)


def _randomise_B(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _inputs(n=5, w_dim=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, w_dim, generator=g), torch.rand(n, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------- adapter (PEFT LoRA)
@pytest.mark.parametrize("r, alpha", [(1, 1.0), (2, 16.0)])
def test_conv_delta_has_weight_shape_rank_rk_and_scaling_alpha_over_r(r, alpha):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    model = get_peft_model(net, lora_config(net, r=r, lora_alpha=alpha))
    layer = model.base_model.model[0]
    assert layer.r["default"] == r * 3 and layer.scaling["default"] == pytest.approx(alpha / r)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert A.shape == (3 * r, 3, 3, 3) and B.shape == (8, 3 * r, 1, 1)  # A: (r k) x (c_in k^2), B: c_out x (r k)
    _randomise_B(model)
    dw = layer.get_delta_weight("default")
    assert dw.shape == layer.base_layer.weight.shape
    assert torch.linalg.matrix_rank(dw.reshape(8, -1)) <= r * 3
    expected = (B.reshape(8, -1) @ A.reshape(3 * r, -1)).reshape(8, 3, 3, 3) * (alpha / r)
    torch.testing.assert_close(dw, expected, atol=1e-6, rtol=1e-5)


def test_linear_gets_rank_r_and_every_linear_and_conv_is_adapted():
    base = _gen()
    model = get_peft_model(copy.deepcopy(base), lora_config(base, r=1, lora_alpha=3.0))
    fc, conv = model.base_model.model.fc, model.base_model.model.conv
    assert fc.r["default"] == 1 and fc.scaling["default"] == pytest.approx(3.0)
    assert conv.r["default"] == 3 and conv.scaling["default"] == pytest.approx(3.0)
    # hand count: fc A 1x5, B 64x1; conv A 3x(4*9), B 1x3
    acc = parameter_accounting(model)
    assert acc["adapter"] == 5 + 64 + 3 * 36 + 3
    assert acc["full"] == sum(p.numel() for p in base.parameters())
    assert acc["ratio"] == acc["full"] / acc["adapter"]
    with pytest.raises(PriorkitError, match=r"r must be <= 1 for layer 'conv'"):
        lora_config(base, r=2)  # the 1-channel output conv: rank 2 exceeds the layer


def test_zero_B_leaves_outputs_unchanged_exactly():
    base = _gen()
    model = get_peft_model(copy.deepcopy(base), lora_config(base))
    w, y = _inputs()
    assert torch.equal(model(w, y), base(w, y))
    _randomise_B(model)
    assert not torch.allclose(model(w, y), base(w, y))


def test_save_load_round_trip_and_merge(tmp_path):
    base = _gen()
    model = get_peft_model(copy.deepcopy(base), lora_config(base, r=1, lora_alpha=2.0))
    _randomise_B(model)
    w, y = _inputs()
    out = model(w, y)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert torch.equal(loaded(w, y), out)
    assert loaded.base_model.model.conv.r["default"] == 3  # the conv rank pattern survives the round trip
    torch.testing.assert_close(loaded.merge_and_unload()(w, y), out, atol=1e-6, rtol=0)


def test_unsupported_layers_are_refused_by_name():
    with pytest.raises(PriorkitError, match="no nn.Linear or nn.Conv2d layer"):
        lora_config(nn.Sequential(nn.ConvTranspose2d(2, 2, 3)))
    with pytest.raises(PriorkitError, match=r"layer '0' is a ConvTranspose2d; My3DGen's LoRA supports"):
        lora_config(nn.Sequential(nn.ConvTranspose2d(2, 2, 3), nn.Linear(2, 2)), target_modules=["0"])
    with pytest.raises(PriorkitError, match="groups=1"):
        lora_config(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
    with pytest.raises(PriorkitError, match="square kernel"):
        lora_config(nn.Sequential(nn.Conv2d(4, 4, (3, 1))))
    with pytest.raises(PriorkitError, match=r"r must be <= 2 for layer '0'"):
        lora_config(nn.Sequential(nn.Linear(2, 5)), r=3)


def test_targets_are_matched_by_full_name_only():
    net = nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3)), nn.Conv2d(4, 4, 1))
    model = get_peft_model(net, lora_config(net, r=1, target_modules=["0.0"]))
    assert model.base_model.model[0][0].r["default"] == 3
    assert isinstance(model.base_model.model[1], nn.Conv2d)  # not adapted


# ------------------------------------------------------------------------------------------ pose pairs
def test_priorkit_pairs_are_exact_mirrors_and_official_pairs_are_one_frame_off():
    g = torch.Generator().manual_seed(0)
    pairs = [mirror_yaw_pair(g, amplitude=0.35) for _ in range(200)]
    assert all(y2 == -y1 and 0.0 <= y1 <= 0.35 for y1, y2 in pairs)
    assert len({y1 for y1, _ in pairs}) > 20
    g = torch.Generator().manual_seed(0)
    official = [mirror_yaw_pair(g, amplitude=0.35, official_pairing=True) for _ in range(200)]
    step = 0.35 * 2 * math.pi / 120  # one frame of the orbit (plus a little from the code's 3.14 for pi)
    assert all(abs(y1 + y2) <= 1.1 * step for y1, y2 in official)
    assert any(y1 + y2 != 0 for y1, y2 in official)


# ------------------------------------------------------------------------------------------------- losses
def test_symmetry_loss_is_zero_for_a_generator_symmetric_by_construction():
    gen, phi = SymmetricGen(_gen(3)), Phi()
    w, _ = _inputs(6)
    for y in (0.1, 0.35, 0.9):
        yaw = torch.full((6,), y)
        loss = symmetry_loss(phi, gen(w, yaw), gen(w, -yaw))
        assert abs(loss.item()) < 1e-6
    plain = _gen(3)
    assert symmetry_loss(phi, plain(w, torch.full((6,), 0.9)), plain(w, torch.full((6,), -0.9))).item() > 1e-4


def test_symmetry_loss_is_zero_on_the_mirror_exact_heads_world():
    p = sample_identities(3, seed=1)
    yaw = torch.tensor([0.2, 0.5, 0.9])
    phi = Phi(32)
    assert abs(symmetry_loss(phi, render_heads(p, yaw), render_heads(p, -yaw)).item()) < 1e-6


def test_reconstruction_and_identity_loss():
    x, y = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    assert torch.equal(reconstruction_loss(x, y), F.mse_loss(x, y))
    lp = reconstruction_loss(x, y, perceptual=lambda a, b: (a - b).abs().mean((1, 2, 3)))
    torch.testing.assert_close(lp, F.mse_loss(x, y) + (x - y).abs().mean())
    assert abs(identity_loss(Phi(), x, x).item()) < 1e-6


def test_lazy_adam_scales_lr_and_betas():
    opt = lazy_adam([torch.zeros(2, requires_grad=True)], lr=0.0025, betas=(0.0, 0.99), interval=4)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.0025 * 0.8)
    assert group["betas"] == pytest.approx((0.0, 0.99**0.8)) and group["eps"] == 1e-8


# ---------------------------------------------------------------------------------- personalisation
def _anchors(n=6, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) * 0.8 + 0.2, torch.rand(n, 1, 8, 8, generator=g)


def _model(adapter="lora", seed=0):
    yaws, _ = _anchors()
    torch.manual_seed(seed + 10)
    return My3DGen(_gen(seed), Phi(), yaws, w_init=torch.zeros(4), adapter=adapter)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_project_then_tune_train_only_their_groups():
    _, images = _anchors()
    model = _model("lora")
    before = _snapshot(model)
    fit(model, model.anchors(images), model.recipe(project_epochs=2, tune_epochs=0),
        config=TrainConfig(batch_size=4, progress=False))  # fmt: skip
    mid = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], mid[k])}
    assert changed == {"latents"}
    fit(model, model.anchors(images), model.recipe(project_epochs=0, tune_epochs=2, yaw_amplitude=1.0),
        config=TrainConfig(batch_size=4, progress=False))  # fmt: skip
    after = _snapshot(model)
    changed = {k for k in mid if not torch.equal(mid[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    full = _model("full")
    before = _snapshot(full)
    fit(full, full.anchors(images), full.recipe(project_epochs=0, tune_epochs=1),
        config=TrainConfig(batch_size=4, progress=False))  # fmt: skip
    changed = {k for k in before if not torch.equal(before[k], full.state_dict()[k])}
    assert changed == {k for k in before if k.startswith("generator.")}
    assert full.parameter_accounting()["trained"] == sum(p.numel() for p in full.generator.parameters())
    assert model.parameter_accounting()["trained"] == parameter_accounting(model.generator)["adapter"]


def test_symmetry_step_runs_every_lazy_interval_steps():
    _, images = _anchors(10)
    yaws = torch.linspace(0.3, 0.9, 10)
    for sym, expected in ((0.0, 0), (1.0, 2 * 3)):  # 3 epochs x 3 steps: phase steps 0, 4, 8 -> 3 sym steps
        torch.manual_seed(0)
        phi = Phi()
        model = My3DGen(_gen(), phi, yaws, w_init=torch.zeros(4))
        recipe = model.recipe(project_epochs=0, tune_epochs=3, sym_weight=sym, lazy_interval=4)
        hist = fit(model, model.anchors(images), recipe, config=TrainConfig(batch_size=4, progress=False))
        assert phi.calls == expected
        assert ("sym" in hist[-1]) == (sym > 0)


def test_nan_loss_stops_before_any_update():
    _, images = _anchors()
    model = _model("lora")
    with torch.no_grad():
        model.latents[2] = float("nan")
    before = _snapshot(model)
    with pytest.raises(NonFiniteLossError, match="rec"):
        fit(model, model.anchors(images), model.recipe(project_epochs=0, tune_epochs=1),
            config=TrainConfig(batch_size=6, progress=False))  # fmt: skip
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or k == "latents" for k in before)


def test_resume_ends_bit_identical(tmp_path):
    _, images = _anchors()

    def run(ckpt=None, stop=None, resume=False, model=None):
        model = model or _model("lora")
        cfg = TrainConfig(batch_size=4, progress=False, seed=3, ckpt_dir=ckpt, stop_after_epoch=stop)
        recipe = model.recipe(project_epochs=2, tune_epochs=4, yaw_amplitude=1.0, id_weight=0.5)
        fit(model, model.anchors(images), recipe, config=cfg, resume=resume)
        return model

    full = run()
    part = run(ckpt=str(tmp_path), stop=3)  # stops inside the tune phase
    resumed = run(ckpt=str(tmp_path), resume=True, model=_model("lora"))
    ref, got = full.state_dict(), resumed.state_dict()
    assert not all(torch.equal(part.state_dict()[k], ref[k]) for k in ref)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_presets_build_a_recipe():
    assert SPEC.entry == "My3DGen" and SPEC.status == "implemented"
    for preset in SPEC.presets.values():
        model = My3DGen(_gen(), Phi(), _anchors()[0], w_init=torch.zeros(4), r=preset["r"],
                        lora_alpha=preset["lora_alpha"])  # fmt: skip
        kw = {k: v for k, v in preset.items() if k not in ("r", "lora_alpha")}
        recipe = model.recipe(**kw)
        assert [p.name for p in recipe.phases] == ["project", "tune"]
