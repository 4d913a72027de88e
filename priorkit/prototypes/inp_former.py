"""Exploring Intrinsic Normal Prototypes within a Single Image for Universal Anomaly Detection (INP-Former),
Luo et al., CVPR 2025.

A reconstruction head on a frozen encoder. An *INP extractor* (M learnable query tokens cross-attending, with
softmax, to the image's own feature tokens) extracts M *intrinsic normal prototypes* (INPs) from each image;
an *INP coherence loss* pulls every token towards its nearest INP; a bottleneck MLP and an *INP-guided decoder*
then rebuild the encoder's features, where each block's attention takes its values **only from the INPs**
(ReLU of a scaled cosine, no softmax, no residual from the input tokens), so an anomalous token cannot be
copied through and shows up as reconstruction error. Training uses the *soft-mining* loss: a global cosine
distance between encoder and decoder maps whose gradient is reweighted at each position by
``(delta_n / mean delta)^gamma`` (hard positions weigh more). Inference: ``1 - cos`` per map pair, upsampled,
averaged, Gaussian-blurred; image score = mean of the top 1% pixel scores. The paper reports: multi-class image
AUROC 99.7 / 98.9 / 90.5 on MVTec-AD / VisA / Real-IAD (Dinomaly 99.6 / 98.7 / 89.3).

Defaults follow the official code (luow23/INP-Former, ``models/uad.py``, ``models/vision_transformer.py``,
``utils.py``, ``INP_Former_Multi_Class.py``): M=6, coherence weight 0.2, gamma=3, StableAdamW lr 1e-3 betas
(0.9, 0.999) wd 1e-4 amsgrad eps 1e-10, 100 warm-up iterations then cosine to 1e-4, gradient-norm clip 0.1,
batch 16, LayerNorm eps 1e-8, trunc-normal(0.01) Linear init, blur kernel 5 sigma 4 (zero padding, as the
official ``Conv2d``), image score = top-1% mean. The paper's encoder is a frozen DINOv2-reg ViT-B/14; no such
weights ship offline, so :class:`ConvEncoder` (a small convolutional auto-encoder pretrained on normal images,
the card's stand-in) supplies the token grid. Any frozen encoder that returns a list of same-sized maps
``[B, C, H, W]`` (a ViT's layer outputs reshaped to its patch grid) plugs in.

Card vs code: the image score takes ``ceil(ratio * H * W)`` values (card); the official ``int(...)`` floors
and would average an empty set on maps under 100 pixels. ``decoder="self_attention"`` swaps the INP decoder
for a standard softmax self-attention decoder *with* residuals and no INPs (the card's Dinomaly-like
baseline). anomalib and pytorch-ood were considered: neither has INP-Former or its pieces, so they are written
here; AUROC comes from scikit-learn (``priorkit.metrics.anomaly``).

Functional core: :func:`coherence_distance`, :func:`coherence_loss`, :func:`relu_cosine_attention`,
:func:`scale_grad`, :func:`soft_mining_loss`, :func:`anomaly_map`, :func:`image_score`, :func:`gaussian_blur`.
Modules: :class:`AggregationBlock` (INP extractor), :class:`PrototypeBlock` (INP-guided decoder block),
:class:`INPFormer` (the public entry), :class:`ConvEncoder`; :class:`StableAdamW`. Training goes through
:class:`priorkit.train.Trainer`: :func:`inp_former_recipe` (the head) and :func:`pretrain_encoder_recipe` (the
encoder stand-in).

Example:

>>> import torch
>>> from priorkit.train import TrainConfig, Trainer
>>> enc = ConvEncoder(channels=16, depth=2)          # frozen encoder: list of [B, 16, 8, 8] maps
>>> model = INPFormer(enc, dim=16, num_inp=3, num_heads=2, num_decoder_blocks=2,
...                   encoder_groups=((0,), (1,)), decoder_groups=((0,), (1,)))
>>> images = torch.rand(8, 3, 16, 16)
>>> recipe = inp_former_recipe(model, images, iters=2, batch_size=4, warmup_iters=1)
>>> hist = Trainer(model, None, recipe=recipe, config=TrainConfig(progress=False)).fit()
>>> maps, scores = model.predict(images[:2])
>>> maps.shape, scores.shape
(torch.Size([2, 1, 16, 16]), torch.Size([2]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_batch,
    check_choice,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.nn.distributed import all_reduce_sum, is_dist
from priorkit.train import Batch, Phase, Recipe, shuffled_batches

if TYPE_CHECKING:
    from priorkit.train import RunState

__all__ = [
    "DECODERS",
    "AggregationBlock",
    "ConvEncoder",
    "INPFormer",
    "INPOutput",
    "PrototypeBlock",
    "SelfAttentionBlock",
    "StableAdamW",
    "anomaly_map",
    "coherence_distance",
    "coherence_loss",
    "gaussian_blur",
    "image_score",
    "inp_former_recipe",
    "pretrain_encoder_recipe",
    "relu_cosine_attention",
    "scale_grad",
    "soft_mining_factor",
    "soft_mining_loss",
    "warm_cosine",
]

DECODERS = ("inp", "self_attention")


# ----------------------------------------------------------------------------------------------- functional core


def coherence_distance(tokens: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
    """``min_m (1 - cos(x_n, P_m))`` for every token: ``[B, N]`` from tokens ``[B, N, C]`` and INPs ``[B, M, C]``.

    Also the zero-shot anomaly map (official ``gather_loss``'s ``distance``).
    """
    check_shape("tokens", tokens, (None, None, None))
    check_shape("inps", inps, (tokens.shape[0], None, tokens.shape[2]))
    dist = 1.0 - F.cosine_similarity(tokens.unsqueeze(2), inps.unsqueeze(1), dim=-1)  # [B, N, M]
    return dist.min(dim=2).values


def coherence_loss(tokens: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
    """INP coherence loss L_c = mean_n min_m (1 - cos(x_n, P_m)) (paper Eq. 3)."""
    return coherence_distance(tokens, inps).mean()


def relu_cosine_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Prototype attention per head: ``ReLU(cos(q, k) * s_h) @ v`` with no softmax and no 1/sqrt(d).

    ``q`` [B, h, N, d], ``k`` and ``v`` [B, h, M, d], ``scale`` [h, 1, 1]; returns [B, h, N, d], whose rank per
    head is at most M because every output row is a combination of the M value rows.
    """
    attn = F.relu((F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * scale)
    return attn @ v


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (factor,) = ctx.saved_tensors
        return grad * factor.expand_as(grad), None


def scale_grad(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``factor`` (broadcast to ``x``).

    The functional form of the official backward hook ``modify_grad_v2`` registered on the decoder map.
    """
    return _ScaleGrad.apply(x, factor.detach())


def soft_mining_factor(en: torch.Tensor, de: torch.Tensor, gamma: float = 3.0) -> torch.Tensor:
    """``(delta_n / mean delta)^gamma`` with ``delta_n = 1 - cos_channel(e_n, d_n)``, ``[B, 1, H, W]`` (detached).

    The mean runs over the whole batch and all positions, as in the official ``global_cosine_hm_adaptive``; under
    DDP over the global batch (an all-reduce of the sum and count), so W processes weigh as one.
    """
    with torch.no_grad():
        delta = (1.0 - F.cosine_similarity(en, de, dim=1)).unsqueeze(1)
        if is_dist():
            tot = all_reduce_sum(torch.stack([delta.sum(), delta.new_tensor(float(delta.numel()))]))
            return (delta / (tot[0] / tot[1])) ** gamma
        return (delta / delta.mean()) ** gamma


def soft_mining_loss(en: Sequence[torch.Tensor], de: Sequence[torch.Tensor], gamma: float = 3.0) -> torch.Tensor:
    """Soft-mining loss (paper Eq. 6-7): mean over map pairs of mean_b (1 - cos(flatten(e_b), flatten(d_b))).

    ``e`` is detached; the gradient reaching each position of ``d`` is multiplied by
    :func:`soft_mining_factor`. Maps are ``[B, C, H, W]``.
    """
    if len(en) != len(de) or len(en) == 0:
        raise PriorkitError(f"en and de must be non-empty lists of equal length, got {len(en)} and {len(de)}")
    total = en[0].new_zeros(())
    for e, d in zip(en, de):
        check_shape("de map", d, tuple(e.shape))
        e = e.detach()
        d = scale_grad(d, soft_mining_factor(e, d, gamma))
        total = total + (1.0 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).mean()
    return total / len(en)


def gaussian_blur(maps: torch.Tensor, kernel_size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """Depth-wise Gaussian blur of ``[B, 1, H, W]`` maps with zero padding (the official ``get_gaussian_kernel``)."""
    check_positive_int("kernel_size", kernel_size)
    check_range("sigma", sigma, 0.0, low_inclusive=False)
    r = torch.arange(kernel_size, dtype=maps.dtype, device=maps.device) - (kernel_size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, 1, kernel_size, kernel_size)
    return F.conv2d(maps, g, padding=kernel_size // 2)


def anomaly_map(
    en: Sequence[torch.Tensor],
    de: Sequence[torch.Tensor],
    out_size: int | tuple[int, int],
    *,
    blur: bool = True,
    kernel_size: int = 5,
    sigma: float = 4.0,
) -> torch.Tensor:
    """``[B, 1, H, W]``: mean over pairs of ``1 - cos_channel(e, d)``, bilinearly upsampled, then blurred."""
    if len(en) != len(de) or len(en) == 0:
        raise PriorkitError(f"en and de must be non-empty lists of equal length, got {len(en)} and {len(de)}")
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    maps = [
        F.interpolate(
            (1.0 - F.cosine_similarity(e, d, dim=1)).unsqueeze(1), size=size, mode="bilinear", align_corners=True
        )
        for e, d in zip(en, de)
    ]
    m = torch.cat(maps, dim=1).mean(dim=1, keepdim=True)
    return gaussian_blur(m, kernel_size, sigma) if blur else m


def image_score(maps: torch.Tensor, top_ratio: float = 0.01) -> torch.Tensor:
    """Image anomaly score: the mean of the top ``ceil(top_ratio * H * W)`` values of each map (``[B]``)."""
    check_range("top_ratio", top_ratio, 0.0, 1.0, low_inclusive=False)
    flat = maps.flatten(1)
    k = max(1, math.ceil(top_ratio * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


# ------------------------------------------------------------------------------------------------------- modules


def _mlp(dim: int, ratio: float) -> nn.Sequential:
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class AggregationBlock(nn.Module):
    """INP extractor block: queries (the INP tokens) cross-attend with softmax to the image tokens; one
    LayerNorm (``norm1``) is shared by queries and keys; residual plus a 4x MLP (official ``Aggregation_Block``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise PriorkitError(f"dim must be divisible by num_heads, got {dim} and {num_heads}")
        self.h = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, T, C = queries.shape
        N = tokens.shape[1]
        qn, tn = self.norm1(queries), self.norm1(tokens)
        q = self.q(qn).view(B, T, self.h, C // self.h).transpose(1, 2)
        k, v = self.kv(tn).view(B, N, 2, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (C // self.h) ** -0.5).softmax(dim=-1)
        x = queries + self.proj((attn @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.norm2(x))


class PrototypeBlock(nn.Module):
    """INP-guided decoder block: queries from the tokens, keys/values from the INPs (shared ``norm1``),
    ``ReLU(cos * s_h)`` attention, **no residual** from the input tokens: ``x = proj(attn v); x = x + MLP(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise PriorkitError(f"dim must be divisible by num_heads, got {dim} and {num_heads}")
        self.h = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.learn_scale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.mlp = _mlp(dim, mlp_ratio)

    def heads(self, x: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
        """The attention output per head before ``proj``: ``[B, h, N, C/h]``."""
        B, N, C = x.shape
        M = inps.shape[1]
        q = self.q(self.norm1(x)).view(B, N, self.h, C // self.h).transpose(1, 2)
        k, v = self.kv(self.norm1(inps)).view(B, M, 2, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        return relu_cosine_attention(q, k, v, self.learn_scale)

    def forward(self, x: torch.Tensor, inps: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        y = self.proj(self.heads(x, inps).transpose(1, 2).reshape(B, N, C))
        return y + self.mlp(self.norm2(y))


class SelfAttentionBlock(nn.Module):
    """The baseline decoder block (no INPs): pre-norm softmax self-attention and MLP, both with residuals."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, inps: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


@dataclass
class INPOutput:
    en: list[torch.Tensor]  # encoder maps per group, [B, C, H, W]
    de: list[torch.Tensor]  # decoder maps per group, [B, C, H, W]
    inps: torch.Tensor | None  # [B, M, C] (None for the self-attention decoder)
    coherence: torch.Tensor  # scalar L_c (0 for the self-attention decoder)
    distance: torch.Tensor | None  # [B, H*W] token-to-nearest-INP distance (zero-shot map)


def _group_mean(feats: Sequence[torch.Tensor], groups: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    return [torch.stack([feats[i] for i in g], dim=1).mean(dim=1) for g in groups]


class INPFormer(nn.Module):
    """INP extractor + bottleneck + INP-guided decoder on a frozen ``encoder``.

    ``encoder(images)`` returns a list of L maps ``[B, dim, H, W]`` (same H, W); it is frozen here. The
    input tokens are the mean of all L maps; ``encoder_groups`` average encoder maps into the targets and
    ``decoder_groups`` average the *reversed* decoder block outputs into the reconstructions (official:
    8 layers, groups [[0..3], [4..7]] on both sides).
    """

    def __init__(
        self,
        encoder: nn.Module,
        dim: int,
        *,
        num_inp: int = 6,
        num_heads: int = 4,
        num_decoder_blocks: int = 8,
        encoder_groups: Sequence[Sequence[int]] = ((0, 1, 2, 3), (4, 5, 6, 7)),
        decoder_groups: Sequence[Sequence[int]] = ((0, 1, 2, 3), (4, 5, 6, 7)),
        decoder: str = "inp",
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_inp", num_inp)
        check_positive_int("num_heads", num_heads)
        check_positive_int("num_decoder_blocks", num_decoder_blocks)
        check_choice("decoder", decoder, DECODERS)
        if len(encoder_groups) != len(decoder_groups) or not encoder_groups:
            raise PriorkitError(
                f"encoder_groups and decoder_groups must be non-empty and of equal length, "
                f"got {len(encoder_groups)} and {len(decoder_groups)}"
            )
        for g in decoder_groups:
            for i in g:
                if not 0 <= i < num_decoder_blocks:
                    raise PriorkitError(f"decoder_groups indices must lie in [0, {num_decoder_blocks}), got {i}")
        self.encoder = encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.dim, self.decoder_type = dim, decoder
        self.encoder_groups = [list(g) for g in encoder_groups]
        self.decoder_groups = [list(g) for g in decoder_groups]
        block = PrototypeBlock if decoder == "inp" else SelfAttentionBlock
        self.inp_tokens = nn.Parameter(torch.randn(num_inp, dim)) if decoder == "inp" else None
        self.extractor = AggregationBlock(dim, num_heads, mlp_ratio) if decoder == "inp" else None
        self.bottleneck = _mlp(dim, 4.0)  # official Mlp(C, 4C, C), dropout 0, no residual
        self.decoder = nn.ModuleList([block(dim, num_heads, mlp_ratio) for _ in range(num_decoder_blocks)])
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.03, b=0.03)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        images = _check_images(images)
        self.encoder.eval()
        with torch.no_grad():
            feats = list(self.encoder(images))
        for i, f in enumerate(feats):
            check_shape(f"encoder output {i}", f, (images.shape[0], self.dim, feats[0].shape[2], feats[0].shape[3]))
        for g in self.encoder_groups:
            for i in g:
                if not 0 <= i < len(feats):
                    raise PriorkitError(f"encoder_groups indices must lie in [0, {len(feats)}), got {i}")
        return feats

    def forward(self, images: torch.Tensor) -> INPOutput:
        feats = self.encode(images)
        B, C, H, W = feats[0].shape
        tokens = [f.flatten(2).transpose(1, 2) for f in feats]  # [B, N, C]
        x = torch.stack(tokens, dim=1).mean(dim=1)
        inps = distance = None
        coh = x.new_zeros(())
        if self.decoder_type == "inp":
            inps = self.extractor(self.inp_tokens.unsqueeze(0).expand(B, -1, -1), x)
            distance = coherence_distance(x, inps)
            coh = distance.mean()
        x = self.bottleneck(x)
        outs = []
        for blk in self.decoder:
            x = blk(x, inps)
            outs.append(x)
        outs = outs[::-1]

        def to_map(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(B, C, H, W)

        en = [to_map(t) for t in _group_mean(tokens, self.encoder_groups)]
        de = [to_map(t) for t in _group_mean(outs, self.decoder_groups)]
        return INPOutput(en, de, inps, coh, distance)

    def loss(self, out: INPOutput, gamma: float = 3.0, coherence_weight: float = 0.2) -> dict[str, torch.Tensor]:
        """Named loss terms: ``soft_mining``, ``coherence`` (weighted) and their sum ``loss`` (L = L_sm + 0.2 L_c)."""
        sm = soft_mining_loss(out.en, out.de, gamma)
        coh = coherence_weight * out.coherence
        return {"soft_mining": sm, "coherence": coh, "loss": sm + coh}

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        *,
        mode: str = "reconstruction",
        blur: bool = True,
        kernel_size: int = 5,
        sigma: float = 4.0,
        top_ratio: float = 0.01,
        batch_size: int = 64,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps [B, 1, H, W], scores [B])`` at the image size. ``mode="zero_shot"`` uses the coherence
        distance (token to nearest INP) as the map instead of the reconstruction error."""
        check_choice("mode", mode, ("reconstruction", "zero_shot"))
        if mode == "zero_shot" and self.decoder_type != "inp":
            raise PriorkitError("mode='zero_shot' needs decoder='inp' (the self-attention decoder has no INPs)")
        was = self.training
        self.eval()
        maps = []
        for i in range(0, len(images), batch_size):
            out = self(images[i : i + batch_size])
            if mode == "reconstruction":
                m = anomaly_map(out.en, out.de, images.shape[-2:], blur=False)
            else:
                B, _, H, W = out.en[0].shape
                m = out.distance.view(B, 1, H, W)
                m = F.interpolate(m, size=images.shape[-2:], mode="bilinear", align_corners=True)
            maps.append(gaussian_blur(m, kernel_size, sigma) if blur else m)
        self.train(was)
        m = torch.cat(maps)
        return m, image_score(m, top_ratio)


# ---------------------------------------------------------------------------------------- encoder stand-in


class ConvEncoder(nn.Module):
    """Stand-in for the frozen DINOv2 encoder: a conv stem of total ``stride`` (2 or 4) then ``depth`` conv
    stages at that resolution; ``forward`` returns each stage's map (``[B, channels, H/stride, W/stride]``), the
    "layers" INP-Former reads. Pretrain it as an auto-encoder on normal images with :func:`pretrain_encoder`."""

    def __init__(self, in_channels: int = 3, channels: int = 64, depth: int = 2, stride: int = 2) -> None:
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("depth", depth)
        check_choice("stride", stride, (2, 4))
        self.in_channels = in_channels
        stem: list[nn.Module] = []
        for i in range(stride // 2):
            stem += [nn.Conv2d(in_channels if i == 0 else channels, channels, 4, stride=2, padding=1)]
            stem += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.stem = nn.Sequential(*stem)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
            for _ in range(depth)
        )
        up: list[nn.Module] = []
        for _ in range(stride // 2):
            up += [nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.ReLU()]
        self.decoder = nn.Sequential(*up, nn.Conv2d(channels, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, *, reconstruct: bool = False) -> list[torch.Tensor] | torch.Tensor:
        """The stage maps; ``reconstruct=True`` returns the auto-encoder's reconstruction (pretraining)."""
        if reconstruct:
            return self.decoder(self(x)[-1])
        check_shape("images", x, (None, self.in_channels, None, None))
        x = self.stem(x)
        outs = []
        for s in self.stages:
            x = s(x)
            outs.append(x)
        return outs

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self(x, reconstruct=True)


# ------------------------------------------------------------------------------------------------- training


class StableAdamW(torch.optim.Optimizer):
    """AdamW with per-tensor update clipping (Wortsman et al. 2023), as the official training uses: the step of
    each tensor is divided by ``max(1, RMS(g / denom) / clip_threshold)``; decoupled weight decay; AMSGrad."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-10,
        weight_decay: float = 1e-4,
        amsgrad: bool = True,
        clip_threshold: float = 1.0,
    ) -> None:
        check_range("lr", lr, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        super().__init__(
            params,
            dict(
                lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, clip_threshold=clip_threshold
            ),
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(1 - group["lr"] * group["weight_decay"])
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    if group["amsgrad"]:
                        st["vmax"] = torch.zeros_like(p)
                st["step"] += 1
                g = p.grad
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                v = torch.maximum(st["vmax"], st["v"], out=st["vmax"]) if group["amsgrad"] else st["v"]
                bc1, bc2 = 1 - b1 ** st["step"], 1 - b2 ** st["step"]
                denom = (v.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                rms = float((g / denom).pow(2).mean().sqrt())
                step = group["lr"] / bc1 / max(1.0, rms / group["clip_threshold"])
                p.addcdiv_(st["m"], denom, value=-step)
        return loss


def warm_cosine(it: int, total: int, warmup: int, base: float, final: float) -> float:
    """Learning rate at iteration ``it``: linear warm-up from 0 over ``warmup`` iterations, then cosine to
    ``final`` (official ``WarmCosineScheduler``)."""
    if it < warmup:
        return base * it / warmup
    t = (it - warmup) / max(1, total - warmup)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t))


def _check_images(images: torch.Tensor) -> torch.Tensor:
    images = as_tensor("images", images)
    check_batch("images", images, dim=4)
    return images


def _image_data(images: torch.Tensor) -> TensorDataset:
    return TensorDataset(images, torch.zeros(len(images), dtype=torch.long))


def pretrain_encoder_recipe(
    encoder: ConvEncoder, images: torch.Tensor, *, epochs: int = 10, lr: float = 2e-3
) -> Recipe:
    """Auto-encoder pretraining (MSE, Adam ``lr``) of the :class:`ConvEncoder` stand-in on normal ``images``
    ``[N, 3, H, W]``, as one engine phase (batch size and seed from the run's config; the data is built here,
    so ``Trainer(encoder, None, recipe=...)``)."""
    if not isinstance(encoder, ConvEncoder):
        raise PriorkitError(f"encoder must be a ConvEncoder, got {type(encoder).__name__}")
    images = _check_images(images)
    check_positive_int("epochs", epochs)
    check_range("lr", lr, 0.0, low_inclusive=False)

    def loss(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        return {"mse": F.mse_loss(batch.output, batch.x)}

    adam = lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)  # noqa: E731
    phase = Phase("pretrain", epochs=epochs, data=_image_data(images), optimizer=adam, loss=loss,
                  forward=lambda net, b: net(b.x, reconstruct=True))  # fmt: skip
    return Recipe([phase], loss_fn=None)


def inp_former_recipe(
    model: INPFormer,
    images: torch.Tensor,
    *,
    iters: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    final_lr: float = 1e-4,
    warmup_iters: int = 100,
    weight_decay: float = 1e-4,
    grad_clip: float = 0.1,
    gamma: float = 3.0,
    coherence_weight: float = 0.2,
) -> Recipe:
    """Train the head on normal ``images`` for ``iters`` steps, as engine phases: :class:`StableAdamW`, linear
    warm-up over ``warmup_iters`` then cosine to ``final_lr`` per step, gradient-norm clip ``grad_clip``, the loss
    ``L_sm + coherence_weight L_c``. Reshuffled drop-last epochs as the official loader (with fewer images than
    ``batch_size`` every step sees all of them); the last epoch is cut at the step budget. The frozen encoder
    never trains. Run with ``Trainer(model, None, recipe=...)`` (the data is built here; seed from the config).
    """
    if not isinstance(model, INPFormer):
        raise PriorkitError(f"model must be an INPFormer, got {type(model).__name__}")
    images = _check_images(images)
    check_positive_int("iters", iters)
    check_positive_int("batch_size", batch_size)
    check_positive_int("warmup_iters", warmup_iters, 0)
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("final_lr", final_lr, 0.0)
    check_range("coherence_weight", coherence_weight, 0.0)
    check_range("gamma", gamma, 0.0)
    check_range("grad_clip", grad_clip, 0.0, low_inclusive=False)
    bs = min(batch_size, len(images))
    per_epoch = len(images) // bs

    def plan(state: RunState) -> list[list[int]]:
        left = iters - state.phase_epoch * per_epoch
        order = shuffled_batches(len(images), bs, seed=state.config.seed, epoch=state.epoch, drop_last=True)
        return order[: min(per_epoch, left)]

    def loss(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        terms = model.loss(batch.output, gamma=gamma, coherence_weight=coherence_weight)
        return {"soft_mining": terms["soft_mining"], "coherence": terms["coherence"]}

    def opt(m: nn.Module) -> torch.optim.Optimizer:
        return StableAdamW(model.trainable_parameters(), lr=lr, weight_decay=weight_decay)

    def sched(o: torch.optim.Optimizer, spe: int) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(o, lambda it: warm_cosine(it, iters, warmup_iters, lr, final_lr) / lr)

    trainable = [n for n, _ in model.named_children() if n != "encoder"]
    trainable += ["inp_tokens"] if model.inp_tokens is not None else []
    phase = Phase("fit", epochs=-(-iters // per_epoch), trainable=trainable, optimizer=opt, scheduler=sched,
                  interval="step", loss=loss, data=_image_data(images), batches=plan, grad_clip=grad_clip)  # fmt: skip
    return Recipe([phase], loss_fn=None)


SPEC = MethodSpec(
    status="implemented",
    entry="INPFormer",
    missing="DINOv2-reg ViT-B/14 encoder not used (stand-in: a conv auto-encoder pretrained on normal images); "
    "MVTec/VisA/Real-IAD loaders, AUPRO and the 256-px map resize not built",
    presets={
        "paper": {"num_inp": 6, "num_heads": 12, "num_decoder_blocks": 8,
                  "encoder_groups": ((0, 1, 2, 3), (4, 5, 6, 7)), "decoder_groups": ((0, 1, 2, 3), (4, 5, 6, 7)),
                  "coherence_weight": 0.2, "gamma": 3.0, "lr": 1e-3, "final_lr": 1e-4, "warmup_iters": 100,
                  "weight_decay": 1e-4, "grad_clip": 0.1, "batch_size": 16, "iters": 10000},
        "small": {"dim": 32, "num_inp": 6, "num_decoder_blocks": 2, "encoder_groups": ((0,), (1,)),
                  "decoder_groups": ((0,), (1,)), "iters": 60, "batch_size": 8, "warmup_iters": 12,
                  "encoder": "ConvEncoder(channels=32, depth=2, stride=2), pretrained 3 epochs"},
    },
)  # fmt: skip
