import math

import numpy as np
import pytest
import torch
from torch import nn

from priorkit.core.errors import PriorkitError
from priorkit.prototypes.explaining_prototypes import (
    CHARACTERISTICS,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    explain,
    generalisation_test,
    global_importance,
    grayscale,
    hsv_to_rgb,
    local_importance,
    make_perturbations,
    nl_means_denoise,
    rank_characteristics,
    report,
    rgb_to_hsv,
    shape_level_for,
    sine_warp,
)


def _imgs(n=3, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class MapModel(nn.Module):
    """Hand-made 'prototype model': similarity map of prototype j = feature_j(x) average-pooled to 4x4 cells."""

    def __init__(self, feature):
        super().__init__()
        self.feature = feature
        self.dummy = nn.Parameter(torch.zeros(1))

    def similarity_maps(self, x):
        return nn.functional.avg_pool2d(self.feature(x), 4) + 1.0  # >= 0 for the weighted mean


def _value(x):  # HSV value = max channel, untouched by a hue shift
    return x.max(dim=1, keepdim=True).values


def _luma(x):
    return grayscale(x)


# ---------------------------------------------------------------------------- perturbations


def test_hue_shift_preserves_value_and_saturation_and_rotates_hue():
    x = _imgs()
    y = adjust_hue(x, 0.1)
    hx, hy = rgb_to_hsv(x), rgb_to_hsv(y)
    assert torch.equal(hy[:, 2], hx[:, 2])  # value exactly
    torch.testing.assert_close(hy[:, 1], hx[:, 1], atol=1e-5, rtol=0)
    sat = hx[:, 1] > 0.05
    dh = torch.remainder(hy[:, 0] - hx[:, 0] + 0.5, 1.0) - 0.5
    torch.testing.assert_close(dh[sat], torch.full_like(dh[sat], 0.1), atol=1e-4, rtol=0)


def test_hsv_roundtrip_and_known_colours():
    x = _imgs()
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0])[None, :, None, None]
    torch.testing.assert_close(adjust_hue(red, 1 / 3)[:, :, 0, 0], torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    grey = torch.full((1, 3, 2, 2), 0.4)
    assert torch.equal(adjust_hue(grey, 0.3), grey)  # hue shift does nothing on grey


def test_contrast_preserves_mean_luma_and_matches_formula():
    x = _imgs()
    y = adjust_contrast(x, 0.45)
    # the luma weights sum to 0.9999 (torchvision's), so the mean luma is kept to 1e-4 relative
    torch.testing.assert_close(grayscale(y).mean(dim=(1, 2, 3)), grayscale(x).mean(dim=(1, 2, 3)), atol=1e-4, rtol=0)
    m = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(y, 0.45 * x + 0.55 * m)
    assert y.std() < x.std()


def test_saturation_preserves_pixel_luma_and_brightness_scales():
    x = _imgs()
    y = adjust_saturation(x, 0.7)
    torch.testing.assert_close(grayscale(y), grayscale(x), atol=1e-4, rtol=0)  # luma weights sum to 0.9999
    assert (rgb_to_hsv(y)[:, 1] <= rgb_to_hsv(x)[:, 1] + 1e-6).all()
    torch.testing.assert_close(adjust_brightness(x, 0.8), 0.8 * x)


@pytest.mark.parametrize(
    "fn,level",
    [
        (adjust_contrast, 1.0),
        (adjust_saturation, 1.0),
        (adjust_brightness, 1.0),
        (adjust_hue, 0.0),
        (lambda x, a: sine_warp(x, a, 0.35), 0.0),
        (nl_means_denoise, 0.0),
    ],
)
def test_zero_magnitude_is_identity(fn, level):
    x = _imgs()
    assert torch.equal(fn(x, level), x)


def test_sine_warp_is_the_card_formula_and_a_permutation():
    x = torch.arange(2 * 3 * 12 * 10, dtype=torch.float32).view(2, 3, 12, 10) / 240.0
    a, w = 2.0, 0.3
    y = sine_warp(x, a, w)
    ref = x.clone().numpy()
    for i in range(ref.shape[2]):  # row i rolled horizontally, then column i vertically
        ref[:, :, i, :] = np.roll(ref[:, :, i, :], int(math.floor(a * math.sin(math.pi * i * w))), axis=-1)
    for i in range(ref.shape[3]):
        ref[:, :, :, i] = np.roll(ref[:, :, :, i], int(math.floor(a * math.sin(math.pi * i * w))), axis=-1)
    assert torch.equal(y, torch.from_numpy(ref))
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    assert not torch.equal(y, x)
    # the repo's int() truncation leaves A = 1 almost the identity (only rows with sin = +-1 move), floor does not
    moved_trunc = (sine_warp(x, 1.0, 0.35, rounding="trunc") != x).float().mean()
    moved_floor = (sine_warp(x, 1.0, 0.35) != x).float().mean()
    assert moved_trunc < 0.25 * moved_floor


def test_shape_level_rescaling():
    assert shape_level_for(224) == (4.0, 0.05)
    a, w = shape_level_for(32)
    assert a == 1.0 and w == pytest.approx(0.35)


def test_nl_means_matches_brute_force_and_smooths_noise():
    x = _imgs(1, 9, seed=3)
    h, tw, sw = 30.0, 3, 5
    y = nl_means_denoise(x, h, tw, sw)
    xp = torch.nn.functional.pad(x * 255, (2, 2, 2, 2), mode="reflect")[0]
    i, j = 4, 5
    num, den = torch.zeros(3), 0.0
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            d = 0.0
            for ty in range(-1, 2):
                for tx in range(-1, 2):
                    p = (min(max(i + ty, 0), 8), min(max(j + tx, 0), 8))
                    q = (p[0] + dy + 2, p[1] + dx + 2)
                    d += float(((xp[:, p[0] + 2, p[1] + 2] - xp[:, q[0], q[1]]) ** 2).mean())
            wgt = math.exp(-(d / 9) / h**2)
            num += wgt * xp[:, i + dy + 2, j + dx + 2]
            den += wgt
    torch.testing.assert_close(y[0, :, i, j], num / den / 255, atol=1e-5, rtol=0)
    noisy = torch.full((1, 3, 16, 16), 0.5) + 0.01 * torch.randn(
        1, 3, 16, 16, generator=torch.Generator().manual_seed(0)
    )
    assert nl_means_denoise(noisy, 4.0).std() < 0.5 * noisy.std()


def test_all_perturbations_keep_shape_and_range():
    x = _imgs(2, 32)
    perts = make_perturbations(32)
    assert list(perts) == list(CHARACTERISTICS)
    for name, fn in perts.items():
        y = fn(x)
        assert y.shape == x.shape and y.dtype == x.dtype, name
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, name
        assert not torch.equal(y, x), name
    g = _imgs(2, 32)[:, :1]
    assert torch.equal(perts["hue"](g), g) and torch.equal(perts["saturation"](g), g)


# ---------------------------------------------------------------------------- importance


def test_identity_perturbation_gives_zero_delta():
    model = MapModel(lambda x: x[:, :2])
    e = explain(model, _imgs(), {"id": lambda x: x.clone()})
    assert torch.equal(e.delta, torch.zeros_like(e.delta))


@pytest.mark.parametrize(
    "feature,name,atol",
    [
        (_value, "hue", 0.0),
        (_luma, "saturation", 1e-4),
        (lambda x: _luma(x).mean((2, 3), keepdim=True), "contrast", 1e-4),
    ],
)
def test_ignored_characteristic_has_zero_importance(feature, name, atol):
    model = MapModel(lambda x: feature(x).expand(-1, 1, 16, 16))
    x = _imgs(4)
    e = explain(model, x, make_perturbations(16, [name, "brightness"]))
    g = e.global_importance()
    assert float(g[0].abs().max()) <= atol
    assert float(g[1].abs().min()) > 1e-3  # the model does read brightness


def test_hue_reading_model_has_hue_importance():
    model = MapModel(lambda x: x[:, 1:2])  # green channel: a red -> orange shift raises it
    x = torch.zeros(2, 3, 16, 16)
    x[:, 0] = 0.9
    x[:, 1] = 0.1
    e = explain(model, x, make_perturbations(16, ["hue"]))
    assert float(e.global_importance().max()) < -0.1  # negative: the modification increases the similarity


def test_importance_read_at_original_argmax():
    model = MapModel(lambda x: x[:, :1])
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, :4, :4] = 1.0  # the peak is cell (0, 0)
    move = {"move": lambda im: torch.roll(im, shifts=(8, 8), dims=(2, 3))}  # the peak moves to cell (2, 2)
    e = explain(model, x, move)
    assert int(e.location[0, 0]) == 0
    assert float(e.delta[0, 0, 0]) == pytest.approx(1.0)  # 2.0 at u* before, 1.0 at u* after
    e2 = explain(model, x, move, location="remax")
    assert float(e2.delta[0, 0, 0]) == pytest.approx(0.0)
    orig, mod = model.similarity_maps(x), model.similarity_maps(move["move"](x))
    d, s, loc = local_importance(orig, mod)
    assert float(d) == pytest.approx(1.0) and float(s) == pytest.approx(2.0)


