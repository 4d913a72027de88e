"""Intrinsic Dimensionality Explains the Effectiveness of Language Model Fine-Tuning, Aghajanyan, Zettlemoyer and
Gupta, ACL 2021 (SAID), with the direct intrinsic dimension (DID) of Li, Farkhoor, Liu and Yosinski, ICLR 2018.

Fine-tuning is run inside a random ``d``-dimensional subspace of the full parameter space: every weight of the
network is ``theta = theta0 + P(z)`` with the pretrained (or initial) ``theta0`` frozen, a fixed random projection
``P: R^d -> R^D`` and only ``z`` trained, starting from 0. The intrinsic dimension ``d90`` is the smallest ``d``
whose subspace solution reaches 90% of the full fine-tuning metric. The paper's finding: ``d90`` is tiny for
pretrained language models, falls as pre-training proceeds and as models grow, and the structure-aware variant
SAID (one learned scale per layer) needs a smaller ``d`` than DID.

Equations (card adapters-lowrank.md, "Method"):

- DID: ``theta = theta0 + P z``, ``z in R^d``, ``z = 0`` at the start.
- Fastfood ``P``, one block per parameter tensor ``i`` with ``D_i`` entries and its own random matrices, all blocks
  reading the same ``z``: ``LL_i = 2^ceil(log2 D_i)``; ``x = pad(z, LL_i)``; ``y = H G Pi H B x`` (``B`` random
  +-1 diagonal, ``H`` the unnormalised Walsh-Hadamard transform, ``Pi`` a random permutation, ``G`` a N(0, 1)
  diagonal); ``P_i z = y[:D_i] / (sqrt(LL_i ||G||^2) sqrt(D_i / LL_i))`` (the reference code's normalisation:
  each block column has unit norm on average).
- SAID: ``d`` splits into ``d - m`` subspace coordinates and ``m`` per-layer scales:
  ``theta_i = theta0_i + lambda_{l(i)} P_i(z)``, ``z in R^{d-m}``, ``lambda = 1`` at the start (an assumption of the
  card: lambda must not start at 0, or dL/dz = 0).
- Dense ``P`` (small models, tests, the 2018 DID baseline): Gaussian columns normalised to unit norm over all of
  ``D`` (``dense_norm="global"``) or within each tensor like the Fastfood blocks (``dense_norm="tensor"``).
- Occam-bound stand-in (an assumption, not the paper's constants): with ``z`` quantised to ``q`` bits per
  coordinate and ``n`` samples, ``error <= empirical error + sqrt((d q ln 2 + ln(1/delta)) / (2 n))``.

Functional core: :func:`fwht`, :func:`tensor_seed`, :func:`fastfood_params` / :func:`fastfood_project`,
:func:`dense_projection`, :func:`d90_from_curve`, :func:`occam_bound`. Entry: the module :class:`SubspaceModel`
(``theta = theta0 + P(z)`` evaluated through :func:`torch.func.functional_call`). Driver: :func:`fit_subspace`
(Adam on ``z`` and ``lambda`` over a learning-rate grid, best on a dev set, every run through
:func:`priorkit.train.fit`) and :func:`search_d90` (the scan of a ``d`` grid).

Library parts reused and why the rest is hand-written: ``torch.func.functional_call`` substitutes the weights,
so any ``nn.Module`` (an MLP, a Hugging Face transformer) works without editing its code. PEFT was considered
(DESIGN principle 4): its VeRA, RandLoRA, TinyLoRA and FourierFT project into per-layer low-rank or spectral
subspaces, not into the full parameter space, and a PEFT tuner wraps chosen layers while SAID reparameterises
every tensor, so this is a plain module wrapper, as the card says. No maintained library ships a Fastfood
transform for PyTorch; the fast Walsh-Hadamard transform is written here in pure torch (butterflies on a
``(..., 2, h)`` view), and autograd gives ``P^T`` because ``H`` is symmetric.

Implementation choices:

- The random matrices are regenerated from ``(seed, tensor name)`` (a SHA-256 of both seeds a generator), drawn in
  the reference order ``B``, ``Pi``, ``G``; a checkpoint holds the seed and ``z``/``lambda``, never the matrices.
- Because ``x`` is ``z`` zero-padded, ``H B x`` is ``H_p (B z)`` tiled ``LL / p`` times (``p = 2^ceil(log2 d)``,
  a property of the Sylvester-ordered Hadamard matrix), so the first transform costs ``O(p log p)`` and the
  permutation becomes a gather from a ``p``-vector; the result equals the reference pipeline (a test checks it).
- A tensor with ``LL_i < d`` (a 10-entry bias with ``d = 1000``) is refused by default, naming the tensor
  (``short_tensors="raise"``, the card). ``"pad"`` grows ``LL_i`` to ``2^ceil(log2 max(D_i, d))`` so that every
  block reads all of ``z``; ``"crop"`` is the reference code's behaviour (its zero-padding with a negative width
  drops the coordinates of ``z`` beyond ``LL_i``).
- BatchNorm: its running statistics are kept out of the subspace by holding every BatchNorm layer in eval mode
  (statistics of ``theta0``, never updated); its affine weights are reparameterised like every other tensor.
- The task head is part of ``theta0`` and reparameterised like the rest (card assumption); with
  ``train_head_directly=True`` the head's parameters train directly and count in ``d``.
- Under DDP ``z`` is one tensor, so the ordinary gradient all-reduce suffices; the projection seeds come from the
  global seed, so every rank builds the same ``P``.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset, TensorDataset

from priorkit.core.errors import (
    CheckpointMismatchError,
    PriorkitError,
    check_choice,
    check_positive_int,
    check_range,
)
from priorkit.core.spec import MethodSpec
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.metrics import accuracy
from priorkit.train import TrainConfig, fit, predict

__all__ = [
    "D90Result",
    "FastfoodParams",
    "SubspaceModel",
    "d90_from_curve",
    "dense_projection",
    "fastfood_batch",
    "fastfood_params",
    "fastfood_project",
    "fit_subspace",
    "fwht",
    "fwht_butterfly",
    "occam_bound",
    "search_d90",
    "tensor_seed",
]

MODES = ("said", "did")
PROJECTIONS = ("fastfood", "dense")
GROUPS = ("module", "tensor")
SHORT_TENSORS = ("raise", "pad", "crop")
DENSE_NORMS = ("global", "tensor")
#: the card's size limit for a dense P (D <= 1e5, d <= 2e3): larger ones must use Fastfood
MAX_DENSE_ENTRIES = 200_000_000
#: the card's learning-rate grid for Adam on z and lambda
PAPER_LRS = (1e-3, 3e-3, 1e-2, 3e-2)

SPEC = MethodSpec(
    status="implemented",
    entry="SubspaceModel",
    missing="the generalization bound is an Occam-bound stand-in (occam_bound, an assumption: the paper's exact "
    "compression bound and constants are not reproduced); the study of d90 along a pre-training trajectory and "
    "across model sizes is not built; on CPU the MiniLM curve reparameterises the transformer blocks and the "
    "position embeddings but keeps the 11.7M-entry word-embedding table frozen (cost), as the experiment says",
    presets={
        # the card: SAID, Fastfood, one lambda per layer (module), lambda = 1, head in theta0; small tensors with
        # LL_i < d are refused; Adam on z and lambda over the lr grid {1e-3, 3e-3, 1e-2, 3e-2}, best on dev
        # (fit_subspace's lrs), with twice the full fine-tuning epochs
        "paper": {"mode": "said", "projection": "fastfood", "groups": "module", "short_tensors": "raise"},
        # mnist1d MLP 40-256-256-10: its 256-entry biases and 10-entry head bias are shorter than most d of the
        # grid, so every block's Fastfood length is grown to cover z ("pad")
        "small": {"mode": "said", "projection": "fastfood", "groups": "module", "short_tensors": "pad"},
    },
)


# ------------------------------------------------------------------------------------------ functional core
#: the largest Hadamard block applied as one matrix product inside :func:`fwht`
FWHT_BLOCK = 32
_HADAMARD: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _hadamard(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (k, dtype, device)
    if key not in _HADAMARD:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < k:
            h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
        _HADAMARD[key] = h.to(dtype=dtype, device=device)
    return _HADAMARD[key]


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform along the last axis (a power of two), Sylvester order:
    ``fwht(x) = x @ H`` with ``H[i, j] = (-1)^popcount(i & j)``; ``fwht(fwht(x)) = n x``. Differentiable.

    ``H_n = H_f1 (x) H_f2 (x) ...`` (Kronecker factors of at most :data:`FWHT_BLOCK`): factor ``k`` is one batched
    matrix product with ``H_fk`` on the middle axis of a ``(..., a, f_k, b)`` view, i.e. ``log2(f_k)`` radix-2
    butterfly stages at once (fewer passes over memory than ``log2(n)`` separate stages)."""
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise PriorkitError(f"x must be a tensor with at least one axis, got {type(x).__name__}")
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise PriorkitError(f"x's last axis must have a power-of-two length (1, 2, 4, ...), got {n}")
    if not x.is_floating_point():
        raise PriorkitError(f"x must be floating point, got dtype {x.dtype}")
    lead = x.shape[:-1]
    bits, step = n.bit_length() - 1, FWHT_BLOCK.bit_length() - 1
    a = 1
    for f in [1 << min(step, bits - s) for s in range(0, bits, step)]:
        b = n // (a * f)
        h = _hadamard(f, x.dtype, x.device)
        if b == 1:
            x = (x.reshape(*lead, a, f) @ h).reshape(*lead, n)
        else:
            x = torch.matmul(h, x.reshape(*lead, a, f, b)).reshape(*lead, n)
        a *= f
    return x


