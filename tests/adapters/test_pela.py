"""PELA: factorization invariants (rank formula, parameter bound, Eckart-Young, skip rules), the three loss terms,
the teacher-student hook through the engine (one student pass per step, frozen teacher, resume), errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorkit.adapters import pela as P
from priorkit.adapters.pela import (
    PELA,
    PELALinear,
    capture_outputs,
    feature_distillation_loss,
    logit_distillation_loss,
    pela_compress,
    pela_decompress,
    pela_finetune,
    pela_layers,
    pela_parameters,
    pela_rank,
    svd_factors,
    weight_perturbation_loss,
)
from priorkit.core.errors import PriorkitError
from priorkit.data import gaussian_mixture
from priorkit.models import MLP
from priorkit.train import Batch, Hook, TrainConfig, fit, predict

BLOCKS = ("body.1", "body.3")


def _mlp(seed=0, dims=(12, (32, 24), 4)):
    torch.manual_seed(seed)
    return MLP(*dims)


# ------------------------------------------------------------------------------------------ factorization
def test_rank_formula_matches_the_official_floor():
    assert pela_rank(40, 256, 2) == 17 and pela_rank(256, 256, 2) == 64 and pela_rank(768, 3072, 2.0) == 307
    for i in (3, 10, 64, 200):
        for o in (10, 33, 256):
            for c in (1.5, 2, 3, 4.5):
                expected = math.floor(i * o / (c * (i + o)))
                if expected >= 1:
                    assert pela_rank(i, o, c) == expected


def test_layer_parameter_count_is_bounded_by_in_out_over_c_plus_bias():
    for i, o, c in [(40, 256, 2), (256, 256, 2), (256, 256, 3), (17, 90, 1.7), (300, 12, 4)]:
        torch.manual_seed(0)
        layer = PELALinear.from_linear(nn.Linear(i, o), pela_rank(i, o, c))
        n = sum(p.numel() for p in layer.parameters())
        assert n == layer.rank * (i + o) + o
        assert n <= i * o / c + o


def test_svd_init_is_the_eckart_young_optimum_and_factor_shapes():
    torch.manual_seed(0)
    lin = nn.Linear(48, 80)
    r = pela_rank(48, 80, 2)
    layer = PELALinear.from_linear(lin, r)
    assert layer[0].weight.shape == (r, 48) and layer[0].bias is None
    assert layer[1].weight.shape == (80, r) and torch.equal(layer[1].bias, lin.bias)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    want = s[r:].pow(2).sum().sqrt()
    got = torch.linalg.matrix_norm(layer.product().double() - lin.weight.double())
    assert abs(got - want) / want < 1e-5
    # F1 = S^1/2 V^T and F2 = U S^1/2 (up to the sign of each singular pair): F1 F1^T = F2^T F2 = S_r
    f1, f2 = svd_factors(lin.weight, r)
    assert torch.allclose(f1.double() @ f1.double().T, torch.diag(s[:r]), atol=1e-4)
    assert torch.allclose(f2.double().T @ f2.double(), torch.diag(s[:r]), atol=1e-4)


def test_compress_skips_by_name_and_width_and_leaves_them_bitwise_unchanged():
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(20, 30))
    model.add_module("norm_proj", nn.Linear(30, 30))
    model.add_module("small", nn.Linear(30, 8))  # out < 10
    model.add_module("head", nn.Linear(8, 12))
    before = copy.deepcopy(model.state_dict())
    student = pela_compress(model, 2)
    assert sorted(pela_layers(student)) == ["fc"]
    for name in ("norm_proj", "small", "head"):
        mod = student.get_submodule(name)
        assert type(mod) is nn.Linear
        assert torch.equal(mod.weight, before[f"{name}.weight"]) and torch.equal(mod.bias, before[f"{name}.bias"])
    # the input model is untouched (a copy is returned), and an explicit skip replaces the default list
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert sorted(pela_layers(pela_compress(model, 2, skip=["fc"], min_out=1))) == ["head", "norm_proj", "small"]
    assert sorted(pela_layers(pela_compress(model, 2, skip=()))) == ["fc", "head", "norm_proj"]


def test_decompress_multiplies_back_and_computes_the_same_function():
    teacher = _mlp()
    student = pela_compress(teacher, 2)
    dense = pela_decompress(student)
    assert not pela_layers(dense) and pela_layers(student)  # a copy by default
    x = torch.randn(16, 12)
    assert torch.allclose(dense(x), student(x), atol=1e-6)
    assert torch.allclose(dense.body[2].weight, student.body[2].product())
    assert list(dense.state_dict()) == list(teacher.state_dict())


def test_parameter_accounting():
    teacher = MLP(40, (256, 256), 10)
    rep = pela_parameters(pela_compress(teacher, 2))
    assert rep["dense_total"] == sum(p.numel() for p in teacher.parameters()) == 78858
    assert rep["total"] == 17 * 296 + 256 + 64 * 512 + 256 + 2570
    assert rep["layers"]["body.2"] == {"in": 256, "out": 256, "rank": 64, "params": 64 * 512 + 256,
                                       "dense_params": 256 * 256 + 256}  # fmt: skip
    assert 0.5 < rep["ratio"] < 0.53 and rep["trainable"] == rep["total"]


def test_approximate_false_keeps_bias_and_loads_a_saved_student():
    teacher = _mlp()
    student = pela_compress(teacher, 2)
    blank = pela_compress(teacher, 2, approximate=False)
    assert torch.equal(blank.body[0][1].bias, teacher.body[0].bias)
    blank.load_state_dict(student.state_dict())
    x = torch.randn(5, 12)
    assert torch.equal(blank(x), student(x))


# --------------------------------------------------------------------------------------------------- losses
def test_weight_perturbation_on_a_hand_made_3x3_example():
    w = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    f1 = torch.eye(3)
    f2 = w.clone()
    f2[2, 0] -= 0.5  # max |delta| = 0.5
    f2[0, 1] += 0.2
    eps = 1e-3
    assert weight_perturbation_loss([(w, f1, f2)], eps) == pytest.approx((0.5 - eps) ** 2, rel=1e-6)
    fro = math.sqrt(0.5**2 + 0.2**2)
    assert weight_perturbation_loss([(w, f1, f2)], eps, "fro") == pytest.approx((fro - eps) ** 2, rel=1e-6)
    # K layers: the mean over layers; the official F.mse_loss(norm, eps) is the same number
    two = weight_perturbation_loss([(w, f1, f2), (w, f1, w.clone())], eps)
    assert two == pytest.approx(((0.5 - eps) ** 2 + eps**2) / 2, rel=1e-6)
    off = F.mse_loss(torch.norm(f2 @ f1 - w, float("inf")), torch.tensor(eps))
    assert weight_perturbation_loss([(w, f1, f2)], eps) == pytest.approx(off.item(), rel=1e-6)


def test_weight_perturbation_gradient_reaches_only_the_max_entry():
    w = torch.zeros(3, 3)
    f1 = torch.eye(3)
    f2 = torch.tensor([[0.1, 0.0, 0.0], [0.0, -0.7, 0.0], [0.0, 0.0, 0.2]], requires_grad=True)
    weight_perturbation_loss([(w, f1, f2)], 0.0).backward()
    expected = torch.zeros(3, 3)
    expected[1, 1] = 2 * 0.7 * -1.0  # d(|x| - 0)^2 / dx at x = -0.7
    assert torch.allclose(f2.grad, expected)


def test_feature_and_logit_distillation_are_means_of_mse():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(4, 6, generator=g), torch.randn(4, 3, 2, generator=g)]
    t = [torch.randn(4, 6, generator=g), torch.randn(4, 3, 2, generator=g)]
    want = ((s[0] - t[0]).pow(2).mean() + (s[1] - t[1]).pow(2).mean()) / 2
    assert torch.allclose(feature_distillation_loss(s, t), want)
    assert torch.allclose(logit_distillation_loss(s[0], t[0]), (s[0] - t[0]).pow(2).mean())


def test_capture_outputs_records_and_removes_its_hooks():
    m = _mlp()
    with capture_outputs(m, BLOCKS) as out:
        y = m(torch.randn(3, 12))
    assert [len(out[n]) for n in BLOCKS] == [1, 1] and torch.allclose(m.head(out["body.3"][0]), y)
    m(torch.randn(3, 12))
    assert [len(out[n]) for n in BLOCKS] == [1, 1]
    assert all(not mod._forward_hooks for mod in m.modules())


# ------------------------------------------------------------------------------------------------ the hook
class _Spy(Hook):
    def __init__(self, pela):
        self.pela, self.teacher_modes, self.steps = pela, [], 0
        self.student_calls = 0
        pela.student.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.student_calls += 1

    def on_step_end(self, state, batch):
        self.steps += 1
        self.teacher_modes.append(self.pela.teacher.training)


def test_hook_runs_the_student_once_per_step_with_a_frozen_teacher():
    data = gaussian_mixture(240, num_classes=4, dim=12, seed=0)
    teacher = _mlp()
    before = copy.deepcopy(teacher.state_dict())
    pela = PELA(teacher, BLOCKS, ratio=2, alpha=1.0, beta=0.5, gamma=1.0)
    spy = _Spy(pela)
    hist = fit(pela.student, data.train, hooks=[pela, spy], config=TrainConfig(epochs=2, batch_size=32, lr=0.05,
                                                                              progress=False))  # fmt: skip
    assert spy.student_calls == spy.steps > 0
    assert not any(spy.teacher_modes)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert {"ce", "fd", "logit", "wp"} <= set(hist[-1])
    assert all(not mod._forward_hooks for mod in pela.student.modules())


def test_hook_terms_equal_the_official_two_pass_computation():
    torch.manual_seed(1)
    teacher = _mlp()
    pela = PELA(teacher, BLOCKS, ratio=2, alpha=1.0, beta=0.3, gamma=2.0, eps=1e-3)
    with torch.no_grad():  # move the student away from its SVD init so that every term is non-trivial
        for p in pela.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(10, 12)
    batch = pela.transform_batch(None, Batch(x=x, y=torch.zeros(10, dtype=torch.long), index=torch.arange(10)))
    batch.output = pela.student(x)
    terms = pela.extra_loss(None, batch)
    # reference: features by a separate student pass, as DeiT/engine.py does
    with capture_outputs(pela.student, BLOCKS) as fs, torch.no_grad(), capture_outputs(teacher, BLOCKS) as ft:
        zs = pela.student(x)
        zt = teacher(x)
    fd = sum(F.mse_loss(fs[n][0], ft[n][0]) for n in BLOCKS) / 2
    pairs = [(teacher.get_submodule(n).weight, m[0].weight, m[1].weight) for n, m in pela_layers(pela.student).items()]
    wp = sum((torch.norm(f2 @ f1 - w, float("inf")) - 1e-3) ** 2 for w, f1, f2 in pairs) / len(pairs)
    assert torch.allclose(terms["fd"], fd) and torch.allclose(terms["logit"], 0.3 * F.mse_loss(zs, zt))
    assert torch.allclose(terms["wp"], 2.0 * wp)
    sum(terms.values()).backward()
    assert pela.student.body[0][0].weight.grad is not None and teacher.body[0].weight.grad is None


def test_zero_weights_add_no_terms_and_svd_student_starts_near_the_teacher():
    teacher = _mlp()
    pela = PELA(teacher, (), alpha=0.0)
    x = torch.randn(4, 12)
    batch = pela.transform_batch(None, Batch(x=x, y=torch.zeros(4, dtype=torch.long), index=torch.arange(4)))
    batch.output = pela.student(x)
    assert pela.extra_loss(None, batch) == {}


def _run(tmp=None, stop=None, resume=False):
    data = gaussian_mixture(200, num_classes=4, dim=12, seed=0)
    pela = PELA(_mlp(), BLOCKS, ratio=2, alpha=1.0, gamma=1.0)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=3, progress=False, ckpt_dir=str(tmp) if tmp else None,
                      stop_after_epoch=stop)  # fmt: skip
    fit(pela.student, data.train, hooks=[pela], config=cfg, resume=resume)
    return pela.student


def test_resume_through_the_engine_is_bit_identical(tmp_path):
    full = _run()
    _run(tmp_path, stop=1)
    resumed = _run(tmp_path, resume=True)
    ref, got = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_finetune_replaces_the_head_and_trains_all_parameters():
    data = gaussian_mixture(200, num_classes=3, dim=12, seed=1)
    student = pela_compress(_mlp(), 2)
    factor = student.body[0][0].weight.detach().clone()
    pela_finetune(student, data.train, config=TrainConfig(epochs=3, batch_size=32, lr=0.05, progress=False),
                  num_classes=3)  # fmt: skip
    assert student.head.out_features == 3
    assert not torch.equal(student.body[0][0].weight, factor)
    assert predict(student, data.test).shape == (len(data.test), 3)


def test_stock_peft_lora_goes_on_the_factor_linears():
    peft = pytest.importorskip("peft")
    student = pela_compress(_mlp(), 2)
    cfg = peft.LoraConfig(r=2, target_modules=["body.2.0", "body.2.1"], init_lora_weights=False)
    model = peft.get_peft_model(student, cfg)
    x = torch.randn(6, 12)
    with torch.no_grad():
        out = model(x)
        merged = model.merge_and_unload()(x)
    assert torch.allclose(out, merged, atol=1e-5)


# -------------------------------------------------------------------------------------------------- errors
def test_unsupported_module_types_are_named():
    with pytest.raises(PriorkitError, match="no nn.Linear layer: PELA factorizes nn.Linear only"):
        pela_compress(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), 2)
    with pytest.raises(PriorkitError, match=r"attn.out_proj is a projection of nn.MultiheadAttention"):
        pela_compress(nn.ModuleDict({"attn": nn.MultiheadAttention(32, 4)}), 2)
    with pytest.raises(PriorkitError, match="already holds PELALinear"):
        pela_compress(pela_compress(_mlp(), 2), 2)


def test_rank_below_one_names_the_layer_and_suggests_a_ratio():
    model = nn.Sequential(nn.Linear(2, 40), nn.ReLU(), nn.Linear(40, 40))
    with pytest.raises(PriorkitError, match=r"rank 0 < 1 for 0 \(2 -> 40\); use a smaller ratio \(at most 1.905"):
        pela_compress(model, 2)


def test_bad_ratio_and_dead_skip_entries_are_refused():
    with pytest.raises(PriorkitError, match=r"ratio \(the compression ratio c\) must be a finite number > 1"):
        pela_compress(_mlp(), 1.0)
    with pytest.raises(PriorkitError, match=r"skip entries \['haed'\] match no nn.Linear name"):
        pela_compress(_mlp(), 2, skip=["haed"])


def test_block_run_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.act(self.act(self.fc(x))))

    pela = PELA(Twice(), ("act",), ratio=2)
    x = torch.randn(3, 12)
    batch = pela.transform_batch(None, Batch(x=x, y=torch.zeros(3, dtype=torch.long), index=torch.arange(3)))
    batch.output = pela.student(x)
    with pytest.raises(PriorkitError, match="block 'act' of the student ran 2 times"):
        pela.extra_loss(None, batch)


def test_presets_construct_the_hook():
    assert P.SPEC.entry == "PELA" and "PELA" in P.__all__
    for preset in P.SPEC.presets.values():
        hook = PELA(_mlp(), BLOCKS, **preset)
        assert hook.gamma == preset["gamma"] and pela_layers(hook.student)
