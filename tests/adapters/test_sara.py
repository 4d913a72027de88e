import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from priorkit.adapters.sara import (
    SaRA,
    SaRAParametrization,
    fraction_threshold,
    magnitude_ablation,
    magnitude_mask,
    nuclear_norm_term,
    paper_lr,
    reselect_mask,
)
from priorkit.core.errors import HookConflictError, PriorkitError
from priorkit.data import gaussian_mixture
from priorkit.models import MLP
from priorkit.train import Hook, TrainConfig, fit

DATA = gaussian_mixture(240, num_classes=3, dim=8, seed=0).train  # 168 samples


def _model(seed=0):
    torch.manual_seed(seed)
    return MLP(8, (16, 16), 3)


def _dense(model):
    """The effective tensors by name (parametrized or not), detached copies."""
    out = {}
    for mname, mod in model.named_modules():
        if "parametrizations" in mname.split("."):
            continue
        names = set(mod._parameters) | (set(mod.parametrizations) if parametrize.is_parametrized(mod) else set())
        for t in names:
            if getattr(mod, t, None) is not None:
                out[f"{mname}.{t}" if mname else t] = getattr(mod, t).detach().clone()
    return out


def _hook(model, **kw):
    kw = {"fraction": 0.3, "rank_min_dim": 4, "lr": 1e-2, **kw}
    return SaRA(model, **kw)


def _fit(model, hook, epochs=3, batch_size=40, hooks=(), **cfg):
    config = TrainConfig(epochs=epochs, batch_size=batch_size, seed=0, progress=False, **cfg)
    return fit(model, DATA, hook.recipe(epochs), hooks=[hook, *hooks], config=config)


# ------------------------------------------------------------------------------------------ functional core
def test_masks_thresholds_and_paper_lr():
    w = torch.tensor([[0.001, -0.002, 0.5], [-0.0005, 0.3, -0.004]])
    assert torch.equal(magnitude_mask(w, 2e-3), torch.tensor([[True, False, False], [True, False, False]]))
    assert paper_lr(2e-3) == pytest.approx(1e-3 * math.exp(-0.7)) and 4.96e-4 < paper_lr(2e-3) < 4.97e-4
    v = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for frac in (0.1, 0.25, 0.9):
        tau = fraction_threshold(v, frac)
        assert int((v.abs() < tau).sum()) == math.floor(frac * 1000)
    mask = torch.tensor([True, True, False, True])
    w_now = torch.tensor([0.001, 0.9, 0.0001, -0.5])
    new = reselect_mask(w_now, mask, 0.01)
    assert torch.equal(new, torch.tensor([True, False, False, False])) and not (new & ~mask).any()


def test_nuclear_norm_value_and_gradient_is_uv_t():
    g = torch.Generator().manual_seed(1)
    p = (torch.randn(7, 5, generator=g) * (torch.rand(7, 5, generator=g) < 0.4)).requires_grad_(True)
    val = nuclear_norm_term(p)
    assert val.item() == pytest.approx(float(torch.linalg.svdvals(p.detach()).sum()), rel=1e-5)
    val.backward()
    u, _, vh = torch.linalg.svd(p.detach(), full_matrices=False)
    assert torch.allclose(p.grad, u @ vh, atol=1e-6)


def test_parametrization_is_the_sparse_vector_with_gathered_gradient():
    model = _model()
    ref = copy.deepcopy(model)
    w0 = model.body[2].weight.detach().clone()
    hook = _hook(model)
    assert torch.equal(model.body[2].weight, w0)  # no official |W0| init: the forward is the pretrained one
    # every dense tensor left the parameters: only the vectors p train (include='all')
    assert {id(p) for p in model.parameters()} == {id(p) for p in hook.params}
    par, p = hook.parametrization("body.2.weight"), hook.vector("body.2.weight")
    assert p.numel() == int(par.mask.sum()) and torch.equal(p.detach(), w0[par.mask])
    # trainable count = |M| = floor(0.3 n) per tensor
    assert hook.trainable_count() == sum(math.floor(0.3 * q.numel()) for q in ref.parameters())
    x = DATA.x[:16]
    nn.functional.cross_entropy(model(x), DATA.y[:16]).backward()
    nn.functional.cross_entropy(ref(x), DATA.y[:16]).backward()
    assert torch.allclose(p.grad, ref.body[2].weight.grad[par.mask], atol=1e-7)  # grad = dense grad gathered at M
    assert isinstance(par, SaRAParametrization)


