"""Reader for the CUB-200-2011 on-disk layout (Wah et al., 2011), from a path the user gives.

Expected files under ``root`` (the layout of the official ``CUB_200_2011`` archive)::

    images.txt                 <image_id> <relative path under images/>
    image_class_labels.txt     <image_id> <class_id, 1-based>
    train_test_split.txt       <image_id> <1 = train, 0 = test>
    classes.txt                <class_id> <class name>
    bounding_boxes.txt         <image_id> <x> <y> <width> <height>      (needed for crop_to_bbox / bbox())
    parts/parts.txt            <part_id> <part name>                     (needed for part_locations())
    parts/part_locs.txt        <image_id> <part_id> <x> <y> <visible>
    images/<class folder>/<file>.jpg

torchvision has no CUB dataset, so this small reader is written here. Images are read with Pillow.
Nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from priorkit.core.errors import PriorkitError, check_choice

__all__ = ["CUB200"]

_SPLITS = ("train", "test")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is a dependency of priorkit
        raise ImportError("CUB200 reads images with Pillow, which is not installed: pip install pillow") from e
    return Image


def _read_table(path: Path, what: str, n_fields: int, last_is_text: bool = False) -> list[list[str]]:
    """Whitespace-separated rows of ``path``; the last field may hold spaces when ``last_is_text``."""
    if not path.is_file():
        raise FileNotFoundError(f"CUB-200-2011 file missing: {path} (expected {what})")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split(None, n_fields - 1) if last_is_text else line.split()
            if len(fields) != n_fields:
                raise PriorkitError(f"{path}, line {lineno}: expected {n_fields} fields ({what}), got {line!r}")
            rows.append(fields)
    return rows


class CUB200(Dataset):
    """CUB-200-2011 images of one split; item ``i`` is ``(image [3, H, W] float in [0, 1], label, i)``.

    ``label`` is 0-based (CUB's class id minus 1). With ``crop_to_bbox`` the image is cut to its bounding
    box; with ``image_size`` it is resized to ``image_size`` x ``image_size`` (bilinear). ``transform``
    is applied last, to the tensor; a transform that moves pixels does not update :meth:`part_locations`.

    Attributes: ``classes`` (names, by label), ``part_names`` (by part index, if the part files exist),
    ``image_ids`` (CUB ids, by index), ``targets`` (labels, by index), ``paths`` (image files, by index).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        crop_to_bbox: bool = False,
        image_size: int | None = None,
    ) -> None:
        check_choice("split", split, _SPLITS)
        if image_size is not None and (
            isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
        ):
            raise PriorkitError(f"image_size must be None or an integer >= 1, got {image_size!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"CUB-200-2011 root not found: {self.root} (expected the folder holding images.txt, "
                "image_class_labels.txt, train_test_split.txt, classes.txt and images/)"
            )
        self.split, self.transform = split, transform
        self.crop_to_bbox, self.image_size = bool(crop_to_bbox), image_size

        paths = dict(_read_table(self.root / "images.txt", "'<image_id> <path>' per line", 2, True))
        labels = {
            k: int(v)
            for k, v in _read_table(self.root / "image_class_labels.txt", "'<image_id> <class_id>' per line", 2)
        }
        is_train = {
            k: v == "1"
            for k, v in _read_table(self.root / "train_test_split.txt", "'<image_id> <is_training_image>' per line", 2)
        }
        class_rows = _read_table(self.root / "classes.txt", "'<class_id> <class_name>' per line", 2, True)
        self.classes: list[str] = [name for _, name in sorted(class_rows, key=lambda r: int(r[0]))]

        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
            missing = [k for k in paths if k not in table]
            if missing:
                raise PriorkitError(f"{self.root / name} has no entry for image id(s) {missing[:5]}")
        bad = sorted({v for v in labels.values() if not 1 <= v <= len(self.classes)})
        if bad:
            raise PriorkitError(f"class ids must be in [1, {len(self.classes)}] (classes.txt), got {bad[:5]}")

        want_train = split == "train"
        ids = sorted((k for k in paths if is_train[k] == want_train), key=int)
        self.image_ids: list[int] = [int(k) for k in ids]
        self.paths: list[Path] = [self.root / "images" / paths[k] for k in ids]
        self.targets: list[int] = [labels[k] - 1 for k in ids]

        self._boxes: torch.Tensor | None = None
        bbox_file = self.root / "bounding_boxes.txt"
        if bbox_file.is_file() or self.crop_to_bbox:
            rows = {
                k: [float(x) for x in rest]
                for k, *rest in _read_table(
                    bbox_file, "'<image_id> <x> <y> <width> <height>' per line (needed by crop_to_bbox)", 5
                )
            }
            missing = [k for k in ids if k not in rows]
            if missing:
                raise PriorkitError(f"{bbox_file} has no box for image id(s) {missing[:5]}")
            self._boxes = torch.tensor([rows[k] for k in ids], dtype=torch.float32).reshape(len(ids), 4)

        self.part_names: list[str] = []
        self._parts: torch.Tensor | None = None
        parts_file, locs_file = self.root / "parts" / "parts.txt", self.root / "parts" / "part_locs.txt"
        if parts_file.is_file():
            prow = sorted(_read_table(parts_file, "'<part_id> <part_name>' per line", 2, True), key=lambda r: int(r[0]))
            self.part_names = [name for _, name in prow]
            part_index = {pid: j for j, (pid, _) in enumerate(prow)}
            locs = np.zeros((len(ids), len(prow), 3), dtype=np.float32)
            row_of = {k: i for i, k in enumerate(ids)}
            for img, pid, x, y, vis in _read_table(locs_file, "'<image_id> <part_id> <x> <y> <visible>' per line", 5):
                i = row_of.get(img)
                if i is None:
                    continue
                if pid not in part_index:
                    raise PriorkitError(f"{locs_file}: part id {pid} is not in {parts_file}")
                locs[i, part_index[pid]] = (float(x), float(y), float(vis))
            self._parts = torch.from_numpy(locs)

    def __len__(self) -> int:
        return len(self.image_ids)

    def _check_index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index must be in [0, {len(self)}) for the {self.split} split, got {i}")
        return i % len(self)

    def bbox(self, i: int) -> torch.Tensor:
        """Bounding box of item ``i`` as float32 [4] = (x, y, width, height) in original image pixels."""
        if self._boxes is None:
            raise FileNotFoundError(
                f"CUB-200-2011 file missing: {self.root / 'bounding_boxes.txt'} "
                "(expected '<image_id> <x> <y> <width> <height>' per line)"
            )
        return self._boxes[self._check_index(i)].clone()

    def _crop_box(self, i: int, width: int, height: int) -> tuple[int, int, int, int]:
        """Integer crop box (left, top, right, bottom) of item ``i``, inside the image."""
        x, y, w, h = self.bbox(i).tolist()
        left, top = max(0, int(math.floor(x))), max(0, int(math.floor(y)))
        right, bottom = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
        if right <= left or bottom <= top:
            raise PriorkitError(f"bounding box {[x, y, w, h]} of image id {self.image_ids[i]} is empty")
        return left, top, right, bottom

    def _frame(self, i: int, width: int, height: int) -> tuple[float, float, float, float, int, int]:
        """(x offset, y offset, x scale, y scale, cropped width, cropped height) from original to output."""
        ox, oy, cw, ch = 0.0, 0.0, width, height
        if self.crop_to_bbox:
            left, top, right, bottom = self._crop_box(i, width, height)
            ox, oy, cw, ch = float(left), float(top), right - left, bottom - top
        sx = sy = 1.0
        if self.image_size is not None:
            sx, sy = self.image_size / cw, self.image_size / ch
        return ox, oy, sx, sy, cw, ch

    def _open(self, i: int):
        image_mod = _pil()
        path = self.paths[i]
        if not path.is_file():
            raise FileNotFoundError(f"CUB-200-2011 image missing: {path} (listed in {self.root / 'images.txt'})")
        with image_mod.open(path) as im:
            return im.convert("RGB")

    def part_locations(self, i: int) -> torch.Tensor:
        """Part keypoints of item ``i``, float32 [n_parts, 3] = (x, y, visible), in the returned image's frame.

        Coordinates follow the crop and the resize (x' = (x - left) * image_size / crop_width). Parts that
        are not visible, or fall outside the crop, have visible = 0 and (x, y) = (0, 0).
        """
        if self._parts is None:
            raise FileNotFoundError(
                f"CUB-200-2011 file missing: {self.root / 'parts' / 'parts.txt'} "
                "(expected '<part_id> <part_name>' per line, with parts/part_locs.txt beside it)"
            )
        i = self._check_index(i)
        locs = self._parts[i].clone()
        if self.crop_to_bbox or self.image_size is not None:
            width, height = self._image_size_of(i)
            ox, oy, sx, sy, cw, ch = self._frame(i, width, height)
            inside = (locs[:, 0] >= ox) & (locs[:, 0] < ox + cw) & (locs[:, 1] >= oy) & (locs[:, 1] < oy + ch)
            locs[:, 0] = (locs[:, 0] - ox) * sx
            locs[:, 1] = (locs[:, 1] - oy) * sy
            locs[:, 2] = locs[:, 2] * inside
        locs[locs[:, 2] == 0] = 0.0
        return locs

    def _image_size_of(self, i: int) -> tuple[int, int]:
        image_mod = _pil()
        with image_mod.open(self.paths[i]) as im:  # reads the header only
            return im.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        i = self._check_index(i)
        im = self._open(i)
        if self.crop_to_bbox:
            im = im.crop(self._crop_box(i, *im.size))
        if self.image_size is not None:
            im = im.resize((self.image_size, self.image_size), _pil().Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i], i
