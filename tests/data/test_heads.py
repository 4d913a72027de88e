"""The generated ``heads`` world: exact mirror symmetry, determinism, ranges and errors."""

import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data.heads import (
    HEAD_PARAMS,
    PARAM_RANGES,
    make_heads,
    render_heads,
    sample_identities,
    sample_yaws,
)


def test_mirrored_yaw_is_the_flipped_image_bit_for_bit():
    p = sample_identities(12, seed=0).repeat_interleave(7, 0)
    yaw = torch.linspace(-1, 1, 7).repeat(12)
    assert torch.equal(render_heads(p, -yaw), render_heads(p, yaw).flip(-1))
    for size in (31, 32):  # odd and even grids alike
        assert torch.equal(render_heads(p, -yaw, size), render_heads(p, yaw, size).flip(-1))
    front = render_heads(p[:1], torch.zeros(1))
    assert torch.equal(front, front.flip(-1))  # a frontal view of a symmetric layout is itself symmetric


def test_views_differ_with_yaw_and_identity():
    p = sample_identities(2, seed=1)
    a = render_heads(p[0], torch.tensor([0.0, 0.6]))
    assert (a[0] - a[1]).abs().max() > 0.2
    b = render_heads(p, torch.tensor([0.3, 0.3]))
    assert (b[0] - b[1]).abs().max() > 0.05


def test_deterministic_from_seed_with_ranges_and_shapes():
    a, b, c = make_heads(5, 3, seed=4), make_heads(5, 3, seed=4), make_heads(5, 3, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.yaw, b.yaw) and torch.equal(a.params, b.params)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (15, 1, 32, 32) and a.images.dtype == torch.float32
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    assert torch.equal(a.identity, torch.arange(5).repeat_interleave(3)) and len(a) == 15
    assert float(a.yaw.abs().max()) <= 1
    p = sample_identities(500, seed=0)
    for k, name in enumerate(HEAD_PARAMS):
        lo, hi = PARAM_RANGES[name]
        assert float(p[:, k].min()) >= lo and float(p[:, k].max()) <= hi
    y = sample_yaws(100, 0.2, 1.0, seed=0)
    assert float(y.min()) >= 0.2 and float(y.max()) <= 1.0
    x, ident, i = a.as_dataset()[4]
    assert torch.equal(x, a.images[4]) and int(ident) == 1 and i == 4


def test_given_params_are_used():
    p = sample_identities(2, seed=9)
    d = make_heads(2, 2, seed=0, params=p)
    assert torch.equal(d.params, p)
    assert torch.equal(d.images, render_heads(p[d.identity], d.yaw))


@pytest.mark.parametrize(
    "thunk, pattern",
    [
        (lambda: render_heads(sample_identities(1, 0)[0], torch.tensor([1.5])), r"yaw must lie in \[-1, 1\]"),
        (lambda: render_heads(sample_identities(1, 0)[0], torch.tensor([float("nan")])), r"finite"),
        (lambda: render_heads(sample_identities(2, 0), torch.zeros(3)), r"identity must have shape \[3, 6\]"),
        (lambda: render_heads(sample_identities(1, 0)[0], torch.zeros(2, 2)), r"yaw must have shape"),
        (lambda: render_heads(sample_identities(1, 0)[0], torch.zeros(0)), r"yaw must hold at least one view"),
        (lambda: render_heads(sample_identities(1, 0)[0], torch.zeros(1), size=2), r"size must be an integer >= 4"),
        (lambda: sample_identities(0, 0), r"n must be an integer >= 1"),
        (lambda: sample_yaws(3, 0.5, 0.2, 0), r"high must be in \[0.5, 1\]"),
        (lambda: make_heads(3, 0), r"views must be an integer >= 1"),
        (lambda: make_heads(3, 2, params=torch.zeros(2, 6)), r"params must have shape \[3, 6\]"),
    ],
)
def test_bad_input_is_named(thunk, pattern):
    with pytest.raises(PriorkitError, match=pattern):
        thunk()
