"""Fashion-MNIST on the frozen zoo backbone, shared by the experiments that start from a pretrained model
(palm, protogcd, slk, teen): the backbone's name, its random-init ablation, cached frozen features, the images it
was never trained on, per-class pools and a bank of augmented views whose features are computed once."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from priorkit.core.errors import PriorkitError
from priorkit.data.ood import shift_noise_views

#: the zoo backbone pretrained on Fashion-MNIST classes 0-4; "random_init" is its architecture untrained
ZOO_BACKBONE = "fmnist_conv_base5"
RANDOM_INIT = "random_init"


def frozen_features(
    backbone: str, x: torch.Tensor, zoo_name: str = ZOO_BACKBONE, batch_size: int = 512
) -> torch.Tensor:
    """Features of images ``x`` through the zoo backbone ``zoo_name``, pretrained or, for
    ``backbone="random_init"``, the same architecture randomly initialised (both cached on disk by the zoo)."""
    from priorkit.zoo import extract_features

    return extract_features(zoo_name, x, batch_size=batch_size, pretrained=backbone != RANDOM_INIT)


@functools.lru_cache(maxsize=1)
def unseen_fmnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train x, train y, test x, test y)`` of Fashion-MNIST (``[N, 1, 28, 28]`` in [0, 1]) without the training
    images the zoo backbone was pretrained on (its recipe's subset, matched by pixels): no image an experiment
    uses was seen by the backbone."""
    from priorkit.data.real import load_real
    from priorkit.zoo import CONFIGS
    from priorkit.zoo.pretrained import pretrain_data

    def rows(x: torch.Tensor) -> list[bytes]:
        return [r.tobytes() for r in x.mul(255).round().to(torch.uint8).flatten(1).numpy()]

    seen = set(rows(pretrain_data(CONFIGS[ZOO_BACKBONE])[0].x))
    sp = load_real("fashion_mnist_image", val=0.0)
    keep = torch.tensor([r not in seen for r in rows(sp.train.x)])
    return sp.train.x[keep], sp.train.y[keep], sp.test.x, sp.test.y


def per_class(y: torch.Tensor, n: int, classes: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """Sorted indices of ``n`` samples of each of ``classes`` drawn without replacement from ``g``."""
    out = []
    for c in classes:
        idx = torch.nonzero(y == c).squeeze(1)
        if len(idx) < n:
            raise PriorkitError(f"class {c} has {len(idx)} samples, fewer than the {n} asked for")
        out.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(out).sort().values


def pixel_view(x: torch.Tensor, g: torch.Generator, *, max_shift: int, sigma: float, flip: bool) -> torch.Tensor:
    """One augmented view of gray images ``[N, 1, H, W]`` in [0, 1]: random shift + Gaussian noise, a random
    horizontal flip (``flip``), clipped back to [0, 1] (the backbone's input range)."""
    v = shift_noise_views(x, g, max_shift=max_shift, sigma=sigma)
    if flip:
        m = torch.rand(len(v), generator=g) < 0.5
        v = torch.where(m.view(-1, 1, 1, 1), v.flip(-1), v)
    return v.clamp(0.0, 1.0)


def view_bank(backbone: str, x: torch.Tensor, views: int, seed: int, **view: object) -> torch.Tensor:
    """``[N, 1 + views, 256]`` frozen features of images ``x``: entry 0 the clean image, then ``views`` augmented
    ones (:func:`pixel_view`, drawn from ``seed``), all through the backbone once."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.stack([x] + [pixel_view(x, g, **view) for _ in range(views)], 1)  # type: ignore[arg-type]
    return frozen_features(backbone, bank.flatten(0, 1)).view(len(x), 1 + views, -1)


def pick_view(bank: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """One training view per row of a view bank ``[B, 1 + A, d]``: a random augmented entry (1..A) per row."""
    i = torch.randint(1, bank.shape[1], (len(bank),), generator=g)
    return bank[torch.arange(len(bank)), i]


def standardizer(ref: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-dimension z-scoring with the mean / std of ``ref`` [N, d] (a training set's clean features): the frozen
    features are non-negative with a large shared mean, which the trained MLP does not start from well."""
    mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-6)
    return lambda x: (x - mu) / sd


def clean(x: torch.Tensor) -> torch.Tensor:
    """The unaugmented inputs of a training set: entry 0 of a view bank, or the inputs themselves."""
    return x[:, 0] if x.dim() == 3 else x
