"""TRP: the card's property tests, the hook's projection and sub-gradient, resume and DDP."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorkit.data.datasets import IndexedTensorDataset
from priorkit.sparsity.trp import (
    TRP,
    conv_macs,
    energy_rank,
    factorize_conv,
    from_matrix,
    nuclear_subgradient,
    project_low_rank,
    to_matrix,
    trp_decompose,
    trp_targets,
    value_rank,
)
from priorkit.train import TrainConfig, Trainer
from priorkit.train.distributed import run_gloo


def _conv(stride=1, padding=1, c=6, n=8, k=(3, 3), dilation=1):
    torch.manual_seed(0)
    return nn.Conv2d(c, n, k, stride=stride, padding=padding, dilation=dilation)


@pytest.mark.parametrize("scheme", ["nc", "vh"])
@pytest.mark.parametrize("stride", [1, 2])
def test_factorised_sequential_reproduces_the_projected_conv(scheme, stride):
    conv = _conv(stride=stride)
    with torch.no_grad():
        w, r = project_low_rank(conv.weight, 0.8, scheme)
        conv.weight.copy_(w)
    assert r < min(to_matrix(conv.weight, scheme).shape)
    x = torch.randn(2, 6, 9, 11)
    fact = factorize_conv(conv, r, scheme)
    assert torch.allclose(fact(x), conv(x), atol=1e-5)


def test_vh_with_dilation_and_uneven_padding_is_exact_at_full_rank():
    conv = _conv(padding=(2, 1), dilation=(2, 1), k=(3, 3))
    x = torch.randn(2, 6, 10, 10)
    full = min(to_matrix(conv.weight, "vh").shape)
    assert torch.allclose(factorize_conv(conv, full, "vh")(x), conv(x), atol=1e-5)


@pytest.mark.parametrize("scheme", ["nc", "vh"])
def test_reshape_round_trip(scheme):
    w = torch.randn(8, 6, 3, 5)
    assert torch.equal(from_matrix(to_matrix(w, scheme), w.shape, scheme), w)


@pytest.mark.parametrize("e", [0.5, 0.9, 0.99])
def test_projection_rank_is_the_energy_rank(e):
    w = torch.randn(16, 8, 3, 3)
    s = torch.linalg.svdvals(to_matrix(w))
    k = next(i + 1 for i in range(len(s)) if float((s[: i + 1] ** 2).sum() / (s**2).sum()) >= e)
    assert energy_rank(s, e) == k
    proj, r = project_low_rank(w, e)
    assert r == k and int(torch.linalg.matrix_rank(to_matrix(proj))) == k


def test_nuclear_subgradient_has_frobenius_norm_sqrt_r():
    w = torch.randn(16, 8, 3, 3)
    for r in (1, 4, 9):
        g = nuclear_subgradient(w, r)
        assert float(g.norm()) == pytest.approx(math.sqrt(r), rel=1e-5)


def test_value_rank_counts_singular_values_at_or_above_t():
    s = torch.tensor([3.0, 1.0, 0.5, 0.05, 0.01])
    assert value_rank(s, 0.05) == 4 and value_rank(s, 10.0) == 0 and value_rank(s, 0.0) == 5
    assert energy_rank(torch.zeros(4), 0.9) == 0


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))  # fmt: skip


def test_targets_skip_the_first_conv_and_1x1():
    assert list(trp_targets(_net())) == ["2", "4"]


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    return IndexedTensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _fit(hook_kw=None, epochs=2, ckpt=None, stop=None, resume=False, out=None):
    torch.set_num_threads(1)
    model = _net()
    hooks = [TRP(model, **hook_kw)] if hook_kw is not None else []
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, seed=0, ckpt_dir=ckpt, stop_after_epoch=stop,
                      progress=False)  # fmt: skip
    Trainer(model, _data(), hooks=hooks, config=cfg).fit(resume=resume)
    res = {"model": model.state_dict(), "hook": hooks[0].state_dict() if hooks else {}}
    if out is not None:
        torch.save(res, out)
    return res


def test_projection_before_the_forward_and_the_subgradient_step():
    model = _net()
    hook = TRP(model, energy=0.7, period=1, nuclear_weight=0.1)
    state = type("S", (), {"batch_in_epoch": 0})()
    w0 = model[2].weight.detach().clone()
    hook.transform_batch(state, None)
    proj, r = project_low_rank(w0, 0.7)
    assert torch.allclose(model[2].weight, proj, atol=1e-6) and hook.ranks["2"] == r
    model[2].weight.grad = torch.zeros_like(w0)
    hook.on_after_backward(state)
    assert torch.allclose(model[2].weight.grad, 0.1 * nuclear_subgradient(proj, r), atol=1e-5)
    # off-period batches change nothing
    hook2 = TRP(model, energy=0.5, period=3)
    before = model[4].weight.detach().clone()
    hook2.transform_batch(type("S", (), {"batch_in_epoch": 1})(), None)
    assert torch.equal(model[4].weight, before)


def test_nu_only_adds_the_subgradient_without_projecting():
    model = _net()
    hook = TRP(model, trp=False, nuclear_weight=0.2, energy=0.9)
    w0 = model[2].weight.detach().clone()
    hook.transform_batch(type("S", (), {"batch_in_epoch": 0})(), None)
    assert torch.equal(model[2].weight, w0)
    hook.on_after_backward(None)
    assert model[2].weight.grad is not None and float(model[2].weight.grad.norm()) > 0


def test_training_lowers_the_rank_and_decomposition_is_exact_on_projected_weights():
    res = _fit({"energy": 0.8, "period": 1, "nuclear_weight": 3e-4}, epochs=3)
    model = _net()
    model.load_state_dict(res["model"])
    with torch.no_grad():
        for conv in trp_targets(model).values():
            conv.weight.copy_(project_low_rank(conv.weight, 0.8)[0])
    x = torch.randn(4, 1, 6, 6)
    model.eval()
    before = model(x)
    macs0 = conv_macs(model, x)
    report = trp_decompose(model, threshold="energy", energy=0.999999)
    assert torch.allclose(model(x), before, atol=1e-4)
    assert all(v["rank"] <= 8 for v in report.values())
    assert sum(conv_macs(model, x).values()) <= sum(macs0.values())


def test_decompose_at_given_ranks():
    model = _net()
    report = trp_decompose(model, ranks={"2": 1, "4": 2})
    assert report["2"]["rank"] == 1 and report["4"]["rank"] == 2
    assert isinstance(model[2], nn.Sequential) and model[2][0].out_channels == 1


def test_resume_is_bit_identical(tmp_path):
    kw = {"energy": 0.8, "period": 2, "nuclear_weight": 1e-3}
    full = _fit(kw, epochs=3, ckpt=str(tmp_path / "a"))
    _fit(kw, epochs=3, ckpt=str(tmp_path / "b"), stop=1)
    resumed = _fit(kw, epochs=3, ckpt=str(tmp_path / "b"), resume=True)
    assert full["hook"] == resumed["hook"]
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def _ddp_worker(rank: int, out: str) -> None:
    _fit({"energy": 0.8, "period": 2, "nuclear_weight": 1e-3}, epochs=2, out=out if rank == 0 else None)


def test_two_process_run_equals_one_process(tmp_path):
    single = _fit({"energy": 0.8, "period": 2, "nuclear_weight": 1e-3}, epochs=2)
    run_gloo(_ddp_worker, 2, str(tmp_path / "ddp.pt"))
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ddp["hook"] == single["hook"]
    for k, v in single["model"].items():
        assert torch.allclose(v.float(), ddp["model"][k].float(), atol=1e-5), k


def test_sgd_step_matches_manual_projection_plus_subgradient():
    """One engine step with TRP equals: project, forward/backward, add lambda U_r V_r^T, SGD step."""
    torch.set_num_threads(1)
    data = _data(16)
    lam, e, lr = 0.05, 0.7, 0.1
    model = _net()
    cfg = TrainConfig(epochs=1, batch_size=16, lr=lr, momentum=0.0, seed=0, progress=False)
    Trainer(model, data, hooks=[TRP(model, energy=e, period=1, nuclear_weight=lam)], config=cfg).fit()
    ref = _net()
    with torch.no_grad():
        ws = {}
        for name, conv in trp_targets(ref).items():
            proj, r = project_low_rank(conv.weight, e)
            conv.weight.copy_(proj)
            ws[name] = (r, nuclear_subgradient(proj, r))
    F.cross_entropy(ref(data.x), data.y).backward()
    with torch.no_grad():
        for name, conv in trp_targets(ref).items():
            conv.weight.grad += lam * ws[name][1]
        for p in ref.parameters():
            p -= lr * p.grad
    for (k, v), v2 in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(v, v2, atol=1e-5), k
