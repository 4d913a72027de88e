"""The one weight-mask mechanism of the sparsity family: boolean masks attached with ``torch.nn.utils.parametrize``.

Every method that zeroes weights (GMP, PDP's hard phase, essential sparsity, GraNet, PGF N:M, ISS-P, lottery
tickets, ...) holds its masks in a :class:`MaskSet`: one :class:`WeightMask` parametrization per layer
(``W -> W * mask``) whose boolean ``mask`` buffer lives in the model's ``state_dict``, so every checkpoint the
engine writes carries the masks and a resumed run restores them. Granularities (:class:`Granularity`):

- ``unstructured``: exactly ``floor(s * n)`` zeros per layer (``scope='layer'``) or in total (``scope='global'``),
  the smallest scores first, ties broken by position;
- ``nm``: in every group of ``M`` consecutive input weights the ``N`` largest scores are kept (the sparsity is
  ``1 - N/M`` by construction);
- ``channel``: whole output channels (rows of a Linear, filters of a Conv) are zeroed, exactly
  ``floor(s * out)`` of them per layer, ranked by the L2 norm of their scores (global scope ranks the per-weight
  mean square, so layers of different fan-in compare fairly). The layer's bias is masked with its channel, so a
  pruned channel outputs exactly zero and removing it physically
  (:func:`priorkit.sparsity.physical.remove_pruned_channels`) leaves the network's function unchanged.

Stacking rule (DESIGN principle 3): a weight carries at most one priorkit mask owner, and a mask is only
stacked with another parametrization of the same tensor when every parametrization involved declares
``composable = True`` (:func:`attach_parametrization` enforces it for every parametrization the family
registers). Under DDP, :meth:`MaskSet.set` broadcasts the masks from rank 0, so ranks never diverge even when a
method's mask update is random or sensitive to float noise.

Library parts considered: ``torch.ao.pruning``'s ``FakeSparsity`` is the same parametrization, but it leaves the
mask out of the module's ``state_dict`` on purpose (its sparsifier keeps masks elsewhere), which breaks the
engine's checkpoint contract, and its sparsifiers discover only ``nn.Linear``; its cubic schedule and its
``zeros_per_block`` N:M masks are the references the tests compare :func:`priorkit.sparsity._common.cubic_sparsity`
and the ``nm`` granularity against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize

from priorkit.core.errors import (
    HookConflictError,
    PriorkitError,
    check_choice,
    check_finite,
    check_positive_int,
    check_sparsity,
)
from priorkit.nn.distributed import is_dist
from priorkit.sparsity._common import (
    global_magnitude_masks,
    magnitude_keep_mask,
    nm_groups,
    nm_keep_mask,
    prunable_layers,
)

__all__ = [
    "GRANULARITIES",
    "Granularity",
    "MaskSet",
    "WeightMask",
    "attach_parametrization",
    "keep_masks",
    "raw_weight",
]

GRANULARITIES = ("unstructured", "nm", "channel")
SCOPES = ("layer", "global")


@dataclass(frozen=True)
class Granularity:
    """What one mask entry decides: a weight (``unstructured``), ``N`` of ``M`` input weights (``nm``), or an
    output channel (``channel``)."""

    kind: str = "unstructured"
    n: int | None = None
    m: int | None = None

    def __post_init__(self) -> None:
        check_choice("granularity", self.kind, GRANULARITIES)
        if self.kind == "nm":
            if self.n is None or self.m is None:
                raise PriorkitError("granularity 'nm' needs n and m (keep n of every m input weights)")
            check_positive_int("n", self.n)
            check_positive_int("m", self.m, 2)
            if not self.n < self.m:
                raise PriorkitError(f"N:M needs 0 < n < m, got n={self.n}, m={self.m}")
        elif self.n is not None or self.m is not None:
            raise PriorkitError(f"n and m are only for granularity 'nm', got granularity {self.kind!r}")

    @property
    def sparsity(self) -> float | None:
        """The sparsity the granularity fixes by itself (``1 - N/M``), else ``None``."""
        return 1.0 - self.n / self.m if self.kind == "nm" else None  # type: ignore[operator]

    def check_layer(self, name: str, weight: torch.Tensor) -> None:
        """Refuse a layer the granularity cannot mask (N:M needs ``in`` divisible by ``M``; >= 2 dims)."""
        if self.kind != "unstructured" and weight.dim() < 2:
            raise PriorkitError(f"granularity {self.kind!r} needs a weight with >= 2 dims; layer {name!r} has "
                                f"shape {list(weight.shape)}")  # fmt: skip
        if self.kind == "nm" and weight.shape[1] % self.m:  # type: ignore[operator]
            raise PriorkitError(
                f"granularity 'nm' with m={self.m} needs in_features divisible by m; layer {name!r} has "
                f"{weight.shape[1]} (exclude it with include=...)"
            )


def _as_granularity(granularity: str | Granularity, n: int | None, m: int | None) -> Granularity:
    if isinstance(granularity, Granularity):
        if n is not None or m is not None:
            raise PriorkitError("pass n and m inside the Granularity, not beside it")
        return granularity
    return Granularity(granularity, n, m)


def _channel_keep(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    norms = scores.flatten(1).pow(2).sum(dim=1)
    keep = magnitude_keep_mask(norms, sparsity)
    return keep.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores).clone()


def keep_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float] | None = None,
    granularity: str | Granularity = "unstructured",
    *,
    n: int | None = None,
    m: int | None = None,
    scope: str = "layer",
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks from importance ``scores`` (higher = more important; ``|w|`` for magnitude pruning).

    ``sparsity`` is one fraction, or one per layer (``scope='layer'`` only); with ``nm`` it must be ``None`` or
    equal ``1 - n/m``. Exact counts: ``floor(s * numel)`` zeros (unstructured), ``floor(s * out)`` channels.
    """
    g = _as_granularity(granularity, n, m)
    check_choice("scope", scope, SCOPES)
    if not scores:
        raise PriorkitError("scores must hold at least one tensor")
    for name, s in scores.items():
        if not isinstance(s, torch.Tensor) or not s.is_floating_point():
            raise PriorkitError(f"scores[{name!r}] must be a floating-point tensor")
        check_finite(f"scores[{name!r}]", s.detach())
        g.check_layer(name, s)
    if g.kind == "nm":
        if sparsity is not None and not (isinstance(sparsity, float | int) and math.isclose(sparsity, g.sparsity)):
            raise PriorkitError(f"granularity 'nm' fixes the sparsity at 1 - n/m = {g.sparsity}; got {sparsity!r}")
        return {name: nm_keep_mask(s, g.n, g.m) for name, s in scores.items()}  # type: ignore[arg-type]
    if sparsity is None:
        raise PriorkitError(f"granularity {g.kind!r} needs a sparsity in [0, 1)")
    if isinstance(sparsity, Mapping):
        if scope == "global":
            raise PriorkitError("per-layer sparsities need scope='layer' (a global ranking has one budget)")
        missing = sorted(set(scores) - set(sparsity))
        if missing:
            raise PriorkitError(f"sparsity has no value for layer(s) {missing}")
        per = {name: check_sparsity(f"sparsity[{name!r}]", float(sparsity[name])) for name in scores}
    else:
        per = dict.fromkeys(scores, check_sparsity("sparsity", float(sparsity)))
    s_detached = {name: s.detach() for name, s in scores.items()}
    if scope == "global":
        s0 = next(iter(per.values()))
        if g.kind == "unstructured":
            return global_magnitude_masks(s_detached, s0)
        # global channel ranking on the mean square per weight of each channel
        ch = {name: s.flatten(1).pow(2).mean(dim=1) for name, s in s_detached.items()}
        keep = global_magnitude_masks(ch, s0)
        return {name: keep[name].view(-1, *([1] * (s.dim() - 1))).expand_as(s).clone() for name, s in
                s_detached.items()}  # fmt: skip
    if g.kind == "unstructured":
        return {name: magnitude_keep_mask(s, per[name]) for name, s in s_detached.items()}
    return {name: _channel_keep(s, per[name]) for name, s in s_detached.items()}


