import functools
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from priorkit.core.errors import PriorkitError
from priorkit.prototypes.robust_stable_cbc import (
    CBC,
    RobustStableCBC,
    StableCBC,
    cbc_reasoning,
    cbc_recipe,
    certified_accuracy,
    class_scores,
    decode_requiredness,
    detection_probability,
    margin_loss,
    pgd_l2,
    rbf_certified_radius,
    reasoning_from_requiredness,
    robust_loss,
    squared_distance_radius,
    stable_cbc_certified_radius,
    stable_cbc_reasoning,
)
from priorkit.train import TrainConfig, Trainer

D = torch.float64  # the certificate is compared with attacks: work in double precision


def _random_head(b=6, k=5, r=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    det = torch.rand(b, k, generator=g, dtype=D)
    reasoning = torch.softmax(3 * torch.randn(2 * k, r, generator=g, dtype=D), 0)
    return det, reasoning


def _blobs(n=120, dim=2, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.2, 0.2], [0.8, 0.3], [0.5, 0.8]], dtype=D)[:classes]
    y = torch.arange(n) % classes
    x = centres[y] + 0.08 * torch.randn(n, dim, generator=g, dtype=D)
    return x.clamp(0, 1), y


def test_stable_probabilities_in_unit_interval_and_simplex():
    det, reasoning = _random_head()
    p = stable_cbc_reasoning(det, reasoning)
    assert bool((p >= 0).all()) and bool((p <= 1).all())
    m = StableCBC(4, 3, num_components=5)
    assert torch.allclose(m.reasoning.sum(0), torch.ones(6))
    p = m.concept_probabilities(torch.rand(7, 4))
    assert bool((p >= 0).all()) and bool((p <= 1).all())
    # extreme detections 0 / 1 stay in range too
    for v in (0.0, 1.0):
        q = stable_cbc_reasoning(torch.full((2, 5), v, dtype=D), reasoning)
        assert bool((q >= -1e-12).all()) and bool((q <= 1 + 1e-12).all())


def test_stable_equals_original_cbc_without_indefinite_and_uniform_prior():
    det, _ = _random_head(k=4, r=3)
    q = torch.rand(4, 3, dtype=D)
    req = torch.stack([q, 1 - q])  # indefinite probability 0
    orig = cbc_reasoning(det, req, None, eps=0.0)
    joint = reasoning_from_requiredness(q, torch.full((4, 3), 0.25, dtype=D))
    assert torch.allclose(stable_cbc_reasoning(det, joint), orig, atol=1e-12)


def test_reasoning_round_trip_and_zero_prior_warning():
    q, pi = torch.rand(4, 3), torch.softmax(torch.randn(4, 3), 0)
    req, prior = decode_requiredness(reasoning_from_requiredness(q, pi))
    assert torch.allclose(req, q) and torch.allclose(prior, pi)
    pi0 = torch.tensor([[1.0], [0.0]])
    with pytest.warns(UserWarning, match="0.5"):
        req, _ = decode_requiredness(reasoning_from_requiredness(torch.tensor([[0.3], [0.9]]), pi0))
    assert float(req[1, 0]) == 0.5


def test_stable_cbc_is_rbf_head():
    det, reasoning = _random_head()
    k = det.shape[1]
    w = reasoning[:k] - reasoning[k:]
    assert torch.allclose(stable_cbc_reasoning(det, reasoning), det @ w + reasoning[k:].sum(0))
    # with only positive reasoning the bound is the normalised-RBF one: sigma ln sqrt(s_i / s_j)
    pos = torch.softmax(torch.randn(k, 2, dtype=D), 0)
    labels, y = torch.tensor([0, 1]), torch.zeros(len(det), dtype=torch.long)
    s = det @ pos
    rho = rbf_certified_radius(det, pos, torch.zeros_like(pos), torch.zeros(2, dtype=D), 2.0, labels, y)
    assert torch.allclose(rho, 2.0 * torch.log(torch.sqrt(s[:, 0] / s[:, 1])), atol=1e-9)


def _bisection_radius(det, reasoning, sigma, labels, y):
    """Independent path: the largest t with min_j max_i LB_ij(t) > 0, by bisection (LB decreasing in t)."""
    k = det.shape[1]
    pos, neg = reasoning[:k], reasoning[k:]
    out = []
    for b in range(len(det)):
        d = det[b]

        def worst(t, d=d, yb=int(y[b])):
            vals = []
            for j in range(len(labels)):
                if int(labels[j]) == yb:
                    continue
                best = -math.inf
                for i in range(len(labels)):
                    if int(labels[i]) != yb:
                        continue
                    lb = (d @ (pos[:, i] + neg[:, j])) / t - (d @ (neg[:, i] + pos[:, j])) * t
                    lb = lb + neg[:, i].sum() - neg[:, j].sum()
                    best = max(best, float(lb))
                vals.append(best)
            return min(vals)

        lo, hi = 1e-6, 1e6
        for _ in range(80):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if worst(mid) > 0 else (lo, mid)
        out.append(sigma * math.log(math.sqrt(lo * hi)))
    return torch.tensor(out, dtype=D)


