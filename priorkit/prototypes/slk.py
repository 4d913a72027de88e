"""Transductive Few-Shot Learning: Clustering is All You Need? (SLK), Ziko, Masud, Granger & Ben Ayed, 2021.

SLK classifies the unlabelled queries of a few-shot task by clustering supports and queries together. The
assignments ``Z`` (rows on the simplex) and the prototypes ``C`` minimise a K-means (or K-modes) term plus a
Laplacian term that rewards giving kNN neighbours the same cluster,
``E(Z, C) = sum_pk z_pk D(x_p, c_k) - lambda sum_pq w_pq z_p^T z_q``. The Laplacian term is concave for a PSD
affinity; linearising it and adding a negative-entropy barrier gives a bound whose minimiser is closed-form
per point, ``z_p <- softmax_k(-a_pk + lambda sum_q w_pq z_qk)`` (bound optimisation, iterated until the
energy settles), alternated with the prototype updates (means of the current labels for K-means, mean shift
for K-modes). Prototypes start at the class means of the supports, so cluster ``k`` is class ``k``. The
backbone is an ordinary CE classifier trained on the base classes; features are CL2N-normalised (centre on the
base mean, L2-normalise) and the queries are shifted onto the supports' mean. Reported effect: on mini-/
tiered-ImageNet and CUB, plain transductive K-means (``lambda = 0``) is already competitive with meta-learning
methods, and the Laplacian term adds on top; for scale, LaplacianShot reports 72.1/82.3 (mini-ImageNet,
ResNet-18).

Functional core: :func:`cl2n`, :func:`shift_queries`, :func:`knn_affinity`, :func:`estimate_sigma`,
:func:`entropy_energy`, :func:`bound_update`, :func:`mean_shift`, :func:`slk_energy`, :func:`slk` (one task or a
batch), :func:`prepare_task`, :func:`episode_batch`, :func:`tune_lambda`. Entry: :class:`SLK` (easyfsl's "support
set in, classifier out" interface on an optional backbone). The inductive SimpleShot baseline lives in
:mod:`priorkit.baselines.fewshot`. SLK is training-free; its backbone is a plain CE classifier trained through
``priorkit.train`` (see ``priorkit.experiments.slk``). Presets in ``SPEC``: ``paper`` (lambda 0.7, K-means,
knn 3, clamped supports, the PAMI code's algorithm) and ``small`` (the same: the experiment runs the paper's
settings).

Official code: imtiazziko/SLK-few-shot (``src/SLK.py::SLK``, ``src/bound_update.py::bound_update``,
``src/train_SLK.py::create_affinity``). easyfsl was considered: it has LaplacianShot and SimpleShot but no
SLK (no K-modes, no prototype/assignment alternation), and its classes are tied to its ``FewShotClassifier``,
so the core is written here on tensors.

Which official code (``version``). The repository holds two algorithms. ``version="pami"`` (default) follows
the current code (commit "Update PAMI", June 2021), the version of the PAMI paper; ``version="2020"`` keeps the
first commit (July 2020). What differs:

- K-means prototypes: ``pami`` takes the hard means of the argmax labels at every outer iteration; ``2020``
  takes hard means at the first and soft means ``sum_p z_pk x_p / sum_p z_pk`` afterwards (with ``lam > 0``).
- Bound start: ``pami`` starts every bound loop from ``softmax(-a)`` with the support rows set to their
  one-hot labels (argument ``init`` of :func:`bound_update`); ``2020`` from plain ``softmax(-a)``.
- Tolerances (relative energy change): outer 1e-4 and bound 1e-7 (``pami``); 1e-5 and 1e-6 (``2020``).
- Empty clusters: when an outer iteration leaves a cluster without any point (supports included), ``pami``
  restores that task's previous labels, assignments and prototypes and stops it (``SLKResult.restored``);
  the ``2020`` code would produce NaN prototypes, so here an empty cluster keeps its previous prototype.
- lambda grid: ``pami`` adds 0.9 (:data:`LAMBDAS`; the first commit's grid is :data:`LAMBDAS_2020`).
- Scoring: the ``pami`` code reads cluster ``k`` as class ``k`` (plain accuracy, as here); the ``2020`` code
  matched clusters to classes with the Hungarian method.

Unchanged between the two: initial prototypes and labels, kNN affinity, sigma, mean shift (K-modes), the
bound update rule and its energy, the outer energy and the ``lam = 0`` hard branch.

Where the card and the official code differ, and what is done here:

- Support clamping: the paper fixes support rows to their labels; neither code version does (``pami`` sets
  them only in the bound loop's start, and in the hard branch both relabel supports by the nearest prototype).
  ``clamp_support=True`` (default) is the paper (rows reset after every bound update, support labels fixed in
  the hard branch); ``clamp_support=False`` with ``version="pami"`` is the current official code step for step.
- kNN affinity: ``knn=3`` follows the code's ``create_affinity``, whose ``NearestNeighbors(n_neighbors=3)``
  counts the point itself, so each row has ``knn - 1 = 2`` ones (self excluded, not symmetrised). The card
  reads "k=3 neighbours, excluding self"; pass ``knn=4`` for three non-self neighbours.
- Energy scale: the update ``softmax(-a + lambda W Y)`` is the exact majorise-minimise step of
  ``sum y log y + a.y - (lambda/2) Y^T W Y`` for a symmetric PSD ``W``, while the code's (and card's)
  stopping energy uses ``lambda`` without the 1/2. The update and the stopping energy are kept as in the code;
  the monotone-decrease property holds (and is tested) for ``entropy_energy(..., lam / 2)`` with a symmetric
  PSD ``W``. With the non-symmetric kNN graph no monotonicity is guaranteed (neither in the paper nor here).
- ``lam = 0`` runs the code's ``lap_bound=False`` branch: hard K-means/K-modes (hard means, hard labels),
  the paper's transductive K-means baseline.
- ``mode="bo"`` (card: "sets C_k to the point with the largest Y_pk"): neither code version computes the
  unary term in that branch (it would fail); here it uses the K-modes unary ``-exp(-||x-c||^2 / 2 sigma^2)``
  (an assumption).

>>> g = torch.Generator().manual_seed(0)
>>> centers = torch.eye(3, 8) * 4
>>> xs = centers.repeat_interleave(2, 0) + 0.3 * torch.randn(6, 8, generator=g)
>>> ys = torch.arange(3).repeat_interleave(2)
>>> xq = centers.repeat_interleave(5, 0) + 0.3 * torch.randn(15, 8, generator=g)
>>> out = slk(xs, ys, xq, lam=0.7, mode="kmeans")
>>> out.labels.tolist() == torch.arange(3).repeat_interleave(5).tolist()
True
>>> bool(torch.allclose(out.assignments.sum(1), torch.ones(21, dtype=torch.float64)))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice, check_positive_int, check_range, check_shape
from priorkit.core.spec import MethodSpec

__all__ = [
    "LAMBDAS",
    "LAMBDAS_2020",
    "SLK",
    "TOLERANCES",
    "VERSIONS",
    "bound_update",
    "cl2n",
    "entropy_energy",
    "episode_batch",
    "estimate_sigma",
    "knn_affinity",
    "mean_shift",
    "prepare_task",
    "shift_queries",
    "slk",
    "slk_energy",
    "tune_lambda",
]

MODES = ("kmeans", "ms", "bo")
#: ``"pami"``: the current official code (June 2021, the PAMI paper); ``"2020"``: the repository's first commit
VERSIONS = ("pami", "2020")
#: (outer, bound) relative-energy tolerances of each version
TOLERANCES = {"pami": (1e-4, 1e-7), "2020": (1e-5, 1e-6)}
#: the current code's lambda grid for validation tuning; the default lambda is 0.7
LAMBDAS = (0.05, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)
#: the first commit's (and the card's) grid
LAMBDAS_2020 = (0.05, 0.1, 0.3, 0.5, 0.7, 0.8, 1.0)


def _check_features(name: str, x: torch.Tensor) -> None:
    check_shape(name, x, [None, None])
    if not torch.isfinite(x).all():
        raise PriorkitError(f"{name} must be finite")


def _batched(name: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` as a batch ``[E, N, D]`` (a single ``[N, D]`` gets ``E = 1``)."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise PriorkitError(f"{name} must be a [N, D] tensor or a batch [E, N, D], got {getattr(x, 'shape', x)}")
    if not torch.isfinite(x).all():
        raise PriorkitError(f"{name} must be finite")
    return x if x.dim() == 3 else x.unsqueeze(0)


def _clamp_rows(y: torch.Tensor, clamp: torch.Tensor | None) -> torch.Tensor:
    if clamp is None:
        return y
    y = y.clone()
    y[:, : clamp.shape[1]] = clamp
    return y


def cl2n(x: torch.Tensor, base_mean: torch.Tensor | None = None) -> torch.Tensor:
    """CL2N (SimpleShot): subtract the mean base-training feature, then L2-normalise each row (``[..., D]``)."""
    _batched("x", x)
    if base_mean is not None:
        check_shape("base_mean", base_mean, [x.shape[-1]])
        x = x - base_mean
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def shift_queries(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Move the queries onto the supports' mean: ``q + (mean(support) - mean(query))`` (card step 3)."""
    _batched("support", support)
    _batched("query", query)
    if query.dim() != support.dim() or query.shape[-1] != support.shape[-1]:
        raise PriorkitError(f"query {list(query.shape)} must match support {list(support.shape)} in rank and width")
    return query + (support.mean(-2, keepdim=True) - query.mean(-2, keepdim=True))


