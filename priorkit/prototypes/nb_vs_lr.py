"""Revisiting Discriminative vs. Generative Classifiers: Theory and Implications, Zheng et al., ICML 2023.

Linear evaluation of pretrained features usually fits logistic regression (LR). The paper revisits Ng &
Jordan's comparison for the multiclass case: a Gaussian naive Bayes (NB) head with a *shared* (prior-pooled)
diagonal variance is LR's generative counterpart (its decision function is linear), and under mild
conditions NB gets within epsilon of its asymptotic error with m = O(log n) samples while LR needs O(n)
(n = feature dimension; the proof goes through a multiclass H-consistency bound of the logistic loss).
The paper reports: simulations follow the theory (NB's curve flattens after a few hundred samples, LR keeps
improving up to m ~ n-scale), NB converges faster and is strong few-shot on pretrained vision features, and
for supervised-pretrained features LR overtakes NB at large m ("two regimes").

Here (official code ML-GSAI/Revisiting-Dis-vs-Gen-Classifiers: ``models/gaussnb.py``,
``main_simulation.py``, ``data/generate_data.py``):

* :class:`GaussianNB`: priors ``n_k/m``, class means, per-class population variances pooled with the priors,
  ``sigma2_j = sum_k pi_k sigma2_kj + eps`` (absolute eps 1e-9 as in the code, or relative to the largest
  variance); predicts ``argmax_k log pi_k - 1/2 sum_j (x_j - mu_kj)^2 / sigma2_j``. ``partial_fit`` merges a
  chunk with the pairwise (Chan) update, so streaming equals a batch fit. ``pooled=False`` gives the quadratic
  (per-class variance) NB, which is *not* the paper's comparison. Functional core: :func:`nb_statistics`,
  :func:`nb_merge`, :func:`nb_pooled_variance`, :func:`nb_log_joint`, :func:`nb_linear`.
* LR: :func:`fit_logistic` (scikit-learn's multinomial ``LogisticRegression``, lbfgs, L2, C=1, max_iter
  1000, as the code) and :func:`fit_logistic_sgd` (torch, trained by :class:`priorkit.train.Trainer`; lr 1,
  momentum 0.9, x0.1 at epochs 60/80, 100
  epochs, batch 256, early stopping on an evaluation set every 5 epochs with patience 15 checks). The
  official code early-stops on the *test* error; pass a held-out set to avoid that.
* The simulator (:func:`simulator_params`, :func:`simulate`): class 0 at ``-1``, class k >= 1 at
  ``2^(k-1)`` in every coordinate; "easy" covariance ``diag(n,...,n,1,...,1)``, "hard" ``A^T A`` (A ~ U(-1,1),
  seeded) with its diagonal replaced by the easy one. That matrix is generally not positive semi-definite;
  the official code samples it with ``numpy.random.multivariate_normal``, whose SVD-based sampler gives
  covariance ``Q |Lambda| Q^T``; :func:`simulate` samples exactly that matrix (:func:`effective_covariance`).
* :func:`bayes_error` (closed form for K=2, Monte Carlo with the true Bayes rule for K>2), :func:`m_grid`
  (``range(2K, 100n, ceil(log n))``), :func:`learning_curve` (repeats, subsets missing a class redrawn, stop
  once the mean error is within ``stop_within`` of a target), :func:`m_to_reach` and :func:`crossover`.

Not built: the H-consistency bound calculator (card: later, in ``priorkit/theory``), feature extractors for
the paper's pretrained vision models, and the feature diagnostics. scikit-learn's ``GaussianNB`` was
considered: its variances are per class (a quadratic classifier) and its smoothing is relative, so the
pooled head is written here; scikit-learn's ``LogisticRegression`` is used for LR.

Example:

>>> x, y = simulate(n=20, K=2, m_per_class=200, mode="easy", seed=0)
>>> xt, yt = simulate(n=20, K=2, m_per_class=500, mode="easy", seed=1)
>>> nb = GaussianNB(num_classes=2).fit(x, y)
>>> lr = fit_logistic(x, y)
>>> err_nb = float((nb.predict(xt) != yt).double().mean())
>>> err_lr = float((lr(xt) != yt).double().mean())
>>> err_nb < 0.05 and err_lr < 0.1
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from priorkit.core.errors import (
    NonFiniteError,
    PriorkitError,
    as_tensor,
    check_choice,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.train import Hook, Phase, Recipe, TrainConfig, Trainer

if TYPE_CHECKING:
    from priorkit.train import RunState

EPS_MODES = ("absolute", "relative")
SIM_MODES = ("easy", "hard")

#: a fitted classifier: inputs ``[N, D]`` -> predicted labels ``[N]``
Predictor = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------ naive Bayes, core


@dataclass(frozen=True)
class NBStats:
    """Sufficient statistics of the Gaussian NB head (float64): per-class counts ``[K]``, means ``[K, D]``
    and population variances ``[K, D]`` (no smoothing; eps is added when predicting)."""

    counts: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor

    @property
    def priors(self) -> torch.Tensor:
        total = self.counts.sum()
        if float(total) <= 0:
            raise PriorkitError("the naive Bayes head has seen no examples")
        return self.counts / total


def _check_xy(x: torch.Tensor, y: torch.Tensor, num_classes: int, names: tuple[str, str] = ("x", "y")) -> None:
    nx, ny = names
    check_shape(nx, x, [None, None])
    check_shape(ny, y, [x.shape[0]])
    if not x.is_floating_point():
        raise PriorkitError(f"{nx} must be floating point, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise PriorkitError(f"{nx} must be a non-empty batch, got shape {list(x.shape)}")
    if y.dtype not in (torch.int64, torch.int32):
        raise PriorkitError(f"{ny} must hold integer class labels, got {y.dtype}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise PriorkitError(
            f"{ny}: labels must lie in [0, {num_classes - 1}], got range [{int(y.min())}, {int(y.max())}]"
        )
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{nx} holds NaN or infinite values")


def nb_statistics(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> NBStats:
    """Counts, means and population (ddof=0) variances per class; empty classes get zeros."""
    check_positive_int("num_classes", num_classes, 2)
    _check_xy(x, y, num_classes)
    x = x.to(torch.float64)
    onehot = torch.nn.functional.one_hot(y.long(), num_classes).to(torch.float64).T  # [K, N]
    counts = onehot.sum(1)
    safe = counts.clamp_min(1.0).unsqueeze(1)
    means = onehot @ x / safe
    centred = x.unsqueeze(0) - means.unsqueeze(1)  # [K, N, D]
    variances = (onehot.unsqueeze(2) * centred * centred).sum(1) / safe
    return NBStats(counts, means, variances)


def nb_merge(a: NBStats, b: NBStats) -> NBStats:
    """Chan's pairwise update: the statistics of the union of the two samples (exact, order-free)."""
    if a.means.shape != b.means.shape:
        raise PriorkitError(f"cannot merge statistics of shapes {list(a.means.shape)} and {list(b.means.shape)}")
    n = a.counts + b.counts
    safe = n.clamp_min(1.0).unsqueeze(1)
    na, nb_ = a.counts.unsqueeze(1), b.counts.unsqueeze(1)
    means = (na * a.means + nb_ * b.means) / safe
    gap = a.means - b.means
    ssd = na * a.variances + nb_ * b.variances + (na * nb_ / safe) * gap * gap
    return NBStats(n, means, ssd / safe)


