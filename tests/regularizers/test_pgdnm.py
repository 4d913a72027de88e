"""PGDNM: the mask pipeline, the Beta log-density, the 0.99 baselines, the REINFORCE gradient, the code's classifier
scaling, the two-stage recipe, no policy at inference, resume and 2-process DDP equality."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data.datasets import IndexedTensorDataset, load_digits
from priorkit.regularizers import pgdnm
from priorkit.regularizers.pgdnm import (
    PGDNM,
    beta_concentrations,
    beta_log_prob,
    gaussian_blur,
    mask_log_prob,
    mask_to_image,
    policy_surrogate,
    sample_mask,
    update_base,
)
from priorkit.train import Batch, Recipe, TrainConfig, Trainer, predict
from priorkit.train.distributed import run_gloo


def _state(step=0, seed=0, phase="heat", phase_epoch=0, epochs=2):
    logged = {}
    return SimpleNamespace(
        step=step, config=SimpleNamespace(seed=seed), phase=SimpleNamespace(name=phase, epochs=epochs),
        phase_epoch=phase_epoch, device=torch.device("cpu"), log=lambda **kw: logged.update(kw), logged=logged,
    )  # fmt: skip


def _net(classes=3):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, classes)
    )


def _images(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


# ------------------------------------------------------------------------------------------ functional core
def test_blur_matches_a_direct_reflect_padded_correlation():
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k, s = 5, 1.3
    t = np.linspace(-2, 2, k)
    k1 = np.exp(-0.5 * (t / s) ** 2)
    k2 = np.outer(k1, k1) / k1.sum() ** 2
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    want = np.zeros(x.shape)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            want[:, :, i, j] = (xp[:, :, i : i + k, j : j + k] * k2).sum(axis=(2, 3))
    assert np.allclose(gaussian_blur(x, k, s).numpy(), want, atol=1e-12)
    const = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(const, 3, 1.0), const, atol=1e-7)  # the kernel sums to one


def test_mask_image_is_nearest_blocks_then_blur_in_unit_interval():
    cells = torch.rand(5, 16, generator=torch.Generator().manual_seed(0)).clamp(1e-3, 1 - 1e-3)
    plain = mask_to_image(cells, (8, 8), kernel=1, sigma=1.0)  # kernel 1: no blur
    assert plain.shape == (5, 1, 8, 8)
    assert torch.equal(plain, cells.view(5, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3))
    img = mask_to_image(cells, (8, 8), kernel=3, sigma=1.0)
    assert img.shape == (5, 1, 8, 8) and bool((img > 0).all()) and bool((img < 1).all())
    assert torch.allclose(img, gaussian_blur(plain, 3, 1.0))


def test_beta_log_prob_matches_torch_distribution_and_reductions():
    g = torch.Generator().manual_seed(3)
    c1, c0 = torch.rand(4, 9, generator=g) * 5 + 0.05, torch.rand(4, 9, generator=g) * 5 + 0.05
    m = torch.rand(4, 9, generator=g).clamp(0.01, 0.99)
    lp = beta_log_prob(m, c1, c0)
    assert torch.allclose(lp, torch.distributions.Beta(c1, c0).log_prob(m), atol=1e-5)
    assert torch.allclose(mask_log_prob(m, c1, c0), torch.log(torch.sum(lp.exp(), 1)), atol=1e-5)  # the code's form
    assert torch.allclose(mask_log_prob(m, c1, c0, "sum"), lp.sum(1))


def test_concentrations_follow_the_mixing_rule_and_clamp():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    ba, bb = torch.rand(1, 4), torch.rand(1, 4)
    c1, c0 = beta_concentrations(a, b, ba, bb)
    assert torch.allclose(c1, torch.exp(0.9 * ba + 0.1 * a)) and torch.allclose(c0, torch.exp(0.9 * bb + 0.1 * b))
    big = torch.full((2, 4), 100.0)
    c1, c0 = beta_concentrations(big, -big, torch.zeros(1, 4), torch.zeros(1, 4), mix=0.0)
    assert bool((c1 == 100.0).all()) and bool((c0 == 0.01).all())


def test_update_base_is_the_099_ema_of_the_detached_batch_mean():
    head = torch.randn(6, 4, requires_grad=True)
    base = torch.rand(1, 4)
    new = update_base(base, head)
    assert not new.requires_grad
    assert torch.allclose(new, 0.99 * base + 0.01 * head.detach().mean(0, keepdim=True))


def test_sample_mask_is_seeded_leaves_global_rng_and_has_beta_mean():
    c1, c0 = torch.full((4000, 5), 2.0), torch.full((4000, 5), 5.0)
    before = torch.get_rng_state()
    m = sample_mask(c1, c0, seed=11)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(m, sample_mask(c1, c0, seed=11)) and not torch.equal(m, sample_mask(c1, c0, seed=12))
    assert bool((m > 0).all()) and bool((m < 1).all())
    assert abs(float(m.mean()) - 2 / 7) < 0.01  # 20,000 draws: std of the mean ~0.0011
    tiny = sample_mask(torch.full((200, 4), 0.01), torch.full((200, 4), 0.01), seed=0)  # U-shaped: draws hit 0/1
    assert bool((tiny > 0).all()) and bool((tiny < 1).all())
    assert bool(torch.isfinite(mask_log_prob(tiny, torch.full((200, 4), 0.01), torch.full((200, 4), 0.01))).all())


def test_policy_surrogate_gradient_is_ce_times_grad_mean_s():
    w = torch.randn(3, 4, requires_grad=True)
    s = (w**2).sum(1)
    policy_surrogate(s, torch.tensor(0.7), baseline=0.2).backward()
    assert torch.allclose(w.grad, 0.5 * 2 * w.detach() / 3)


# --------------------------------------------------------------------------------------------------- the hook
def _step(hook, x, y, net, step=0, phase="heat"):
    """One engine-like step through the hook's points (transform, forward, extra_loss, step end)."""
    st = _state(step=step, phase=phase)
    b = hook.transform_batch(st, Batch(x=x.clone(), y=y, index=torch.arange(len(y))))
    b.output = net(b.x)
    terms = {"ce": F.cross_entropy(b.output, y), **hook.extra_loss(st, b)}
    hook.on_step_end(st, b)
    return b, terms, st


