"""My3DGen: Building Lightweight Personalized 3D Generative Model (WACV 2025 as "My3DGen: A Scalable Personalized
3D Generative Model"), Luchao Qi, Jiaye Wu, Annie N. Wang, Shengze Wang and Roni Sengupta, 2025.

A pretrained 3-D-aware face generator (EG3D) is personalised to one person from a few (10-50) photos by training
only low-rank adapters (LoRA) on every fully connected and convolutional layer of its synthesis network, about
0.6 M parameters per identity against 31 M for full fine-tuning. Each photo is first projected into the frozen
model's latent space, which gives anchors ``(w_i, c_i, x_i)`` (latent, camera, image) as in MyStyle; the adapters
are then trained with the latents fixed to reconstruct the anchors. Because the photos rarely show every pose, a
symmetry prior renders each anchor latent from two cameras mirrored about the frontal view and asks an identity
network to see the same person in the first render and the horizontally flipped second one. No adversarial loss
is used during personalisation.

Equations (paper; official code luchaoqi/my3dgen, ``networks_stylegan2.py``, ``loss.py``, ``training_loop.py``):

- FC layer: ``W' = W + s B A`` with ``A`` in R^{r x in} (Kaiming-uniform, a = sqrt 5), ``B`` in R^{out x r} = 0,
  ``s = alpha / r``.
- k x k conv, c_in -> c_out: ``dW = reshape(B A, (c_out, c_in, k, k))`` with ``A`` in R^{(r k) x (c_in k^2)}, ``B``
  in R^{c_out x (r k)}: a rank-(r k) factorisation of the ``c_out x (c_in k^2)`` matricisation, scaled by
  ``s = alpha / r`` (not ``alpha / (r k)``).
- ``L_rec = MSE(G(w_i, c_i), x_i)`` (+ LPIPS, and the same again at the super-resolved size, in EG3D).
- ``L_sym = 1 - cos(phi(G(w_i, c_1)), phi(flip(G(w_i, c_2))))`` for a pose pair mirrored in yaw about the
  frontal view (amplitude 0.35 rad), applied every 4th step (lazy regularisation), ``phi`` an identity network.
- optional ``L_id = 1 - cos(phi(G(w_i, c_i)), phi(x_i))``, also every 4th step (off by default).
- Adam beta = (0, 0.99), eps 1e-8, lr 0.0025, batch 4; with lazy regularisation every phase shares one Adam whose
  lr and betas are scaled by ``interval / (interval + 1)`` (StyleGAN2's rule), the main step runs every step and
  each regulariser takes its own optimizer step every ``interval`` steps with gain 1.

Reused, not rewritten: the adapters are stock PEFT LoRA (``get_peft_model`` with :func:`lora_config`): PEFT's
``Conv2d`` LoRA is exactly the paper's conv factorisation once its rank is ``r k``, and ``alpha_pattern`` sets each
conv's alpha to ``alpha k`` so that PEFT's scaling ``alpha / rank`` equals the paper's ``alpha / r``; saving,
loading and merging are PEFT's. Training runs on the engine (:meth:`My3DGen.recipe`: a latent-projection phase,
then a manual phase for the main and the lazy regulariser steps). Hand-written: the mirrored pose-pair sampler,
the symmetry and identity losses (a few lines around any renderer and feature extractor) and the parameter
accounting. Official-code quirks: the released pair uses frames ``i`` and ``119 - i`` of a 120-frame orbit, mirrors
only up to one frame step (``official_pairing=True`` reproduces it, with the code's ``3.14``); priorkit's default
draws exact mirrors. The released FC wrapper's non-linear path reads a variable before assigning it; with PEFT
on ``nn.Linear`` the activation is a separate module applied after the adapted layer, the order the paper means.
EG3D's equalised-learning-rate and modulated layers are not ``nn.Linear``/``nn.Conv2d`` and are refused. The
official loop replaces non-finite gradients by finite values (``nan_to_num``); here a non-finite loss term stops the
run before any update, naming the term.

Functional core: :func:`lora_config`, :func:`mirror_yaw_pair`, :func:`reconstruction_loss`,
:func:`symmetry_loss`, :func:`identity_loss`, :func:`lazy_adam`, :func:`parameter_accounting`. Entry:
:class:`My3DGen` (anchors, adapted generator, frozen identity network, and its training recipe).

Example::

    model = My3DGen(generator, phi, yaws, w_init=w_avg, adapter="lora", r=1, lora_alpha=1.0)
    fit(model, model.anchors(images), model.recipe(project_epochs=50, tune_epochs=100),
        config=TrainConfig(batch_size=4, seed=0))
    novel = model.render(model.latents.mean(0, keepdim=True), torch.tensor([-0.6]))
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import (
    PriorkitError,
    check_choice,
    check_finite,
    check_finite_losses,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.train import Batch, Phase, Recipe

if TYPE_CHECKING:
    from peft import LoraConfig

    from priorkit.train import RunState

__all__ = [
    "My3DGen",
    "identity_loss",
    "lazy_adam",
    "lora_config",
    "mirror_yaw_pair",
    "parameter_accounting",
    "reconstruction_loss",
    "symmetry_loss",
]

ADAPTERS = ("lora", "full", "none")
ORBIT_FRAMES = 120  # the official sampler's orbit

SPEC = MethodSpec(
    status="implemented",
    entry="My3DGen",
    missing="EG3D itself (tri-plane renderer, super-resolution, equalised-lr/modulated layers), the W+ projector "
    "(a W projector with MSE stands in), LPIPS and ArcFace weights (a pluggable perceptual term and any identity "
    "network; none offline) and the AdaLoRA variant are not built; the CPU check uses the generated 'heads' world "
    "(priorkit.data.heads) with a small conditional conv generator and a small identity CNN",
    presets={
        # README example r = 1, alpha = 1 (the CLI default alpha is 16); EG3D's G optimizer Adam(0, 0.99), eps 1e-8,
        # lr 0.0025, batch 4; lazy interval 4; the orbit's yaw amplitude 0.35 rad; L_sym on (the paper's method; the
        # CLI flag --sym_regularization defaults to off), L_id off
        "paper": {
            "r": 1,
            "lora_alpha": 1.0,
            "lr": 0.0025,
            "betas": (0.0, 0.99),
            "eps": 1e-8,
            "lazy_interval": 4,
            "sym_weight": 1.0,
            "id_weight": 0.0,
            "yaw_amplitude": 0.35,
            "official_pairing": False,
        },
        # the heads stand-in: the same adapter and optimizer; the mirrored pair spans the world's whole yaw range
        # [-1, 1] (its poses are not EG3D's), so the prior reaches the unseen profile views
        "small": {
            "r": 1,
            "lora_alpha": 1.0,
            "lr": 0.0025,
            "betas": (0.0, 0.99),
            "eps": 1e-8,
            "lazy_interval": 4,
            "sym_weight": 1.0,
            "id_weight": 0.0,
            "yaw_amplitude": 1.0,
            "official_pairing": False,
        },
    },
)


# ----------------------------------------------------------------------------------------------- functional core


def _check_conv(name: str, m: nn.Conv2d) -> int:
    k = m.kernel_size
    if k[0] != k[1]:
        raise PriorkitError(f"layer {name!r}: the conv factorisation needs a square kernel k x k, got {tuple(k)}")
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros":
        raise PriorkitError(
            f"layer {name!r}: conv LoRA supports groups=1, dilation=(1, 1) and padding_mode='zeros' (PEFT's adapter "
            f"conv would differ from the layer), got groups={m.groups}, dilation={tuple(m.dilation)}, "
            f"padding_mode={m.padding_mode!r}"
        )
    return int(k[0])


def lora_config(
    model: nn.Module, r: int = 1, lora_alpha: float = 1.0, target_modules: Sequence[str] | None = None
) -> LoraConfig:
    """A PEFT ``LoraConfig`` for My3DGen's adapters on ``model``'s layers.

    ``target_modules``: module names (default: every ``nn.Linear`` and ``nn.Conv2d``). A linear layer gets rank
    ``r``; a k x k conv gets rank ``r k`` (``A``: (r k) x (c_in k^2), ``B``: c_out x (r k)) and alpha ``lora_alpha k``
    so that every layer's scaling is ``lora_alpha / r``. ``r`` may not exceed a layer's smaller matricised
    dimension; other layer types, non-square kernels, grouped/dilated convs and non-zero padding modes are refused.
    """
    from peft import LoraConfig

    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("r", r)
    check_range("lora_alpha", lora_alpha, 0.0, low_inclusive=False)
    modules = dict(model.named_modules())
    if target_modules is None:
        names = [n for n, m in modules.items() if n and type(m) in (nn.Linear, nn.Conv2d)]
        if not names:
            kinds = sorted({type(m).__name__ for n, m in modules.items() if n}) or [type(model).__name__]
            raise PriorkitError(
                f"model has no nn.Linear or nn.Conv2d layer to adapt (found module types {kinds}); My3DGen's LoRA "
                "supports nn.Linear and nn.Conv2d"
            )
    else:
        if isinstance(target_modules, str) or not target_modules:
            raise PriorkitError(f"target_modules must be a non-empty list of module names, got {target_modules!r}")
        names = list(target_modules)
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for name in names:
        if name not in modules or not name:
            raise PriorkitError(f"target_modules: no module named {name!r} in the model")
        m = modules[name]
        if type(m) is nn.Linear:
            limit = min(m.in_features, m.out_features)
        elif type(m) is nn.Conv2d:
            k = _check_conv(name, m)
            limit = min(m.out_channels, m.in_channels * k * k)
            key = "^" + re.escape(name)  # PEFT matches pattern keys as (.*\.)?key$; ^ pins the full name
            ranks[key], alphas[key] = r * k, float(lora_alpha) * k
        else:
            raise PriorkitError(
                f"layer {name!r} is a {type(m).__name__}; My3DGen's LoRA supports nn.Linear and nn.Conv2d "
                "(equalised-lr or modulated layers need a wrapper that exposes one of them)"
            )
        if r > limit:
            raise PriorkitError(f"r must be <= {limit} for layer {name!r} (its smaller matricised dimension), got {r}")
    pattern = "|".join(re.escape(n) for n in names)
    return LoraConfig(
        r=r,
        lora_alpha=float(lora_alpha),
        target_modules=f"^(?:{pattern})$",
        rank_pattern=ranks,
        alpha_pattern=alphas,
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,  # A: Kaiming-uniform (a = sqrt 5), B = 0, as in the paper
    )


def mirror_yaw_pair(
    generator: torch.Generator | None = None,
    *,
    amplitude: float = 0.35,
    official_pairing: bool = False,
    frames: int = ORBIT_FRAMES,
) -> tuple[float, float]:
    """Two yaws (radians from the frontal view; EG3D's convention adds pi/2) mirrored about the frontal view.

    Frame ``i`` is drawn uniformly from the first half of a ``frames``-frame orbit ``yaw(f) = amplitude
    sin(2 pi f / frames)``. priorkit mode: ``(yaw(i), -yaw(i))``, exact mirrors. ``official_pairing``: frames ``i``
    and ``frames - 1 - i`` with the code's ``3.14`` for pi, mirrored only up to one frame step.
    """
    check_range("amplitude", amplitude, 0.0, low_inclusive=False)
    check_positive_int("frames", frames, 2)
    i = int(torch.randint(0, frames // 2, (1,), generator=generator))
    if official_pairing:
        j = frames - i - 1
        return amplitude * math.sin(2 * 3.14 * i / frames), amplitude * math.sin(2 * 3.14 * j / frames)
    y = amplitude * math.sin(2 * math.pi * i / frames)
    return y, -y


def reconstruction_loss(
    fake: torch.Tensor,
    real: torch.Tensor,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``MSE(fake, real)`` plus the mean of ``perceptual(fake, real)`` when given (LPIPS in the paper, weight 1).
    EG3D sums this at the neural-rendering and the super-resolved size (one call each)."""
    _check_images("fake", fake)
    check_shape("real", real, list(fake.shape))
    check_finite("real", real)
    return _rec(fake, real, perceptual)


def _rec(
    fake: torch.Tensor, real: torch.Tensor, perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    loss = F.mse_loss(fake, real)
    if perceptual is not None:
        loss = loss + perceptual(fake, real).mean()
    return loss


def _embed(features: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    e = features(images)
    if not isinstance(e, torch.Tensor) or e.dim() < 2 or e.shape[0] != images.shape[0]:
        got = list(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise PriorkitError(f"features(images) must return an embedding [batch, dim], got {got}")
    return e.flatten(1)


def symmetry_loss(
    features: Callable[[torch.Tensor], torch.Tensor], image1: torch.Tensor, image2: torch.Tensor
) -> torch.Tensor:
    """``L_sym = 1 - mean_b cos(phi(I1_b), phi(flip(I2_b)))``: renders of one latent from mirrored poses must show
    the same identity once the second is flipped left-right (the last axis)."""
    _check_images("image1", image1)
    check_shape("image2", image2, list(image1.shape))
    check_finite("image2", image2)
    return _sym(features, image1, image2)


def _sym(features: Callable[[torch.Tensor], torch.Tensor], image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
    e1 = _embed(features, image1)
    e2 = _embed(features, torch.flip(image2, dims=[-1]))
    return 1.0 - F.cosine_similarity(e1, e2, dim=1).mean()


def identity_loss(
    features: Callable[[torch.Tensor], torch.Tensor], fake: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """``L_id = 1 - mean_b cos(phi(G(w_b, c_b)), phi(x_b))`` (the optional identity term)."""
    _check_images("fake", fake)
    check_shape("real", real, list(fake.shape))
    check_finite("real", real)
    return _idl(features, fake, real)


def _idl(features: Callable[[torch.Tensor], torch.Tensor], fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(_embed(features, fake), _embed(features, real), dim=1).mean()


def _check_images(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise PriorkitError(f"{name} must be a torch.Tensor of images [batch, C, H, W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[0] == 0:
        raise PriorkitError(f"{name} must be a non-empty batch of images [batch, C, H, W], got {list(x.shape)}")
    if not x.is_floating_point():
        raise PriorkitError(f"{name} must be floating point, got dtype {x.dtype}")
    check_finite(name, x)


def lazy_adam(
    params: Any, lr: float = 0.0025, betas: tuple[float, float] = (0.0, 0.99), eps: float = 1e-8, interval: int = 4
) -> torch.optim.Adam:
    """StyleGAN2's optimizer under lazy regularisation: Adam with ``lr * m`` and ``betas ** m``,
    ``m = interval / (interval + 1)``, shared by the main step and the every-``interval`` regulariser steps."""
    check_range("lr", lr, 0.0, low_inclusive=False)
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise PriorkitError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        check_range(f"betas[{i}]", b, 0.0, 1.0, high_inclusive=False)
    check_range("eps", eps, 0.0, low_inclusive=False)
    check_positive_int("interval", interval)
    m = interval / (interval + 1)
    return torch.optim.Adam(params, lr=lr * m, betas=(betas[0] ** m, betas[1] ** m), eps=eps)


def parameter_accounting(model: nn.Module) -> dict[str, int | float]:
    """Parameters per identity: ``adapter`` (LoRA tensors, the ``lora_`` names), ``full`` (every other parameter:
    what full fine-tuning trains) and ``ratio = full / adapter`` (the paper: about 31 M / 0.6 M)."""
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    full = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return {"adapter": adapter, "full": full, "ratio": full / adapter if adapter else math.inf}


def _draw_seed(seed: int, step: int) -> int:
    """Seed of a step's pose pair: a function of ``(seed, step)`` only (same on every rank and after a resume)."""
    return (int(seed) * 1_000_003 + int(step) + 7) % (2**63 - 1)


# ------------------------------------------------------------------------------------------------------- entry


class My3DGen(nn.Module):
    """A personalised generator: anchors ``(w_i, yaw_i)`` of one identity, an adapted copy of ``generator`` and a
    frozen identity network ``features``.

    ``generator(w [B, d], yaw [B]) -> images [B, C, H, W]`` is any renderer (the paper's EG3D with cameras built
    from the pose; a conditional conv generator in the CPU check). ``features(images) -> [B, D]`` is any identity
    embedding (ArcFace in the paper). ``poses`` [N] are the anchors' yaws; ``w_init`` ([d] or [N, d]) starts the
    latent projection (the mean latent, as EG3D's projector). ``adapter``: ``"lora"`` (PEFT LoRA on every
    ``nn.Linear``/``nn.Conv2d``, :func:`lora_config`), ``"full"`` (full fine-tuning) or ``"none"`` (latent fit only).
    With ``"lora"`` the generator is wrapped in place by ``peft.get_peft_model`` (pass a copy to keep the base).
    """

    def __init__(
        self,
        generator: nn.Module,
        features: nn.Module,
        poses: torch.Tensor,
        *,
        w_init: torch.Tensor,
        adapter: str = "lora",
        r: int = 1,
        lora_alpha: float = 1.0,
        target_modules: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        for name, m in (("generator", generator), ("features", features)):
            if not isinstance(m, nn.Module):
                raise PriorkitError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
        check_choice("adapter", adapter, ADAPTERS)
        if not isinstance(poses, torch.Tensor) or poses.dim() != 1 or len(poses) == 0:
            got = list(poses.shape) if isinstance(poses, torch.Tensor) else type(poses).__name__
            raise PriorkitError(f"poses must be a non-empty 1-D tensor of anchor yaws [N], got {got}")
        if not poses.is_floating_point():
            raise PriorkitError(f"poses must be floating point (yaw in radians), got dtype {poses.dtype}")
        check_finite("poses", poses)
        if not isinstance(w_init, torch.Tensor) or w_init.dim() not in (1, 2) or w_init.shape[-1] == 0:
            got = list(w_init.shape) if isinstance(w_init, torch.Tensor) else type(w_init).__name__
            raise PriorkitError(f"w_init must be a latent [d] or one per anchor [N, d], got {got}")
        if w_init.dim() == 2:
            check_shape("w_init", w_init, [len(poses), None])
        check_finite("w_init", w_init)
        n = len(poses)
        self.adapter = adapter
        if adapter == "lora":
            from peft import get_peft_model

            generator = get_peft_model(generator, lora_config(generator, r, lora_alpha, target_modules))
        self.generator = generator
        self.features = features.eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("poses", poses.detach().clone().float())
        w = w_init.detach().float()
        self.latents = nn.Parameter((w.unsqueeze(0).expand(n, -1) if w.dim() == 1 else w).clone())

    # ------------------------------------------------------------------------------------------- model API
    @property
    def num_anchors(self) -> int:
        return int(self.poses.shape[0])

    def train(self, mode: bool = True) -> My3DGen:
        """Set the generator's mode; the identity network always stays in eval mode (frozen)."""
        super().train(mode)
        self.features.eval()
        return self

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``latents`` (the anchors' w), ``adapter`` (LoRA tensors) and ``generator`` (every other generator
        weight); the identity network is in none (never trained)."""
        named = list(self.generator.named_parameters())
        return {
            "latents": [self.latents],
            "adapter": [p for n, p in named if "lora_" in n],
            "generator": [p for n, p in named if "lora_" not in n],
        }

    def render(self, w: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """``G(w, yaw)`` of the (adapted) generator for latents ``[B, d]`` and yaws ``[B]``."""
        return self.generator(w, yaw)

    def forward(self, index: torch.Tensor, yaw: torch.Tensor | None = None) -> torch.Tensor:
        """Renders of the anchors ``index`` at their own poses (or at ``yaw`` [B])."""
        if index.dim() != 1 or (len(index) and (int(index.min()) < 0 or int(index.max()) >= self.num_anchors)):
            raise PriorkitError(f"anchor index must be a 1-D tensor in [0, {self.num_anchors - 1}], got {index}")
        return self.generator(self.latents[index], self.poses[index] if yaw is None else yaw)

    def anchors(self, images: torch.Tensor) -> IndexedTensorDataset:
        """The engine's training set: ``(x_i, i, i)`` for the anchor images ``[N, C, H, W]`` in pose order."""
        _check_images("images", images)
        if images.shape[0] != self.num_anchors:
            raise PriorkitError(
                f"images must hold one image per anchor pose ({self.num_anchors}), got {images.shape[0]}"
            )
        return IndexedTensorDataset(images, torch.arange(self.num_anchors))

    def parameter_accounting(self) -> dict[str, int | float]:
        """:func:`parameter_accounting` of the generator, plus ``trained``: what this variant trains per identity
        besides the latents (adapter, full generator, or nothing)."""
        acc = parameter_accounting(self.generator)
        acc["trained"] = {"lora": acc["adapter"], "full": acc["full"], "none": 0}[self.adapter]
        return acc

    # ------------------------------------------------------------------------------------------- recipe
    def recipe(
        self,
        *,
        project_epochs: int = 100,
        tune_epochs: int = 100,
        project_lr: float = 0.01,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.0, 0.99),
        eps: float = 1e-8,
        lazy_interval: int = 4,
        sym_weight: float = 1.0,
        id_weight: float = 0.0,
        yaw_amplitude: float = 0.35,
        official_pairing: bool = False,
        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> Recipe:
        """The personalisation: ``project`` (latents only, frozen generator, Adam ``project_lr``, MSE) then, unless
        ``adapter == "none"``, ``tune`` (latents fixed; adapter or whole generator) with :func:`lazy_adam`: every
        step ``L_rec``; every ``lazy_interval``-th step (from the phase's first) ``id_weight * L_id`` then
        ``sym_weight * L_sym`` on the batch's latents and one :func:`mirror_yaw_pair` (each its own optimizer
        step, as the official phases Gmain, Gid_reg, Gsym_reg). A weight of 0 turns its term off."""
        check_positive_int("project_epochs", project_epochs, 0)
        check_positive_int("tune_epochs", tune_epochs, 0)
        check_range("project_lr", project_lr, 0.0, low_inclusive=False)
        check_positive_int("lazy_interval", lazy_interval)
        check_range("sym_weight", sym_weight, 0.0)
        check_range("id_weight", id_weight, 0.0)
        check_range("yaw_amplitude", yaw_amplitude, 0.0, low_inclusive=False)
        lazy_adam([torch.zeros(1, requires_grad=True)], lr, betas, eps, lazy_interval)  # validates the settings
        phases: list[Phase] = []
        if project_epochs:
            phases.append(
                Phase(
                    "project",
                    epochs=project_epochs,
                    trainable=["latents"],
                    optimizer=lambda m: torch.optim.Adam([m.latents], lr=project_lr),
                    forward=lambda net, b: net(b.index),
                    loss=lambda s, b: {"rec": _rec(b.output, b.x, perceptual)},  # the engine names a NaN
                )
            )
        if tune_epochs and self.adapter != "none":
            step = _TuneStep(lazy_interval, sym_weight, id_weight, yaw_amplitude, official_pairing, perceptual)
            phases.append(
                Phase(
                    "tune",
                    epochs=tune_epochs,
                    trainable=["adapter" if self.adapter == "lora" else "generator"],
                    optimizer=lambda m: lazy_adam(
                        [p for p in m.parameters() if p.requires_grad], lr, betas, eps, lazy_interval
                    ),
                    loss=step,
                    manual=True,
                )
            )
        if not phases:
            raise PriorkitError("the recipe has no phase: give project_epochs > 0 or (with an adapter) tune_epochs > 0")
        return Recipe(phases, loss_fn=None)


class _TuneStep:
    """The manual ``tune`` step: main reconstruction step, then the lazy identity and symmetry steps."""

    def __init__(
        self,
        interval: int,
        sym_weight: float,
        id_weight: float,
        amplitude: float,
        official_pairing: bool,
        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.interval, self.sym_weight, self.id_weight = interval, sym_weight, id_weight
        self.amplitude, self.official_pairing, self.perceptual = amplitude, official_pairing, perceptual

    def _step(self, state: RunState, name: str, loss: torch.Tensor) -> None:
        check_finite_losses({name: loss}, state.step)  # before any update: a NaN never reaches the weights
        opt = state.optimizer
        opt.zero_grad(set_to_none=True)
        state.backward(loss)
        opt.step()

    def __call__(self, state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        model: My3DGen = state.model  # type: ignore[assignment]
        rec = _rec(state.net(batch.index), batch.x, self.perceptual)
        self._step(state, "rec", rec)
        k = state.phase_epoch * state.steps_per_epoch + state.batch_in_epoch  # the phase's step counter
        if k % self.interval == 0:
            if self.id_weight > 0:
                lid = _idl(model.features, state.net(batch.index), batch.x)
                self._step(state, "id", self.id_weight * lid)
                state.log(id=float(lid.detach()))
            if self.sym_weight > 0:
                g = torch.Generator().manual_seed(_draw_seed(state.config.seed, state.step))
                y1, y2 = mirror_yaw_pair(g, amplitude=self.amplitude, official_pairing=self.official_pairing)
                n = len(batch.index)
                yaw = torch.tensor([y1] * n + [y2] * n, device=model.poses.device)
                i1, i2 = state.net(torch.cat([batch.index, batch.index]), yaw).split(n)  # one forward (DDP)
                lsym = _sym(model.features, i1, i2)
                self._step(state, "sym", self.sym_weight * lsym)
                state.log(sym=float(lsym.detach()))
        return {"rec": rec.detach()}