def nb_pooled_variance(stats: NBStats, eps: float = 1e-9, eps_mode: str = "absolute") -> torch.Tensor:
    """``sigma2_j = sum_k pi_k sigma2_kj + eps`` (relative mode: ``eps * max_j sum_k pi_k sigma2_kj``)."""
    check_range("eps", eps, 0.0)
    check_choice("eps_mode", eps_mode, EPS_MODES)
    pooled = stats.priors @ stats.variances
    add = eps if eps_mode == "absolute" else eps * float(pooled.max())
    return pooled + add


def nb_log_joint(
    x: torch.Tensor, stats: NBStats, eps: float = 1e-9, eps_mode: str = "absolute", pooled: bool = True
) -> torch.Tensor:
    """Class scores ``[N, K]``. Pooled: ``log pi_k - 1/2 sum_j (x_j - mu_kj)^2 / sigma2_j`` (the official
    ``predict``); unpooled: the full Gaussian log joint with per-class variances (quadratic NB)."""
    check_shape("x", x, [None, stats.means.shape[1]])
    if bool((stats.counts == 0).any()):
        missing = torch.nonzero(stats.counts == 0).flatten().tolist()
        raise PriorkitError(f"no training example of class(es) {missing}; every class needs >= 1 example")
    x = x.to(torch.float64)
    log_prior = stats.priors.log()
    diff = x.unsqueeze(1) - stats.means.unsqueeze(0)  # [N, K, D]
    if pooled:
        var = nb_pooled_variance(stats, eps, eps_mode)
        return log_prior - 0.5 * (diff * diff / var).sum(-1)
    check_range("eps", eps, 0.0)
    check_choice("eps_mode", eps_mode, EPS_MODES)
    add = eps if eps_mode == "absolute" else eps * float(stats.variances.max())
    var = stats.variances + add  # [K, D]
    return log_prior - 0.5 * (diff * diff / var + torch.log(2 * math.pi * var)).sum(-1)


