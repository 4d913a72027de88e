import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorkit.adapters.said import (
    SPEC,
    SubspaceModel,
    d90_from_curve,
    dense_projection,
    fastfood_params,
    fastfood_project,
    fit_subspace,
    fwht,
    fwht_butterfly,
    occam_bound,
    search_d90,
    tensor_seed,
)
from priorkit.core.errors import CheckpointMismatchError, PriorkitError
from priorkit.data import gaussian_mixture
from priorkit.models import MLP, Conv4
from priorkit.train import TrainConfig, fit


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(6, (16, 16), 3)


def _reference(z, numel, seed, name, ll):
    """The reference pipeline, literally: pad z, B, H, Pi, G, H, keep D, divide (jgamper/intrinsic-dimensionality)."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    b = torch.randint(0, 2, (ll,), generator=gen).to(z.dtype) * 2 - 1
    perm = torch.randperm(ll, generator=gen)
    g = torch.randn(ll, generator=gen).to(z.dtype)
    x = F.pad(z, (0, ll - z.shape[0]))  # a negative width crops, as in the reference
    y = fwht_butterfly(g * fwht_butterfly(b * x)[perm])
    return y[:numel] / (torch.sqrt(ll * (g**2).sum()) * math.sqrt(numel / ll))


# ------------------------------------------------------------------------------------------- the transform
def test_fwht_twice_is_n_identity_and_matches_the_hadamard_matrix():
    for n in (1, 2, 8, 64, 256):
        eye = torch.eye(n, dtype=torch.float64)
        h = fwht(eye)
        assert torch.allclose(fwht(h), n * eye, atol=1e-9)
        assert torch.equal(h, h.T)  # symmetric: autograd's transpose is the same transform
        i = torch.arange(n)
        bits = torch.stack([((i[:, None] & i[None, :]) >> k) & 1 for k in range(max(1, n.bit_length()))]).sum(0)
        assert torch.equal(h, (1 - 2 * (bits % 2)).double())  # Sylvester order: (-1)^popcount(i & j)
    x = torch.randn(3, 4096, dtype=torch.float64)
    assert torch.allclose(fwht(x), fwht_butterfly(x), atol=1e-9)
    assert torch.allclose(fwht(fwht(x)), 4096 * x, atol=1e-8)


def test_fastfood_fast_path_equals_the_reference_pipeline():
    for numel, d in ((1000, 37), (4096, 512), (300, 300), (5, 3)):
        z = torch.randn(d, dtype=torch.float64)
        ff = fastfood_params(numel, d, 7, "layer.weight")
        ff.b, ff.g = ff.b.double(), ff.g.double()
        assert torch.allclose(fastfood_project(z, ff), _reference(z, numel, 7, "layer.weight", ff.ll), atol=1e-10)


def test_crop_is_the_reference_code_and_pad_grows_ll():
    z = torch.randn(40, dtype=torch.float64)
    crop = fastfood_params(10, 40, 1, "bias", short_tensors="crop")
    crop.b, crop.g = crop.b.double(), crop.g.double()
    assert crop.ll == 16 and crop.d_used == 16
    assert torch.allclose(fastfood_project(z, crop), _reference(z, 10, 1, "bias", 16), atol=1e-10)
    z2 = z.clone()
    z2[16:] += 5.0  # coordinates beyond LL are dropped
    assert torch.allclose(fastfood_project(z2, crop), fastfood_project(z, crop))
    pad = fastfood_params(10, 40, 1, "bias", short_tensors="pad")
    assert pad.ll == 64 and pad.d_used == 40
    with pytest.raises(PriorkitError, match=r"tensor 'bias' has 10 entries .*d=40 > LL"):
        fastfood_params(10, 40, 1, "bias")


def test_projection_is_linear():
    ff = fastfood_params(3000, 64, 0, "w")
    x, y = torch.randn(64), torch.randn(64)
    lhs = fastfood_project(2.5 * x - 0.7 * y, ff)
    assert torch.allclose(lhs, 2.5 * fastfood_project(x, ff) - 0.7 * fastfood_project(y, ff), atol=1e-5)
    for proj in ("fastfood", "dense"):
        sub = SubspaceModel(_mlp(), 40, "did", proj, seed=3, short_tensors="pad")
        with torch.no_grad():
            sub.z.copy_(x[:40])
            a = torch.cat([v.flatten() for v in sub.deltas().values()])
            sub.z.copy_(y[:40])
            b = torch.cat([v.flatten() for v in sub.deltas().values()])
            sub.z.copy_(2.5 * x[:40] - 0.7 * y[:40])
            c = torch.cat([v.flatten() for v in sub.deltas().values()])
        assert torch.allclose(c, 2.5 * a - 0.7 * b, atol=1e-5)


def test_columns_have_unit_norm_on_average():
    d, numel = 2048, 12000
    ff = fastfood_params(numel, d, 0, "w")
    cols = torch.randperm(d, generator=torch.Generator().manual_seed(0))[:50]
    sq = [fastfood_project(F.one_hot(j, d).float(), ff).pow(2).sum().item() for j in cols]
    assert abs(sum(sq) / 50 - 1.0) < 0.1
    glob = torch.cat(dense_projection([300, 200], ["a", "b"], 16, 0, norm="global"))
    assert torch.allclose(glob.norm(dim=0), torch.ones(16), atol=1e-5)
    for blk in dense_projection([300, 200], ["a", "b"], 16, 0, norm="tensor"):
        assert torch.allclose(blk.norm(dim=0), torch.ones(16), atol=1e-5)


def test_fastfood_gradient():
    ff = fastfood_params(300, 37, 3, "w")
    ff.b, ff.g = ff.b.double(), ff.g.double()
    z = torch.randn(37, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: fastfood_project(v, ff), (z,))


def test_matrices_come_from_seed_and_name():
    a, b = fastfood_params(500, 20, 4, "x.weight"), fastfood_params(500, 20, 4, "x.weight")
    assert torch.equal(a.g, b.g) and torch.equal(a.index, b.index) and torch.equal(a.b, b.b)
    c = fastfood_params(500, 20, 4, "y.weight")
    assert not torch.equal(a.g, c.g)
    assert tensor_seed(4, "x.weight") == tensor_seed(4, "x.weight") != tensor_seed(5, "x.weight")


# ------------------------------------------------------------------------------------------------ the module
@pytest.mark.parametrize("mode", ["said", "did"])
@pytest.mark.parametrize("projection", ["fastfood", "dense"])
def test_zero_z_is_the_base_model_and_trainables_are_exactly_d(mode, projection):
    base = _mlp()
    x = torch.randn(5, 6)
    sub = SubspaceModel(base, 24, mode, projection, seed=1, short_tensors="pad")
    assert torch.equal(sub(x), base(x))
    assert sub.num_trainable == 24 == sum(p.numel() for p in sub.parameters() if p.requires_grad)
    assert sub.z.numel() == (24 - 3 if mode == "said" else 24)  # SAID: one lambda per layer (3 Linear)
    if mode == "said":
        assert torch.equal(sub.lam, torch.ones(3))
    head = SubspaceModel(base, 60, mode, projection, seed=1, train_head_directly=True, short_tensors="pad")
    assert head.num_trainable == 60 and {n for n, _ in head.named_parameters()} >= {"base.head.weight"}
    assert torch.equal(head(x), base(x))


def test_groups_per_tensor_and_exclude():
    sub = SubspaceModel(_mlp(), 30, "said", groups="tensor", exclude=("body.0",), short_tensors="pad")
    assert sub.num_scales == 4 and sub.names == ["body.2.weight", "body.2.bias", "head.weight", "head.bias"]
    assert sub.num_trainable == 30


def test_model_is_copied_and_theta0_is_frozen_through_the_engine():
    data = gaussian_mixture(200, num_classes=3, dim=6, seed=0)
    base = _mlp()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    sub = SubspaceModel(base, 20, "said", seed=0, short_tensors="pad")
    theta0 = {n: sub.base.get_buffer(n).clone() for n in sub.names}
    hist = fit(sub, data.train, config=TrainConfig(epochs=6, batch_size=32, optimizer="adam", lr=0.05))
    assert hist[-1]["ce"] < hist[0]["ce"]
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert all(torch.equal(theta0[n], sub.base.get_buffer(n)) for n in sub.names)
    assert sub.z.abs().sum() > 0 and not torch.equal(sub.lam, torch.ones(3))


def test_said_gradients_reach_z_at_the_start():
    sub = SubspaceModel(_mlp(), 20, "said", seed=0, short_tensors="pad")
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    F.cross_entropy(sub(x), y).backward()
    assert sub.z.grad.abs().sum() > 0  # lambda = 1, not 0
    assert torch.allclose(sub.lam.grad, torch.zeros(3))  # dL/dlambda = <P z, dL/dtheta> = 0 at z = 0


def test_merge_and_unload_equals_the_wrapped_forward():
    base = _mlp()
    base.body[0].bias.requires_grad_(False)  # frozen in the given model: stays outside the subspace and frozen
    for proj in ("fastfood", "dense"):
        sub = SubspaceModel(base, 20, "said", proj, seed=2, short_tensors="pad")
        assert "body.0.bias" not in sub.names
        with torch.no_grad():
            sub.z.normal_()
            sub.lam.uniform_(0.5, 1.5)
        x = torch.randn(7, 6)
        merged = sub.merge_and_unload()
        assert torch.allclose(merged(x), sub(x), atol=1e-6)
        assert isinstance(merged.body[0].weight, nn.Parameter) and merged.body[0].weight.requires_grad
        assert not merged.body[0].bias.requires_grad
        assert not torch.equal(merged(x), base(x))


def test_batchnorm_statistics_stay_out_of_the_subspace():
    torch.manual_seed(0)
    net = Conv4(1, width=4, num_classes=3, pools=2)
    sub = SubspaceModel(net, 16, "said", seed=0, short_tensors="pad")
    stats = {k: v.clone() for k, v in sub.base.state_dict().items() if "running" in k}
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(sub.train()(x), net.eval()(x))
    bns = [m for m in sub.base.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    F.cross_entropy(sub(x), torch.randint(0, 3, (8,))).backward()
    assert all(torch.equal(v, sub.base.state_dict()[k]) for k, v in stats.items())


def test_huggingface_module_through_functional_call():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 5))
    sub = SubspaceModel(bert, 200, "said", seed=0, short_tensors="pad", exclude=("pooler",)).eval()
    assert torch.equal(sub(input_ids=ids).last_hidden_state, bert(input_ids=ids).last_hidden_state)
    sub(input_ids=ids).last_hidden_state.sum().backward()
    assert sub.z.grad.abs().sum() > 0 and sub.num_trainable == 200


def test_state_dict_holds_z_not_the_matrices_and_checks_the_subspace():
    sub = SubspaceModel(_mlp(), 20, "said", seed=5, short_tensors="pad")
    with torch.no_grad():
        sub.z.normal_()
    sd = sub.state_dict()
    assert "z" in sd and "lam" in sd and not any(k.startswith("ff") for k in sd)
    twin = SubspaceModel(_mlp(), 20, "said", seed=5, short_tensors="pad")
    twin.load_state_dict(sd)
    x = torch.randn(4, 6)
    assert torch.equal(twin(x), sub(x))
    other = SubspaceModel(_mlp(), 20, "said", seed=6, short_tensors="pad")
    with pytest.raises(CheckpointMismatchError, match="seed=5"):
        other.load_state_dict(sd)


def test_resume_is_bit_identical(tmp_path):
    data = gaussian_mixture(160, num_classes=3, dim=6, seed=1)

    def run(ckpt, stop=None, resume=False):
        sub = SubspaceModel(_mlp(), 20, "said", seed=0, short_tensors="pad")
        cfg = TrainConfig(epochs=4, batch_size=32, optimizer="adam", lr=0.05, seed=3, ckpt_dir=ckpt,
                          stop_after_epoch=stop)  # fmt: skip
        fit(sub, data.train, config=cfg, resume=resume)
        return sub

    full = run(str(tmp_path / "a"))
    run(str(tmp_path / "b"), stop=1)
    resumed = run(str(tmp_path / "b"), resume=True)
    assert torch.equal(full.z, resumed.z) and torch.equal(full.lam, resumed.lam)


# -------------------------------------------------------------------------------------------- the errors
def test_errors_name_the_argument():
    with pytest.raises(PriorkitError, match=r"mode must be one of \['said', 'did'\]"):
        SubspaceModel(_mlp(), 10, "lora")
    with pytest.raises(PriorkitError, match=r"projection must be one of"):
        SubspaceModel(_mlp(), 10, "did", "sparse")
    with pytest.raises(PriorkitError, match=r"d=3 must exceed m=3 per-layer scales"):
        SubspaceModel(_mlp(), 3, "said")
    with pytest.raises(PriorkitError, match=r"tensor 'head.bias' has 3 entries"):
        SubspaceModel(_mlp(), 10, "did")
    with pytest.raises(PriorkitError, match=r"exclude entry 'bodyy' matches no parameter"):
        SubspaceModel(_mlp(), 10, exclude=("bodyy",))
    with pytest.raises(PriorkitError, match=r"head='classifier' matches no parameter"):
        SubspaceModel(_mlp(), 100, train_head_directly=True, head="classifier")
    with pytest.raises(PriorkitError, match=r"model must be a torch.nn.Module"):
        SubspaceModel("mlp", 10)
    with pytest.raises(PriorkitError, match=r"projection='dense' would hold"):
        dense_projection([200_000], ["w"], 2000, 0)


# ---------------------------------------------------------------------------------------- d90 and bound
def test_d90_scan_stops_at_the_first_d_that_reaches_90_percent():
    seen = []

    def evaluate(d):
        seen.append(d)
        return min(1.0, 0.2 * math.log2(d))

    res = search_d90(evaluate, [2, 4, 8, 16, 32], full_metric=1.0)
    assert res.d90 == 32 and res.reached and seen == [2, 4, 8, 16, 32]
    seen.clear()
    res = search_d90(evaluate, [2, 4, 8, 16, 32], full_metric=0.8)
    assert res.d90 == 16 and seen == [2, 4, 8, 16] and res.threshold == pytest.approx(0.72)
    assert search_d90(lambda d: 0.1, [2, 4], full_metric=0.9).d90 is None
    assert d90_from_curve({8: 0.5, 2: 0.1, 4: 0.95}, 1.0) == 4


def test_occam_bound_is_the_stated_formula_and_grows_with_d():
    b = occam_bound(0.1, 100, 500, bits=8, delta=0.05)
    assert b == pytest.approx(0.1 + math.sqrt((100 * 8 * math.log(2) + math.log(20)) / 1000))
    assert occam_bound(0.1, 200, 500) > b


def test_fit_subspace_keeps_the_best_learning_rate_on_val():
    data = gaussian_mixture(300, num_classes=3, dim=6, seed=2)
    cfg = TrainConfig(epochs=3, batch_size=64, seed=0)
    sub, info = fit_subspace(
        _mlp(), 20, data.train, val=data.val, lrs=(1e-4, 0.05), config=cfg, mode="said", short_tensors="pad"
    )
    assert info["lr"] == max(info["vals"], key=info["vals"].get) and isinstance(sub, SubspaceModel)
    with pytest.raises(PriorkitError, match="val is None but lrs holds several"):
        fit_subspace(_mlp(), 20, data.train, lrs=(1e-3, 1e-2), config=cfg, short_tensors="pad")


def test_presets_construct_the_module():
    assert SPEC.entry == "SubspaceModel" and {"paper", "small"} <= set(SPEC.presets)
    for preset in SPEC.presets.values():
        x = torch.randn(4, 6)
        sub = SubspaceModel(MLP(6, (64,), 16), 12, **preset)  # every tensor has LL >= 16
        assert sub(x).shape == (4, 16) and sub.num_trainable == 12


def test_float64_model_gets_a_float64_subspace():
    base = _mlp().double()
    sub = SubspaceModel(base, 20, "said", seed=0, short_tensors="pad")
    x = torch.randn(4, 6, dtype=torch.float64)
    assert sub.z.dtype == torch.float64 and torch.equal(sub(x), base(x))
    with torch.no_grad():
        sub.z.normal_()
    assert sub(x).dtype == torch.float64