def test_radius_matches_bisection_of_theorem_bound():
    det, reasoning = _random_head(b=8, k=5, r=6, seed=3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    rho = stable_cbc_certified_radius(det, reasoning, torch.tensor([1.5, 0.7, 2.0, 3.0, 0.9]), labels, y)
    ref = _bisection_radius(det, reasoning, 0.7, labels, y)
    assert torch.allclose(rho, ref, atol=1e-7)
    # positive exactly when y's best concept beats every other class
    p = class_scores(stable_cbc_reasoning(det, reasoning), labels, 3)
    assert torch.equal(rho > 0, p.argmax(1) == y)


def test_radius_zero_at_tie():
    k = 3
    reasoning = torch.softmax(torch.randn(2 * k, 1), 0).repeat(1, 2)  # two concepts, identical reasoning
    det = torch.rand(4, k)
    rho = stable_cbc_certified_radius(det, reasoning, 1.0, torch.tensor([0, 1]), torch.zeros(4, dtype=torch.long))
    assert torch.allclose(rho, torch.zeros(4), atol=1e-6)


@functools.cache
def _trained(cls, squared=False, **kw):
    x, y = _blobs()
    torch.manual_seed(0)
    m = cls(2, 3, num_components=6, concepts_per_class=2, sigma=0.3, generator=torch.Generator().manual_seed(0),
            distance="squared_euclidean" if squared else "euclidean", **kw).double()  # fmt: skip
    _fit(m, x, y, epochs=30, lr=2e-2)
    return m, x, y


def _fit(m, x, y, *, epochs, lr, **cfg):
    config = TrainConfig(batch_size=40, seed=0, progress=False, **cfg)
    return Trainer(m, TensorDataset(x, y), recipe=cbc_recipe(m, epochs=epochs, lr=lr), config=config).fit(
        resume=cfg.get("stop_after_epoch") is None and cfg.get("ckpt_dir") is not None
    )


@pytest.mark.parametrize("squared", [False, True])
def test_certificate_is_sound_under_random_and_pgd_perturbations(squared):
    m, x, y = _trained(RobustStableCBC, squared=squared, robust_margin=0.2)
    with torch.no_grad():
        pred = m(x).argmax(1)
        rho = m.certified_radius(x)
    keep = rho > 1e-3
    assert int(keep.sum()) >= 20
    x, pred, rho = x[keep], pred[keep], rho[keep]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(50):
            u = torch.randn(x.shape, generator=g, dtype=D)
            xa = x + 0.99 * rho.view(-1, 1) * u / u.norm(dim=1, keepdim=True)
            assert torch.equal(m(xa).argmax(1), pred)
    # PGD with the per-sample budget 0.99 rho, from the clean point and from random starts
    for start in (False, True):
        xa = pgd_l2(m, x, pred, 0.99 * rho, steps=30, random_start=start, generator=g)
        assert bool(((xa - x).norm(dim=1) <= 0.99 * rho + 1e-9).all())
        assert torch.equal(m(xa).argmax(1), pred)


def test_certificate_is_not_vacuous():
    """Far beyond the radius an attack does flip some predictions (the radius is not trivially tiny)."""
    m, x, y = _trained(RobustStableCBC, squared=False, robust_margin=0.2)
    with torch.no_grad():
        rho = m.certified_radius(x)
    keep = rho > 0
    pred = m(x[keep]).argmax(1)
    xa = pgd_l2(m, x[keep], pred, 20 * rho[keep], steps=40)
    assert int((m(xa).argmax(1) != pred).sum()) > 0


def test_robust_loss_and_margin_loss_values():
    rho = torch.tensor([-0.5, 0.2, 2.0])
    assert torch.allclose(robust_loss(rho), -rho)
    assert torch.allclose(robust_loss(rho, 1.0), torch.tensor([1.5, 0.8, 0.0]))
    s = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.5, 0.1]])
    assert torch.allclose(margin_loss(s, torch.tensor([0, 0]), 0.3), torch.tensor([0.0, 0.5]))


def test_squared_conversion_inverts_its_bound():
    d_max, r = torch.tensor([4.0, 9.0]), torch.tensor([0.3, 0.1])
    rho = 2 * d_max.sqrt() * r + 3 * r**2
    assert torch.allclose(squared_distance_radius(rho, d_max), r)
    assert torch.allclose(squared_distance_radius(torch.tensor([-1.0, -2.0]), d_max, 0.5), torch.tensor([-0.5, -1.0]))


