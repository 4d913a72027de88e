"""Collapse detectors of priorkit.metrics.ssl: effective rank and the per-dimension std of normalised embeddings."""

import math

import pytest
import torch

from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.metrics.ssl import collapse_metrics, effective_rank, embedding_std


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_effective_rank_of_rank_one_and_of_isotropic_matrices():
    v = torch.randn(1, 16, generator=_g(0))
    collapsed = torch.rand(50, 1, generator=_g(1)).add(0.1) * v  # every row a multiple of one vector
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=1e-6)
    q, _ = torch.linalg.qr(torch.randn(64, 16, generator=_g(2), dtype=torch.float64))
    assert effective_rank(q) == pytest.approx(16.0, abs=1e-6)  # equal singular values: the full dimension


def test_effective_rank_is_exp_entropy_of_the_squared_spectrum():
    u, _ = torch.linalg.qr(torch.randn(40, 3, generator=_g(3), dtype=torch.float64))
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    z = u * s  # singular values exactly s
    p = s**2 / (s**2).sum()
    assert effective_rank(z) == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-9)


def test_centered_rank_ignores_the_shared_mean():
    q, _ = torch.linalg.qr(torch.randn(100, 8, generator=_g(4), dtype=torch.float64))
    q = q - q.mean(0)
    shifted = q + 50.0  # a large common offset: uncentred rank near 1, centred rank unchanged
    assert effective_rank(shifted) < 1.1
    assert effective_rank(shifted, center=True) == pytest.approx(effective_rank(q, center=True), rel=1e-6)
    assert math.isnan(effective_rank(torch.ones(5, 3), center=True))
    assert math.isnan(effective_rank(torch.zeros(5, 3)))


def test_embedding_std_is_zero_when_collapsed_and_about_one_over_sqrt_d_when_spread():
    d = 32
    same = torch.randn(1, d, generator=_g(5)).repeat(100, 1) * torch.rand(100, 1, generator=_g(6)).add(0.5)
    assert embedding_std(same) == pytest.approx(0.0, abs=1e-7)
    spread = torch.randn(20000, d, generator=_g(7))
    assert embedding_std(spread) * math.sqrt(d) == pytest.approx(1.0, abs=0.02)
    assert embedding_std(same, normalize=False) > 0  # the scales differ, the directions do not


def test_collapse_metrics_keys_and_prefix():
    out = collapse_metrics(torch.randn(30, 4, generator=_g(8)), prefix="enc_")
    assert set(out) == {"enc_eff_rank", "enc_eff_rank_centered", "enc_emb_std", "enc_emb_std_scaled"}
    assert out["enc_emb_std_scaled"] == pytest.approx(out["enc_emb_std"] * 2.0)


def test_bad_input_is_named():
    with pytest.raises(PriorkitError, match=r"z must have 2 dimensions"):
        effective_rank(torch.randn(4))
    with pytest.raises(PriorkitError, match="z must be a non-empty batch"):
        effective_rank(torch.zeros(0, 3))
    with pytest.raises(NonFiniteError, match="z holds 1 NaN"):
        embedding_std(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(PriorkitError, match="at least 2 rows"):
        embedding_std(torch.randn(1, 3))
    with pytest.raises(PriorkitError, match="floating point"):
        collapse_metrics(torch.ones(3, 3, dtype=torch.long))
