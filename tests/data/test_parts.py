"""The generated ``parts`` dataset: determinism, ground truth, pixels and errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from priorkit.data.parts import (
    PART_TYPES,
    PartsData,
    make_parts,
    part_masks,
    part_size_for,
    parts_splits,
    perturb,
)


@pytest.fixture(scope="module")
def data() -> PartsData:
    return make_parts(240, n_classes=4, size=32, n_distractors=(1, 2), seed=7)


def _fields(d: PartsData) -> list[torch.Tensor]:
    return [d.images, d.labels, d.part_boxes, d.part_ids, d.diagnostic, d.class_parts]


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_parts(64, seed=3), make_parts(64, seed=3), make_parts(64, seed=4)
    for x, y in zip(_fields(a), _fields(b)):
        assert torch.equal(x, y)
    assert a.part_names == b.part_names
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.part_boxes, c.part_boxes)
    assert torch.equal(a.class_parts, c.class_parts)  # class definitions never depend on the seed


def test_shapes_and_dtypes(data: PartsData):
    n, p = len(data), 2 + 2
    assert data.images.shape == (n, 3, 32, 32) and data.images.dtype == torch.float32
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
    assert data.part_boxes.shape == (n, p, 4) and data.part_boxes.dtype == torch.float32
    assert data.part_ids.shape == (n, p) and data.part_ids.dtype == torch.int64
    assert data.diagnostic.shape == (n, p) and data.diagnostic.dtype == torch.bool
    assert data.class_parts.shape == (4, 2) and data.class_parts.dtype == torch.int64
    assert data.part_names == [t.name for t in PART_TYPES]
    assert data.n_classes == 4 and data.size == 32
    masks = part_masks(data)
    assert masks.shape == (n, p, 32, 32) and masks.dtype == torch.bool
    assert data.keypoints().shape == (n, len(PART_TYPES), 3)
    x, y, i = data.as_dataset()[5]
    assert torch.equal(x, data.images[5]) and int(y) == int(data.labels[5]) and i == 5


def test_absent_slots_are_minus_one(data: PartsData):
    absent = data.part_ids < 0
    assert absent.any() and (~absent).all(1).any()  # one or two distractors per image
    assert (data.part_boxes[absent] == -1).all()
    assert not data.diagnostic[absent].any()
    assert not part_masks(data)[absent].any()
    n_parts = (~absent).sum(1)
    assert set(n_parts.tolist()) == {3, 4}


def test_labels_balanced_and_decided_by_the_diagnostic_parts(data: PartsData):
    counts = torch.bincount(data.labels, minlength=4)
    assert counts.max() - counts.min() <= 1
    diagnostic_vocab = {i for i, t in enumerate(PART_TYPES) if t.diagnostic}
    sets = [frozenset(row.tolist()) for row in data.class_parts]
    assert len(set(sets)) == len(sets)
    assert set().union(*sets) <= diagnostic_vocab
    for i in range(len(data)):
        ids = data.part_ids[i]
        present = {int(t) for t in ids if t >= 0}
        assert len(present) == int((ids >= 0).sum())  # no part type twice in an image
        shown = present & diagnostic_vocab
        assert shown == sets[int(data.labels[i])]
        assert {int(t) for t in ids[data.diagnostic[i]]} == shown
        assert [s for s in sets if s <= present] == [sets[int(data.labels[i])]]


def test_many_classes_get_distinct_part_sets():
    d = make_parts(60, n_classes=12, parts_per_class=2, n_distractors=0, seed=1)
    sets = {frozenset(r.tolist()) for r in d.class_parts}
    assert len(sets) == 12
    assert not (d.part_ids < 0).any() and d.diagnostic.all()


def test_boxes_inside_image_and_not_overlapping(data: PartsData):
    s = part_size_for(32)
    for i in range(len(data)):
        b = data.part_boxes[i][data.part_ids[i] >= 0]
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 32).all()
        assert torch.equal(b[:, 2] - b[:, 0], torch.full((len(b),), float(s)))
        assert torch.equal(b[:, 3] - b[:, 1], torch.full((len(b),), float(s)))
        for j in range(len(b)):
            for k in range(j + 1, len(b)):
                overlap_x = min(b[j, 2], b[k, 2]) > max(b[j, 0], b[k, 0])
                overlap_y = min(b[j, 3], b[k, 3]) > max(b[j, 1], b[k, 1])
                assert not (overlap_x and overlap_y)
    masks = part_masks(data)
    assert (masks.sum(1) <= 1).all()  # masks are disjoint
    kp = data.keypoints()
    img, slot = torch.nonzero(data.part_ids >= 0, as_tuple=True)
    pts = kp[img, data.part_ids[img, slot]]
    box = data.part_boxes[img, slot]
    assert (pts[:, 2] == 1).all()
    assert ((pts[:, 0] > box[:, 0]) & (pts[:, 0] < box[:, 2] - 1 + 1e-6)).all()
    assert ((pts[:, 1] > box[:, 1]) & (pts[:, 1] < box[:, 3] - 1 + 1e-6)).all()
    assert int(kp[:, :, 2].sum()) == int((data.part_ids >= 0).sum())


def test_parts_are_visible_in_pixels(data: PartsData):
    masks = part_masks(data)
    colours = torch.tensor([t.rgb for t in PART_TYPES])
    any_part = masks.any(1)
    for i in range(0, len(data), 7):
        background = data.images[i][:, ~any_part[i]].mean(1)
        for j in torch.nonzero(data.part_ids[i] >= 0).flatten().tolist():
            m = masks[i, j]
            assert m.sum() >= 8
            pix = data.images[i][:, m]  # [3, n_pixels]
            t = PART_TYPES[int(data.part_ids[i, j])]
            # the brightest pixels of a (possibly textured) part carry its colour, within jitter
            top = pix[:, pix.sum(0) >= pix.sum(0).quantile(0.5)].mean(1)
            assert (top - colours[int(data.part_ids[i, j])]).abs().max() < 0.25, (i, j, t.name)
            assert (pix.mean(1) - background).abs().max() > 0.1, (i, j, t.name)


def test_textures_show_in_pixels():
    d = make_parts(80, n_classes=4, n_distractors=0, seed=2)
    masks = part_masks(d)
    spread = {}
    for i in range(len(d)):
        for j in range(2):
            name = PART_TYPES[int(d.part_ids[i, j])].texture
            pix = d.images[i][:, masks[i, j]].sum(0)
            spread.setdefault(name, []).append(float(pix.std()))
    for texture in ("stripes", "checker"):  # textured parts vary far more inside than solid ones
        assert min(spread[texture]) > max(spread["solid"])
        assert np.median(spread[texture]) > 3 * np.median(spread["solid"])


def test_larger_images_scale_the_parts():
    d = make_parts(20, size=48, n_distractors=2, seed=0)
    assert d.images.shape[-2:] == (48, 48)
    assert (d.part_boxes[..., 2] - d.part_boxes[..., 0] == part_size_for(48)).all()
    assert part_size_for(48) == 12 and part_size_for(32) == 8


def test_splits_share_classes_but_not_images():
    tr, va, te = parts_splits(40, 20, 30, seed=5, n_classes=3, size=32)
    assert (len(tr), len(va), len(te)) == (40, 20, 30)
    assert torch.equal(tr.class_parts, va.class_parts) and torch.equal(tr.class_parts, te.class_parts)
    assert not torch.equal(tr.images[:20], va.images)
    assert not torch.equal(va.images, te.images[:20])
    _, va2, _ = parts_splits(50, 20, 30, seed=5, n_classes=3, size=32)
    assert torch.equal(va.images, va2.images)  # the validation set does not depend on n_train
    with pytest.raises(ValueError, match="seedd"):
        parts_splits(4, 4, 4, seedd=1)
    with pytest.raises(ValueError, match="n_val"):
        parts_splits(4, 0, 4)


def test_perturb():
    d = make_parts(16, seed=0)
    assert torch.equal(perturb(d, 0.0), d.images)
    a, b, c = perturb(d, 0.2, seed=1), perturb(d, 0.2, seed=1), perturb(d, 0.2, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == d.images.shape and a.min() >= 0 and a.max() <= 1
    assert 0.1 < float((a - d.images).std()) < 0.25
    assert torch.equal(perturb(d.images, 0.2, seed=1), a)
    with pytest.raises(ValueError, match="noise_std"):
        perturb(d, -0.1)


def test_subset_keeps_classes():
    d = make_parts(30, seed=0)
    s = d.subset([3, 1, 4])
    assert len(s) == 3 and torch.equal(s.images[1], d.images[1]) and torch.equal(s.class_parts, d.class_parts)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(n=0), "n "),
        (dict(n=2.5), "n "),
        (dict(size=15), "size"),
        (dict(n_classes=1), "n_classes"),
        (dict(n_classes=29), "n_classes"),
        (dict(parts_per_class=0), "parts_per_class"),
        (dict(parts_per_class=9), "parts_per_class"),
        (dict(n_distractors=-1), "n_distractors"),
        (dict(n_distractors=99), "n_distractors"),
        (dict(n_distractors=(2, 1)), "n_distractors"),
        (dict(n_distractors=(1, 2, 3)), "n_distractors"),
        (dict(size=16, parts_per_class=3, n_distractors=2), "parts_per_class \\+ n_distractors"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(n=10) | kwargs
    n = args.pop("n")
    with pytest.raises(ValueError, match=name):
        make_parts(n, **args)


def test_generation_time_budget():
    make_parts(8)
    t0 = time.perf_counter()
    d = make_parts(2000, seed=11)
    elapsed = time.perf_counter() - t0
    assert len(d) == 2000
    assert elapsed < 10.0, f"make_parts(2000) took {elapsed:.2f}s"
    assert np.isfinite(d.images.numpy()).all()