def test_robust_training_increases_radius_and_gradients_flow():
    m, x, y = _trained(RobustStableCBC, squared=False, robust_margin=0.2)
    b, xb, _ = _trained(StableCBC)
    with torch.no_grad():
        assert float(m.certified_radius(x, y).clamp_min(0).mean()) > float(
            b.certified_radius(xb, y).clamp_min(0).mean()
        )
    m.zero_grad()
    m.loss(x, y).backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in (m.components, m._sigma, m.reasoning_logits)
    )


def test_original_cbc_constraints_and_rbf_view():
    m, x, y = _trained(CBC)
    assert bool((m.chopstick >= 0).all()) and bool((m.chopstick <= 1).all())
    assert bool((m.components >= 0).all()) and bool((m.components <= 1).all())
    req = m.requiredness
    assert bool((req.sum(0) <= 1 + 1e-12).all()) and bool((req >= 0).all())
    det = m.detections(x)
    w_pos, w_neg, bias = m.head_weights()
    assert torch.allclose(m.concept_probabilities(x), det @ (w_pos - w_neg) + bias, atol=1e-6)
    p = m(x)
    assert bool((p >= 0).all()) and bool((p <= 1).all())


def test_certified_accuracy_and_sigma_min():
    rho = torch.tensor([-0.1, 0.0, 0.3, 0.6])
    assert certified_accuracy(rho, [0.0, 0.3, 1.0]) == [0.5, 0.5, 0.0]
    det, reasoning = _random_head()
    labels, y = torch.arange(6) // 2, torch.zeros(6, dtype=torch.long)
    a = stable_cbc_certified_radius(det, reasoning, torch.tensor([0.5, 1, 1, 1, 1]), labels, y)
    assert torch.allclose(a, stable_cbc_certified_radius(det, reasoning, 0.5, labels, y))


def test_bad_inputs():
    det, reasoning = _random_head()
    with pytest.raises(PriorkitError, match="reasoning"):
        stable_cbc_reasoning(det, reasoning[:-1])
    with pytest.raises(PriorkitError, match="detections"):
        stable_cbc_reasoning(det + 1.5, reasoning)
    with pytest.raises(PriorkitError, match="sigma"):
        detection_probability(torch.rand(2, 3), 0.0)
    with pytest.raises(PriorkitError, match="distance"):
        StableCBC(4, 3, distance="tangent")
    with pytest.raises(PriorkitError, match="loss"):
        StableCBC(4, 3, loss="hinge")
    with pytest.raises(PriorkitError, match="robust_margin"):
        RobustStableCBC(4, 3, robust_margin=-1.0)
    with pytest.raises(PriorkitError, match="component_probs"):
        reasoning_from_requiredness(torch.rand(3, 2), torch.rand(3, 2) * 5)
    with pytest.raises(PriorkitError, match="w_pos"):
        rbf_certified_radius(det, -torch.ones(5, 2), torch.zeros(5, 2), torch.zeros(2), 1.0, torch.tensor([0, 1]),
                             torch.zeros(6, dtype=torch.long))  # fmt: skip
    with pytest.raises(PriorkitError, match="concept"):
        stable_cbc_certified_radius(det, reasoning, 1.0, torch.zeros(6, dtype=torch.long), torch.zeros(6).long())
    with pytest.raises(PriorkitError, match="eps"):
        certified_accuracy(torch.zeros(3), -0.1)


def _small(cls=CBC):
    return cls(2, 3, num_components=4, concepts_per_class=1, sigma=0.3, generator=torch.Generator().manual_seed(0))


def test_recipe_resume_is_bit_identical(tmp_path):
    """The engine run stops after epoch 1 and resumes: it ends where an uninterrupted run does."""
    x, y = _blobs(60)
    x = x.float()
    full = _small()
    hist_full = _fit(full, x, y, epochs=4, lr=2e-2)
    part = _small()
    _fit(part, x, y, epochs=4, lr=2e-2, ckpt_dir=str(tmp_path), stop_after_epoch=1)
    resumed = _small()
    hist = _fit(resumed, x, y, epochs=4, lr=2e-2, ckpt_dir=str(tmp_path))
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h.get("loss") for h in hist] == [h.get("loss") for h in hist_full]
    # the constraints hold after the engine run (projected after the last step)
    assert bool((resumed.chopstick >= 0).all()) and bool((resumed.chopstick <= 1).all())
    assert bool((resumed.components >= 0).all()) and bool((resumed.components <= 1).all())


def test_recipe_refuses_nan_batch_and_bad_labels():
    x, y = _blobs(40)
    x = x.float()
    m = _small(RobustStableCBC)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad = x.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(PriorkitError, match="x holds"):
        _fit(m, bad, y, epochs=1, lr=1e-2)
    with pytest.raises(PriorkitError, match="y must lie"):
        _fit(m, x, y + 5, epochs=1, lr=1e-2)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    with pytest.raises(PriorkitError, match="model must be"):
        cbc_recipe(torch.nn.Linear(2, 3))