def test_patch_region_only_changes_the_patch():
    model = MapModel(lambda x: x[:, :1])
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    half = {"half": lambda im: im * 0.5}
    e_g = explain(model, x, half)
    e_p = explain(model, x, half, region="patch")
    torch.testing.assert_close(e_p.delta, e_g.delta)  # a 1-cell prototype only sees its own cell


def test_weighted_mean_hand_computed():
    delta = torch.tensor([[[1.0, 2.0]], [[3.0, -2.0]], [[0.0, 4.0]]])  # [N=3, K=1, M=2]
    sim = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 2.0]])
    g = global_importance(delta, sim)
    torch.testing.assert_close(g, torch.tensor([[(1 + 9) / 4.0, (4 + 8) / 4.0]]))
    torch.testing.assert_close(global_importance(delta, sim, "mean"), torch.tensor([[4 / 3, 4 / 3]]))


def test_explain_batches_agree():
    model = MapModel(lambda x: torch.cat([x[:, :1], _value(x)], 1))
    x = _imgs(5)
    perts = make_perturbations(16, ["hue", "contrast", "shape"])
    a, b = explain(model, x, perts, batch_size=2), explain(model, x, perts, batch_size=5)
    torch.testing.assert_close(a.delta, b.delta)  # contrast is per image, so batching must not matter
    assert torch.equal(a.location, b.location)