def knn_affinity(x: torch.Tensor, knn: int = 3) -> torch.Tensor:
    """Binary kNN affinity ``W[p, q] = 1`` for the ``knn - 1`` nearest other points ``q`` of ``p``.

    ``x`` is ``[N, D]`` or a batch of tasks ``[E, N, D]``. ``knn`` counts the point itself, as the official
    ``create_affinity`` (sklearn ``NearestNeighbors``) does; the self column is dropped and ``W`` is not
    symmetrised.
    """
    check_positive_int("knn", knn, 2)
    xb = _batched("x", x)
    n = xb.shape[1]
    if knn > n:
        raise PriorkitError(f"knn must be <= the number of points ({n}), got {knn}")
    d = _sqdist(xb, xb)
    d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    idx = d.topk(knn - 1, dim=2, largest=False).indices
    w = torch.zeros_like(d).scatter_(2, idx, 1.0)
    return w if x.dim() == 3 else w[0]


def estimate_sigma(x: torch.Tensor, w: torch.Tensor, normaliser: int = 5) -> torch.Tensor:
    """Kernel width per task: ``sigma^2 = sum_pq w_pq ||x_p - x_q||^2 / (normaliser * N)``.

    The official code divides by 5 (``estimate_sigma(X, W, 5, N)``) although ``W`` comes from ``knn=3``.
    """
    check_positive_int("normaliser", normaliser)
    xb = _batched("x", x)
    wb = w if w.dim() == 3 else w.unsqueeze(0)
    check_shape("w", wb, [xb.shape[0], xb.shape[1], xb.shape[1]])
    s2 = (wb * _sqdist(xb, xb)).sum((1, 2)) / (normaliser * xb.shape[1])
    if bool((s2 <= 0).any()):
        raise PriorkitError("estimate_sigma: the affinity connects only identical points (sigma would be 0)")
    s = s2.sqrt()
    return s if x.dim() == 3 else s[0]


