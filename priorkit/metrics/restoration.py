"""Restoration metrics: PSNR (per image, then averaged), on RGB or on the luma (Y) channel of BT.601."""

from __future__ import annotations

import torch

from priorkit.core.errors import PriorkitError, check_choice

__all__ = ["psnr", "rgb_to_y"]


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of ``[N, 3, H, W]`` images in [0, 1] (the SR benchmarks' Y channel, in [16/255, 235/255])."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise PriorkitError(f"x must be [N, 3, H, W], got {list(x.shape)}")
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255.0
    return (x * w).sum(dim=1, keepdim=True) + 16.0 / 255.0


def psnr(pred: torch.Tensor, target: torch.Tensor, *, channel: str = "rgb", border: int = 0,
         data_range: float = 1.0) -> float:  # fmt: skip
    """Mean over images of ``10 log10(range^2 / MSE)``; ``channel='y'`` on luma, ``border`` pixels cropped."""
    check_choice("channel", channel, ("rgb", "y"))
    if pred.shape != target.shape or pred.dim() != 4:
        raise PriorkitError(f"pred and target must be equal [N, C, H, W] shapes, got {list(pred.shape)} and "
                            f"{list(target.shape)}")  # fmt: skip
    p, t = pred.detach().clamp(0, data_range), target.detach()
    if channel == "y":
        p, t = rgb_to_y(p), rgb_to_y(t)
    if border:
        p, t = p[..., border:-border, border:-border], t[..., border:-border, border:-border]
    mse = (p - t).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return float((10 * torch.log10(data_range**2 / mse)).mean())
