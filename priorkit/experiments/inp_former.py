"""INP-Former vs the same head with a residual self-attention decoder (card: prototypes-fewshot-ood.md,
"Small-scale check on CPU").

Data: ``make_anomaly`` textures (brick, grass, gravel), one unified model for all three (the paper's multi-class
setting); normal-only training images, test images half anomalous (a pasted patch of another texture or a drawn
line) with pixel masks. Frozen encoder: the card's stand-in for DINOv2, a small conv auto-encoder
(``ConvEncoder``, stride-2 stem, stages -> a token grid from 2 depths, as the card) pretrained on the normal
training images; the same encoder feeds both heads. Head: M INPs, multi-head attention, decoder blocks in groups,
the official optimiser and loss (StableAdamW, warm-up + cosine, gradient clipping, soft-mining, coherence loss).
Baseline: identical bottleneck, decoder depth, loss and budget, but a softmax self-attention decoder with
residuals and no INPs (Dinomaly-like). The full tier also reports the zero-shot pixel AUROC and runs the few-shot
setting (``few_shot`` normal images per texture) against a kNN patch memory (PatchCore-lite, on the same encoder
tokens), as extra metrics. Every setting is in :class:`Config` (``QUICK`` and ``FULL``), which the report prints.

Claim (fixed before the first run, from the card): INP-Former's pixel AUROC >= the residual decoder's.

What the runs taught (the figures are in the committed ``results/inp_former.json`` and ``results/report.md``):
at the quick budget neither head is trained (the official recipe runs 200 epochs), and the residual decoder wins
because it starts from a near-identity path and so reconstructs sooner, while the INP decoder must first learn
to rebuild every token from M prototypes. A longer development run closed the gap to a tie at best; whether the
card's direction appears with the full budget is what the full-tier record answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from priorkit.core.seeding import seed_everything
from priorkit.data.anomaly import AnomalyData, make_anomaly
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.anomaly import image_auroc, pixel_auroc
from priorkit.prototypes.inp_former import (
    ConvEncoder,
    INPFormer,
    gaussian_blur,
    image_score,
    inp_former_recipe,
    pretrain_encoder_recipe,
)
from priorkit.train import TrainConfig, Trainer


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    n_train: int = 300
    n_test: int = 150
    size: int = 32
    dim: int = 64  # encoder channels = head width
    encoder_depth: int = 2
    encoder_stride: int = 2
    ae_epochs: int = 15  # encoder pretraining
    ae_batch_size: int = 32
    ae_lr: float = 2e-3
    num_inp: int = 6
    num_heads: int = 4
    num_decoder_blocks: int = 4
    encoder_groups: tuple[tuple[int, ...], ...] = ((0,), (1,))
    decoder_groups: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3))
    iters: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    final_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    gamma: float = 3.0  # soft-mining
    coherence_weight: float = 0.2
    zero_shot: bool = True  # also report the method's zero-shot pixel AUROC
    few_shot: int = 4  # normal images per texture of the few-shot runs (0: not run)


#: scaled to the issue's ~10-minute full budget before its first full run (the defaults above, 500 iterations at
#: width 64, ran past 25 CPU-minutes on one thread): 200 iterations (40 warm-up), width 48, 10 encoder epochs
FULL = Config(dim=48, ae_epochs=10, iters=200, warmup_iters=40)
QUICK = Config(n_train=96, n_test=60, dim=32, ae_epochs=3, iters=60, batch_size=8, warmup_iters=12, zero_shot=False,
               few_shot=0)  # fmt: skip


def _head(encoder: ConvEncoder, c: Config, decoder: str, seed: int) -> INPFormer:
    seed_everything(seed)
    return INPFormer(
        encoder,
        c.dim,
        num_inp=c.num_inp,
        num_heads=c.num_heads,
        num_decoder_blocks=c.num_decoder_blocks,
        encoder_groups=c.encoder_groups,
        decoder_groups=c.decoder_groups,
        decoder=decoder,
    )


def _scores(model: INPFormer, data: AnomalyData) -> dict[str, float]:
    maps, scores = model.predict(data.test)
    return {"image_auroc": image_auroc(scores, data.test_labels), "pixel_auroc": pixel_auroc(maps, data.test_masks)}


@torch.no_grad()
def knn_patch_scores(
    encoder: ConvEncoder, train: torch.Tensor, test: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchCore-lite: each test token's distance to its nearest training token (mean of the encoder maps)."""
    encoder.eval()

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return torch.stack(encoder(x), 0).mean(0)

    mem = tokens(train)
    mem = mem.permute(0, 2, 3, 1).reshape(-1, mem.shape[1])
    t = tokens(test)
    B, C, H, W = t.shape
    d = torch.cdist(t.permute(0, 2, 3, 1).reshape(-1, C), mem).min(dim=1).values.view(B, 1, H, W)
    maps = gaussian_blur(F.interpolate(d, size=test.shape[-2:], mode="bilinear", align_corners=True))
    return maps, image_score(maps)


