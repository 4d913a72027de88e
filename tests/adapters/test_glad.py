"""GLAD: the card's property tests (rules, exact undo of the perturbation, the wrapped AdamW step), the engine
integration (resume, DDP, hooks, guards), PEFT round trips and the base-to-novel utility."""

import copy
import doctest

import pytest
import torch
import torch.nn.functional as F

import priorkit.adapters.glad as glad
from priorkit.adapters.glad import (
    SPEC,
    GLADRecipe,
    base_novel_accuracy,
    base_novel_split,
    blend_gradients,
    combine_gradients,
    glad_lora,
    global_norm,
    grad_dot,
    gradient_cosine,
    harmonic_mean,
    perturb_,
    project_conflict,
    restore_,
    sam_perturbation,
)
from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data import IndexedTensorDataset
from priorkit.models import MLP
from priorkit.train import Hook, TrainConfig, fit, shuffled_batches
from priorkit.train.distributed import run_gloo


def _grads(seed, shapes=((3, 4), (5,), (2, 2))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts]).double()


def test_docstring_example_runs():
    assert doctest.testmod(glad).failed == 0


# ----------------------------------------------------------------------------------------------- the rules
def test_project_returns_g_exactly_without_conflict():
    g = _grads(0)
    g_sam = [t + 0.1 * s for t, s in zip(g, _grads(1))]  # close to g: <g, g_sam> > 0
    assert grad_dot(g, g_sam) > 0
    out = combine_gradients(g, g_sam, "project")
    assert all(torch.equal(a, b) for a, b in zip(out, g))
    zero = [torch.zeros_like(t) for t in g]  # ||g_sam|| = 0: <g, g_sam> = 0, no conflict, no division
    assert all(torch.equal(a, b) for a, b in zip(project_conflict(g, zero), g))


def test_project_is_orthogonal_to_g_sam_on_conflict():
    g = _grads(2)
    g_sam = [-t + 0.3 * s for t, s in zip(g, _grads(3))]
    assert grad_dot(g, g_sam) < 0
    out = project_conflict(g, g_sam, lam=1.0)
    a, s = _flat(out), _flat(g_sam)
    assert abs(float(a @ s)) <= 1e-6 * float(a.norm() * s.norm())
    # lam = 0.5 removes half of the conflicting component: <g~, g_sam> = <g, g_sam> / 2
    half = _flat(project_conflict(g, g_sam, lam=0.5))
    assert float(half @ s) == pytest.approx(grad_dot(g, g_sam) / 2, rel=1e-5)
    # the component orthogonal to g_sam is untouched
    gf = _flat(g)
    perp = gf - (gf @ s) / (s @ s) * s
    assert torch.allclose(a, perp, atol=1e-6)


def test_blend_and_sam_rules():
    g, g_sam = _grads(4), _grads(5)
    for a, b in zip(blend_gradients(g, g_sam, 0.0), g):
        assert torch.equal(a, b)
    for a, b in zip(combine_gradients(g, g_sam, "blend", beta=1.0), g_sam):
        assert torch.equal(a, b)
    mid = combine_gradients(g, g_sam, "blend", beta=0.25)
    assert torch.allclose(_flat(mid), 0.75 * _flat(g) + 0.25 * _flat(g_sam))
    assert all(torch.equal(a, b) for a, b in zip(combine_gradients(g, g_sam, "sam"), g_sam))


def test_cosine_norm_and_perturbation():
    g = _grads(6)
    assert global_norm(g) == pytest.approx(float(_flat(g).norm()), rel=1e-12)
    eps = sam_perturbation(g, rho=0.05)
    assert global_norm(eps) == pytest.approx(0.05, rel=1e-6)
    assert gradient_cosine(g, eps) == pytest.approx(1.0, abs=1e-6)
    zero = [torch.zeros_like(t) for t in g]
    assert all(torch.equal(e, z) for e, z in zip(sam_perturbation(zero), zero))  # ||g|| = 0: no perturbation
    assert gradient_cosine(g, zero) is None


def test_perturb_and_restore_are_bit_exact():
    params = [torch.nn.Parameter(t) for t in _grads(7)]
    before = [p.detach().clone() for p in params]
    eps = sam_perturbation(_grads(8), rho=0.3)
    backup = perturb_(params, eps)
    assert all(torch.equal(p, b + e) for p, b, e in zip(params, before, eps))
    restore_(params, backup)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


