import doctest

import pytest
import torch

import priorkit.prototypes.susana as sus
from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.episodes import load_fewshot
from priorkit.prototypes.susana import SuSanaRecipe, icnn_score, proto_triplet_loss, prototypes, susana_loss
from priorkit.train import TrainConfig, fit
from priorkit.train.distributed import run_gloo


def test_docstring_example_runs():
    assert doctest.testmod(sus).failed == 0


def test_proto_triplet_zero_when_margin_satisfied_and_brute_force():
    protos = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    q = protos + 0.1
    assert float(proto_triplet_loss(q, torch.arange(3), protos)) == 0.0
    g = torch.Generator().manual_seed(0)
    q, y = torch.randn(7, 2, generator=g) * 5, torch.randint(0, 3, (7,), generator=g)
    want = 0.0
    for i in range(7):
        d = [((q[i] - p).pow(2).sum() + 1e-6).sqrt() for p in protos]
        want += max(0.0, float(d[y[i]] - min(d[k] for k in range(3) if k != y[i]) + 0.5))
    assert abs(float(proto_triplet_loss(q, y, protos)) - want / 7) < 1e-5


def test_proto_triplet_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    protos = torch.randn(3, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: proto_triplet_loss(z, torch.arange(3).repeat(2), protos), (q,))


def test_icnn_score_range_tight_clusters_and_merge():
    g = torch.Generator().manual_seed(2)
    centers = 100 * torch.eye(4, 5)
    x = centers.repeat_interleave(6, 0) + 0.01 * torch.randn(24, 5, generator=g)
    y = torch.arange(4).repeat_interleave(6)
    assert float(icnn_score(x, y, k=4)) == pytest.approx(1.0, abs=1e-6)
    noisy = torch.randn(24, 5, generator=g)
    s = float(icnn_score(noisy, y))
    assert 0.0 < s <= 1.0
    merged = x.clone()
    merged[6:12] = centers[0] + 0.01 * torch.randn(6, 5, generator=g)
    assert float(icnn_score(merged, y, k=4)) < float(icnn_score(x, y, k=4))


def test_losses_invariant_to_permuting_episode_items():
    g = torch.Generator().manual_seed(3)
    sup, sy = torch.randn(10, 4, generator=g), torch.arange(5).repeat_interleave(2)
    qry, qy = torch.randn(15, 4, generator=g), torch.arange(5).repeat_interleave(3)
    ps, pq = torch.randperm(10, generator=g), torch.randperm(15, generator=g)
    terms = ("cross", "prototriplet", "suppicnn", "queryicnn", "fullicnn")
    a = susana_loss(sup, sy, qry, qy, terms=terms)
    b = susana_loss(sup[ps], sy[ps], qry[pq], qy[pq], terms=terms)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_icnn_gradients_flow_and_are_finite():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 3, generator=g, requires_grad=True)
    out = susana_loss(
        x[:10], torch.arange(5).repeat_interleave(2), x[10:], torch.arange(5).repeat_interleave(2), terms=("fullicnn",)
    )
    out["loss"].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_input():
    sup, sy = torch.randn(10, 4), torch.arange(5).repeat_interleave(2)
    with pytest.raises(PriorkitError, match="terms"):
        susana_loss(sup, sy, sup, sy, terms=("cross", "triplet"))
    with pytest.raises(PriorkitError, match="support_y"):
        prototypes(sup, sy + 1)
    with pytest.raises(PriorkitError, match="margin"):
        proto_triplet_loss(sup, sy, prototypes(sup, sy), margin=-1.0)


def _episodic_fit(double=False):
    data = load_fewshot("digits", base_classes=5, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    train = data.base_train
    if double:
        model, train = model.double(), IndexedTensorDataset(train.x.double(), train.y)
    rec = SuSanaRecipe(n_way=3, n_shot=2, n_query=3, n_episodes=4, epochs=2, seed=1)
    hist = fit(model, train, rec, config=TrainConfig(seed=0, progress=False))
    return model, hist


def test_recipe_trains_on_episodes_and_logs_every_term():
    model, hist = _episodic_fit()
    assert len(hist) == 2 and {"susana", "cross", "prototriplet", "fullicnn"} <= set(hist[0])
    assert hist[0]["susana"] == pytest.approx((hist[0]["cross"] + hist[0]["prototriplet"] + hist[0]["fullicnn"]) / 3)
    with pytest.raises(PriorkitError, match="terms"):
        SuSanaRecipe(terms=("triplet",))


def _ddp_worker(rank, out):
    torch.set_num_threads(1)
    model, _ = _episodic_fit(double=True)
    if rank == 0:
        torch.save(model.state_dict(), out)


def test_episodic_two_process_ddp_equals_one_process(tmp_path):
    single, _ = _episodic_fit(double=True)
    out = str(tmp_path / "ddp.pt")
    run_gloo(_ddp_worker, 2, out)  # 15-item episodes: ranks hold 8 and 7 rows; the loss sees the whole episode
    multi = torch.load(out, weights_only=True)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, multi[k], atol=1e-6), k
