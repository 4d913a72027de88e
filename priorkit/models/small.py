"""Small backbones for CPU experiments: MLP, conv-4, a small ResNet and a 1-D CNN.

Each model exposes ``features(x)`` (the penultimate representation, or a feature map for the conv nets)
and ``head`` (the last linear layer), so prototype heads and probes can replace the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from priorkit.core.errors import PriorkitError, check_positive_int


class MLP(nn.Module):
    """Fully connected ReLU network ``in -> hidden... -> num_classes``; inputs are flattened."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256), num_classes: int = 10) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("num_classes", num_classes)
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            check_positive_int("hidden width", h)
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)
        self.in_features, self.feature_dim = in_features, d

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise PriorkitError(f"MLP expects {self.in_features} input features, got {x.shape[1]}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """The few-shot 'conv-4': four 3x3 conv-BN-ReLU blocks (max-pool after the first ``pools``)."""

    def __init__(self, in_channels: int = 3, width: int = 64, num_classes: int = 10, pools: int = 4) -> None:
        super().__init__()
        if not 0 <= pools <= 4:
            raise PriorkitError(f"pools must be in [0, 4], got {pools}")
        chans = [in_channels, width, width, width, width]
        self.body = nn.Sequential(*[_conv_block(chans[i], chans[i + 1], i < pools) for i in range(4)])
        self.head = nn.Linear(width, num_classes)
        self.feature_dim = width

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise PriorkitError(f"Conv4 expects [B, C, H, W] images, got shape {list(x.shape)}")
        return self.body(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(out)) + self.short(x))


class SmallResNet(nn.Module):
    """A ResNet with three stages of ``blocks`` basic blocks (widths w, 2w, 4w), CIFAR-style stem."""

    def __init__(self, in_channels: int = 3, width: int = 16, blocks: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        check_positive_int("blocks", blocks)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise PriorkitError(f"SmallResNet expects [B, C, H, W] images, got shape {list(x.shape)}")
        return self.layers(self.stem(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNN1D(nn.Module):
    """1-D CNN for mnist1d-style signals ``[B, 1, L]``: three conv layers, global pooling, linear head."""

    def __init__(self, in_channels: int = 1, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(in_channels, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.head = nn.Linear(width, num_classes)
        self.feature_dim = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3:
            raise PriorkitError(f"CNN1D expects [B, C, L] or [B, L] signals, got shape {list(x.shape)}")
        return self.body(x).amax(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
