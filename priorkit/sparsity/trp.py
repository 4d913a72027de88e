"""Trained Rank Pruning for Efficient Deep Neural Networks, Xu et al., IJCAI 2020 (EMC2 workshop 2019).

Makes convolutions low-rank *during* training so that the SVD factorisation afterwards costs almost no accuracy:
every ``m`` iterations, before the forward pass, each target conv's reshaped weight ``W~`` is replaced in place by
its rank-``r`` SVD reconstruction, ``r`` the smallest rank keeping an energy fraction ``e`` of ``sum sigma^2``
(the ranks are learnt, not set); in the same iterations a stochastic sub-gradient of the nuclear norm
``lambda ||W~||_*`` is added to the gradient, ``lambda U_r V_r^T`` (the released code's truncated factors).
After training each target conv is factorised (singular values above a value threshold) into two convs:

- channel-wise ``nc``: ``W~ = reshape(W, N, C kh kw) = U S V^T`` -> conv ``C -> r`` (kh x kw, the layer's stride,
  padding, dilation; weight ``S^1/2 V_r^T``) then 1x1 conv ``r -> N`` (``U_r S^1/2``, the bias);
- spatial-wise ``vh``: ``W~ = reshape(permute(W, (C, kh, N, kw)), C kh, N kw) = V S H^T`` -> vertical conv
  ``C -> r`` (kh x 1) then horizontal conv ``r -> N`` (1 x kw; weight ``S H^T``, the bias).

MACs per output pixel: original ``N C k^2``; ``nc``: ``r C k^2 + r N``; ``vh``: ``C r kh + N r kw``.
Target layers (code): every ``Conv2d`` with a kernel other than 1x1 except the first such conv.

Deviations from the released code, each a bug fix the card lists: the value threshold counts ``sigma >= T``
(the code's ``ValueThreshold`` returns ``len - 1`` whenever any sigma is below T); the factorised first conv keeps
the layer's own padding, stride and dilation (the code hard-codes padding 1); strided convs are factorised exactly
(stride on the factors) but, as in the code, only stride-1 convs are replaced unless ``include_strided=True``.
Network decoupling (``ND``) and FC factorisation are not built. Under DDP the projected weights are broadcast from
rank 0 (the SVD may differ in the last ulp between ranks).

Library parts: Composer's ``factorize`` is post-hoc factorisation (TRP's baseline, not its training), and
``torch.linalg.svd`` does the math; the reshapes and the two-conv modules are written here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range
from priorkit.core.spec import MethodSpec
from priorkit.nn.distributed import is_dist
from priorkit.train.engine import RunState
from priorkit.train.hooks import Batch, Hook

__all__ = [
    "TRP",
    "conv_macs",
    "energy_rank",
    "factorize_conv",
    "nuclear_subgradient",
    "project_low_rank",
    "to_matrix",
    "trp_decompose",
    "trp_targets",
    "value_rank",
]

SCHEMES = ("nc", "vh")

SPEC = MethodSpec(
    status="implemented",
    entry="TRP",
    missing="network decoupling (ND) and FC-layer factorisation not built (the card's 'later'); no ImageNet/CIFAR "
    "ResNets: the check is a 5-conv CNN on 16x16 scikit-learn digits; MACs are counted, CPU time of the "
    "factorised layers is in `priorkit speed` (low-rank rows)",
    presets={
        # the released code / README: energy 0.9 (newest loop), period 1 (5 in the shipped ND script), lambda 3e-4
        "paper": {"energy": 0.9, "period": 1, "nuclear_weight": 3e-4, "scheme": "nc"},
        # the card's small check: NC, m = 5, e = 0.9, lambda = 3e-4
        "small": {"energy": 0.9, "period": 5, "nuclear_weight": 3e-4, "scheme": "nc"},
    },
)


# ------------------------------------------------------------------------------------------------ functional core
def _check_conv_weight(w: torch.Tensor) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 4 or not w.is_floating_point():
        got = list(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise PriorkitError(f"w must be a floating Conv2d weight [N, C, kh, kw], got {got}")


def to_matrix(w: torch.Tensor, scheme: str = "nc") -> torch.Tensor:
    """The reshaped weight ``W~``: ``[N, C kh kw]`` (``nc``) or ``[C kh, N kw]`` (``vh``)."""
    check_choice("scheme", scheme, SCHEMES)
    _check_conv_weight(w)
    n, c, kh, kw = w.shape
    if scheme == "nc":
        return w.reshape(n, c * kh * kw)
    return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)


def from_matrix(m: torch.Tensor, shape: torch.Size | tuple[int, ...], scheme: str = "nc") -> torch.Tensor:
    """Inverse of :func:`to_matrix`."""
    n, c, kh, kw = shape
    if scheme == "nc":
        return m.reshape(n, c, kh, kw)
    return m.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """Smallest ``k`` with ``sum_{i<=k} sigma_i^2 / sum_i sigma_i^2 >= energy`` (``s`` descending); 0 if all zero."""
    check_range("energy", energy, 0.0, 1.0, low_inclusive=False)
    e = s.double().pow(2)
    total = float(e.sum())
    if total == 0.0:
        return 0
    frac = torch.cumsum(e, 0) / total
    return min(int((frac < energy - 1e-12).sum()) + 1, len(s))


def value_rank(s: torch.Tensor, threshold: float) -> int:
    """``#{sigma >= threshold}`` (the intended rule of the code's ``ValueThreshold``)."""
    check_range("threshold", threshold, 0.0)
    return int((s >= threshold).sum())