# ------------------------------------------------------------------------------------------- the engine step
def _data(n=24, d=8, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    return IndexedTensorDataset(torch.randn(n, d, generator=g) + F.one_hot(y, d).float(), y)


def _model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    base = MLP(8, (16,), 3)
    m = glad_lora(base, r=2, lora_alpha=1.0, lora_dropout=dropout)
    with torch.no_grad():  # a non-zero B, so A gets gradients too and the step is not a special case
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return m


def _reference_step(model, data, rho, rule, lr, wd):
    """g at theta, g_sam at theta + rho g/||g||, g~ by the rule, one torch AdamW step from theta (no engine)."""
    m = copy.deepcopy(model)
    params = [p for p in m.parameters() if p.requires_grad]
    order = shuffled_batches(len(data), len(data), seed=0, epoch=0)[0]  # the engine's batch, in its order
    x, y = data.x[order], data.y[order]
    F.cross_entropy(m(x), y).backward()
    g = [p.grad.clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, sam_perturbation(g, rho)):
            p.add_(e)
    for p in params:
        p.grad = None
    F.cross_entropy(m(x), y).backward()
    g_sam = [p.grad.clone() for p in params]
    theta = [p.detach().clone() for p in copy.deepcopy(model).parameters() if p.requires_grad]
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    for p, t in zip(params, combine_gradients(g, g_sam, rule)):
        p.grad = t
    opt.step()
    return m, grad_dot(g, g_sam)


@pytest.mark.parametrize("rho", [0.05, 5.0])
def test_wrapped_step_equals_adamw_on_combined_gradient(rho):
    data = _data()
    model = _model()
    ref, dot = _reference_step(model, data, rho, "project", lr=1e-2, wd=1e-2)
    hist = fit(model, data, GLADRecipe(model, epochs=1, rho=rho, lr=1e-2, weight_decay=1e-2),
               config=TrainConfig(batch_size=len(data), progress=False))  # fmt: skip
    assert hist[-1]["glad_conflict"] == float(dot < 0)
    for (n, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), n  # LoRA tensors moved exactly as AdamW(g~); base weights untouched
    if rho == 5.0:
        assert dot < 0, "the large-rho case should exercise the conflict branch"


def test_only_trainable_tensors_change_and_sam_rule_differs():
    data = _data()
    runs = {}
    for rule in ("project", "sam"):
        model = _model()
        before = copy.deepcopy(model.state_dict())
        fit(model, data, GLADRecipe(model, epochs=2, rho=0.5, rule=rule, lr=1e-2),
            config=TrainConfig(batch_size=8, progress=False))  # fmt: skip
        for n, v in model.state_dict().items():
            assert torch.equal(v, before[n]) == ("lora_" not in n), n
        runs[rule] = model.state_dict()
    assert any(not torch.equal(runs["project"][k], runs["sam"][k]) for k in runs["sam"])


def test_same_dropout_rng_replays_the_masks():
    data = _data()
    logs = {}
    for same in (True, False):
        model = _model(dropout=0.5)
        hist = fit(model, data, GLADRecipe(model, epochs=1, rho=0.0, same_dropout_rng=same, lr=1e-2),
                   config=TrainConfig(batch_size=8, progress=False))  # fmt: skip
        logs[same] = hist[-1]
    # rho = 0 and the same masks: g_sam = g bit for bit, so cos = 1 and the two losses agree
    assert logs[True]["glad_cos"] == pytest.approx(1.0, abs=1e-9)
    assert logs[True]["glad_sam_ce"] == pytest.approx(logs[True]["ce"], abs=1e-7)
    assert logs[False]["glad_cos"] < 0.999  # fresh masks in the second pass


def test_zero_gradient_skips_the_perturbation():
    data = _data()
    model = _model()
    before = copy.deepcopy(model.state_dict())
    hist = fit(model, data, GLADRecipe(model, epochs=1, lr=1e-2, weight_decay=0.0, loss_fn=lambda o, t: 0.0 * o.sum()),
               config=TrainConfig(batch_size=8, progress=False))  # fmt: skip
    assert "glad_cos" not in hist[-1] and hist[-1]["glad_conflict"] == 0.0
    for n, v in model.state_dict().items():  # g = 0 and no weight decay: AdamW leaves theta as it was
        assert torch.equal(v, before[n]), n


def _plain_model():
    """An MLP whose body is frozen: GLAD trains and perturbs whatever requires grad (no PEFT import needed)."""
    torch.manual_seed(0)
    m = MLP(8, (16,), 3)
    m.body.requires_grad_(False)
    return m


def _run(out=None, tmp=None, stop=None, resume=False, dropout=0.25, peft=True):
    torch.set_num_threads(1)
    model = _model(dropout=dropout) if peft else _plain_model()
    cfg = TrainConfig(batch_size=8, seed=3, progress=False, ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)
    fit(model, _data(), GLADRecipe(model, epochs=3, rho=0.5, lr=1e-2), config=cfg, resume=resume)
    if out is not None:
        torch.save(model.state_dict(), out)
    return model


def test_resume_is_bit_identical(tmp_path):
    full = _run().state_dict()
    _run(tmp=tmp_path, stop=0)
    resumed = _run(tmp=tmp_path, resume=True).state_dict()
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), k