def test_policy_gradient_equals_mean_ce_times_grad_mean_s_for_the_sampled_mask():
    torch.manual_seed(0)
    hook = PGDNM(1, grid=4)
    before = copy.deepcopy(hook)
    x, y = _images()
    net = _net()
    b, terms, _ = _step(hook, x, y, net, step=5)
    got = {n: p.grad.clone() for n, p in hook.policy.named_parameters()}
    # recompute by hand on the policy as it was: the same draw (same seed), the code's loss mean(S) * CE
    a, bb = before.policy(x)
    c1, c0 = beta_concentrations(a, bb, before.base_a, before.base_b)
    m = sample_mask(c1.detach(), c0.detach(), seed=0 * 1_000_003 + 7919 + 5)
    s = mask_log_prob(m, c1, c0)
    ce = F.cross_entropy(b.output.detach(), y)
    (s.mean() * ce).backward()
    for n, p in before.policy.named_parameters():
        assert torch.allclose(got[n], p.grad, atol=1e-6), n
    assert torch.allclose(b.x, x * mask_to_image(m, (8, 8), kernel=3, sigma=1.0))
    # the classifier's loss is the released mean(S) * CE (S detached: no gradient reaches the policy through it)
    assert torch.allclose(terms["ce"] + terms["pgdnm_scale"], s.mean().detach() * terms["ce"])
    assert terms["pgdnm_scale"].grad_fn is not None and hook.extra_loss(_state(phase="finetune"), b) == {}


def test_bases_follow_the_099_ema_and_the_policy_steps():
    torch.manual_seed(1)
    hook = PGDNM(1, grid=4)
    x, y = _images()
    pol = copy.deepcopy(hook.policy)
    ba, bb = hook.base_a.clone(), hook.base_b.clone()
    w0 = [p.detach().clone() for p in hook.policy.parameters()]
    _step(hook, x, y, _net())
    a, b = pol(x)
    assert torch.allclose(hook.base_a, 0.99 * ba + 0.01 * a.detach().mean(0, keepdim=True), atol=1e-7)
    assert torch.allclose(hook.base_b, 0.99 * bb + 0.01 * b.detach().mean(0, keepdim=True), atol=1e-7)
    assert any(not torch.equal(p, q) for p, q in zip(hook.policy.parameters(), w0))


def test_textbook_form_with_ema_baseline_has_zero_first_advantage():
    torch.manual_seed(2)
    hook = PGDNM(1, grid=4, logprob_reduce="sum", baseline="ema", classifier_scale=False)
    x, y = _images()
    net = _net()
    b, terms, _ = _step(hook, x, y, net)
    assert set(terms) == {"ce"}
    assert all(float(p.grad.abs().max()) == 0.0 for p in hook.policy.parameters() if p.grad is not None)
    assert hook.ce_baseline == pytest.approx(float(F.cross_entropy(b.output.detach(), y)))
    _step(hook, x, y, net, step=1)
    assert any(float(p.grad.abs().max()) > 0 for p in hook.policy.parameters() if p.grad is not None)


def test_inactive_outside_the_heat_phase_and_policy_lr_is_cosine():
    hook = PGDNM(1, grid=4, policy_lr=1e-3, policy_lr_min=1e-5)
    x, y = _images()
    b, terms, _ = _step(hook, x, y, _net(), phase="finetune")
    assert torch.equal(b.x, x) and set(terms) == {"ce"}
    for e, want in ((0, 1e-3), (2, 1e-5 + (1e-3 - 1e-5) / 2), (4, 1e-5)):
        hook.on_epoch_start(_state(phase_epoch=e, epochs=4))
        assert hook.optimizer.param_groups[0]["lr"] == pytest.approx(want)