def test_outside_mask_bitwise_w0_and_count_after_training_with_reselection():
    model = _model()
    w0 = _dense(model)
    hook = _hook(model, reselect_at=7)
    sel0 = {n: hook.parametrization(n).mask.clone() for n in hook.tensors}
    _fit(model, hook, epochs=4)  # 5 steps per epoch, re-selection after 7 updates
    assert hook.reselected and hook.step == 20
    for n, w in _dense(model).items():
        par = hook.parametrization(n)
        assert torch.equal(par.selected, sel0[n])
        assert torch.equal(w[~sel0[n]], w0[n][~sel0[n]]), n  # never-selected entries: bitwise W0
        assert not (par.mask & ~sel0[n]).any()  # M' <= M
        assert hook.vector(n).numel() == int(par.mask.sum())
    moved = sum(int((_dense(model)[n] != w0[n]).sum()) for n in w0)
    assert moved > 0


class _Spy(Hook):
    def __init__(self, sara):
        self.sara, self.weights, self.states = sara, [], []

    def on_step_end(self, state, batch):
        self.weights.append(_dense(self.sara.model))
        self.states.append(
            {
                n: {k: v.clone() for k, v in state.optimizer.state.get(p, {}).items()}
                for n, p in zip(self.sara.tensors, self.sara.params)
            }
        )


@pytest.mark.parametrize("skip", [True, False])
def test_reselection_freezes_grown_entries_at_trained_values_and_resets_moments(skip):
    model = _model()
    hook = _hook(model, reselect_at=6, reselect_skips_update=skip, rank_weight=0.0)
    spy = _Spy(hook)
    _fit(model, hook, epochs=3, hooks=[spy])
    before, at = spy.weights[5], spy.weights[6]  # after 6 updates / after the 7th optimizer call
    if skip:  # official: the call after T_p updates only re-selects
        for n in before:
            assert torch.equal(before[n], at[n]), n
        assert all(not s for s in spy.states[6].values())  # moments reset, no update yet
        assert all(int(s["step"]) == 1 for s in spy.states[7].values() if s)
    else:
        assert all(int(s["step"]) == 1 for s in spy.states[6].values() if s)  # fresh moments at the 7th update
    frozen_some = False
    for n in hook.tensors:
        par = hook.parametrization(n)
        newly = par.selected & ~par.mask
        frozen_some |= bool(newly.any())
        for later in spy.weights[6:]:
            assert torch.equal(later[n][newly], before[n][newly]), n  # frozen at the trained value
    assert frozen_some


def test_rank_term_changes_the_update_of_p():
    """Guards the released code's inert regularizer: with lambda_rank > 0 the gradient reaches p."""
    ups = {}
    for lam in (0.0, 0.5):
        model = _model()
        hook = _hook(model, rank_weight=lam)
        _fit(model, hook, epochs=1, batch_size=168)
        ups[lam] = hook.vector("body.2.weight").detach().clone()
    assert not torch.equal(ups[0.0], ups[0.5])
    # the term's gradient is lambda * U V^T of the masked matrix, gathered at M
    model = _model()
    hook = _hook(model, rank_weight=0.5, rank_layers_per_step=5, rank_min_dim=8)
    assert hook.rank_tensors == ["body.2.weight"] and hook.rank_draw(3) == ["body.2.weight"]
    hook.rank_loss(0).backward()
    par, p = hook.parametrization("body.2.weight"), hook.vector("body.2.weight")
    pm = torch.zeros_like(par.base).masked_scatter(par.mask, p.detach())
    u, _, vh = torch.linalg.svd(pm, full_matrices=False)
    assert torch.allclose(p.grad, 0.5 * (u @ vh)[par.mask], atol=1e-6)


def test_rank_draw_is_seeded_and_uniform_over_eligible():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(70, 80), nn.ReLU(), nn.Linear(80, 90), nn.Linear(90, 3))
    hook = SaRA(model, fraction=0.1, lr=1e-3)  # paper eligibility: 2-D with min(shape) > 64
    assert hook.rank_tensors == ["0.weight", "2.weight"]
    draws = [hook.rank_draw(s) for s in range(100)]

    def make():
        return nn.Sequential(nn.Linear(70, 80), nn.ReLU(), nn.Linear(80, 90), nn.Linear(90, 3))

    twin = SaRA(make(), include="weights", threshold=0.01, lr=1e-3)
    assert [twin.rank_draw(s) for s in range(100)] == draws  # a function of (seed, step) only
    other = SaRA(make(), fraction=0.1, lr=1e-3, seed=1)
    assert [other.rank_draw(s) for s in range(100)] != draws
    assert all(len(d) == 1 for d in draws) and 25 < sum(d == ["0.weight"] for d in draws) < 75