def entropy_energy(y: torch.Tensor, a: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """The bound loop's energy ``E(Y) = sum y log y + a.y - lambda y.(W Y)`` (official ``entropy_energy``).

    Summed over the last two axes, so a batch ``[E, N, K]`` gives ``[E]``.
    """
    return (y * y.clamp_min(1e-20).log() + a * y - lam * (w @ y) * y).sum((-2, -1))


@dataclass
class BoundResult:
    """``assignments`` ``[(E,) N, K]``; ``energies`` ``[iterations_run, (E)]`` (NaN once a task stopped);
    ``iterations`` per task."""

    assignments: torch.Tensor
    energies: torch.Tensor
    iterations: torch.Tensor


def bound_update(
    a: torch.Tensor,
    w: torch.Tensor,
    lam: float,
    *,
    max_iter: int = 600,
    tol: float = 1e-7,
    clamp: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
) -> BoundResult:
    """Bound optimisation of the assignments (card step 6): ``Y0 = softmax(-a)``, ``Y <- softmax(-a + lam W Y)``.

    Stops when ``|E_i - E_{i-1}| <= tol |E_{i-1}|`` from the third update on (the code's rule; ``tol`` 1e-7 in
    the current code, 1e-6 in the first commit), or after ``max_iter``; in a batch ``[E, N, K]`` each task stops
    on its own. ``init`` (rows for the first ``init.shape[-2]`` points, the supports' one-hot labels) replaces
    those rows of ``Y0`` only (the current code's start); ``clamp`` (the same kind of rows) fixes them in ``Y0``
    and after every update (the paper's constraint).
    """
    check_range("lam", lam, 0.0)
    check_positive_int("max_iter", max_iter)
    check_range("tol", tol, 0.0)
    single = a.dim() == 2
    ab = _batched("a", a)
    e_, n, k = ab.shape
    wb = w.unsqueeze(0) if single else w
    check_shape("w", wb, [e_, n, n])
    cb = ib = None
    if clamp is not None:
        cb = clamp.unsqueeze(0) if single else clamp
        check_shape("clamp", cb, [e_, None, k])
    if init is not None:
        ib = init.unsqueeze(0) if single else init
        check_shape("init", ib, [e_, None, k])
    y = _clamp_rows(_clamp_rows(torch.softmax(-ab, dim=2), ib), cb)
    idx = torch.arange(e_, device=ab.device)  # tasks still running; their tensors are kept compacted
    aa, wa, ca, ya = ab, wb, cb, y.clone()
    old = torch.full((e_,), float("inf"), dtype=ab.dtype, device=ab.device)
    iters = torch.zeros(e_, dtype=torch.long, device=ab.device)
    history = []
    for it in range(max_iter):
        ya = _clamp_rows(torch.softmax(-aa + lam * (wa @ ya), dim=2), ca)
        y[idx] = ya
        e = entropy_energy(ya, aa, wa, lam)
        row = torch.full((e_,), float("nan"), dtype=ab.dtype, device=ab.device)
        row[idx] = e
        history.append(row)
        iters[idx] += 1
        if it > 1:
            keep = ~(abs(e - old) <= tol * abs(old))
            if not bool(keep.any()):
                break
            if not bool(keep.all()):
                idx, aa, wa, ya, e = idx[keep], aa[keep], wa[keep], ya[keep], e[keep]
                ca = None if ca is None else ca[keep]
        old = e
    energies = torch.stack(history)
    if single:
        return BoundResult(y[0], energies[:, 0], iters[0])
    return BoundResult(y, energies, iters)


def mean_shift(
    x: torch.Tensor,
    members: torch.Tensor,
    c0: torch.Tensor,
    sigma: float | torch.Tensor,
    *,
    tol: float = 1e-5,
    max_iter: int = 1000,
) -> torch.Tensor:
    """Kernel mode of each cluster's members (K-modes step, official ``MS``), from the start ``c0``.

    ``x`` ``[(E,) N, D]``, boolean ``members`` ``[(E,) K, N]``, ``c0`` ``[(E,) K, D]``. Each cluster iterates
    ``c <- sum_p w_p x_p / sum_p w_p`` with ``w_p = exp(-||x_p - c||^2 / 2 sigma^2)`` over its members, and
    stops on its own when ``max|c_new - c| < tol * max|c|``. A cluster without members keeps ``c0``.
    """
    check_positive_int("max_iter", max_iter)
    single = x.dim() == 2
    xb = _batched("x", x)
    mb = members.unsqueeze(0) if single else members
    cb = (c0.unsqueeze(0) if single else c0).clone()
    check_shape("members", mb, [xb.shape[0], None, xb.shape[1]])
    check_shape("c0", cb, [xb.shape[0], mb.shape[1], xb.shape[2]])
    s = torch.as_tensor(sigma, dtype=xb.dtype, device=xb.device).expand(xb.shape[0])
    mask = mb.to(xb.dtype)
    active = mb.any(2)
    for _ in range(max_iter):
        wts = torch.exp(-_sqdist(cb, xb) / (2 * s[:, None, None] ** 2)) * mask
        c1 = (wts @ xb) / wts.sum(2, keepdim=True)
        conv = (c1 - cb).abs().amax(2) < tol * cb.abs().amax(2)
        cb = torch.where(active[..., None], c1, cb)
        active = active & ~conv
        if not bool(active.any()):
            break
    return cb[0] if single else cb


def _sqdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[..., N, K]`` between rows of ``x`` ``[..., N, D]`` and ``c`` ``[..., K, D]``."""
    d = (x * x).sum(-1)[..., :, None] + (c * c).sum(-1)[..., None, :] - 2 * (x @ c.transpose(-1, -2))
    return d.clamp_min(0.0)


def slk_energy(
    x: torch.Tensor,
    c: torch.Tensor,
    z: torch.Tensor,
    w: torch.Tensor,
    sigma: float | torch.Tensor,
    lam: float,
    mode: str,
) -> torch.Tensor:
    """Laplacian K-prototypes energy of the outer stopping rule (official ``compute_energy_lapkmode_cont``).

    K-means: ``sum z ||x-c||^2 - lam sum_k z_k^T W z_k``; K-modes/BO: ``-sum z exp(-||x-c||^2/2s^2) - lam ...``.
    Works on one task or a batch (``sigma`` then has one value per task).
    """
    check_choice("mode", mode, MODES)
    d = _sqdist(x, c)
    if mode == "kmeans":
        unary = (z * d).sum((-2, -1))
    else:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = s[..., None, None] if s.dim() else s
        unary = -(z * torch.exp(-d / (2 * s**2))).sum((-2, -1))
    return unary - lam * (z * (w @ z)).sum((-2, -1))


@dataclass
class SLKResult:
    """Query labels (cluster ``k`` = class ``k``), all assignments (supports first), prototypes, outer energies.

    Batched runs give a leading task axis; ``energies`` is ``[loop_iterations, (E)]`` (NaN where a task had
    stopped, or was restored). ``iterations``: outer iterations kept per task. ``restored``: the task stopped
    because a cluster emptied and got its previous labels back (``version="pami"`` only).
    """

    labels: torch.Tensor
    assignments: torch.Tensor
    prototypes: torch.Tensor
    energies: torch.Tensor
    iterations: torch.Tensor
    restored: torch.Tensor


def _check_task(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor) -> int:
    for name, t in (("support", support), ("query", query)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise PriorkitError(f"{name} must be a [N, D] tensor (or a batch [E, N, D]), got {getattr(t, 'shape', t)}")
        if not torch.isfinite(t).all():
            raise PriorkitError(f"{name} must be finite")
    if query.shape[0] != support.shape[0] or query.shape[2] != support.shape[2]:
        raise PriorkitError(
            f"query must have {support.shape[2]} features and {support.shape[0]} tasks like support, "
            f"got {list(query.shape)}"
        )
    check_shape("support_y", support_y, [support.shape[0], support.shape[1]])
    if support_y.dtype not in (torch.int64, torch.int32):
        raise PriorkitError(f"support_y must hold integer labels, got {support_y.dtype}")
    n_way = int(support_y.max()) + 1
    ok = int(support_y.min()) >= 0 and all(len(torch.unique(r)) == n_way for r in support_y)
    if not ok:
        raise PriorkitError(
            f"support_y must use every label 0..n_way-1 at least once in each task, got {support_y.tolist()}"
        )
    return n_way


def _hard_means(x: torch.Tensor, labels: torch.Tensor, c_old: torch.Tensor) -> torch.Tensor:
    z = F.one_hot(labels, c_old.shape[1]).to(x.dtype)
    count = z.sum(1)[..., None]
    return torch.where(count > 0, (z.transpose(1, 2) @ x) / count.clamp_min(1), c_old)


def slk(
    support: torch.Tensor,
    support_y: torch.Tensor,
    query: torch.Tensor,
    *,
    lam: float = 0.7,
    mode: str = "kmeans",
    version: str = "pami",
    knn: int = 3,
    clamp_support: bool = True,
    sigma: float | None = None,
    sigma_normaliser: int = 5,
    max_outer: int = 100,
    bound_iters: int = 600,
    outer_tol: float | None = None,
    bound_tol: float | None = None,
) -> SLKResult:
    """SLK on a task's (already normalised and shifted) features; ``lam = 0`` is transductive K-means/K-modes.

    One task: ``support [Ns, D]``, ``support_y [Ns]``, ``query [Nq, D]``. A batch of same-shaped tasks:
    ``[E, Ns, D]``, ``[E, Ns]``, ``[E, Nq, D]``; every task runs (and stops) exactly as it would alone.
    ``mode``: ``"kmeans"`` (SLK-Means), ``"ms"`` (SLK-MS, K-modes by mean shift) or ``"bo"`` (module notes).
    ``version``: ``"pami"`` (the current official code) or ``"2020"`` (its first commit); see the module notes.
    ``outer_tol``/``bound_tol`` default to the version's tolerances (:data:`TOLERANCES`).
    Computation is in float64 as in the numpy reference.
    """
    check_choice("mode", mode, MODES)
    check_choice("version", version, VERSIONS)
    check_range("lam", lam, 0.0)
    check_positive_int("max_outer", max_outer)
    outer_tol = TOLERANCES[version][0] if outer_tol is None else outer_tol
    bound_tol = TOLERANCES[version][1] if bound_tol is None else bound_tol
    check_range("outer_tol", outer_tol, 0.0)
    check_range("bound_tol", bound_tol, 0.0)
    pami = version == "pami"
    single = isinstance(support, torch.Tensor) and support.dim() == 2
    if single:
        support, query = support.unsqueeze(0), query.unsqueeze(0) if isinstance(query, torch.Tensor) else query
        support_y = support_y.unsqueeze(0) if isinstance(support_y, torch.Tensor) else support_y
    n_way = _check_task(support, support_y, query)
    x = torch.cat([support, query], 1).double()
    n_tasks, ns = support.shape[0], support.shape[1]
    ys = support_y.long()
    onehot = F.one_hot(ys, n_way).double()
    clamp = onehot if clamp_support else None
    w = knn_affinity(x, knn)
    if sigma is None:
        s = estimate_sigma(x, w, sigma_normaliser)
    else:
        check_range("sigma", sigma, 0.0, None, low_inclusive=False)
        s = torch.full((n_tasks,), float(sigma), dtype=x.dtype)
    # initial prototypes: per-class support means; initial labels: nearest prototype, supports set to labels
    c = (onehot.transpose(1, 2) @ x[:, :ns]) / onehot.sum(1)[..., None]
    labels = _sqdist(x, c).argmin(2)
    labels[:, :ns] = ys
    z = F.one_hot(labels, n_way).double()
    old = torch.full((n_tasks,), float("inf"), dtype=x.dtype)
    iters = torch.zeros(n_tasks, dtype=torch.long)
    active = torch.ones(n_tasks, dtype=torch.bool)
    restored = torch.zeros(n_tasks, dtype=torch.bool)
    history = []
    for it in range(max_outer):
        ai = active.nonzero().squeeze(1)
        xa, ca, za, la, sa = x[ai], c[ai], z[ai], labels[ai], s[ai]
        if mode == "kmeans":
            soft = not pami and lam > 0 and it > 0  # the first commit's soft means
            ca = (za.transpose(1, 2) @ xa) / za.sum(1)[..., None] if soft else _hard_means(xa, la, ca)
            a = _sqdist(xa, ca)
        else:
            if mode == "ms":
                ca = mean_shift(xa, F.one_hot(la, n_way).transpose(1, 2).bool(), ca, sa)
            a = -torch.exp(-_sqdist(xa, ca) / (2 * sa[:, None, None] ** 2))
        if lam > 0:
            res = bound_update(
                a,
                w[ai],
                lam,
                max_iter=bound_iters,
                tol=bound_tol,
                clamp=None if clamp is None else clamp[ai],
                init=onehot[ai] if pami else None,
            )
            za = res.assignments
            la = za.argmax(2)
            if mode == "bo":
                ca = torch.gather(xa, 1, za.argmax(1)[..., None].expand(-1, -1, xa.shape[2]))
        else:
            la = a.argmin(2)
            if clamp_support:
                la[:, :ns] = ys[ai]
            za = F.one_hot(la, n_way).double()
        row = torch.full_like(old, float("nan"))
        if pami:  # a cluster lost every point: keep the previous labels/prototypes and stop that task
            empty = (F.one_hot(la, n_way).sum(1) == 0).any(1)
            restored[ai[empty]] = True
            active[ai[empty]] = False
            ok = ~empty
            ai, xa, ca, za, la, sa = ai[ok], xa[ok], ca[ok], za[ok], la[ok], sa[ok]
        c[ai], z[ai], labels[ai] = ca, za, la
        e = slk_energy(xa, ca, za, w[ai], sa, lam, mode)
        row[ai] = e
        history.append(row)
        iters[ai] += 1
        done = (abs(e - old[ai]) <= outer_tol * abs(old[ai])) if it > 1 else torch.zeros_like(ai, dtype=torch.bool)
        old[ai] = e
        active[ai[done]] = False
        if not bool(active.any()):
            break
    energies = torch.stack(history)
    if single:
        return SLKResult(labels[0, ns:], z[0], c[0], energies[:, 0], iters[0], restored[0])
    return SLKResult(labels[:, ns:], z, c, energies, iters, restored)


def prepare_task(
    support: torch.Tensor,
    query: torch.Tensor,
    base_mean: torch.Tensor | None,
    *,
    normalise: bool = True,
    shift: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CL2N both sets (``normalise``) and shift the queries onto the supports (``shift``); both switchable."""
    if normalise:
        support, query = cl2n(support, base_mean), cl2n(query, base_mean)
    if shift:
        query = shift_queries(support, query)
    return support, query


def episode_batch(
    features: torch.Tensor, sampler, base_mean: torch.Tensor | None, *, normalise: bool = True, shift: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack every episode of ``sampler`` (a :class:`priorkit.data.episodes.EpisodeSampler`) over ``features``.

    Returns ``(support [E, Ns, D], support_y [E, Ns], query [E, Nq, D], query_y [E, Nq])`` after
    :func:`prepare_task`.
    """
    eps = list(sampler)
    xs = torch.stack([ep.support(features) for ep in eps])
    xq = torch.stack([ep.query(features) for ep in eps])
    xs, xq = prepare_task(xs, xq, base_mean, normalise=normalise, shift=shift)
    return xs, torch.stack([ep.support_y for ep in eps]), xq, torch.stack([ep.query_y for ep in eps])


def tune_lambda(
    features: torch.Tensor,
    labels: torch.Tensor,
    base_mean: torch.Tensor | None,
    *,
    lambdas: Sequence[float] = LAMBDAS,
    n_way: int = 5,
    n_shot: int = 1,
    n_query: int = 15,
    n_episodes: int = 100,
    seed: int = 0,
    **slk_kwargs,
) -> tuple[float, dict[float, float]]:
    """Pick lambda by mean accuracy on validation episodes of ``(features, labels)`` (the code's ``tune_lambda``).

    Every lambda sees the same episodes; ties go to the first in ``lambdas``. Returns ``(best, {lam: acc})``.
    """
    from priorkit.data.episodes import EpisodeSampler

    if not lambdas:
        raise PriorkitError("lambdas must hold at least one value")
    sampler = EpisodeSampler(labels, n_way=n_way, n_shot=n_shot, n_query=n_query, n_episodes=n_episodes, seed=seed)
    xs, ys, xq, yq = episode_batch(features, sampler, base_mean)
    scores: dict[float, float] = {}
    for lam in lambdas:
        pred = slk(xs, ys, xq, lam=lam, **slk_kwargs).labels
        scores[float(lam)] = float((pred == yq).double().mean())
    best = max(scores, key=lambda k: scores[k])
    return best, scores


class SLK(nn.Module):
    """SLK as a few-shot classifier: ``process_support_set(xs, ys)``, then ``forward(xq)`` -> query assignments.

    ``backbone`` (optional) maps inputs to features (``model.features`` of a priorkit backbone); ``base_mean``
    is the mean base-training feature for CL2N. ``forward`` runs the transductive inference on all the queries
    at once and returns their soft assignments ``[n_query, n_way]`` (rows on the simplex; argmax = label).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        *,
        base_mean: torch.Tensor | None = None,
        normalise: bool = True,
        shift: bool = True,
        **slk_kwargs,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalise, self.shift, self.slk_kwargs = normalise, shift, slk_kwargs
        self.register_buffer("base_mean", base_mean.detach().clone() if base_mean is not None else None)
        self.support: torch.Tensor | None = None
        self.support_y: torch.Tensor | None = None
        self.last: SLKResult | None = None

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            return x
        feats = getattr(self.backbone, "features", self.backbone)
        return feats(x).flatten(1)

    @torch.no_grad()
    def process_support_set(self, support_x: torch.Tensor, support_y: torch.Tensor) -> None:
        _batched("support_x", support_x) if self.backbone is None else None
        self.support = self._embed(support_x)
        self.support_y = support_y.long()

    @torch.no_grad()
    def forward(self, query_x: torch.Tensor) -> torch.Tensor:
        if self.support is None or self.support_y is None:
            raise PriorkitError("call process_support_set(support_x, support_y) before forward(query_x)")
        if isinstance(query_x, torch.Tensor) and query_x.is_floating_point() and not torch.isfinite(query_x).all():
            raise PriorkitError("query_x must be finite")
        xs, xq = prepare_task(
            self.support, self._embed(query_x), self.base_mean, normalise=self.normalise, shift=self.shift
        )
        self.last = slk(xs, self.support_y, xq, **self.slk_kwargs)
        return self.last.assignments[xs.shape[0] :]


_PRESET = {
    "lam": 0.7,
    "mode": "kmeans",
    "version": "pami",
    "knn": 3,
    "clamp_support": True,
    "normalise": True,
    "shift": True,
}
SPEC = MethodSpec(
    status="implemented",
    entry="SLK",
    missing=(
        "the paper's WRN/ResNet-18 extractors and mini-/tiered-ImageNet/CUB not available: the experiment runs on "
        "a small conv net pretrained by priorkit on Fashion-MNIST classes 0-4 (zoo fmnist_conv_base5), tasks of "
        "classes 5-9"
    ),
    presets={"paper": dict(_PRESET), "small": dict(_PRESET)},
)
