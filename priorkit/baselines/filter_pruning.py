"""Static L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017): FTWT's static
baseline.

Per conv, the output filters of smallest L1 norm ``sum |W[c]|`` are removed, the same ones for every input; here a
removed filter's whole block output (conv -> BN -> act) is zeroed by a fixed channel mask, which is what removing
the channel does to the rest of the network. :func:`l1_filter_keep` picks the filters; :class:`StaticChannelMask`
applies them to a block.
"""

from __future__ import annotations

import torch
from torch import nn

from priorkit.core.errors import PriorkitError, check_range

__all__ = ["StaticChannelMask", "l1_filter_keep"]


def l1_filter_keep(conv: nn.Conv2d, keep: float) -> torch.Tensor:
    """Boolean mask of the ``max(1, round(keep * C_out))`` filters of largest L1 norm (ties by index)."""
    if not isinstance(conv, nn.Conv2d):
        raise PriorkitError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    check_range("keep", keep, 0.0, 1.0, low_inclusive=False)
    c = conv.out_channels
    k = max(1, round(keep * c))
    norms = conv.weight.detach().abs().flatten(1).sum(dim=1)
    order = torch.argsort(-norms, stable=True)
    mask = torch.zeros(c, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


class StaticChannelMask(nn.Module):
    """``block(x) * mask`` over channels, the same mask for every sample (a buffer: saved in checkpoints)."""

    def __init__(self, block: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(mask, torch.Tensor) or mask.dim() != 1 or mask.dtype != torch.bool:
            raise PriorkitError("mask must be a 1-D bool tensor over the block's output channels")
        self.block = block
        self.register_buffer("mask", mask.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.block(x)
        if o.shape[1] != self.mask.numel():
            raise PriorkitError(f"mask has {self.mask.numel()} channels, the block outputs {o.shape[1]}")
        return o * self.mask.to(o.dtype)[None, :, None, None]