def test_adamw_on_p_only_with_decoupled_decay():
    model = _model()
    hook = _hook(model, lr=0.1, weight_decay=0.2)
    opt = hook.optimizer()
    assert isinstance(opt, torch.optim.AdamW) and [p for g in opt.param_groups for p in g["params"]] == hook.params
    before = [p.detach().clone() for p in hook.params]
    for p in hook.params:
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradient: only the decay acts, toward 0 (not toward W0)
    for b, p in zip(before, hook.params):
        assert torch.allclose(p.detach(), b * (1 - 0.1 * 0.2))


def test_threshold_mode_include_weights_and_other_parameters_refused():
    model = _model()
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    hook = SaRA(model, threshold=0.05, include="weights", rank_min_dim=4)
    assert hook.lr == paper_lr(0.05) and list(hook.tensors) == ["body.0.weight", "body.2.weight", "head.weight"]
    for n in hook.tensors:
        par = hook.parametrization(n)
        assert torch.equal(par.mask, par.base.abs() < 0.05)
    with pytest.raises(PriorkitError, match="other parameter"):  # the default phase would train the biases
        fit(model, DATA, hooks=[hook], config=TrainConfig(epochs=1, optimizer="adamw", progress=False))
    _fit(model, hook, epochs=1)
    for n, p in model.named_parameters():
        if n in biases:
            assert torch.equal(p, biases[n]), n


def test_fraction_scopes_and_selected_fraction():
    model = _model()
    w = [p.detach().abs().flatten() for p in model.parameters()]
    hook = SaRA(copy.deepcopy(model), fraction=0.2, fraction_scope="global", lr=1e-3)
    assert hook.trainable_count() == math.floor(0.2 * sum(len(v) for v in w))
    assert len(set(hook.tau.values())) == 1
    per = SaRA(copy.deepcopy(model), fraction=0.2, lr=1e-3)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    assert per.selected_fraction() == {n: math.floor(0.2 * k) / k for n, k in sizes.items()}


def test_official_abs_init_flag():
    model = _model()
    w0 = model.body[0].weight.detach().clone()
    hook = _hook(copy.deepcopy(model), official_abs_init=True)
    m = hook.model
    par = hook.parametrization("body.0.weight")
    assert torch.equal(m.body[0].weight[par.mask], w0[par.mask].abs())  # |W0[M]| in the first forward
    assert (w0[par.mask] < 0).any()
    _fit(m, hook, epochs=1, batch_size=168)
    assert not bool(par.abs_forward)
    assert torch.equal(m.body[0].weight[par.mask], hook.vector("body.0.weight").detach())  # signed p afterwards


def test_save_load_round_trip_after_reselection(tmp_path):
    pre = _model()
    model = copy.deepcopy(pre)
    hook = _hook(model, reselect_at=5)
    _fit(model, hook, epochs=2)
    hook.save(tmp_path / "sara.pt")
    fresh = copy.deepcopy(pre)
    loaded = _hook(fresh)
    loaded.load(tmp_path / "sara.pt")
    x = DATA.x
    assert torch.equal(fresh(x), model(x))
    for n in hook.tensors:
        a, b = hook.parametrization(n), loaded.parametrization(n)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.selected, b.selected)
        assert torch.equal(hook.vector(n), loaded.vector(n))
    assert loaded.reselected and loaded.step == hook.step and loaded.tau == hook.tau
    sd = hook.adapter_state_dict()
    assert sd["body.2.weight.index"].numel() == int(hook.parametrization("body.2.weight").selected.sum())
    bad = dict(sd)
    bad["head.weight.shape"] = torch.tensor([4, 4])
    with pytest.raises(PriorkitError, match=r"head.weight.shape"):
        _hook(copy.deepcopy(pre)).load_adapter_state_dict(bad)


def test_merge_gives_dense_weights_with_the_same_output():
    model = _model()
    hook = _hook(model)
    _fit(model, hook, epochs=1)
    out = model(DATA.x).detach()
    hook.merge()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.equal(model(DATA.x), out)
    with pytest.raises(PriorkitError, match="merged"):
        hook.trainable_count()


