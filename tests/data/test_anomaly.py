import numpy as np
import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data.anomaly import TEXTURES, inject_anomaly, make_anomaly, make_texture
from priorkit.metrics.anomaly import image_auroc, pixel_auroc


def test_deterministic_and_seed_dependent():
    a, b = make_anomaly(12, 10, size=16, seed=3), make_anomaly(12, 10, size=16, seed=3)
    assert torch.equal(a.test, b.test) and torch.equal(a.test_masks, b.test_masks) and torch.equal(a.train, b.train)
    assert not torch.equal(a.test, make_anomaly(12, 10, size=16, seed=4).test)


def test_labels_masks_and_ranges():
    d = make_anomaly(30, 40, size=24, seed=0)
    assert d.train.shape == (30, 3, 24, 24) and d.test_masks.shape == (40, 1, 24, 24)
    assert 0.0 <= float(d.train.min()) and float(d.train.max()) <= 1.0
    assert int(d.test_labels.sum()) == 20
    area = d.test_masks.sum((1, 2, 3))
    assert torch.all((area > 0) == (d.test_labels == 1))
    assert set(d.test_masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(torch.bincount(d.train_texture), torch.tensor([10, 10, 10]))


@pytest.mark.parametrize("kind", ["patch", "line"])
def test_injection_changes_only_masked_pixels(kind):
    rng = np.random.default_rng(0)
    for tex in TEXTURES:
        img = make_texture(tex, 32, rng)
        out, mask = inject_anomaly(img, kind, tex, rng)
        assert mask.sum() > 0
        assert np.array_equal(out[:, mask == 0], img[:, mask == 0])
        if kind == "patch":
            side = int(np.sqrt(mask.sum()))
            assert 4 <= side <= 8 and side * side == mask.sum()


def test_few_shot_and_errors():
    d = make_anomaly(12, 6, size=16, seed=0)
    assert d.few_shot(2).shape == (6, 3, 16, 16)
    with pytest.raises(PriorkitError, match="k must be"):
        d.few_shot(5)
    with pytest.raises(PriorkitError, match="texture"):
        make_anomaly(4, 4, size=16, textures=("marble",))
    with pytest.raises(PriorkitError, match="kinds"):
        make_anomaly(4, 4, size=16, kinds=("scratch",))
    with pytest.raises(PriorkitError, match="anomaly_fraction"):
        make_anomaly(4, 4, size=16, anomaly_fraction=1.0)


def test_anomaly_metrics():
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, :2, :2] = 1
    assert pixel_auroc(masks * 0.9 + 0.05, masks) == 1.0
    assert pixel_auroc(1 - masks, masks) == 0.0
    assert image_auroc(torch.tensor([0.1, 0.9, 0.2]), torch.tensor([0, 1, 0])) == 1.0
    with pytest.raises(PriorkitError, match="both"):
        image_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]))
    with pytest.raises(PriorkitError, match="same size"):
        pixel_auroc(torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 5, 5))