class WeightMask(nn.Module):
    """The parametrization ``W -> W * mask``: pruned weights are exactly zero in the forward and get no gradient.

    ``mask`` is a boolean buffer (saved in the model's ``state_dict``); ``owner`` names the method that set it.
    """

    composable = True  # a fixed 0/1 multiplication stacks with another composable parametrization

    def __init__(self, mask: torch.Tensor, owner: str = "mask") -> None:
        super().__init__()
        self.owner = owner
        self.register_buffer("mask", mask.to(torch.bool).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)

    def extra_repr(self) -> str:
        return f"owner={self.owner!r}, density={float(self.mask.float().mean()):.4f}"


def raw_weight(layer: nn.Module, tensor: str = "weight") -> torch.Tensor:
    """The trainable tensor under any parametrization (the weight itself when none is attached)."""
    if parametrize.is_parametrized(layer, tensor):
        return getattr(layer.parametrizations, tensor).original  # type: ignore[union-attr]
    return getattr(layer, tensor)


def parametrizations_of(layer: nn.Module, tensor: str = "weight") -> list[nn.Module]:
    """The parametrizations attached to ``layer.<tensor>``, in order (empty when none)."""
    if not parametrize.is_parametrized(layer, tensor):
        return []
    return list(getattr(layer.parametrizations, tensor))  # type: ignore[union-attr]