def project_low_rank(w: torch.Tensor, energy: float, scheme: str = "nc") -> tuple[torch.Tensor, int]:
    """The rank-``r`` reconstruction of ``W~`` (``r`` by the energy rule), reshaped back; and ``r``."""
    mat = to_matrix(w.detach(), scheme)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = energy_rank(s, energy)
    return from_matrix((u[:, :r] * s[:r]) @ vh[:r], w.shape, scheme), r


def nuclear_subgradient(w: torch.Tensor, rank: int, scheme: str = "nc") -> torch.Tensor:
    """``reshape^-1(U_r V_r^T)``: the released code's (truncated) sub-gradient of ``||W~||_*``; Frobenius norm
    ``sqrt(r)``."""
    check_positive_int("rank", rank)
    mat = to_matrix(w.detach(), scheme)
    if rank > min(mat.shape):
        raise PriorkitError(f"rank must be <= {min(mat.shape)} for this weight, got {rank}")
    u, _, vh = torch.linalg.svd(mat, full_matrices=False)
    return from_matrix(u[:, :rank] @ vh[:rank], w.shape, scheme)


def factorize_conv(conv: nn.Conv2d, rank: int, scheme: str = "nc") -> nn.Sequential:
    """The two-conv factorisation of ``conv`` at ``rank`` (exact when ``rank`` is the rank of ``W~``)."""
    if not isinstance(conv, nn.Conv2d):
        raise PriorkitError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise PriorkitError(
            "factorize_conv needs groups=1 and numeric zero padding (got groups="
            f"{conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r})"
        )
    check_choice("scheme", scheme, SCHEMES)
    w = conv.weight.detach()
    n, c, kh, kw = w.shape
    mat = to_matrix(w, scheme)
    check_positive_int("rank", rank)
    if rank > min(mat.shape):
        raise PriorkitError(f"rank must be <= {min(mat.shape)} for this conv ({scheme}), got {rank}")
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    bias = conv.bias is not None
    if scheme == "nc":
        first = nn.Conv2d(c, rank, (kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), bias=False)
        second = nn.Conv2d(rank, n, 1, bias=bias)
        root = s[:rank].sqrt()
        with torch.no_grad():
            first.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, c, kh, kw))
            second.weight.copy_((u[:, :rank] * root).reshape(n, rank, 1, 1))
    else:
        first = nn.Conv2d(c, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False)
        second = nn.Conv2d(rank, n, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=bias)
        with torch.no_grad():
            first.weight.copy_(u[:, :rank].reshape(c, kh, rank).permute(2, 0, 1).unsqueeze(-1))
            second.weight.copy_((s[:rank, None] * vh[:rank]).reshape(rank, n, kw).permute(1, 0, 2).unsqueeze(2))
    if bias:
        with torch.no_grad():
            second.bias.copy_(conv.bias.detach())
    return nn.Sequential(first, second)