def fwht_butterfly(x: torch.Tensor) -> torch.Tensor:
    """The same transform as :func:`fwht` by ``log2(n)`` radix-2 butterflies on a ``(..., 2, h)`` view (the
    textbook form, kept as the reference that tests compare :func:`fwht` with)."""
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise PriorkitError(f"x's last axis must have a power-of-two length (1, 2, 4, ...), got {n}")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from ``(seed, tensor name)``, stable across processes and platforms."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PriorkitError(f"seed must be an integer, got {seed!r}")
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class FastfoodParams:
    """One tensor's Fastfood block: ``b`` the first ``d_used`` signs of ``B``, ``index = Pi mod p`` (the gather
    that replaces the permutation of the tiled first transform), ``g`` the Gaussian diagonal, and ``scale =
    1 / (sqrt(LL ||G||^2) sqrt(D / LL))``."""

    numel: int
    ll: int
    d: int
    d_used: int
    p: int
    b: torch.Tensor
    index: torch.Tensor
    g: torch.Tensor
    scale: float


def fastfood_params(numel: int, d: int, seed: int, name: str, *, short_tensors: str = "raise") -> FastfoodParams:
    """The random matrices of tensor ``name`` (``numel`` entries) for a ``d``-dimensional ``z``, drawn from
    ``tensor_seed(seed, name)`` in the reference order ``B``, ``Pi``, ``G``.

    ``short_tensors`` decides what happens when ``LL = 2^ceil(log2 numel) < d``: ``"raise"`` (the card),
    ``"pad"`` (``LL`` grows to cover ``d``) or ``"crop"`` (the reference code: ``z`` beyond ``LL`` is unused).
    """
    check_positive_int("numel", numel)
    check_positive_int("d", d)
    check_choice("short_tensors", short_tensors, SHORT_TENSORS)
    ll = _pow2(numel)
    if d > ll:
        if short_tensors == "raise":
            raise PriorkitError(
                f"tensor {name!r} has {numel} entries (Fastfood length LL={ll}) but d={d} > LL: the card refuses "
                "it; use short_tensors='pad' (grow LL to cover d) or 'crop' (the reference code: drop z beyond LL), "
                "exclude the tensor, or choose d <= LL"
            )
        if short_tensors == "pad":
            ll = _pow2(d)
    d_used = min(d, ll)
    p = _pow2(d_used)
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    b = torch.randint(0, 2, (ll,), generator=gen).float().mul_(2).sub_(1)
    perm = torch.randperm(ll, generator=gen)
    g = torch.randn(ll, generator=gen)
    scale = 1.0 / math.sqrt(ll * float(g.double().pow(2).sum())) / math.sqrt(numel / ll)
    return FastfoodParams(numel, ll, d, d_used, p, b[:d_used].clone(), perm % p, g, scale)


