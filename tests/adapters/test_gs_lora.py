"""GS-LoRA: the card's property tests, PEFT round trips, the task driver and engine resume."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("peft")

from peft import PeftModel  # noqa: E402

from priorkit.adapters import gs_lora  # noqa: E402
from priorkit.adapters.gs_lora import (  # noqa: E402
    GSLoRA,
    GSLoRALoss,
    alpha_at,
    block_group,
    bounded_forget_loss,
    class_prototypes,
    default_bnd,
    group_lasso,
    group_norms,
    h_mean,
    lora_groups,
    prototype_kl,
    zeroed_fraction,
)
from priorkit.core.errors import PriorkitError  # noqa: E402
from priorkit.data.datasets import IndexedTensorDataset  # noqa: E402
from priorkit.models.vit import ViT  # noqa: E402
from priorkit.train import TrainConfig  # noqa: E402


def _vit(seed=0, depth=2):
    torch.manual_seed(seed)
    return ViT(depth=depth, dim=16, heads=2, mlp_dim=32).eval()


def _data(n_per_class=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.rand(len(y), 1, 8, 8, generator=g) + 0.3 * y.view(-1, 1, 1, 1) / 10
    keep_f = y < 2
    return IndexedTensorDataset(x[keep_f], y[keep_f]), IndexedTensorDataset(x[~keep_f], y[~keep_f]), x


def _cfg(**kw):
    base = dict(epochs=3, batch_size=4, lr=1e-2, optimizer="adamw", weight_decay=0.05, scheduler="cosine",
                seed=0, progress=False)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _randomize_lora(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------------------ card property tests
def test_group_lasso_equals_hand_computation():
    gs = GSLoRA(_vit(), alpha_warmup=0)
    net, _ = gs._attach(seed=0)
    _randomize_lora(net)
    groups = lora_groups(net)
    assert sorted(groups) == ["blocks.0", "blocks.1"] and all(len(v) == 4 for v in groups.values())
    params = dict(net.named_parameters())
    hand = 0.0
    for b in range(2):
        sq = 0.0
        for fc in ("fc1", "fc2"):
            for ab in ("A", "B"):
                w = params[f"base_model.model.blocks.{b}.mlp.{fc}.lora_{ab}.default.weight"].detach().double()
                sq += float((w**2).sum())
        hand += math.sqrt(sq)
    assert float(group_lasso(groups).detach()) == pytest.approx(hand, rel=1e-6)
    assert sum(group_norms(net).values()) == pytest.approx(hand, rel=1e-6)
    # a user grouping: one group over everything is the global Frobenius norm
    one = lora_groups(net, lambda n: "all" if "lora_" in n else None)
    total = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for n, p in params.items() if "lora_" in n))
    assert float(group_lasso(one).detach()) == pytest.approx(total, rel=1e-6)


def test_group_lasso_gradient_is_finite_at_an_exactly_zero_group():
    p = torch.zeros(3, 2, requires_grad=True)
    q = torch.ones(2, requires_grad=True)
    group_lasso({"a": [p], "b": [q]}).backward()
    assert torch.equal(p.grad, torch.zeros_like(p)) and torch.allclose(q.grad, q.detach() / math.sqrt(2))


def test_bounded_term_gradient_is_exactly_zero_when_ce_reaches_bnd():
    y = torch.tensor([0, 1, 1])
    logits = torch.tensor([[-5.0, 5.0], [5.0, -5.0], [4.0, -6.0]], requires_grad=True)
    ce = F.cross_entropy(logits, y).detach()
    bounded_forget_loss(logits, y, float(ce) - 0.5).backward()  # CE >= BND: no gradient at all
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    logits.grad = None
    bounded_forget_loss(logits, y, float(ce) + 1.0).backward()  # CE < BND: the gradient of -CE
    expected = -(logits.detach().softmax(1) - F.one_hot(y, 2)) / 3
    assert torch.allclose(logits.grad, expected, atol=1e-7)
    assert default_bnd(10) == pytest.approx(3 * math.log(10)) and default_bnd(4, k=2) == pytest.approx(2 * math.log(4))


def test_per_sample_bound_closes_the_batch_mean_loophole():
    y = torch.tensor([0, 1])
    logits = torch.tensor([[-10.0, 10.0], [-5.0, 5.0]], requires_grad=True)  # CE_0 = 20, CE_1 ~ 0: mean above 6
    assert float(bounded_forget_loss(logits, y, 6.0).detach()) == 0.0  # official: the batch mean is already met
    per = bounded_forget_loss(logits, y, 6.0, reduction="sample")
    ce = F.cross_entropy(logits, y, reduction="none").detach()
    assert float(per.detach()) == pytest.approx(float(torch.relu(6.0 - ce).mean()))
    per.backward()
    assert torch.equal(logits.grad[0], torch.zeros(2)) and logits.grad[1].abs().sum() > 0  # only the sample below


def test_kl_direction_on_a_two_class_example():
    e = torch.tensor([[0.0, 0.0]])  # softmax(e) = (1/2, 1/2)
    mu = torch.tensor([[math.log(3.0), 0.0]])  # softmax(mu) = (3/4, 1/4)
    kl_mu_e = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(softmax(mu) || softmax(e))
    kl_e_mu = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(prototype_kl(e, mu)) == pytest.approx(kl_mu_e, abs=1e-6)
    assert abs(kl_mu_e - kl_e_mu) > 0.01  # the two directions differ, so the check above decides it
    batch = prototype_kl(torch.cat([e, mu]), torch.cat([mu, mu]))  # batch mean
    assert float(batch) == pytest.approx(kl_mu_e / 2, abs=1e-6)


def test_merged_model_equals_the_peft_model_after_training():
    forget, retain, x = _data()
    gs = GSLoRA(_vit(), ema=False, alpha_warmup=1)
    seen = {}

    def grab(state):
        seen["out"] = state.model(x).detach().clone()
        return {}

    rec = gs.forget(forget, retain, _cfg(), eval_fn=grab)
    assert not rec["stopped"] and type(gs.model) is ViT
    assert seen["out"].abs().max() > 0 and rec["group_norms"]["blocks.0"] > 0
    torch.testing.assert_close(gs.model(x), seen["out"], atol=1e-5, rtol=0)
    assert gs.eval_model is gs.model


def test_fresh_adapter_is_an_identity_at_creation():
    forget, retain, x = _data()
    gs = GSLoRA(_vit(), ema=False, reinit_a=math.sqrt(50))
    gs.forget(forget, retain, _cfg(epochs=1))
    ref = gs.model(x)
    net, trainable = gs._attach(seed=3)  # task 1: A re-drawn with a = sqrt(50), B = 0
    assert torch.equal(net(x), ref)
    assert trainable and all("lora_" in n for n in trainable)
    for n, p in net.named_parameters():
        if ".lora_B." in n:
            assert torch.count_nonzero(p) == 0
        if ".lora_A." in n:  # Kaiming-uniform bound with a = sqrt(50): sqrt(2 / 51) * sqrt(3 / fan_in)
            assert float(p.detach().abs().max()) <= math.sqrt(2 / 51) * math.sqrt(3 / p.shape[1]) + 1e-7


def test_lora_scaling_matches_loralib():
    gs = GSLoRA(_vit())
    net, _ = gs._attach(seed=0)
    layer = net.base_model.model.blocks[0].mlp.fc1
    assert layer.scaling["default"] == pytest.approx(1 / 8) and layer.r["default"] == 8


# ------------------------------------------------------------------------------------------ PEFT round trip
def test_save_pretrained_round_trip_gives_identical_outputs(tmp_path):
    base = _vit()
    fresh = copy.deepcopy(base)
    gs = GSLoRA(base)
    net, _ = gs._attach(seed=0)
    _randomize_lora(net)
    x = torch.rand(5, 1, 8, 8)
    y = net(x)
    net.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert torch.equal(loaded(x), y)
    torch.testing.assert_close(loaded.merge_and_unload()(x), y, atol=1e-5, rtol=0)


def test_unsupported_or_missing_target_modules_are_named():
    class WithLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(4, 4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    forget = IndexedTensorDataset(torch.rand(4, 2, 4), torch.tensor([0, 0, 0, 0]))
    retain = IndexedTensorDataset(torch.rand(4, 2, 4), torch.tensor([1, 2, 1, 2]))
    with pytest.raises(PriorkitError, match=r"target_modules \['rnn'\] cannot take a PEFT LoRA adapter"):
        GSLoRA(WithLSTM(), target_modules=["rnn"]).forget(forget, retain, _cfg())
    f2, r2, _ = _data()
    with pytest.raises(PriorkitError, match=r"target_modules \['nope'\]"):
        GSLoRA(_vit(), target_modules=["nope"]).forget(f2, r2, _cfg())


# ----------------------------------------------------------------------------------- hook and driver logic
def test_no_parameter_in_a_group_is_refused():
    forget, retain, _ = _data()
    with pytest.raises(PriorkitError, match="puts no parameter of the model in a group"):
        GSLoRA(_vit(), group_fn=lambda n: None).forget(forget, retain, _cfg(epochs=1))
    with pytest.raises(PriorkitError, match="mode='full' has no LoRA groups"):
        GSLoRA(_vit(), mode="full", alpha=0.01)
    assert block_group("base_model.model.blocks.3.mlp.fc2.lora_B.default.weight") == "blocks.3"
    assert block_group("blocks.3.mlp.fc2.weight") is None and block_group("blocks.3.attn.qkv.lora_A.x.w") is None


def test_alpha_warmup_and_logged_terms():
    assert [alpha_at(e, 0.5, 2) for e in range(4)] == [0.0, 0.0, 0.5, 0.5]
    forget, retain, _ = _data()
    gs = GSLoRA(_vit(), alpha=0.1, alpha_warmup=2, ema=False, prototype=True, w_r=0.2)
    hist = [h for h in gs.forget(forget, retain, _cfg(epochs=4))["history"] if "ce" in h]
    assert [h["group_lasso"] == 0.0 for h in hist] == [True, True, False, False]
    for h in hist[2:]:
        assert h["group_lasso"] == pytest.approx(0.1 * h["group_lasso_raw"], rel=1e-6)
    assert {"ce", "forget", "proto_forget", "proto_retain"} <= set(hist[0])


def test_forget_batches_cycle_over_the_forget_set():
    forget, retain, _ = _data()  # 8 forget samples, batch 4: every pass of 2 steps sees each one once
    make = gs_lora._paired_batch_maker(retain, forget, 4, seed=0)

    class S:
        rank, world_size, device = 0, 1, torch.device("cpu")

    s = S()
    seen = []
    for step in range(6):
        s.step = step
        b = make(s, torch.tensor([0, 1, 2, 3]))
        assert torch.equal(b.x, retain.x[:4]) and b.extras["forget_x"].shape == (4, 1, 8, 8)
        seen.append(b.extras["forget_x"])
    for p in range(3):
        rows = torch.cat(seen[2 * p : 2 * p + 2])
        assert sorted(rows.sum((1, 2, 3)).tolist()) == pytest.approx(sorted(forget.x.sum((1, 2, 3)).tolist()))


def test_prototypes_are_class_means_of_the_head_input():
    forget, retain, _ = _data()
    m = _vit()
    protos, mask = class_prototypes(m, retain, 10)
    assert mask.tolist() == [False, False] + [True] * 8
    with torch.no_grad():
        feats = m.features(retain.x)
    torch.testing.assert_close(protos[5], feats[retain.y == 5].mean(0), atol=1e-6, rtol=0)
    logits, _ = class_prototypes(m, retain, 10, space="logits")
    torch.testing.assert_close(logits[5], m.head(feats[retain.y == 5]).mean(0), atol=1e-5, rtol=0)
    aug, _ = class_prototypes(m, retain, 10, augment=lambda x, g: x + 0.01 * torch.randn(x.shape, generator=g),
                              copies=3)  # fmt: skip
    assert not torch.equal(aug, protos) and torch.allclose(aug[mask], protos[mask], atol=0.2)


def test_continual_sequence_erases_and_merges():
    forget, retain, x = _data()
    gs = GSLoRA(_vit(), beta=(0.2, 0.3), w_f=0.1, ema=True, ema_epoch=1, prototype=True)
    r0 = gs.forget(forget, retain, _cfg(epochs=2))
    assert r0["beta"] == 0.2 and r0["ema"] and gs.task == 1 and gs.eval_model is not gs.model
    f2 = IndexedTensorDataset(retain.x[retain.y < 4], retain.y[retain.y < 4])
    r2 = IndexedTensorDataset(retain.x[retain.y >= 4], retain.y[retain.y >= 4])
    r1 = gs.forget(f2, r2, _cfg(epochs=2))
    assert r1["task"] == 1 and r1["beta"] == 0.3 and type(gs.model) is ViT
    with pytest.raises(PriorkitError, match=r"beta has 2 per-task value\(s\) but task 2 was started"):
        gs.forget(f2, r2, _cfg(epochs=1))
    with pytest.raises(PriorkitError, match=r"share class\(es\) \[2, 3\]"):
        GSLoRA(_vit()).forget(f2, retain, _cfg(epochs=1))


def test_full_fine_tuning_mode_trains_every_parameter():
    forget, retain, _ = _data()
    m = _vit()
    before = copy.deepcopy(m.state_dict())
    gs = GSLoRA(m, mode="full", alpha=0.0, ema=False)
    rec = gs.forget(forget, retain, _cfg(epochs=1))
    assert "group_norms" not in rec and gs.model is m
    assert not torch.equal(m.head.weight, before["head.weight"])


# ---------------------------------------------------------------------------------------------- resume
def test_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    forget, retain, _ = _data()
    base = _vit()
    kw = dict(alpha_warmup=1, ema_epoch=1, prototype=True, w_r=0.1)

    full = GSLoRA(copy.deepcopy(base), **kw)
    full.forget(forget, retain, _cfg(epochs=4, ckpt_dir=str(tmp_path / "a")))

    part = GSLoRA(copy.deepcopy(base), **kw)
    rec = part.forget(forget, retain, _cfg(epochs=4, ckpt_dir=str(tmp_path / "b"), stop_after_epoch=1))
    assert rec["stopped"] and part.task == 0
    again = GSLoRA(copy.deepcopy(base), **kw)
    rec = again.forget(forget, retain, _cfg(epochs=4, ckpt_dir=str(tmp_path / "b")), resume=True)
    assert not rec["stopped"]
    for side in ("model", "eval_model"):
        a, b = getattr(full, side).state_dict(), getattr(again, side).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), side


# ------------------------------------------------------------------------------------------------ metrics
def test_h_mean_and_zeroed_fraction_by_hand():
    assert h_mean(0.9, 0.0, 0.9) == pytest.approx(0.9)
    assert h_mean(1.0, 0.2, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert h_mean(0.0, 0.0, 0.0) == 0.0
    assert zeroed_fraction({"a": 1.0, "b": 0.005, "c": 0.02, "d": 0.0}) == 0.5
    assert zeroed_fraction([0.0, 0.0]) == 1.0


def test_presets_construct_the_driver():
    assert gs_lora.SPEC.entry == "GSLoRA" and "GSLoRA" in gs_lora.__all__
    for preset in gs_lora.SPEC.presets.values():
        gs = GSLoRA(_vit(), **preset)
        assert gs.r == 8 and gs.lora_alpha == 1.0
    assert GSLoRA(_vit(), **gs_lora.SPEC.presets["small"]).bnd == pytest.approx(3 * math.log(10))
    assert GSLoRALoss(beta=0.1, bnd=1.0).state_dict() == {}