def macs_per_pixel(n: int, c: int, kh: int, kw: int, rank: int | None = None, scheme: str = "nc") -> int:
    """MACs per output pixel of the conv (``rank=None``) or of its factorisation (the card's formulas)."""
    if rank is None:
        return n * c * kh * kw
    return rank * c * kh * kw + rank * n if scheme == "nc" else c * rank * kh + n * rank * kw


def conv_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """MACs of every ``Conv2d`` of ``model`` on ``example_input`` (one sample's worth), by module name."""
    out: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):

            def hook(m: nn.Module, _i: Any, o: torch.Tensor, name: str = name) -> None:
                kh, kw = m.kernel_size
                pixels = o.shape[-1] * o.shape[-2]
                out[name] = pixels * m.out_channels * (m.in_channels // m.groups) * kh * kw

            handles.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    with torch.no_grad():
        model(example_input[:1])
    model.train(was)
    for h in handles:
        h.remove()
    return out


def trp_targets(model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None) -> dict[str, nn.Conv2d]:
    """The card's target layers: every ``Conv2d`` with a kernel other than 1x1 except the first such conv
    (``include(name, module)`` replaces the rule)."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    out = dict(convs[1:]) if include is None else {n: m for n, m in convs if include(n, m)}
    if not out:
        raise PriorkitError("TRP found no target conv (Conv2d with a kernel other than 1x1, after the first one)")
    return out


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def trp_decompose(
    model: nn.Module,
    *,
    scheme: str = "nc",
    threshold: str = "value",
    value: float = 0.05,
    energy: float = 0.9,
    include: Callable[[str, nn.Module], bool] | None = None,
    include_strided: bool = False,
    ranks: dict[str, int] | None = None,
) -> dict[str, dict[str, int]]:
    """Factorise the target convs of ``model`` in place (no fine-tuning); per layer: rank and MACs per pixel
    before/after. ``threshold='value'`` keeps ``sigma >= value``; ``'energy'`` the energy rule at ``energy``;
    ``ranks`` (by layer name) overrides both (e.g. another model's ranks, for a comparison at equal MACs).
    A layer whose factorisation would not reduce its MACs is left whole (reported with ``rank=-1``)."""
    check_choice("scheme", scheme, SCHEMES)
    check_choice("threshold", threshold, ("value", "energy"))
    targets = trp_targets(model, include)
    if ranks is not None:
        unknown = sorted(set(ranks) - set(targets))
        if unknown:
            raise PriorkitError(f"ranks name layer(s) {unknown} that are not TRP targets {sorted(targets)}")
    report: dict[str, dict[str, int]] = {}
    for name, conv in targets.items():
        if conv.stride != (1, 1) and not include_strided:
            continue
        n, c, kh, kw = conv.weight.shape
        if ranks is not None:
            if name not in ranks:
                continue
            r = ranks[name]
        else:
            s = torch.linalg.svdvals(to_matrix(conv.weight.detach(), scheme))
            r = value_rank(s, value) if threshold == "value" else energy_rank(s, energy)
        if r < 0:  # another model's "left whole"
            continue
        r = max(r, 1)
        before, after = macs_per_pixel(n, c, kh, kw), macs_per_pixel(n, c, kh, kw, r, scheme)
        if after >= before:
            report[name] = {"rank": -1, "macs_before": before, "macs_after": before}
            continue
        _set_module(model, name, factorize_conv(conv, r, scheme))
        report[name] = {"rank": r, "macs_before": before, "macs_after": after}
    return report


# ------------------------------------------------------------------------------------------------------- hook
class TRP(Hook):
    """TRP during training: every ``period`` batches (``batch_in_epoch % period == 0``, as the code's
    ``batch_idx % m``), before the forward, project each target conv to its energy rank; in the same iterations add
    ``nuclear_weight * U_r V_r^T`` to its gradient. ``trp=False`` with ``nuclear_weight > 0`` is the card's
    "Nu only" baseline (sub-gradient at the energy rank of the current weight, no projection).

    Presets: ``TRP(model, **SPEC.presets["small"])``. The projection edits weights in place (no parametrization),
    so it claims ``weight_projection``; it has no state of its own (the schedule is a function of the engine's
    batch counter), so a resumed run is exact.
    """

    claims = ("weight_projection",)

    def __init__(
        self,
        model: nn.Module,
        *,
        energy: float = 0.9,
        period: int = 1,
        nuclear_weight: float = 3e-4,
        scheme: str = "nc",
        trp: bool = True,
        include: Callable[[str, nn.Module], bool] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_range("energy", energy, 0.0, 1.0, low_inclusive=False)
        check_positive_int("period", period)
        check_range("nuclear_weight", nuclear_weight, 0.0)
        check_choice("scheme", scheme, SCHEMES)
        if not trp and nuclear_weight == 0:
            raise PriorkitError("TRP with trp=False needs nuclear_weight > 0 (the 'Nu only' baseline); else it does "
                                "nothing")  # fmt: skip
        self.energy, self.period, self.nuclear_weight, self.scheme, self.trp = (
            energy, period, nuclear_weight, scheme, trp)  # fmt: skip
        self.layers = trp_targets(model, include)
        self.ranks: dict[str, int] = {}
        self._subgrads: dict[str, torch.Tensor] = {}

    def _due(self, state: RunState) -> bool:
        return state.batch_in_epoch % self.period == 0

    def _svd(self, name: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        try:
            return torch.linalg.svd(to_matrix(w.detach(), self.scheme), full_matrices=False)
        except RuntimeError as err:  # the code's fallback: no projection, zero sub-gradient; said, not silent
            warnings.warn(f"TRP: SVD of layer {name!r} failed ({err}); skipped this iteration", stacklevel=2)
            return None

    @torch.no_grad()
    def transform_batch(self, state: RunState, batch: Batch) -> Batch:
        self._subgrads = {}
        if not self._due(state):
            return batch
        for name, conv in self.layers.items():
            w = conv.weight
            if not torch.isfinite(w).all():
                raise PriorkitError(f"TRP: weight of layer {name!r} is not finite; nothing was projected")
            svd = self._svd(name, w)
            if svd is None:
                continue
            u, s, vh = svd
            r = energy_rank(s, self.energy)
            if r == 0:  # all-zero weight: nothing to project
                continue
            self.ranks[name] = r
            if self.trp:
                w.copy_(from_matrix((u[:, :r] * s[:r]) @ vh[:r], w.shape, self.scheme))
                if is_dist():
                    dist.broadcast(w.data, src=0)
            if self.nuclear_weight > 0:
                self._subgrads[name] = from_matrix(u[:, :r] @ vh[:r], w.shape, self.scheme)
        return batch

    @torch.no_grad()
    def on_after_backward(self, state: RunState) -> None:
        for name, g in self._subgrads.items():
            w = self.layers[name].weight
            if w.grad is None:
                w.grad = self.nuclear_weight * g
            else:
                w.grad.add_(g, alpha=self.nuclear_weight)
        self._subgrads = {}

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": dict(self.ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ranks = {k: int(v) for k, v in state["ranks"].items()}


def rank_fraction(ranks: dict[str, int], layers: dict[str, nn.Conv2d], scheme: str = "nc") -> float:
    """Mean over layers of ``r / full rank`` (a progress measure of the projection)."""
    fr = [ranks[n] / min(to_matrix(layers[n].weight.detach(), scheme).shape) for n in ranks]
    return sum(fr) / len(fr) if fr else math.nan