class _FastfoodFn(torch.autograd.Function):
    """Batched Fastfood blocks sharing one length ``LL`` (rows of ``b``, ``index``, ``g``): forward
    ``(H G Pi H B pad(z)) * scale``, backward ``P^T`` by the same steps in reverse (``H`` is symmetric, the gather's
    transpose is a scatter-add). One autograd node per group of tensors instead of dozens of small ones."""

    @staticmethod
    def forward(ctx, z, b, index, g, scale, p):  # type: ignore[override]
        d_used = b.shape[1]
        x = z[:d_used].unsqueeze(0) * b
        if p > d_used:
            x = torch.cat((x, x.new_zeros(x.shape[0], p - d_used)), dim=1)
        u = torch.gather(fwht(x), 1, index) * g
        ctx.save_for_backward(b, index, g, scale)
        ctx.p, ctx.d = p, z.shape[0]
        return fwht(u) * scale.unsqueeze(1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        b, index, g, scale = ctx.saved_tensors
        gu = fwht(grad * scale.unsqueeze(1)) * g
        gw = gu.new_zeros(gu.shape[0], ctx.p).scatter_add_(1, index, gu)
        gx = (fwht(gw)[:, : b.shape[1]] * b).sum(0)
        gz = gx if ctx.d == gx.shape[0] else torch.cat((gx, gx.new_zeros(ctx.d - gx.shape[0])))
        return gz, None, None, None, None, None


def fastfood_batch(
    z: torch.Tensor, b: torch.Tensor, index: torch.Tensor, g: torch.Tensor, scale: torch.Tensor, p: int
) -> torch.Tensor:
    """``[T, LL]`` Fastfood outputs of ``T`` blocks of one length (``b`` ``[T, d_used]``, ``index`` and ``g``
    ``[T, LL]``, ``scale`` ``[T]``); row ``t``'s first ``D_t`` entries are ``P_t z``. Differentiable in ``z``."""
    return _FastfoodFn.apply(z, b, index, g, scale, p)


def fastfood_project(z: torch.Tensor, params: FastfoodParams) -> torch.Tensor:
    """``P_i z`` for one tensor (a flat vector of ``params.numel`` entries): ``(H G Pi H B pad(z))[:D] * scale``,
    with the first transform done on the ``p`` nonzero-carrying entries (see the module notes)."""
    if not isinstance(z, torch.Tensor) or z.dim() != 1 or z.shape[0] != params.d:
        got = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise PriorkitError(f"z must be a vector of length d={params.d}, got {got}")
    if not z.is_floating_point():
        raise PriorkitError(f"z must be floating point, got dtype {z.dtype}")
    scale = torch.tensor([params.scale], dtype=z.dtype, device=z.device)
    b, index, g = params.b.to(z).unsqueeze(0), params.index.to(z.device).unsqueeze(0), params.g.to(z).unsqueeze(0)
    return fastfood_batch(z, b, index, g, scale, params.p)[0, : params.numel]


def dense_projection(
    numels: Sequence[int], names: Sequence[str], d: int, seed: int, *, norm: str = "global"
) -> list[torch.Tensor]:
    """Dense Gaussian blocks ``P_i`` (``[numel_i, d]``, one per tensor, drawn from ``tensor_seed(seed, name)``)
    whose columns have unit norm over all tensors (``norm="global"``) or within each tensor (``"tensor"``)."""
    check_positive_int("d", d)
    check_choice("dense_norm", norm, DENSE_NORMS)
    if len(numels) != len(names) or not numels:
        raise PriorkitError(f"numels and names must be equally long and non-empty, got {len(numels)}, {len(names)}")
    total = sum(numels) * d
    if total > MAX_DENSE_ENTRIES:
        raise PriorkitError(
            f"projection='dense' would hold D x d = {sum(numels)} x {d} = {total} entries (> {MAX_DENSE_ENTRIES}, "
            "the card's small-model limit D <= 1e5, d <= 2e3); use projection='fastfood'"
        )
    blocks = []
    for n, name in zip(numels, names):
        gen = torch.Generator().manual_seed(tensor_seed(seed, name))
        blocks.append(torch.randn(n, d, generator=gen))
    if norm == "global":
        col = torch.sqrt(sum(b.pow(2).sum(0) for b in blocks))
        return [b / col for b in blocks]
    return [b / b.norm(dim=0, keepdim=True) for b in blocks]


def occam_bound(train_error: float, d: int, n: int, *, bits: int = 8, delta: float = 0.05) -> float:
    """**Assumption** (priorkit's stand-in, not the paper's bound): an Occam bound for a classifier described by
    ``d`` coordinates quantised to ``bits`` bits each, ``train_error + sqrt((d bits ln 2 + ln(1/delta)) / (2 n))``.
    The paper's compression bound also depends on d, not D, but its exact constants are not reproduced."""
    check_range("train_error", train_error, 0.0, 1.0)
    check_positive_int("d", d)
    check_positive_int("n", n)
    check_positive_int("bits", bits)
    check_range("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return float(train_error) + math.sqrt((d * bits * math.log(2) + math.log(1 / delta)) / (2 * n))


def _finite(name: str, value: Any) -> float:
    """A finite real number, else an error naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PriorkitError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise PriorkitError(f"{name} must be a finite number, got {value!r}")
    return v


def d90_from_curve(curve: Mapping[int, float], full_metric: float, fraction: float = 0.9) -> int | None:
    """The smallest ``d`` of ``curve`` (``d -> metric``, higher is better) with metric ``>= fraction *
    full_metric``; ``None`` when no ``d`` reaches it."""
    check_range("fraction", fraction, 0.0, 1.0, low_inclusive=False)
    _finite("full_metric", full_metric)
    if not curve:
        raise PriorkitError("curve must hold at least one (d, metric) pair")
    for d, v in curve.items():
        check_positive_int("curve's d", d)
        _finite(f"curve's metric at d={d}", v)
    hits = [d for d, v in sorted(curve.items()) if v >= fraction * full_metric]
    return hits[0] if hits else None


@dataclass
class D90Result:
    """The outcome of a ``d`` scan: ``d90`` (``None`` if no ``d`` of the grid reached the threshold), the
    threshold ``fraction * full_metric`` and the evaluated curve ``d -> metric``."""

    d90: int | None
    threshold: float
    full_metric: float
    curve: dict[int, float] = field(default_factory=dict)

    @property
    def reached(self) -> bool:
        return self.d90 is not None


def _check_grid(grid: Sequence[int]) -> list[int]:
    if isinstance(grid, str | bytes) or not isinstance(grid, Sequence) or len(grid) == 0:
        raise PriorkitError(f"grid must be a non-empty sequence of integers d >= 1, got {grid!r}")
    for d in grid:
        check_positive_int("grid's d", d)
    if list(grid) != sorted(set(grid)):
        raise PriorkitError(f"grid must be strictly increasing, got {list(grid)}")
    return list(grid)


def search_d90(
    evaluate: Callable[[int], float],
    grid: Sequence[int],
    full_metric: float,
    *,
    fraction: float = 0.9,
    early_stop: bool = True,
) -> D90Result:
    """Scan ``grid`` upwards, calling ``evaluate(d)`` (train in the ``d``-dimensional subspace, return the
    metric); ``d90`` is the first ``d`` whose metric reaches ``fraction * full_metric``. With ``early_stop`` the
    scan ends there (``d90`` is the smallest grid ``d`` when the metric grows with ``d``)."""
    grid = _check_grid(grid)
    check_range("fraction", fraction, 0.0, 1.0, low_inclusive=False)
    _finite("full_metric", full_metric)
    curve: dict[int, float] = {}
    for d in grid:
        v = _finite(f"evaluate({d})", evaluate(d))
        curve[d] = v
        if early_stop and v >= fraction * full_metric:
            break
    return D90Result(d90_from_curve(curve, full_metric, fraction), fraction * full_metric, float(full_metric), curve)


# ---------------------------------------------------------------------------------------------- the module
def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, local = name.rpartition(".")
    return (root.get_submodule(path) if path else root), local


class SubspaceModel(nn.Module):
    """``model`` reparameterised as ``theta = theta0 + P(z)`` (DID) or ``theta0 + lambda_l P(z)`` (SAID).

    ``d`` is the number of trainable parameters, exactly: ``z`` has ``d`` entries (DID) or ``d - m`` (SAID, with
    ``m`` scales ``lambda``, one per module holding parameters, or per tensor with ``groups="tensor"``); with
    ``train_head_directly`` the parameters under ``head`` also train directly and count in ``d``. The given
    model is deep-copied; its parameters become frozen buffers of the copy (``theta0``), so every optimizer over
    ``parameters()`` sees only ``z``, ``lambda`` (and the head). ``exclude``: parameter-name prefixes kept
    frozen at ``theta0`` outside the subspace (as are parameters with ``requires_grad=False``). BatchNorm layers
    stay in eval mode (module notes). Call it as the wrapped model; :meth:`merge_and_unload` returns a plain copy
    of the model holding ``theta``.

    Example::

        sub = SubspaceModel(pretrained, d=200, mode="said", seed=0)
        fit(sub, train_set, config=TrainConfig(optimizer="adam", lr=1e-2, epochs=40))
    """

    def __init__(
        self,
        model: nn.Module,
        d: int,
        mode: str = "said",
        projection: str = "fastfood",
        seed: int = 0,
        *,
        groups: str = "module",
        exclude: Sequence[str] = (),
        train_head_directly: bool = False,
        head: str = "head",
        short_tensors: str = "raise",
        dense_norm: str = "global",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_positive_int("d", d)
        check_choice("mode", mode, MODES)
        check_choice("projection", projection, PROJECTIONS)
        tensor_seed(seed, "")  # validates seed
        check_choice("groups", groups, GROUPS)
        check_choice("short_tensors", short_tensors, SHORT_TENSORS)
        check_choice("dense_norm", dense_norm, DENSE_NORMS)
        if isinstance(exclude, str) or not all(isinstance(e, str) and e for e in exclude):
            raise PriorkitError(f"exclude must be a sequence of parameter-name prefixes, got {exclude!r}")
        if not isinstance(train_head_directly, bool):
            raise PriorkitError(f"train_head_directly must be True or False, got {train_head_directly!r}")
        self.d, self.mode, self.projection, self.seed = d, mode, projection, seed
        self.groups, self.short_tensors, self.dense_norm = groups, short_tensors, dense_norm

        base = copy.deepcopy(model)
        named = dict(base.named_parameters())
        if not named:
            raise PriorkitError(f"model ({type(model).__name__}) has no parameters to reparameterise")

        def matches(n: str, prefix: str) -> bool:
            return n == prefix or n.startswith(prefix + ".")

        for e in exclude:
            if not any(matches(n, e) for n in named):
                raise PriorkitError(f"exclude entry {e!r} matches no parameter; top-level names: {_tops(named)}")
        direct = []
        if train_head_directly:
            direct = [n for n in named if matches(n, head)]
            if not direct:
                raise PriorkitError(f"head={head!r} matches no parameter of the model; top-level names: {_tops(named)}")
        self.direct_names = direct
        self.names = [
            n
            for n, p in named.items()
            if p.requires_grad and n not in direct and not any(matches(n, e) for e in exclude)
        ]
        if not self.names:
            raise PriorkitError("no parameter is left to reparameterise (all excluded, frozen or trained directly)")
        self.shapes = [tuple(named[n].shape) for n in self.names]
        self.numels = [named[n].numel() for n in self.names]
        keys = [n.rpartition(".")[0] if groups == "module" else n for n in self.names]
        self.group_names = list(dict.fromkeys(keys))
        self.group_index = [self.group_names.index(k) for k in keys]
        m = len(self.group_names) if mode == "said" else 0
        n_direct = sum(named[n].numel() for n in direct)
        d_sub = d - m - n_direct
        if d_sub < 1:
            parts = f"m={m} per-layer scales" if mode == "said" else ""
            if n_direct:
                parts += (" + " if parts else "") + f"{n_direct} head parameters"
            raise PriorkitError(
                f"d={d} must exceed {parts} (= {m + n_direct}) so that z keeps at least one coordinate"
                + ("; SAID needs d > m" if mode == "said" else "")
            )
        self.d_sub, self.num_scales = d_sub, m

        # theta0: every parameter except the directly trained head becomes a frozen (persistent) buffer
        self._frozen: dict[str, bool] = {}
        converted: dict[int, torch.Tensor] = {}
        for mod_name, mod in base.named_modules(remove_duplicate=False):
            for local, p in list(mod._parameters.items()):
                full = f"{mod_name}.{local}" if mod_name else local
                if p is None or full in direct:
                    continue
                self._frozen[full] = p.requires_grad
                t = converted.setdefault(id(p), p.detach())
                del mod._parameters[local]
                mod.register_buffer(local, t)
        self.base = base

        dtype = named[self.names[0]].dtype if named[self.names[0]].is_floating_point() else torch.float32
        self.z = nn.Parameter(torch.zeros(d_sub, dtype=dtype))
        self.lam = nn.Parameter(torch.ones(m, dtype=dtype)) if mode == "said" else None
        # projection buffers: regenerated from (seed, tensor name), so non-persistent (never in a checkpoint)
        self._blocks: list[tuple[int, list[int]]] = []  # Fastfood: (p, tensor numbers) per block length
        if projection == "fastfood":
            by_shape: dict[tuple[int, int, int], list[tuple[int, FastfoodParams]]] = {}
            for i, (n, k) in enumerate(zip(self.names, self.numels)):
                ff = fastfood_params(k, d_sub, seed, n, short_tensors=short_tensors)
                by_shape.setdefault((ff.ll, ff.p, ff.d_used), []).append((i, ff))
            for j, ((_, p, _), members) in enumerate(by_shape.items()):
                ffs = [ff for _, ff in members]
                self.register_buffer(f"ff{j}_b", torch.stack([f.b for f in ffs]).to(dtype), persistent=False)
                self.register_buffer(f"ff{j}_index", torch.stack([f.index for f in ffs]), persistent=False)
                self.register_buffer(f"ff{j}_g", torch.stack([f.g for f in ffs]).to(dtype), persistent=False)
                self.register_buffer(
                    f"ff{j}_scale", torch.tensor([f.scale for f in ffs], dtype=dtype), persistent=False
                )
                self.register_buffer(
                    f"ff{j}_lam", torch.tensor([self.group_index[i] for i, _ in members]), persistent=False
                )
                self._blocks.append((p, [i for i, _ in members]))
        else:
            blocks = dense_projection(self.numels, self.names, d_sub, seed, norm=dense_norm)
            self.register_buffer("dense", torch.cat(blocks).to(dtype), persistent=False)
            entry = torch.repeat_interleave(torch.tensor(self.group_index), torch.tensor(self.numels))
            self.register_buffer("dense_lam", entry, persistent=False)
        self._freeze_batchnorm()

    # ------------------------------------------------------------------------------------------ theta
    def deltas(self) -> dict[str, torch.Tensor]:
        """``theta - theta0`` of every reparameterised tensor (``lambda_l P_i(z)`` or ``P_i(z)``), shaped."""
        out: dict[str, torch.Tensor] = {}
        if self.projection == "dense":
            flat = self.dense @ self.z
            if self.lam is not None:
                flat = flat * self.lam[self.dense_lam]
            for name, shape, v in zip(self.names, self.shapes, flat.split(self.numels)):
                out[name] = v.view(shape)
            return out
        for j, (p, members) in enumerate(self._blocks):
            y = fastfood_batch(
                self.z, getattr(self, f"ff{j}_b"), getattr(self, f"ff{j}_index"), getattr(self, f"ff{j}_g"),
                getattr(self, f"ff{j}_scale"), p,
            )  # fmt: skip
            if self.lam is not None:
                y = y * self.lam[getattr(self, f"ff{j}_lam")].unsqueeze(1)
            # one split of the flat rows (its backward is one concatenation), not a slice per row (each slice's
            # backward would allocate the whole [T, LL] block)
            ll = y.shape[1]
            pieces = y.reshape(-1).split([k for i in members for k in (self.numels[i], ll - self.numels[i])])
            for row, i in enumerate(members):
                out[self.names[i]] = pieces[2 * row].view(self.shapes[i])
        return {n: out[n] for n in self.names}

    def theta(self) -> dict[str, torch.Tensor]:
        """The reparameterised tensors ``theta0 + delta`` by name (differentiable in ``z`` and ``lambda``)."""
        return {n: self.base.get_buffer(n) + v.to(self.base.get_buffer(n).dtype) for n, v in self.deltas().items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.base, self.theta(), args, kwargs)

    @property
    def num_trainable(self) -> int:
        """``d``: the entries of ``z``, ``lambda`` and the directly trained head."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------------------------ BN, export, state
    def _freeze_batchnorm(self) -> None:
        for mod in self.base.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()

    def train(self, mode: bool = True) -> SubspaceModel:
        super().train(mode)
        self._freeze_batchnorm()
        return self

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """A plain copy of the wrapped model whose parameters hold ``theta`` (for deployment or a later full
        fine-tuning); ``requires_grad`` is restored as the original model had it."""
        out = copy.deepcopy(self.base)
        theta = {n: t.detach() for n, t in self.theta().items()}
        made: dict[int, nn.Parameter] = {}
        for mod_name, mod in out.named_modules(remove_duplicate=False):
            for local in list(mod._buffers):
                full = f"{mod_name}.{local}" if mod_name else local
                if full not in self._frozen:
                    continue
                buf = mod._buffers.pop(local)
                if id(buf) not in made:
                    value = theta.get(full, buf)
                    made[id(buf)] = nn.Parameter(value.clone(), requires_grad=self._frozen[full])
                mod.register_parameter(local, made[id(buf)])
        return out.train(self.training)

    def _record(self) -> dict[str, Any]:
        return {
            "d": self.d,
            "mode": self.mode,
            "projection": self.projection,
            "seed": self.seed,
            "groups": self.groups,
            "short_tensors": self.short_tensors,
            "dense_norm": self.dense_norm,
            "names": list(self.names),
            "direct": list(self.direct_names),
        }

    def get_extra_state(self) -> dict[str, Any]:
        return self._record()

    def set_extra_state(self, state: Any) -> None:
        mine = self._record()
        if not isinstance(state, dict):
            raise CheckpointMismatchError(f"SubspaceModel: the checkpoint's extra state is not a dict: {state!r}")
        diff = sorted(k for k in mine if state.get(k) != mine[k])
        if diff:
            raise CheckpointMismatchError(
                "SubspaceModel: the checkpoint was written for another subspace: "
                + ", ".join(f"{k}={state.get(k)!r} (now {mine[k]!r})" for k in diff if k not in ("names", "direct"))
                + (" (the reparameterised tensors differ)" if {"names", "direct"} & set(diff) else "")
            )

    def extra_repr(self) -> str:
        return (
            f"d={self.d}, mode={self.mode!r}, projection={self.projection!r}, seed={self.seed}, "
            f"tensors={len(self.names)}, D={sum(self.numels)}, scales={self.num_scales}"
        )


def _tops(named: Mapping[str, Any]) -> list[str]:
    return sorted({n.split(".")[0] for n in named})


# -------------------------------------------------------------------------------------------------- driver
def _labels(data: Dataset) -> torch.Tensor:
    if isinstance(data, IndexedTensorDataset):
        return data.y
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        return data.tensors[1]
    return torch.as_tensor([int(data[i][1]) for i in range(len(data))])


def _accuracy(model: nn.Module, data: Dataset) -> float:
    return accuracy(predict(model, data), _labels(data))


def fit_subspace(
    model: nn.Module,
    d: int,
    train: Dataset,
    *,
    val: Dataset | None = None,
    lrs: Sequence[float] = PAPER_LRS,
    config: TrainConfig | None = None,
    metric: Callable[[nn.Module, Dataset], float] = _accuracy,
    **subspace_kwargs: Any,
) -> tuple[SubspaceModel, dict[str, Any]]:
    """Train a :class:`SubspaceModel` of ``model`` with Adam on ``z`` (and ``lambda``) for every learning rate in
    ``lrs`` through :func:`priorkit.train.fit`, and keep the best on ``val`` (card: "Adam on z and lambda, lr grid
    {1e-3, 3e-3, 1e-2, 3e-2}, best on dev"). ``config`` gives epochs, batch size and seed (its optimizer and lr
    are replaced); ``subspace_kwargs`` go to :class:`SubspaceModel`. Returns ``(model, {"lr", "val", "vals"})``.
    """
    if isinstance(lrs, str | bytes) or not isinstance(lrs, Sequence) or not lrs:
        raise PriorkitError(f"lrs must be a non-empty sequence of learning rates > 0, got {lrs!r}")
    for lr in lrs:
        check_range("lrs entry", lr, 0.0, low_inclusive=False)
    if val is None and len(lrs) > 1:
        raise PriorkitError("val is None but lrs holds several learning rates: give a dev set to choose among them")
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise PriorkitError(f"config must be a TrainConfig, got {type(config).__name__}")
    best: tuple[float, float, SubspaceModel] | None = None
    vals: dict[float, float] = {}
    for lr in lrs:
        sub = SubspaceModel(model, d, **subspace_kwargs)
        fit(sub, train, config=replace(config, optimizer="adam", lr=float(lr), weight_decay=0.0, progress=False))
        score = metric(sub, val) if val is not None else math.nan
        vals[float(lr)] = score
        if best is None or score > best[0]:
            best = (score, float(lr), sub)
    assert best is not None
    return best[2], {"lr": best[1], "val": best[0], "vals": vals}
