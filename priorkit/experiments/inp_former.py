"""INP-Former vs the same head with a residual self-attention decoder (card: prototypes-fewshot-ood.md,
"Small-scale check on CPU").

Data: ``make_anomaly`` textures (brick, grass, gravel; 32x32), one unified model for all three (the paper's
multi-class setting); normal-only training images, test images half anomalous (a pasted patch of another
texture or a drawn line) with pixel masks. Frozen encoder: the card's stand-in for DINOv2, a small conv
auto-encoder (``ConvEncoder``, stride-2 stem, 2 stages -> a 16x16 token grid from 2 depths, as the card)
pretrained on the normal training images; the same encoder feeds both heads. Head: M=6 INPs, dim 64
(quick: 32), 4 heads, 4 decoder blocks, 2 groups, the official optimiser and loss (StableAdamW 1e-3, warm-up +
cosine, clip 0.1, soft-mining gamma=3, coherence 0.2). Baseline: identical bottleneck, decoder depth, loss and
budget, but a softmax self-attention decoder with residuals and no INPs (Dinomaly-like). Full mode also runs the 4-shot
setting (4 normal images per texture) against a kNN patch memory (PatchCore-lite, on the same encoder tokens),
reported as extra metrics. Budgets: quick 96 train images, dim 32, batch 8, 60 iterations, 2 seeds; full 300
images, dim 64, batch 16 (official), 500 iterations, 3 seeds.

Claim (fixed before the first run, from the card): INP-Former's pixel AUROC >= the residual decoder's.

Measured (quick, 2 seeds): not reproduced - pixel AUROC 0.627 vs 0.696, image AUROC 0.518 vs 0.579. With 60
iterations of batch 8 neither head is trained (the official recipe runs 200 epochs); the residual decoder
starts from a near-identity path and so reconstructs sooner, while the INP decoder must first learn to rebuild
every token from M=6 prototypes. A longer development run (dim 64, 150 iterations of batch 16, 240 images)
gave 0.885 vs 0.892, still a tie at best. The full mode (500 iterations) was not run for lack of time; whether
the card's direction appears there is open.
"""

from __future__ import annotations

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


def _head(encoder: ConvEncoder, dim: int, decoder: str, seed: int) -> INPFormer:
    seed_everything(seed)
    return INPFormer(
        encoder,
        dim,
        num_inp=6,
        num_heads=4,
        num_decoder_blocks=4,
        encoder_groups=((0,), (1,)),
        decoder_groups=((0, 1), (2, 3)),
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


def _train(model: INPFormer, images: torch.Tensor, *, iters: int, batch: int, seed: int) -> list[dict]:
    recipe = inp_former_recipe(model, images, iters=iters, batch_size=batch, warmup_iters=min(100, iters // 5))
    return Trainer(model, None, recipe=recipe, config=TrainConfig(seed=seed, progress=False)).fit()


def run(seed: int, quick: bool) -> SeedResult:
    n_train, iters, batch, dim, ae_epochs = (96, 60, 8, 32, 3) if quick else (300, 500, 16, 64, 15)
    data = make_anomaly(n_train, 60 if quick else 150, size=32, seed=seed)
    seed_everything(seed)
    encoder = ConvEncoder(channels=dim, depth=2, stride=2)
    cfg = TrainConfig(batch_size=32, seed=seed, progress=False)
    Trainer(encoder, None, recipe=pretrain_encoder_recipe(encoder, data.train, epochs=ae_epochs), config=cfg).fit()
    encoder.eval()
    res: SeedResult = {"method": {}, "baseline": {}, "curves": {}}
    for side, decoder in (("method", "inp"), ("baseline", "self_attention")):
        model = _head(encoder, dim, decoder, seed)
        hist = _train(model, data.train, iters=iters, batch=batch, seed=seed)
        res[side] = _scores(model, data)
        res["curves"][side] = [h["loss"] for h in hist if "loss" in h]
        if side == "method" and not quick:
            maps, scores = model.predict(data.test, mode="zero_shot")
            res[side]["zero_shot_pixel_auroc"] = pixel_auroc(maps, data.test_masks)
    if not quick:  # 4-shot: INP-Former on 4 normal images per texture vs a kNN patch memory of the same images
        shots = data.few_shot(4, seed=seed)
        model = _head(encoder, dim, "inp", seed)
        _train(model, shots, iters=iters, batch=batch, seed=seed)
        few = _scores(model, data)
        res["method"].update({f"4shot_{k}": v for k, v in few.items()})
        maps, scores = knn_patch_scores(encoder, shots, data.test)
        res["baseline"]["4shot_image_auroc"] = image_auroc(scores, data.test_labels)
        res["baseline"]["4shot_pixel_auroc"] = pixel_auroc(maps, data.test_masks)
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
        "generated textures 32x32 (brick/grass/gravel, pasted-patch and line defects), frozen conv-AE encoder "
        "(DINOv2 stand-in), M=6 dim 64, 4 blocks; 500 iters x 3 seeds (quick: dim 32, 60 iters x 2)"
    ),
    method_name="INP-Former (M=6)",
    baseline_name="same head, self-attention decoder with residual (no INPs)",
    checks=[Check("pixel_auroc", "higher", 0.0)],
    run=run,
    threads=1,
    seeds=3,
    quick_seeds=2,
    plot=plot,
    notes="Encoder is a conv auto-encoder stand-in for the frozen DINOv2-reg ViT-B/14 of the paper.",
)