def attach_parametrization(layer: nn.Module, parametrization: nn.Module, *, tensor: str = "weight",
                           where: str = "layer") -> None:  # fmt: skip
    """Register ``parametrization`` on ``layer.<tensor>``, refusing to stack it on another one unless both declare
    ``composable = True`` (the family's single entry point for weight parametrizations)."""
    existing = parametrizations_of(layer, tensor)
    if existing:
        new_ok = bool(getattr(parametrization, "composable", False))
        blocking = [type(p).__name__ for p in existing if not getattr(p, "composable", False)]
        if blocking or not new_ok:
            who = blocking or [type(parametrization).__name__]
            raise HookConflictError(
                f"{where}.{tensor} already has parametrization(s) {[type(p).__name__ for p in existing]}; "
                f"stacking {type(parametrization).__name__} is refused because {who} do(es) not declare "
                "composable = True (remove the other method's parametrization first, or declare it composable)"
            )
    parametrize.register_parametrization(layer, tensor, parametrization)


class MaskSet:
    """Boolean masks on the prunable layers of ``model`` (``nn.Linear``/``Conv1d``/``Conv2d``), owned by one method.

    ``attach()`` registers all-ones :class:`WeightMask` parametrizations (a layer already masked by the same owner
    is reused, e.g. after a resume; another owner's mask is refused). ``update(sparsity, scores)`` computes and sets
    masks at the set's granularity; ``set(masks)`` sets given ones (validated, broadcast from rank 0 under DDP).
    Hooks call ``attach()`` in ``on_fit_start`` so the checkpoint restored after it fills the masks.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        owner: str = "mask",
        granularity: str | Granularity = "unstructured",
        n: int | None = None,
        m: int | None = None,
        include: Callable[[str, nn.Module], bool] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(owner, str) or not owner:
            raise PriorkitError(f"owner must be a non-empty string naming the method, got {owner!r}")
        self.owner = owner
        self.granularity = _as_granularity(granularity, n, m)
        self.layers = prunable_layers(model, include)
        for name, layer in self.layers.items():
            self.granularity.check_layer(name, raw_weight(layer))

    # ------------------------------------------------------------------ structure
    def _mask_module(self, name: str) -> WeightMask | None:
        for p in parametrizations_of(self.layers[name]):
            if isinstance(p, WeightMask):
                return p
        return None

    def attach(self) -> MaskSet:
        """Attach all-ones masks (idempotent for this owner; refused on a layer another owner masks)."""
        for name, layer in self.layers.items():
            existing = self._mask_module(name)
            if existing is not None:
                if existing.owner != self.owner:
                    raise HookConflictError(
                        f"layer {name!r} is already masked by {existing.owner!r}; {self.owner!r} cannot mask it too"
                    )
                continue
            w = raw_weight(layer)
            attach_parametrization(layer, WeightMask(torch.ones_like(w, dtype=torch.bool), self.owner), where=name)
            if self._masks_bias(layer):
                b = raw_weight(layer, "bias")
                attach_parametrization(layer, WeightMask(torch.ones_like(b, dtype=torch.bool), self.owner),
                                       tensor="bias", where=name)  # fmt: skip
        return self

    def _masks_bias(self, layer: nn.Module) -> bool:
        return self.granularity.kind == "channel" and getattr(layer, "bias", None) is not None

    def _write(self, name: str, mask: torch.Tensor) -> None:
        self._mask_module(name).mask.copy_(mask)  # type: ignore[union-attr]
        layer = self.layers[name]
        if self._masks_bias(layer):
            for p in parametrizations_of(layer, "bias"):
                if isinstance(p, WeightMask):
                    p.mask.copy_(mask.flatten(1).any(dim=1))

    @property
    def attached(self) -> bool:
        return all(self._mask_module(n) is not None for n in self.layers)

    def _require(self) -> None:
        if not self.attached:
            raise PriorkitError(f"{self.owner}: masks are not attached (call attach() first, or on_fit_start)")

    # ------------------------------------------------------------------ masks
    def weights(self) -> dict[str, torch.Tensor]:
        """The raw (unmasked) trainable weights by layer name."""
        return {n: raw_weight(m) for n, m in self.layers.items()}

    def masks(self) -> dict[str, torch.Tensor]:
        """A copy of the current boolean masks."""
        self._require()
        return {n: self._mask_module(n).mask.clone() for n in self.layers}  # type: ignore[union-attr]

    def compute(
        self,
        sparsity: float | Mapping[str, float] | None = None,
        scores: Mapping[str, torch.Tensor] | None = None,
        *,
        scope: str = "layer",
    ) -> dict[str, torch.Tensor]:
        """Keep-masks at this set's granularity from ``scores`` (default: ``|raw weight|``); nothing is changed."""
        if scores is None:
            scores = {n: w.detach().abs() for n, w in self.weights().items()}
        else:
            unknown = sorted(set(scores) - set(self.layers))
            if unknown or set(scores) != set(self.layers):
                raise PriorkitError(f"scores must name exactly the masked layers {sorted(self.layers)}; got "
                                    f"{sorted(scores)}")  # fmt: skip
        return keep_masks(scores, sparsity, self.granularity, scope=scope)

    def set(self, masks: Mapping[str, torch.Tensor], *, sync: bool = True) -> None:
        """Set the given masks (a subset of the layers is fine); validated before any changes."""
        self._require()
        unknown = sorted(set(masks) - set(self.layers))
        if unknown:
            raise PriorkitError(f"masks name unknown layer(s) {unknown}; masked layers are {sorted(self.layers)}")
        for name, mk in masks.items():
            w = raw_weight(self.layers[name])
            if not isinstance(mk, torch.Tensor) or tuple(mk.shape) != tuple(w.shape):
                shape = list(mk.shape) if isinstance(mk, torch.Tensor) else type(mk).__name__
                raise PriorkitError(f"mask for layer {name!r} must have the weight's shape {list(w.shape)}, got "
                                    f"{shape}")  # fmt: skip
            if mk.dtype != torch.bool:
                raise PriorkitError(f"mask for layer {name!r} must be a bool tensor, got dtype {mk.dtype}")
            if self.granularity.kind == "channel":
                rows = mk.flatten(1)
                if not bool((rows.all(dim=1) | ~rows.any(dim=1)).all()):
                    raise PriorkitError(f"mask for layer {name!r} is not channel-structured (granularity 'channel' "
                                        "keeps or prunes whole output channels)")  # fmt: skip
        for name, mk in masks.items():
            self._write(name, mk)
        if sync:
            self.sync()

    def update(
        self,
        sparsity: float | Mapping[str, float] | None = None,
        scores: Mapping[str, torch.Tensor] | None = None,
        *,
        scope: str = "layer",
    ) -> dict[str, torch.Tensor]:
        """Compute and set the masks (see :meth:`compute`); returns them."""
        masks = self.compute(sparsity, scores, scope=scope)
        self.set(masks)
        return masks

    def sync(self) -> None:
        """Broadcast every mask from rank 0 (a no-op outside ``torch.distributed``)."""
        if not is_dist():
            return
        for name in self.layers:
            mod = self._mask_module(name)
            buf = mod.mask.to(torch.uint8)  # type: ignore[union-attr]
            dist.broadcast(buf, src=0)
            self._write(name, buf.bool())

    @torch.no_grad()
    def zero_pruned_(self) -> None:
        """Set the raw weights under the mask to exactly zero (a regrown weight then starts from zero)."""
        for name, w in self.weights().items():
            mask = self._mask_module(name).mask  # type: ignore[union-attr]
            w.mul_(mask.to(w.dtype))
            if self._masks_bias(self.layers[name]):
                b = raw_weight(self.layers[name], "bias")
                b.mul_(mask.flatten(1).any(dim=1).to(b.dtype))

    def density(self) -> dict[str, float]:
        """Fraction of kept weights per layer."""
        return {n: float(mk.float().mean()) for n, mk in self.masks().items()}

    def sparsity(self) -> float:
        """Fraction of masked weights over all layers of the set."""
        masks = self.masks()
        total = sum(mk.numel() for mk in masks.values())
        return 1.0 - sum(int(mk.sum()) for mk in masks.values()) / total

    def remove(self, *, bake: bool = True) -> None:
        """Remove this owner's masks; ``bake=True`` leaves the masked weights (zeros stay zeros)."""
        for name, layer in self.layers.items():
            for tensor in ("weight", "bias"):
                plist = parametrizations_of(layer, tensor)
                if not any(isinstance(p, WeightMask) and p.owner == self.owner for p in plist):
                    continue
                if len(plist) > 1:
                    raise HookConflictError(
                        f"layer {name!r} carries {len(plist)} parametrizations on its {tensor}; remove the others "
                        "before the mask"
                    )
                parametrize.remove_parametrizations(layer, tensor, leave_parametrized=bake)


def nm_valid(mask: torch.Tensor, n: int, m: int) -> bool:
    """Whether ``mask`` keeps exactly ``n`` of every ``m`` consecutive input weights."""
    return bool((nm_groups(mask.float(), m).sum(dim=1) == n).all())