def test_nan_images_raise_and_leave_the_hook_unchanged():
    hook = PGDNM(1, grid=4)
    x, y = _images()
    x[3, 0, 2, 2] = float("nan")
    sd = copy.deepcopy(hook.state_dict())
    with pytest.raises(NonFiniteError, match="batch.x holds NaN"):
        hook.transform_batch(_state(), Batch(x=x, y=y, index=torch.arange(len(y))))
    assert torch.equal(hook.base_a, sd["base_a"])
    for k, v in hook.policy.state_dict().items():
        assert torch.equal(v, sd["policy"][k]), k


# ------------------------------------------------------------------------------------------- runs and recipe
def _digits(n=96):
    sp = load_digits(image=True, val=0.0, test=0.0, seed=0)
    keep = sp.train.y < 3
    return IndexedTensorDataset(sp.train.x[keep][:n], sp.train.y[keep][:n])


def test_recipe_two_stages_and_refusal_without_heat_phase():
    r = PGDNM.recipe(3, 2, lr=0.05, finetune_lr=0.005, warmup_epochs=1)
    assert [p.name for p in r.phases] == ["heat", "finetune"] and [p.epochs for p in r.phases] == [3, 2]
    torch.manual_seed(0)
    net, hook = _net(), PGDNM(1, grid=4)
    hist = Trainer(net, _digits(), recipe=r, hooks=[hook], config=TrainConfig(batch_size=32, progress=False)).fit()
    assert [h["phase"] for h in hist] == ["heat"] * 3 + ["finetune"] * 2
    assert all("pgdnm_reward" in h for h in hist[:3]) and not any("pgdnm_reward" in h for h in hist[3:])
    with pytest.raises(PriorkitError, match=r"phase named 'heat' \(heat_phase\) but the recipe's phases are \['fit'\]"):
        Trainer(_net(), _digits(), hooks=[PGDNM(1)], config=TrainConfig(epochs=1, progress=False)).fit()


def test_policy_is_not_called_in_finetuning_or_inference():
    torch.manual_seed(0)
    net, hook = _net(), PGDNM(1, grid=4)
    calls = []
    hook.policy.register_forward_hook(lambda *a: calls.append(1))
    data = _digits()
    Trainer(net, data, recipe=PGDNM.recipe(1, 2, warmup_epochs=0), hooks=[hook],
            config=TrainConfig(batch_size=32, progress=False)).fit()  # fmt: skip
    assert len(calls) == 3  # 96 images / 32: the heating epoch's 3 steps only
    predict(net, data)
    assert len(calls) == 3


def _pg_run(out=None, ckpt=None, stop=None, resume=False):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, hook = _net(), PGDNM(1, grid=4, policy_lr=1e-2, policy_lr_min=1e-4)
    cfg = TrainConfig(batch_size=32, seed=3, ckpt_dir=ckpt, stop_after_epoch=stop, progress=False)
    Trainer(net, _digits(), recipe=PGDNM.recipe(3, 1, lr=0.05, finetune_lr=0.01, warmup_epochs=1), hooks=[hook],
            config=cfg).fit(resume=resume)  # fmt: skip
    result = {"model": net.state_dict(), "hook": hook.state_dict()}
    if out is not None:
        torch.save(result, out)
    return result


def _pg_worker(rank: int, out: str) -> None:
    _pg_run(out if rank == 0 else None)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out.update(_flat(dict(enumerate(v)), f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _assert_same(a, b, atol=0.0):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k, v in fa.items():
        if isinstance(v, torch.Tensor):
            ok = (
                torch.equal(v, fb[k])
                if atol == 0.0 or not v.is_floating_point()
                else torch.allclose(v, fb[k], atol=atol)
            )
            assert ok, k
        elif isinstance(v, float) and atol:
            assert math.isclose(v, fb[k], abs_tol=atol), k
        else:
            assert v == fb[k], k


def test_resume_is_bit_identical(tmp_path):
    full = _pg_run(ckpt=str(tmp_path / "a"))
    _pg_run(ckpt=str(tmp_path / "b"), stop=1)  # stops inside the heating phase
    _assert_same(full, _pg_run(ckpt=str(tmp_path / "b"), resume=True))


def test_two_process_run_equals_one_process(tmp_path):
    single = _pg_run()
    run_gloo(_pg_worker, 2, str(tmp_path / "ddp.pt"))
    _assert_same(single, torch.load(tmp_path / "ddp.pt", weights_only=True), atol=1e-5)


def test_presets_construct_the_hook():
    assert pgdnm.SPEC.entry == "PGDNM" and "PGDNM" in pgdnm.__all__
    for name, preset in pgdnm.SPEC.presets.items():
        hook = PGDNM(1, **preset)
        assert hook.grid == preset["grid"] and hook.policy.alpha[-1].out_features == preset["grid"] ** 2, name
    assert isinstance(PGDNM.recipe(90, 10), Recipe)
