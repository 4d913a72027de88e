"""TEEN: the calibration formula, its limits and invariants, the session head, and bad input."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import priorkit.prototypes.teen as teen_mod
from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.models import MLP
from priorkit.prototypes.teen import (
    TEEN,
    TEENHead,
    calibration_weights,
    class_means,
    cosine_logits,
    teen_calibrate,
)


def _protos(n_new: int = 3, n_base: int = 5, d: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_new, d, generator=g, dtype=torch.float64), torch.randn(
        n_base, d, generator=g, dtype=torch.float64
    )


def test_calibration_matches_brute_force_loop() -> None:
    new, base = _protos()
    alpha, tau = 0.3, 16.0
    got, s = teen_calibrate(new, base, alpha, tau, return_weights=True)
    for n in range(new.shape[0]):
        p = new[n] / new[n].norm()
        bs = [base[i] / base[i].norm() for i in range(base.shape[0])]
        logits = torch.tensor([tau * float(p @ b) for b in bs], dtype=torch.float64)
        e = torch.exp(logits - logits.max())
        w = e / e.sum()
        delta = sum(w[i] * bs[i] for i in range(len(bs)))
        delta = delta / delta.norm()
        want = (1 - alpha) * p + alpha * delta
        torch.testing.assert_close(s[n], w, rtol=0, atol=1e-12)
        torch.testing.assert_close(got[n], want, rtol=0, atol=1e-12)


def test_weights_on_simplex_and_limits() -> None:
    new, base = _protos(4, 6)
    s = calibration_weights(new, base, 16.0)
    assert bool((s >= 0).all())
    torch.testing.assert_close(s.sum(1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    # tau = 0: uniform weights; tau -> large: all weight on the most similar base prototype
    torch.testing.assert_close(calibration_weights(new, base, 0.0), torch.full((4, 6), 1 / 6, dtype=torch.float64))
    nearest = (F.normalize(new, dim=1) @ F.normalize(base, dim=1).T).argmax(1)
    assert torch.equal(calibration_weights(new, base, 1e6).argmax(1), nearest)
    torch.testing.assert_close(calibration_weights(new, base, 1e6).max(1).values, torch.ones(4, dtype=torch.float64))


def test_alpha_zero_is_normalised_mean_and_alpha_one_is_delta() -> None:
    new, base = _protos()
    torch.testing.assert_close(teen_calibrate(new, base, 0.0), F.normalize(new, dim=1), rtol=0, atol=1e-15)
    full = teen_calibrate(new, base, 1.0)
    torch.testing.assert_close(full.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_delta_in_span_of_base_prototypes() -> None:
    new, base = _protos(3, 4, 10)
    alpha = 0.4
    out = teen_calibrate(new, base, alpha)
    delta = (out - (1 - alpha) * F.normalize(new, dim=1)) / alpha
    coef = torch.linalg.lstsq(base.T, delta.T).solution
    torch.testing.assert_close(base.T @ coef, delta.T, rtol=0, atol=1e-10)


def test_class_means_order_invariant_and_exact() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = torch.arange(12) % 3
    m = class_means(x, y, [0, 1, 2])
    for c in range(3):
        torch.testing.assert_close(m[c], x[y == c].mean(0))
    perm = torch.randperm(12, generator=g)
    torch.testing.assert_close(class_means(x[perm], y[perm], [0, 1, 2]), m, rtol=0, atol=1e-14)
    base = torch.randn(4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(teen_calibrate(class_means(x[perm], y[perm], [0, 1, 2]), base), teen_calibrate(m, base))


def _head_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fb, yb = torch.randn(40, 6, generator=g), torch.arange(40) % 4
    fn, yn = torch.randn(10, 6, generator=g), 4 + torch.arange(10) % 2
    return fb, yb, fn, yn


def test_head_alpha_zero_is_prototype_baseline_and_base_unchanged() -> None:
    fb, yb, fn, yn = _head_data()
    plain = TEENHead(6, 8, 4, alpha=0.0)
    cal = TEENHead(6, 8, 4, alpha=0.5)
    for h in (plain, cal):
        h.fit_base(fb, yb)
    base_before = cal.prototypes[:4].clone()
    plain.add_session(fn, yn)
    out = cal.add_session(fn, yn)
    assert torch.equal(cal.prototypes[:4], base_before)
    assert cal.num_seen == plain.num_seen == 6
    # alpha = 0: normalised class means; the cosine logits equal those of the uncalibrated means
    torch.testing.assert_close(plain.prototypes[4:6], F.normalize(class_means(fn, yn, [4, 5]), dim=1))
    probe = torch.randn(5, 6)
    raw = TEENHead(6, 8, 4, alpha=0.5)
    raw.fit_base(fb, yb)
    raw.add_session(fn, yn, calibrate=False)
    torch.testing.assert_close(plain(probe), raw(probe))
    torch.testing.assert_close(out, teen_calibrate(class_means(fn, yn, [4, 5]), base_before, 0.5, 16.0))
    assert plain(probe).shape == (5, 6)


def test_head_pool_seen_uses_earlier_sessions_and_state_dict_roundtrip() -> None:
    fb, yb, fn, yn = _head_data()
    h = TEENHead(6, 8, 4, alpha=0.5, pool="seen")
    h.fit_base(fb, yb)
    h.add_session(fn, yn)
    f2, y2 = fn + 1.0, yn + 2
    out = h.add_session(f2, y2)
    ref = h.prototypes[:6].clone()
    torch.testing.assert_close(out, teen_calibrate(class_means(f2, y2, [6, 7]), ref, 0.5, 16.0))
    fresh = TEENHead(6, 8, 4, alpha=0.5, pool="seen")
    fresh.load_state_dict(h.state_dict())
    probe = torch.randn(3, 6)
    assert fresh.num_seen == 8 and torch.equal(fresh(probe), h(probe))


def test_dot_mode_and_cosine_classifier() -> None:
    fb, yb, fn, yn = _head_data()
    h = TEENHead(6, 6, 4, new_mode="dot", temperature=2.0)
    h.fit_base(fb, yb)
    h.add_session(fn, yn)
    probe = torch.randn(3, 6)
    torch.testing.assert_close(h(probe), 2.0 * probe @ h.prototypes.T)
    w = torch.randn(4, 6)
    want = 16.0 * F.normalize(probe, dim=1) @ F.normalize(w, dim=1).T
    torch.testing.assert_close(cosine_logits(probe, w, 16.0), want)
    assert float(cosine_logits(probe, w, 16.0).abs().max()) <= 16.0 + 1e-5


def test_nan_features_raise_and_leave_the_prototypes_unchanged() -> None:
    fb, yb, fn, yn = _head_data()
    h = TEENHead(6, 8, 4)
    h.fit_base(fb, yb)
    before = {k: v.clone() for k, v in h.state_dict().items()}
    bad = fn.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="features"):
        h.add_session(bad, yn)
    with pytest.raises(NonFiniteError, match="features"):
        h.fit_base(torch.full_like(fb, float("inf")), yb)
    for k, v in h.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_teen_wrapper_uses_backbone_features() -> None:
    torch.manual_seed(0)
    bb = MLP(8, (16,), 4)
    model = TEEN(bb, num_classes=6, num_base=4, alpha=0.5)
    x, y = torch.randn(20, 8), torch.arange(20) % 4
    model.fit_base(x, y)
    with torch.no_grad():
        torch.testing.assert_close(model.head.prototypes[:4], class_means(bb.features(x), y, range(4)))


def test_docstring_example_runs() -> None:
    result = doctest.testmod(teen_mod, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_bad_input() -> None:
    new, base = _protos()
    with pytest.raises(PriorkitError, match="alpha"):
        teen_calibrate(new, base, alpha=1.5)
    with pytest.raises(PriorkitError, match="tau"):
        calibration_weights(new, base, tau=-1.0)
    with pytest.raises(PriorkitError, match="base_protos"):
        teen_calibrate(new, base[:, :3])
    with pytest.raises(PriorkitError, match="class"):
        class_means(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), [0, 1, 2])
    with pytest.raises(PriorkitError, match="pool"):
        TEENHead(6, 8, 4, pool="all")
    with pytest.raises(PriorkitError, match="new_mode"):
        TEENHead(6, 8, 4, new_mode="l2")
    with pytest.raises(PriorkitError, match="num_classes"):
        TEENHead(6, 3, 4)
    fb, yb, fn, yn = _head_data()
    h = TEENHead(6, 8, 4)
    with pytest.raises(PriorkitError, match="fit_base"):
        h.add_session(fn, yn)
    with pytest.raises(PriorkitError, match="fit_base"):
        h(torch.randn(2, 6))
    h.fit_base(fb, yb)
    with pytest.raises(PriorkitError, match="next classes"):
        h.add_session(fn, yn + 1)
    with pytest.raises(PriorkitError, match="base labels"):
        h.fit_base(fb, yb + 1)
    with pytest.raises(PriorkitError, match="features"):
        h.add_session(fn[:, :5], yn)
    with pytest.raises(PriorkitError, match="features"):
        TEEN(torch.nn.Linear(3, 3), 6, 4)


def _ddp_worker(rank: int, out_dir: str) -> None:
    fb, yb, fn, yn = _head_data()
    h = TEENHead(6, 8, 4, alpha=0.5)
    h.fit_base(fb[rank::2], yb[rank::2])  # each rank holds half of the examples
    h.add_session(fn[rank::2], yn[rank::2])
    torch.save(h.state_dict(), f"{out_dir}/rank{rank}.pt")


def test_ddp_two_ranks_equal_one_process(tmp_path) -> None:
    from priorkit.train.distributed import run_gloo

    run_gloo(_ddp_worker, 2, str(tmp_path))
    fb, yb, fn, yn = _head_data()
    ref = TEENHead(6, 8, 4, alpha=0.5)
    ref.fit_base(fb, yb)
    ref.add_session(fn, yn)
    for r in range(2):
        state = torch.load(tmp_path / f"rank{r}.pt")
        torch.testing.assert_close(state["prototypes"], ref.prototypes, rtol=0, atol=1e-6)