def _train(model: INPFormer, images: torch.Tensor, c: Config, seed: int) -> list[dict]:
    recipe = inp_former_recipe(
        model, images, iters=c.iters, batch_size=c.batch_size, lr=c.lr, final_lr=c.final_lr,
        warmup_iters=c.warmup_iters, weight_decay=c.weight_decay, grad_clip=c.grad_clip, gamma=c.gamma,
        coherence_weight=c.coherence_weight,
    )  # fmt: skip
    return Trainer(model, None, recipe=recipe, config=TrainConfig(seed=seed, progress=False)).fit()


def run(seed: int, c: Config) -> SeedResult:
    data = make_anomaly(c.n_train, c.n_test, size=c.size, seed=seed)
    seed_everything(seed)
    encoder = ConvEncoder(channels=c.dim, depth=c.encoder_depth, stride=c.encoder_stride)
    cfg = TrainConfig(batch_size=c.ae_batch_size, seed=seed, progress=False)
    pretrain = pretrain_encoder_recipe(encoder, data.train, epochs=c.ae_epochs, lr=c.ae_lr)
    Trainer(encoder, None, recipe=pretrain, config=cfg).fit()
    encoder.eval()
    res: SeedResult = {"method": {}, "baseline": {}, "curves": {}}
    for side, decoder in (("method", "inp"), ("baseline", "self_attention")):
        model = _head(encoder, c, decoder, seed)
        hist = _train(model, data.train, c, seed)
        res[side] = _scores(model, data)
        res["curves"][side] = [h["loss"] for h in hist if "loss" in h]
        if side == "method" and c.zero_shot:
            maps, scores = model.predict(data.test, mode="zero_shot")
            res[side]["zero_shot_pixel_auroc"] = pixel_auroc(maps, data.test_masks)
    if c.few_shot:  # few-shot: INP-Former on k normal images per texture vs a kNN patch memory of the same images
        k = c.few_shot
        shots = data.few_shot(k, seed=seed)
        model = _head(encoder, c, "inp", seed)
        _train(model, shots, c, seed)
        few = _scores(model, data)
        res["method"].update({f"{k}shot_{m}": v for m, v in few.items()})
        maps, scores = knn_patch_scores(encoder, shots, data.test)
        res["baseline"][f"{k}shot_image_auroc"] = image_auroc(scores, data.test_labels)
        res["baseline"][f"{k}shot_pixel_auroc"] = pixel_auroc(maps, data.test_masks)
    return res


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.9))
    for ax, key in zip(axes[:2], ("pixel_auroc", "image_auroc")):
        ax.boxplot(
            [[r["baseline"][key] for r in results], [r["method"][key] for r in results]],
            tick_labels=["self-attn + residual", "INP-Former"],
        )
        ax.set_title(key)
    for side, label in (("baseline", "self-attn + residual"), ("method", "INP-Former")):
        axes[2].plot(results[0]["curves"][side], label=label, lw=1)
    axes[2].set_yscale("log")
    axes[2].set_title("training loss (seed 0)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = outdir / "inp_former_metrics.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="inp_former",
    claim="The INP-guided decoder localises anomalies at least as well as a residual self-attention decoder",
    setup=(
        "generated textures (brick/grass/gravel, pasted-patch and line defects), frozen conv-AE encoder "
        "(DINOv2 stand-in) pretrained on the normal images, INP-Former head vs the same head with a residual decoder"
    ),
    method_name="INP-Former (M INPs)",
    baseline_name="same head, self-attention decoder with residual (no INPs)",
    checks=[Check("pixel_auroc", "higher", 0.0)],
    diagnosis="The card's claim is 'at least as well', and that is what the full runs measure: the INP-guided "
    "decoder and the residual self-attention decoder reach the same pixel AUROC, with a seed-paired "
    "difference centred on zero and an interval on both sides of it, so a rule that asks the interval to "
    "clear zero cannot pass on a tie. The quick tier's early lead of the residual decoder (it starts near "
    "an identity path) is gone at the full budget. The paper's margin comes from DINOv2-reg features of "
    "real MVTec/VisA images; the conv auto-encoder stand-in on generated textures gives both decoders the "
    "same easy reconstruction problem.",
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="Encoder is a conv auto-encoder stand-in for the frozen DINOv2-reg ViT-B/14 of the paper.",
)
