"""Visual explanations for prototype models, as matplotlib PNGs (ProtoPNet's global and local analysis).

* :func:`prototype_gallery`: each prototype as the training patch it was pushed to (the crop of its
  high-activation box) next to its source image with that box drawn, one row per class.
* :func:`this_looks_like_that`: for one test image, the top-k prototypes by contribution to the predicted
  logit: the similarity heatmap (bicubic-upsampled) on the test image with its high-activation box, the
  prototype's source patch, and similarity x weight = contribution.

Generic over the family: the model needs ``similarity_maps(x)`` [B, M, H', W'] (higher = more similar),
``prototype_activations(x)`` [B, M], ``prototype_identity`` [M, C] and a ``last_layer`` with weight [C, M]
(or pass ``weights``); push bookkeeping is a :class:`priorkit.prototypes.protopnet_base.PushResult` (after a
recipe run: ``recipe.record.last``). Images are [N, C, H, W] floats in [0, 1] (1 or 3 channels), shown unnormalised.
:func:`draw_box` and :func:`show_image` are the panel helpers, for figures of your own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from priorkit.core.errors import PriorkitError, check_batch, check_positive_int, check_shape
from priorkit.prototypes.protopnet_base import PushResult, high_activation_box, upsample_map

__all__ = ["draw_box", "prototype_gallery", "show_image", "this_looks_like_that"]


def _to_hwc(img: torch.Tensor):
    img = img.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        return img[0].numpy(), "gray"
    return img.permute(1, 2, 0).numpy(), None


def draw_box(ax, box: Sequence[int], color: str = "yellow", lw: float = 1.5) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=lw))


def show_image(ax, img: torch.Tensor) -> None:
    arr, cmap = _to_hwc(img)
    ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    check_batch(name, images, dim=4)
    if images.shape[1] not in (1, 3):
        raise PriorkitError(f"{name} must have 1 or 3 channels, got {images.shape[1]}")


def prototype_gallery(
    push: PushResult,
    images: torch.Tensor,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    max_classes: int = 10,
    title: str = "Prototypes (pushed training patches)",
) -> Path:
    """Write a PNG: per class a row, per prototype two panels (the high-activation crop of its source image,
    and the source image with that box in yellow and the receptive field in cyan). ``images`` are the push
    images that ``push.image_index`` indexes into."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_images(images)
    if not isinstance(push, PushResult):
        raise PriorkitError(f"push must be a PushResult (e.g. recipe.record.last), got {type(push).__name__}")
    check_positive_int("max_classes", max_classes)
    if int(push.image_index.max()) >= len(images):
        raise PriorkitError("push.image_index points past images: pass the images the push searched")
    classes = sorted(set(push.prototype_class.tolist()))[:max_classes]
    per = max(int((push.prototype_class == c).sum()) for c in classes)
    fig, axes = plt.subplots(len(classes), 2 * per, figsize=(1.3 * 2 * per, 1.45 * len(classes) + 0.4), squeeze=False)
    for r, c in enumerate(classes):
        js = torch.nonzero(push.prototype_class == c, as_tuple=True)[0].tolist()
        for k in range(per):
            a_crop, a_src = axes[r, 2 * k], axes[r, 2 * k + 1]
            a_crop.axis("off")
            a_src.axis("off")
            if k >= len(js):
                continue
            j = js[k]
            n = int(push.image_index[j])
            if n < 0:
                a_crop.set_title(f"p{j}: not pushed", fontsize=6)
                continue
            x0, y0, x1, y1 = push.high_act_box[j].tolist()
            show_image(a_crop, images[n][:, y0:y1, x0:x1])
            a_crop.axis("on")
            a_crop.set_title(f"p{j} d={float(push.distance[j]):.2g}", fontsize=6)
            show_image(a_src, images[n])
            a_src.axis("on")
            draw_box(a_src, push.rf_box[j].tolist(), "cyan", 0.8)
            draw_box(a_src, (x0, y0, x1, y1))
            a_src.set_title(f"img {n}", fontsize=6)
        name = class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"
        axes[r, 0].set_ylabel(name, fontsize=7)
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
    fig.suptitle(f"{title}; {push.n_unique} unique patches / {len(push.image_index)}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def this_looks_like_that(
    model: torch.nn.Module,
    image: torch.Tensor,
    push: PushResult,
    push_images: torch.Tensor,
    path: str | Path,
    *,
    k: int = 3,
    label: int | None = None,
    weights: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    preprocess=None,
    percentile: float = 95.0,
) -> Path:
    """Write a PNG explaining ``model``'s prediction on ``image`` [C, H, W]: the top-``k`` prototypes by
    contribution s_j * W[c, j] to the predicted class c's logit, each as (heatmap on the test image with its
    high-activation box, the prototype's source patch, the numbers). ``weights`` overrides
    ``model.last_layer.weight`` (e.g. a multi-branch model's summed head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_shape("image", image, (None, None, None))
    _check_images(image[None], "image")
    _check_images(push_images, "push_images")
    if not isinstance(push, PushResult):
        raise PriorkitError(f"push must be a PushResult (e.g. recipe.record.last), got {type(push).__name__}")
    check_positive_int("k", k)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    x = image[None].to(device)
    x = preprocess(x) if preprocess is not None else x
    sim_maps = model.similarity_maps(x)[0].cpu()  # [M, H', W']
    acts = model.prototype_activations(x)[0].cpu()  # [M]
    model.train(was)
    w = (weights if weights is not None else model.last_layer.weight).detach().cpu()
    check_shape("weights", w, (None, acts.shape[0]))
    logits = w @ acts
    pred = int(logits.argmax())
    contrib = acts * w[pred]
    k = min(k, acts.shape[0])
    top = contrib.argsort(descending=True)[:k].tolist()
    heat = upsample_map(sim_maps[None], tuple(image.shape[1:]))[0]  # [M, H, W]

    def cname(c: int) -> str:
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    fig, axes = plt.subplots(k, 3, figsize=(6.0, 1.9 * k + 0.5), squeeze=False)
    for r, j in enumerate(top):
        a_img, a_proto, a_txt = axes[r]
        show_image(a_img, image)
        hm = heat[j]
        hm = (hm - hm.min()) / (hm.max() - hm.min()).clamp_min(1e-12)
        a_img.imshow(hm.numpy(), cmap="jet", alpha=0.45, interpolation="bilinear")
        draw_box(a_img, high_activation_box(heat[j], percentile))
        a_img.set_title("this (test image)" if r == 0 else "", fontsize=7)
        n = int(push.image_index[j])
        if n >= 0:
            x0, y0, x1, y1 = push.high_act_box[j].tolist()
            show_image(a_proto, push_images[n])
            draw_box(a_proto, (x0, y0, x1, y1))
            a_proto.set_title("looks like that (prototype)" if r == 0 else "", fontsize=7)
        else:
            a_proto.axis("off")
        a_txt.axis("off")
        pc = int(model.prototype_identity[j].argmax()) if hasattr(model, "prototype_identity") else -1
        a_txt.text(
            0.0,
            0.5,
            f"prototype {j} (class {cname(pc)})\nsimilarity {float(acts[j]):.3f}\n"
            f"weight {float(w[pred, j]):+.3f}\ncontribution {float(contrib[j]):+.3f}",
            fontsize=8,
            va="center",
        )
    truth = f", true {cname(label)}" if label is not None else ""
    fig.suptitle(
        f"predicted {cname(pred)} (logit {float(logits[pred]):.2f}{truth}); top-{k} contributions sum "
        f"{float(contrib[top].sum()):.2f}",
        fontsize=8,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