def test_lora_branch_composes_and_merge_order():
    from peft import LoraConfig, get_peft_model

    model = _model()
    hook = _hook(model)
    _fit(model, hook, epochs=1)
    ref = model(DATA.x).detach()
    cfg = LoraConfig(r=2, target_modules=["body.0", "body.2", "head"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    out = peft_model(DATA.x).detach()
    assert not torch.allclose(out, ref)
    assert set(hook.trainable_names(peft_model)) == {
        n for n, p in peft_model.named_parameters() if "parametrizations" in n
    }
    hook.merge()  # SaRA first, then the LoRA branch into the dense weight
    merged = peft_model.merge_and_unload()
    assert torch.allclose(merged(DATA.x), out, atol=1e-5)


class _Mask(nn.Module):
    def forward(self, w):
        return w * 1.0


class _Claimer(Hook):
    claims = ("weight_parametrization",)


def test_stacking_is_refused_unless_declared_composable():
    model = _model()
    parametrize.register_parametrization(model.head, "weight", _Mask())
    with pytest.raises(HookConflictError, match="already parametrized"):
        SaRA(model, fraction=0.1, lr=1e-3)
    model = _model()
    hook = _hook(model)
    parametrize.register_parametrization(model.head, "weight", _Mask())  # after SaRA, not declared composable
    with pytest.raises(HookConflictError, match="sara_composable"):
        _fit(model, hook, epochs=1)
    model = _model()
    hook = _hook(model)
    ok = _Mask()
    ok.sara_composable = True
    parametrize.register_parametrization(model.head, "weight", ok)
    _fit(model, hook, epochs=1)
    with pytest.raises(HookConflictError, match="weight_parametrization"):  # e.g. GMP / PDP in the same run
        _fit(_model(), _hook(_model()), epochs=1, hooks=[_Claimer()])


def test_unsupported_models_are_named():
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    with pytest.raises(PriorkitError, match="tied weights"):
        SaRA(tied, fraction=0.1, lr=1e-3)
    with pytest.raises(PriorkitError, match="include='weights' selects no"):
        SaRA(nn.Sequential(nn.LayerNorm(4)), fraction=0.1, lr=1e-3, include="weights")
    with pytest.raises(PriorkitError, match="model must be a torch.nn.Module"):
        SaRA("mlp", fraction=0.1, lr=1e-3)


def _run(tmp=None, stop=None, resume=False, model_seed=0, reselect_at=8):
    model = _model(model_seed)
    hook = _hook(model, reselect_at=reselect_at, rank_weight=0.2)
    cfg = TrainConfig(epochs=4, batch_size=40, seed=3, progress=False, ckpt_dir=str(tmp) if tmp else None,
                      stop_after_epoch=stop)  # fmt: skip
    fit(model, DATA, hook.recipe(4), hooks=[hook], config=cfg, resume=resume)
    return model, hook


@pytest.mark.parametrize("stop", [0, 2])  # before and after the re-selection (after 8 of 20 updates)
def test_resume_is_bit_identical(tmp_path, stop):
    full, h_full = _run()
    _run(tmp_path, stop=stop)
    resumed, h_res = _run(tmp_path, resume=True, model_seed=5)  # another init: all must come from the checkpoint
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert h_res.step == h_full.step == 20 and h_res.reselected


def test_magnitude_ablation_zeroes_the_smallest_fraction():
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ab = magnitude_ablation(model, 0.2)
    n_all = sum(p.numel() for p in model.parameters())
    zeros = sum(int((p == 0).sum()) for p in ab.parameters())
    assert zeros == math.floor(0.2 * n_all)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model itself is unchanged
    kept = torch.cat([p.detach().abs().flatten() for p in ab.parameters()])
    dropped = torch.cat([(b.abs() * (p == 0)).flatten() for b, p in zip(before.values(), ab.parameters())])
    assert float(dropped.max()) <= float(kept[kept > 0].min())
    assert all(torch.equal(p, q) for p, q in zip(magnitude_ablation(model, 0.0).parameters(), model.parameters()))
    per = magnitude_ablation(model, 0.5, scope="tensor", include="weights")
    assert int((per.head.weight == 0).sum()) == 24 and int((per.head.bias == 0).sum()) == 0


def test_presets_construct_the_hook():
    from priorkit.adapters import sara

    assert sara.SPEC.entry == "SaRA" and "SaRA" in sara.__all__
    for name, preset in sara.SPEC.presets.items():
        hook = SaRA(_model(), **preset)
        assert hook.trainable_count() > 0 or name == "paper"
