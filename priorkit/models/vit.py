"""A tiny Vision Transformer for CPU experiments (8x8 digits, small images).

Patch embedding (a strided convolution), a learned class token and position embedding, ``depth`` pre-norm
Transformer blocks (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``) and a final LayerNorm; ``features(x)`` is
the class token after that norm (the vector the classifier sees) and ``head`` the linear classifier. Module
names follow timm's ``VisionTransformer`` (``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``,
``blocks.{i}.mlp.fc1``, ``blocks.{i}.mlp.fc2``), so PEFT ``target_modules=["fc1", "fc2"]`` picks the FFN
linears of every block. timm itself is not a dependency; the block is the standard one, written out small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_positive_int

__all__ = ["ViT"]


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection and an output ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """The Transformer FFN: ``fc2(GELU(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm Transformer block."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer ``[B, C, H, W] -> [B, num_classes]`` (flat ``[B, C*H*W]`` inputs are reshaped).

    Defaults are the 8x8-digits model of the GS-LoRA card: patch 2 (16 tokens), width 64, depth 4, MLP 128.
    """

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 2,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 128,
    ) -> None:
        super().__init__()
        for name, v in (("image_size", image_size), ("patch_size", patch_size), ("in_channels", in_channels),
                        ("num_classes", num_classes), ("dim", dim), ("depth", depth), ("heads", heads),
                        ("mlp_dim", mlp_dim)):  # fmt: skip
            check_positive_int(name, v)
        if image_size % patch_size:
            raise PriorkitError(f"patch_size must divide image_size ({image_size}), got {patch_size}")
        if dim % heads:
            raise PriorkitError(f"heads must divide dim ({dim}), got {heads}")
        self.image_size, self.in_channels = image_size, in_channels
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        tokens = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.feature_dim = dim

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        c, s = self.in_channels, self.image_size
        if x.dim() == 2 and x.shape[1] == c * s * s:
            return x.view(x.shape[0], c, s, s)
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise PriorkitError(f"ViT expects inputs of shape [B, {c}, {s}, {s}] or [B, {c * s * s}], "
                                f"got {list(x.shape)}")  # fmt: skip
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token after the final LayerNorm (the classifier's input), ``[B, dim]``."""
        x = self.patch_embed(self._images(x)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
