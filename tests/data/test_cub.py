"""The CUB-200-2011 reader on a tiny fake tree written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL.Image")

from priorkit.data.cub import CUB200  # noqa: E402

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _write_tree(root: Path) -> Path:
    """3 images of 2 classes. Image 1 (40 wide, 30 high) is blue with a red bounding box."""
    specs = {  # id: (class, is_train, width, height, bbox x y w h)
        1: (1, 1, 40, 30, (10, 5, 20, 10)),
        2: (2, 0, 24, 24, (0, 0, 24, 24)),
        3: (2, 1, 20, 16, (2.5, 3.5, 10, 8)),
    }
    (root / "images" / "001.A").mkdir(parents=True)
    (root / "images" / "002.B").mkdir(parents=True)
    (root / "parts").mkdir()
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    for i, (c, tr, w, h, box) in specs.items():
        rel = f"{'001.A' if c == 1 else '002.B'}/img_{i}.png"
        arr = np.zeros((h, w, 3), np.uint8)
        arr[:] = BLUE
        x, y, bw, bh = (int(v) for v in box)
        arr[y : y + bh, x : x + bw] = RED
        PIL.fromarray(arr).save(root / "images" / rel)
        lines["images"].append(f"{i} {rel}")
        lines["labels"].append(f"{i} {c}")
        lines["split"].append(f"{i} {tr}")
        lines["boxes"].append(f"{i} {box[0]} {box[1]} {box[2]} {box[3]}")
    # image 1: part 1 (beak) at (20, 10), part 2 (left eye) invisible, part 3 outside the bbox
    lines["locs"] += ["1 1 20.0 10.0 1", "1 2 0.0 0.0 0", "1 3 2.0 2.0 1"]
    lines["locs"] += ["2 1 5.0 6.0 1", "2 2 7.0 8.0 1", "2 3 0.0 0.0 0"]
    lines["locs"] += ["3 1 4.0 5.0 1", "3 2 0.0 0.0 0", "3 3 11.0 9.0 1"]
    (root / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (root / "classes.txt").write_text("1 001.A_bird\n2 002.B_bird\n")
    (root / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (root / "parts" / "parts.txt").write_text("1 beak\n2 left eye\n3 tail\n")
    (root / "parts" / "part_locs.txt").write_text("\n".join(lines["locs"]) + "\n")
    return root


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return _write_tree(tmp_path / "CUB_200_2011")


def test_split_filtering_labels_and_index(root: Path):
    train, test = CUB200(root, "train"), CUB200(root, split="test")
    assert len(train) == 2 and len(test) == 1
    assert train.image_ids == [1, 3] and test.image_ids == [2]
    assert train.targets == [0, 1] and test.targets == [1]
    assert train.classes == ["001.A_bird", "002.B_bird"]
    assert train.part_names == ["beak", "left eye", "tail"]
    x, y, i = train[1]
    assert isinstance(y, int) and y == 1 and i == 1
    assert x.shape == (3, 16, 20) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    x, y, i = test[0]
    assert (y, i) == (1, 0) and x.shape == (3, 24, 24)
    assert torch.equal(train.bbox(0), torch.tensor([10.0, 5.0, 20.0, 10.0]))


def test_part_locations_uncropped(root: Path):
    ds = CUB200(root, "train")
    loc = ds.part_locations(0)
    assert loc.shape == (3, 3)
    assert torch.equal(loc, torch.tensor([[20.0, 10.0, 1.0], [0.0, 0.0, 0.0], [2.0, 2.0, 1.0]]))


def test_crop_and_resize_rescale_the_parts(root: Path):
    ds = CUB200(root, "train", crop_to_bbox=True, image_size=16)
    x, y, _ = ds[0]
    assert x.shape == (3, 16, 16) and y == 0
    assert torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[2], torch.zeros(16, 16))  # all red
    loc = ds.part_locations(0)
    # beak (20, 10) -> crop origin (10, 5) -> (10, 5) -> scale 16/20, 16/10 -> (8, 8)
    assert torch.allclose(loc[0], torch.tensor([8.0, 8.0, 1.0]))
    assert torch.equal(loc[1], torch.zeros(3))  # invisible
    assert torch.equal(loc[2], torch.zeros(3))  # outside the crop
    # fractional box (2.5, 3.5, 10, 8) crops to pixels [2, 13) x [3, 12): 11 x 9
    loc = ds.part_locations(1)
    assert torch.allclose(loc[0], torch.tensor([(4 - 2) * 16 / 11, (5 - 3) * 16 / 9, 1.0]))
    assert torch.allclose(loc[2], torch.tensor([(11 - 2) * 16 / 11, (9 - 3) * 16 / 9, 1.0]))


def test_crop_only_and_resize_only(root: Path):
    x, _, _ = CUB200(root, "train", crop_to_bbox=True)[0]
    assert x.shape == (3, 10, 20)
    assert torch.allclose(CUB200(root, "train", crop_to_bbox=True).part_locations(0)[0], torch.tensor([10.0, 5, 1]))
    ds = CUB200(root, "train", image_size=20)
    assert ds[0][0].shape == (3, 20, 20)
    assert torch.allclose(ds.part_locations(0)[0], torch.tensor([10.0, 20 * 10 / 30, 1.0]))


def test_transform_is_applied(root: Path):
    ds = CUB200(root, "test", transform=lambda t: t * 0.5)
    x, _, _ = ds[0]
    assert float(x.max()) == pytest.approx(0.5)


def test_errors(root: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="split must be one of \\['train', 'test'\\]"):
        CUB200(root, "val")
    with pytest.raises(FileNotFoundError, match="root not found"):
        CUB200(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="image_size"):
        CUB200(root, image_size=0)
    with pytest.raises(IndexError, match="index"):
        CUB200(root, "test")[3]
    (root / "train_test_split.txt").unlink()
    with pytest.raises(FileNotFoundError, match="train_test_split.txt"):
        CUB200(root)


def test_optional_files(root: Path):
    (root / "bounding_boxes.txt").unlink()
    ds = CUB200(root)  # boxes are optional without cropping
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt"):
        ds.bbox(0)
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt"):
        CUB200(root, crop_to_bbox=True)
    (root / "parts" / "parts.txt").unlink()
    ds = CUB200(root)
    assert ds.part_names == []
    with pytest.raises(FileNotFoundError, match="parts.txt"):
        ds.part_locations(0)


def test_missing_image_file(root: Path):
    (root / "images" / "002.B" / "img_2.png").unlink()
    with pytest.raises(FileNotFoundError, match="img_2.png"):
        CUB200(root, "test")[0]