def test_ranking_report_and_generalisation():
    g = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.0, 0.2], [-0.1, 0.6, 0.9]])
    names = ["hue", "shape", "texture"]
    ranked = rank_characteristics(g, names)
    assert [r[0][0] for r in ranked] == ["shape", "texture", "texture"]
    assert report(g, names, top=1)[0] == "p0: shape +0.300"
    t = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    out = generalisation_test(t, t.clone(), names)
    assert out["hue"]["welch_p"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- errors


def test_bad_input():
    x = _imgs()
    with pytest.raises(PriorkitError, match="shift"):
        adjust_hue(x, 0.7)
    with pytest.raises(PriorkitError, match="factor"):
        adjust_contrast(x, -1.0)
    with pytest.raises(PriorkitError, match="channels"):
        adjust_saturation(torch.rand(1, 2, 4, 4), 0.5)
    with pytest.raises(PriorkitError, match="images"):
        adjust_brightness(torch.rand(3, 4, 4), 0.5)
    with pytest.raises(PriorkitError, match="float"):
        adjust_brightness(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 0.5)
    with pytest.raises(PriorkitError, match="rounding"):
        sine_warp(x, 1.0, 0.3, rounding="round")
    with pytest.raises(PriorkitError, match="search"):
        nl_means_denoise(x, 4.0, search=20)
    with pytest.raises(PriorkitError, match="names"):
        make_perturbations(32, ["colour"])
    with pytest.raises(PriorkitError, match="similarity_maps"):
        explain(nn.Linear(2, 2), x)
    model = MapModel(lambda x: x[:, :1])
    with pytest.raises(PriorkitError, match="location"):
        explain(model, x, location="best")
    with pytest.raises(PriorkitError, match="region"):
        explain(model, x, region="box")
    with pytest.raises(PriorkitError, match="weighting"):
        global_importance(torch.zeros(2, 1, 3), torch.ones(2, 3), "median")
    with pytest.raises(PriorkitError, match="similarity must be >= 0"):
        global_importance(torch.zeros(2, 1, 3), -torch.ones(2, 3))
    with pytest.raises(PriorkitError, match="similarity"):
        global_importance(torch.zeros(2, 1, 3), torch.ones(3, 3))
    with pytest.raises(PriorkitError, match="changed the image shape"):
        explain(model, x, {"crop": lambda im: im[..., :8, :8]})
    with pytest.raises(PriorkitError, match="at least 3"):
        generalisation_test(torch.zeros(1, 2), torch.zeros(1, 2), ["hue"])