def _ddp_worker(rank, out):
    _run(out if rank == 0 else None, peft=False)


def test_two_process_glad_equals_one_process(tmp_path):
    """g is all-reduced by state.backward before eps is formed, so both ranks perturb identically and the
    2-process run (4 + 4 samples a step) equals the 1-process run on the same global batches (a plain model
    with frozen layers: the spawned processes need not import PEFT)."""
    out = str(tmp_path / "ddp.pt")
    run_gloo(_ddp_worker, 2, out)
    single = _run(peft=False).state_dict()
    multi = torch.load(out, weights_only=True)
    for k, v in single.items():
        assert torch.allclose(v, multi[k], atol=1e-6), k


class _ExtraLoss(Hook):
    def extra_loss(self, state, batch):
        return {"l2": batch.output.pow(2).mean()}


def test_hooks_glad_cannot_honour_are_refused():
    model = _model()
    with pytest.raises(PriorkitError, match="defines extra_loss"):
        fit(model, _data(), GLADRecipe(model, epochs=1), hooks=[_ExtraLoss()],
            config=TrainConfig(batch_size=8, progress=False))  # fmt: skip


def test_non_finite_loss_is_named():
    data = _data()
    x = data.x.clone()
    x[2, 0] = float("nan")
    model = _model()
    with pytest.raises(NonFiniteError, match="ce"):
        fit(model, IndexedTensorDataset(x, data.y), GLADRecipe(model, epochs=1),
            config=TrainConfig(batch_size=24, progress=False))  # fmt: skip


# -------------------------------------------------------------------------------------------------- PEFT
def test_peft_save_load_and_merge_round_trips(tmp_path):
    from peft import PeftModel

    data = _data()
    model = _model(dropout=0.25)
    fit(model, data, GLADRecipe(model, epochs=2, rho=0.5, lr=1e-2), config=TrainConfig(batch_size=8, progress=False))
    model.eval()
    out = model(data.x)
    model.save_pretrained(tmp_path / "glad")
    torch.manual_seed(0)  # the same base weights as _model's
    loaded = PeftModel.from_pretrained(MLP(8, (16,), 3), tmp_path / "glad").eval()
    assert torch.equal(loaded(data.x), out)
    merged = copy.deepcopy(model).merge_and_unload()
    assert isinstance(merged, MLP)
    assert torch.allclose(merged(data.x), out, atol=1e-6)


def test_unsupported_module_type_is_a_clear_error():
    class WithLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(4, 4)
            self.head = torch.nn.Linear(4, 2)

    with pytest.raises(PriorkitError, match=r"target_modules=\['rnn'\].*LoRA supports nn.Linear"):
        glad_lora(WithLSTM(), ["rnn"])
    with pytest.raises(PriorkitError, match="no trainable parameters"):
        GLADRecipe(torch.nn.Linear(2, 2).requires_grad_(False))


# ----------------------------------------------------------------------------------------- base-to-novel
def test_base_to_novel_protocol():
    assert base_novel_split(5) == ([0, 1, 2], [3, 4])
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0
    y = torch.tensor([0, 1, 2, 3])
    logits = torch.zeros(4, 4)
    logits[0, 0] = logits[1, 3] = 5.0  # sample 1 (base class 1) prefers novel class 3: ignored among base classes
    logits[1, 1] = 1.0
    logits[2, 2] = 5.0  # sample 2 (novel class 2) correct
    logits[3, 0] = 9.0  # sample 3 (novel class 3) prefers base class 0: among novel classes it ties -> class 2
    logits[3, 2] = 0.5
    acc = base_novel_accuracy(logits, y, base=[0, 1])
    assert acc == {"base": 1.0, "novel": 0.5, "hm": pytest.approx(2 / 3)}


def test_presets_build_the_recipe():
    assert SPEC.entry == "GLADRecipe" and "GLADRecipe" in glad.__all__
    model = _model()
    for preset in SPEC.presets.values():
        recipe = GLADRecipe(model, epochs=2, **preset)
        assert recipe.phases[0].manual and recipe.phases[0].trainable == [
            n for n, p in model.named_parameters() if p.requires_grad
        ]