def nb_linear(stats: NBStats, eps: float = 1e-9, eps_mode: str = "absolute") -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled NB head as a linear classifier ``W x + b`` (``W [K, D]``, ``b [K]``): it differs from
    :func:`nb_log_joint` by ``-1/2 sum_j x_j^2 / sigma2_j``, which is the same for every class."""
    var = nb_pooled_variance(stats, eps, eps_mode)
    w = stats.means / var
    b = stats.priors.log() - 0.5 * (stats.means * stats.means / var).sum(1)
    return w, b


class GaussianNB:
    """Gaussian naive Bayes with a prior-pooled diagonal variance (the paper's linear generative head).

    ``fit`` replaces the statistics, ``partial_fit`` merges a chunk into them (Chan update; chunks may miss
    classes). ``state_dict``/``load_state_dict`` hold the statistics.
    """

    def __init__(self, num_classes: int, *, eps: float = 1e-9, eps_mode: str = "absolute", pooled: bool = True):
        check_positive_int("num_classes", num_classes, 2)
        check_range("eps", eps, 0.0)
        check_choice("eps_mode", eps_mode, EPS_MODES)
        self.num_classes, self.eps, self.eps_mode, self.pooled = num_classes, eps, eps_mode, pooled
        self.stats: NBStats | None = None

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> GaussianNB:
        self.stats = nb_statistics(x, y, self.num_classes)
        return self

    def partial_fit(self, x: torch.Tensor, y: torch.Tensor) -> GaussianNB:
        new = nb_statistics(x, y, self.num_classes)
        self.stats = new if self.stats is None else nb_merge(self.stats, new)
        return self

    def _stats(self) -> NBStats:
        if self.stats is None:
            raise PriorkitError("GaussianNB is not fitted: call fit or partial_fit first")
        return self.stats

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        return nb_log_joint(x, self._stats(), self.eps, self.eps_mode, self.pooled)

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        """Linear scores ``W x + b`` (pooled) or the log joint (unpooled); same argmax as :meth:`log_joint`."""
        if not self.pooled:
            return self.log_joint(x)
        check_shape("x", x, [None, self._stats().means.shape[1]])
        w, b = nb_linear(self._stats(), self.eps, self.eps_mode)
        return x.to(torch.float64) @ w.T + b

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_joint(x).argmax(1)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.log_joint(x), dim=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        s = self._stats()
        return {"counts": s.counts.clone(), "means": s.means.clone(), "variances": s.variances.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats = NBStats(state["counts"].double(), state["means"].double(), state["variances"].double())


def fit_nb(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None, **kwargs) -> Predictor:
    """Fit :class:`GaussianNB` and return its ``predict``."""
    k = int(y.max()) + 1 if num_classes is None else num_classes
    return GaussianNB(max(k, 2), **kwargs).fit(x, y).predict


# ------------------------------------------------------------------------------------------ logistic regression


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, C: float = 1.0, max_iter: int = 1000) -> Predictor:  # noqa: N803
    """Multinomial L2 logistic regression by lbfgs (scikit-learn), the official ``lr_bgfs``; returns ``predict``."""
    from sklearn.linear_model import LogisticRegression

    check_range("C", C, 0.0, low_inclusive=False)
    check_positive_int("max_iter", max_iter)
    check_shape("x", x, [None, None])
    check_shape("y", y, [x.shape[0]])
    if len(torch.unique(y)) < 2:
        raise PriorkitError("logistic regression needs examples of at least 2 classes")
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
    model.fit(x.double().numpy(), y.numpy())

    def predict(xq: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(model.predict(xq.double().numpy()), dtype=torch.long)

    predict.model = model  # type: ignore[attr-defined]
    return predict


class _EarlyStopping(Hook):
    """Every ``check_every`` epochs: the error on the evaluation set; keeps the best weights and ends the run
    after ``patience`` checks without improvement (the official ``lr_sgd``). Its state is checkpointed."""

    def __init__(self, eval_x: torch.Tensor, eval_y: torch.Tensor, check_every: int, patience: int) -> None:
        self.eval_x, self.eval_y, self.check_every, self.patience = eval_x, eval_y, check_every, patience
        self.best, self.bad, self.best_state = math.inf, 0, None

    def on_epoch_end(self, state: RunState) -> None:
        if (state.epoch + 1) % self.check_every:
            return
        model = state.model
        with torch.no_grad():
            err = float((model(self.eval_x.float()).argmax(1) != self.eval_y).double().mean())
        if err < self.best:
            self.best, self.bad = err, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1
            if self.bad >= self.patience:
                state.request_stop()  # the engine ends the run after this epoch

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "best_state": self.best_state or {}}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = float(state["best"]), int(state["bad"])
        self.best_state = dict(state["best_state"]) or None


def fit_logistic_sgd(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    eval_x: torch.Tensor | None = None,
    eval_y: torch.Tensor | None = None,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    epochs: int = 100,
    milestones: Sequence[int] = (60, 80),
    batch_size: int = 256,
    check_every: int = 5,
    patience: int = 15,
    seed: int = 0,
) -> Predictor:
    """LR trained by SGD (the official ``lr_sgd``): a linear layer with cross-entropy, lr x0.1 at each
    milestone, trained by :class:`priorkit.train.Trainer`; with an evaluation set, its error is checked every
    ``check_every`` epochs and the best weights are kept, stopping after ``patience`` checks without improvement."""
    check_positive_int("num_classes", num_classes, 2)
    x, y = as_tensor("x", x), as_tensor("y", y)
    _check_xy(x, y, num_classes)
    check_range("lr", lr, 0.0, low_inclusive=False)
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("check_every", check_every)):
        check_positive_int(name, v)
    check_positive_int("patience", patience)
    if (eval_x is None) != (eval_y is None):
        raise PriorkitError("eval_x and eval_y must be given together")
    hooks: list[Hook] = []
    if eval_x is not None:
        eval_x, eval_y = as_tensor("eval_x", eval_x), as_tensor("eval_y", eval_y)
        _check_xy(eval_x, eval_y, num_classes, names=("eval_x", "eval_y"))
        check_shape("eval_x", eval_x, [None, x.shape[1]])
        hooks.append(_EarlyStopping(eval_x, eval_y, check_every, patience))
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], num_classes)
    phase = Phase(
        "fit",
        epochs=epochs,
        optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay),
        scheduler=lambda o, spe: torch.optim.lr_scheduler.MultiStepLR(o, milestones=list(milestones), gamma=0.1),
    )
    config = TrainConfig(batch_size=batch_size, seed=seed, progress=False)
    Trainer(model, TensorDataset(x.float(), y.long()), recipe=Recipe([phase]), hooks=hooks, config=config).fit()
    if hooks and hooks[0].best_state is not None:
        model.load_state_dict(hooks[0].best_state)
    model.eval()

    def predict(xq: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(xq.float()).argmax(1)

    predict.model = model  # type: ignore[attr-defined]
    return predict


# --------------------------------------------------------------------------------------------------- simulator


def simulator_params(n: int, K: int, mode: str = "easy", cov_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
    """Class means ``[K, n]`` and covariance ``[n, n]`` of the paper's simulation (``generate_data.py``)."""
    check_positive_int("n", n, 2)
    check_positive_int("K", K, 2)
    check_choice("mode", mode, SIM_MODES)
    means = torch.tensor([[-1.0 if k == 0 else 2.0 ** (k - 1)] * n for k in range(K)], dtype=torch.float64)
    diag = torch.tensor([float(n)] * (n // 2) + [1.0] * (n - n // 2), dtype=torch.float64)
    if mode == "easy":
        return means, torch.diag(diag)
    a = 2 * torch.as_tensor(np.random.default_rng(cov_seed).random((n, n))) - 1
    cov = a.T @ a
    cov = cov - torch.diag(torch.diag(cov)) + torch.diag(diag)
    return means, cov


def effective_covariance(cov: torch.Tensor) -> torch.Tensor:
    """``Q |Lambda| Q^T``: the covariance that numpy's SVD-based Gaussian sampler realises for a symmetric
    ``cov`` (equal to ``cov`` when it is positive semi-definite)."""
    lam, q = torch.linalg.eigh(cov)
    return (q * lam.abs()) @ q.T


def simulate(
    n: int,
    K: int,  # noqa: N803
    m_per_class: int,
    mode: str = "easy",
    seed: int = 0,
    cov_seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``m_per_class`` Gaussian samples of each of the ``K`` simulator classes (float64 ``[K*m, n]``, labels)."""
    check_positive_int("m_per_class", m_per_class)
    means, cov = simulator_params(n, K, mode, cov_seed)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(K * m_per_class, n, generator=g, dtype=torch.float64)
    if mode == "easy":
        root = torch.diag(torch.diag(cov).sqrt())
    else:
        lam, q = torch.linalg.eigh(cov)
        root = (q * lam.abs().sqrt()).T
    y = torch.arange(K).repeat_interleave(m_per_class)
    return means[y] + z @ root, y


def bayes_error(
    n: int, K: int, mode: str = "easy", *, samples: int = 200_000, seed: int = 0, cov_seed: int = 0
) -> float:  # noqa: N803
    """Error of the Bayes classifier of the simulator with equal priors. K=2: ``Phi(-Delta/2)`` with the
    Mahalanobis distance ``Delta`` of the two means; K>2: Monte Carlo with ``samples`` draws."""
    means, cov = simulator_params(n, K, mode, cov_seed)
    cov = effective_covariance(cov) if mode == "hard" else cov
    prec = torch.linalg.inv(cov)
    if K == 2:
        d = means[1] - means[0]
        delta = float(d @ prec @ d) ** 0.5
        return 0.5 * math.erfc(delta / 2 / math.sqrt(2))
    check_positive_int("samples", samples, K)
    x, y = simulate(n, K, samples // K, mode, seed, cov_seed)
    # equal priors and a shared covariance: argmax_k mu_k^T P x - 1/2 mu_k^T P mu_k
    scores = x @ (means @ prec).T - 0.5 * ((means @ prec) * means).sum(1)
    return float((scores.argmax(1) != y).double().mean())


# ------------------------------------------------------------------------------------------ learning curves


def m_grid(n: int, K: int, *, start: int | None = None, stop: int | None = None) -> list[int]:  # noqa: N803
    """The paper's training sizes ``range(2K, 100n, ceil(log n))`` (optionally cut to ``[start, stop]``)."""
    check_positive_int("n", n, 2)
    check_positive_int("K", K, 2)
    grid = list(range(2 * K, 100 * n, math.ceil(math.log(n))))
    return [m for m in grid if (start is None or m >= start) and (stop is None or m <= stop)]


def learning_curve(
    fit: Callable[[torch.Tensor, torch.Tensor], Predictor],
    x_pool: torch.Tensor,
    y_pool: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    ms: Sequence[int],
    *,
    repeats: int = 5,
    seed: int = 0,
    target: float | None = None,
    stop_within: float = 0.01,
    max_redraws: int = 1000,
) -> dict[str, list]:
    """Test error of ``fit`` on random subsets of size ``m`` of the pool, ``repeats`` times per ``m``.

    As ``main_simulation.py``: subsets that miss a class are redrawn, and with a ``target`` (the Bayes error)
    the sweep stops after the first ``m`` whose mean error is below ``target + stop_within``. Returns
    ``{"m": [...], "errors": [[repeats] per m], "mean": [...]}``.
    """
    check_positive_int("repeats", repeats)
    check_shape("y_pool", y_pool, [x_pool.shape[0]])
    num_classes = len(torch.unique(y_pool))
    if any((not isinstance(m, int)) or m < num_classes or m > len(y_pool) for m in ms):
        raise PriorkitError(f"every m must be an integer in [{num_classes}, {len(y_pool)}] (pool size), got {list(ms)}")
    if list(ms) != sorted(ms):
        raise PriorkitError("ms must be increasing")
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list] = {"m": [], "errors": [], "mean": []}
    for m in ms:
        errs = []
        for _ in range(repeats):
            for _ in range(max_redraws):
                idx = torch.randperm(len(y_pool), generator=g)[:m]
                if len(torch.unique(y_pool[idx])) == num_classes:
                    break
            else:
                raise PriorkitError(f"could not draw a subset of size {m} holding every class")
            pred = fit(x_pool[idx], y_pool[idx])
            errs.append(float((pred(x_test) != y_test).double().mean()))
        out["m"].append(m)
        out["errors"].append(errs)
        out["mean"].append(sum(errs) / len(errs))
        if target is not None and out["mean"][-1] < target + stop_within:
            break
    return out


def m_to_reach(ms: Sequence[int], mean_errors: Sequence[float], level: float) -> int | None:
    """The first ``m`` whose mean error is at most ``level`` (None if none does)."""
    for m, e in zip(ms, mean_errors):
        if e <= level:
            return int(m)
    return None


def crossover(ms: Sequence[int], err_a: Sequence[float], err_b: Sequence[float]) -> int | None:
    """The first ``m`` from which ``b``'s error stays below ``a``'s (e.g. LR overtaking NB); None if never."""
    if not (len(ms) == len(err_a) == len(err_b)):
        raise PriorkitError("ms, err_a and err_b must have the same length")
    for i, m in enumerate(ms):
        if all(b < a for a, b in zip(err_a[i:], err_b[i:])):
            return int(m)
    return None


SPEC = MethodSpec(
    status="implemented",
    entry="GaussianNB",
    missing="H-consistency bound calculator and feature diagnostics not built (card: later); stand-ins for the "
    "paper's large pretrained vision backbones: frozen features of a conv net priorkit pretrained on Fashion-MNIST "
    "classes 0-4 (zoo fmnist_conv_base5) probed on classes 5-9, and MiniLM embeddings of templated topic sentences "
    "(a harder text task is not chosen yet)",
    presets={
        "paper": {"eps": 1e-9, "eps_mode": "absolute", "pooled": True, "lr_C": 1.0, "lr_max_iter": 1000,
                  "sgd_lr": 1.0, "sgd_momentum": 0.9, "sgd_epochs": 100, "sgd_milestones": (60, 80),
                  "sgd_batch_size": 256, "check_every": 5, "patience": 15},
        "small": {"eps": 1e-9, "eps_mode": "absolute", "pooled": True, "lr_C": 1.0, "lr_max_iter": 1000},
    },
)  # fmt: skip

__all__ = [
    "NBStats",
    "GaussianNB",
    "Predictor",
    "bayes_error",
    "crossover",
    "effective_covariance",
    "fit_logistic",
    "fit_logistic_sgd",
    "fit_nb",
    "learning_curve",
    "m_grid",
    "m_to_reach",
    "nb_linear",
    "nb_log_joint",
    "nb_merge",
    "nb_pooled_variance",
    "nb_statistics",
    "simulate",
    "simulator_params",
]
