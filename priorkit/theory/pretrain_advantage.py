"""On the Provable Advantage of Unsupervised Pretraining, Jiawei Ge, Shange Tang, Jianqing Fan and Chi Jin, ICLR 2024.

The paper explains in general (not per method) when unsupervised pretraining provably helps. Data ``x`` come from
a latent-variable model ``p_phi*(x, z)``, ``phi* in Phi``, and labels depend on ``x`` only through the latent
``z`` via some ``psi* in Psi``. The two-stage estimator first fits ``phi`` by maximum likelihood on ``m``
unlabelled samples, then fits a simple downstream predictor ``psi`` by empirical risk minimisation on ``n``
labelled samples, acting on the latent representation of ``x`` under the fitted ``phi``. If matching the marginal
of ``x`` pins down the joint up to a group ``T`` of transformations of ``z`` (``Phi`` is kappa^-1-informative) and
``Psi`` is closed under ``T``, its excess risk is ``O~(kappa L sqrt(C_Phi / m) + sqrt(C_Psi / n))``, against
``O~(sqrt(C_{Phi o Psi} / n))`` for ERM over the composed class on the labels alone: pretraining wins when
``m >> n`` and ``C_{Phi o Psi} > C_Psi``.

Equations:

* Stage 1 (MLE): ``phi_hat = argmax_phi sum_{i<=m} log p_phi(x_i)``.
* Stage 2 (ERM): ``psi_hat = argmin_psi 1/n sum_{j<=n} loss(psi(rep_phi_hat(x_j)), y_j)``, with ``rep`` the
  posterior ``p_phi(z | x)`` (mixtures) or the posterior mean ``E_phi[z | x]`` (factor models).
* Rate (:func:`bound`, shape of the main theorem with every constant set to 1, so a rate and not a
  certificate): ``kappa L sqrt((C_Phi + ln 1/delta) / m) + sqrt(C_Psi / n) + L sqrt(ln(1/delta) / n)``;
  supervised ERM over the composed class (:func:`supervised_bound`): ``sqrt(C_{Phi o Psi} / n) + L sqrt(ln(1/delta)
  / n)``. The complexities (:func:`complexity`) are parameter counts, the log factors hidden in ``O~``.

Instances (the card's "Minimum faithful scope"):

* Gaussian mixture (:class:`GMMClass`): ``z`` uniform-ish on ``{1..K}`` with weights ``pi``, ``x | z ~ N(mu_z,
  I_d)``; MLE by EM on means and weights (identity covariance) with k-means++ restarts, keeping the best
  likelihood (:func:`fit_gmm_em`); the representation is the posterior vector in the simplex; ``Psi`` is
  multinomial logistic regression on it; ``T`` = permutations of the components. ``C_Phi = K d``, ``C_Psi = K``.
* Factor model (:class:`FactorClass`): ``x = A z + mu + sigma xi``, ``z ~ N(0, I_r)``; the MLE is probabilistic
  PCA's closed form (Tipping and Bishop, :func:`fit_factor_mle`); the representation is ``E[z | x]``; ``Psi`` is
  linear regression (squared loss); ``T`` = rotations. ``C_Phi = d r``, ``C_Psi = r``, ``C_{Phi o Psi} = d``.

Both closed-form / EM fits are pure functions; every gradient-trained fit (the downstream head, the supervised
ERM over the composed class) runs through :class:`priorkit.train.Trainer`. The downstream head starts at zero,
so a relabelling of the fitted components (or a rotation of a fitted factor basis) gives the same predictor: the
T-invariance the theorem needs. :class:`GMMTask` / :class:`FactorTask` generate the card's data with their Bayes
predictors; :meth:`GMMTask.excess_risk` is ``E_x[max_y eta_y(x) - eta_yhat(x)(x)]`` with the true label posterior
``eta``, the conditional form of "test error - Bayes error" (same expectation, never negative, far lower variance).

Libraries considered: scikit-learn's ``GaussianMixture`` learns covariances (no fixed unit spherical variance) and
its ``FactorAnalysis`` has per-feature noise, not the isotropic PPCA model; both EM and the PPCA closed form are a
few lines of torch, written here. Not built: the paper's contrastive-learning instance (card: later).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_batch,
    check_choice,
    check_labels,
    check_positive_int,
    check_range,
)
from priorkit.core.spec import MethodSpec
from priorkit.train import Phase, Recipe, TrainConfig, Trainer

__all__ = [
    "ComposedGMM",
    "FactorClass",
    "FactorParams",
    "FactorTask",
    "GMMClass",
    "GMMParams",
    "GMMTask",
    "PretrainAdvantage",
    "TwoStagePredictor",
    "bound",
    "complexity",
    "em_step",
    "factor_log_likelihood",
    "factor_posterior_mean",
    "fit_downstream",
    "fit_factor_mle",
    "fit_gmm_em",
    "fit_latent",
    "fit_supervised",
    "gmm_log_likelihood",
    "gmm_posterior",
    "loglog_slope",
    "make_factor_task",
    "make_gmm_task",
    "supervised_bound",
    "train_erm",
]

PREDICTORS = ("logistic", "linear")
LATENTS = ("gmm", "factor")
LAYOUTS = ("square", "simplex")
LOG_2PI = math.log(2 * math.pi)

SPEC = MethodSpec(
    status="implemented",
    entry="PretrainAdvantage",
    missing="the paper's contrastive-learning instance is not built (card: later); the rate is the theorem's shape "
    "with every constant set to 1 and parameter counts as complexities, a rate and not a certificate",
    presets={
        # a theory paper without code or hyperparameters: the card's GMM instance (K = 4, EM with restarts on means
        # and weights, logistic regression on the posterior vector) and the theorem's delta; kappa and the loss
        # bound L enter the rate only
        "paper": {"latent": "gmm", "num_components": 4, "restarts": 5, "max_iter": 500, "tol": 1e-10,
                  "predictor": "logistic", "steps": 300, "lr": 0.1, "weight_decay": 1e-3, "delta": 0.05,
                  "kappa": 1.0, "loss_bound": 1.0},
        # CPU experiment: fewer EM restarts and iterations, the same downstream fit
        "small": {"latent": "gmm", "num_components": 4, "restarts": 3, "max_iter": 200, "tol": 1e-8,
                  "predictor": "logistic", "steps": 300, "lr": 0.1, "weight_decay": 1e-3, "delta": 0.05,
                  "kappa": 1.0, "loss_bound": 1.0},
    },
)  # fmt: skip


def _x(name: str, x: object, dim: int | None = None) -> torch.Tensor:
    """A non-empty finite float ``[N, D]`` batch (``D == dim`` when given), as float64."""
    t = check_batch(name, as_tensor(name, x), dim=2)
    if dim is not None and t.shape[1] != dim:
        raise PriorkitError(f"{name} must have {dim} features (shape [N, {dim}]), got {list(t.shape)}")
    return t.double()


# ------------------------------------------------------------------------------------------ Gaussian mixture


@dataclass(frozen=True)
class GMMParams:
    """Fitted (or true) mixture ``phi = (means [K, d], weights [K])`` with unit spherical covariance.

    ``log_likelihood`` is the mean per-sample log-likelihood on the data it was fitted to (``nan`` for true
    parameters) and ``history`` the EM trace of the kept restart."""

    means: torch.Tensor
    weights: torch.Tensor
    log_likelihood: float = math.nan
    history: tuple[float, ...] = ()

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The representation fed to ``psi``: the posterior ``p_phi(z | x)`` ``[N, K]``."""
        return gmm_posterior(x, self.means, self.weights)

    def permute(self, perm: Sequence[int]) -> GMMParams:
        """The same mixture with its components relabelled by ``perm`` (an element of the group T)."""
        p = torch.as_tensor(list(perm), dtype=torch.long)
        if sorted(p.tolist()) != list(range(self.num_components)):
            raise PriorkitError(f"perm must be a permutation of 0..{self.num_components - 1}, got {list(perm)}")
        return GMMParams(self.means[p], self.weights[p], self.log_likelihood, self.history)


def _gmm_log_joint(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``log pi_k + log N(x; mu_k, I)`` ``[N, K]``."""
    sq = torch.cdist(x, means).pow(2)
    return torch.log(weights).unsqueeze(0) - 0.5 * sq - 0.5 * x.shape[1] * LOG_2PI


def _check_gmm(x: object, means: object, weights: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    means = _x("means", means)
    x = _x("x", x, means.shape[1])
    w = as_tensor("weights", weights).double()
    if w.shape != (means.shape[0],) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise PriorkitError(f"weights must be {means.shape[0]} finite non-negative numbers, got shape {list(w.shape)}")
    if abs(float(w.sum()) - 1.0) > 1e-6:
        raise PriorkitError(f"weights must sum to 1, got {float(w.sum())}")
    return x, means, w


def gmm_log_likelihood(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor) -> float:
    """Mean per-sample ``log p_phi(x) = log sum_k pi_k N(x; mu_k, I_d)``."""
    x, means, weights = _check_gmm(x, means, weights)
    return float(torch.logsumexp(_gmm_log_joint(x, means, weights), dim=1).mean())


def gmm_posterior(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``p_phi(z = k | x)`` ``[N, K]`` (rows on the simplex)."""
    x, means, weights = _check_gmm(x, means, weights)
    return torch.softmax(_gmm_log_joint(x, means, weights), dim=1)


def _em_step(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    lj = _gmm_log_joint(x, means, weights)
    ll = float(torch.logsumexp(lj, dim=1).mean())
    r = torch.softmax(lj, dim=1)
    nk = r.sum(0)
    new_means = torch.where((nk > 1e-12).unsqueeze(1), (r.T @ x) / nk.clamp_min(1e-12).unsqueeze(1), means)
    return new_means, nk / x.shape[0], ll


def em_step(x: torch.Tensor, means: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One EM iteration for unit-covariance mixtures: E-step responsibilities ``r_ik``, M-step
    ``mu_k = sum_i r_ik x_i / N_k`` and ``pi_k = N_k / m`` (an empty component keeps its mean)."""
    x, means, weights = _check_gmm(x, means, weights)
    new_means, new_weights, _ = _em_step(x, means, weights)
    return new_means, new_weights


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: the first centre uniformly, then each with probability proportional to D^2."""
    idx = [int(torch.randint(len(x), (1,), generator=g))]
    d2 = (x - x[idx[0]]).pow(2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / len(d2))
        idx.append(int(torch.multinomial(probs, 1, generator=g)))
        d2 = torch.minimum(d2, (x - x[idx[-1]]).pow(2).sum(1))
    return x[idx].clone()


def fit_gmm_em(
    x: torch.Tensor,
    num_components: int,
    *,
    restarts: int = 5,
    max_iter: int = 500,
    tol: float = 1e-10,
    seed: int = 0,
) -> GMMParams:
    """Stage-1 MLE for the unit-covariance mixture by EM (means and weights), ``restarts`` k-means++ starts, the
    one with the highest final likelihood kept. Stops when the mean log-likelihood rises by less than ``tol``."""
    check_positive_int("num_components", num_components)
    check_positive_int("restarts", restarts)
    check_positive_int("max_iter", max_iter)
    check_range("tol", tol, 0.0)
    x = _x("x", x)
    if len(x) < num_components:
        raise PriorkitError(f"x must hold at least num_components={num_components} samples, got {len(x)}")
    g = torch.Generator().manual_seed(seed)
    best: GMMParams | None = None
    for _ in range(restarts):
        means = _kmeans_pp(x, num_components, g)
        weights = torch.full((num_components,), 1.0 / num_components, dtype=x.dtype)
        history: list[float] = []
        for _ in range(max_iter):
            new_means, new_weights, ll = _em_step(x, means, weights)
            history.append(ll)
            means, weights = new_means, new_weights
            if len(history) > 1 and history[-1] - history[-2] < tol:
                break
        final = float(torch.logsumexp(_gmm_log_joint(x, means, weights), dim=1).mean())
        history.append(final)
        if best is None or final > best.log_likelihood:
            best = GMMParams(means, weights, final, tuple(history))
    assert best is not None
    return best


@dataclass(frozen=True)
class GMMClass:
    """The latent class ``Phi`` of unit-covariance Gaussian mixtures with ``num_components`` components (EM)."""

    num_components: int = 4
    restarts: int = 5
    max_iter: int = 500
    tol: float = 1e-10
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("num_components", self.num_components)
        check_positive_int("restarts", self.restarts)
        check_positive_int("max_iter", self.max_iter)
        check_range("tol", self.tol, 0.0)

    def fit(self, x: torch.Tensor) -> GMMParams:
        return fit_gmm_em(x, self.num_components, restarts=self.restarts, max_iter=self.max_iter, tol=self.tol,
                          seed=self.seed)  # fmt: skip


# ------------------------------------------------------------------------------------------------ factor model


@dataclass(frozen=True)
class FactorParams:
    """Factor model ``x = loading z + mean + sqrt(noise_var) xi`` (``loading [d, r]``), the PPCA model."""

    loading: torch.Tensor
    mean: torch.Tensor
    noise_var: float
    log_likelihood: float = math.nan

    @property
    def rank(self) -> int:
        return int(self.loading.shape[1])

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The representation fed to ``psi``: the posterior mean ``E_phi[z | x]`` ``[N, r]``."""
        return factor_posterior_mean(x, self)

    def rotate(self, rotation: torch.Tensor) -> FactorParams:
        """The same marginal of ``x`` with the latent basis rotated: ``loading @ rotation`` (an element of T)."""
        rot = as_tensor("rotation", rotation).double()
        eye = torch.eye(self.rank, dtype=rot.dtype)
        if rot.shape != (self.rank, self.rank) or not torch.allclose(rot.T @ rot, eye, atol=1e-8):
            raise PriorkitError(f"rotation must be an orthogonal [{self.rank}, {self.rank}] matrix")
        return FactorParams(self.loading @ rot, self.mean, self.noise_var, self.log_likelihood)


def factor_log_likelihood(x: torch.Tensor, params: FactorParams) -> float:
    """Mean per-sample ``log N(x; mean, loading loading^T + noise_var I_d)``."""
    d = params.loading.shape[0]
    x = _x("x", x, d)
    cov = params.loading @ params.loading.T + params.noise_var * torch.eye(d, dtype=x.dtype)
    dist = torch.distributions.MultivariateNormal(params.mean.double(), covariance_matrix=cov)
    return float(dist.log_prob(x).mean())


def fit_factor_mle(x: torch.Tensor, rank: int) -> FactorParams:
    """Stage-1 MLE of the isotropic factor model in closed form (probabilistic PCA): ``mean`` = sample mean,
    ``noise_var`` = mean of the ``d - r`` smallest eigenvalues of the sample covariance ``S`` (divided by ``m``),
    ``loading = U_r diag(sqrt(lambda_i - noise_var))`` (defined up to a rotation, the group T)."""
    check_positive_int("rank", rank)
    x = _x("x", x)
    m, d = x.shape
    if rank >= d:
        raise PriorkitError(f"rank must be < the number of features d={d}, got {rank}")
    if m < 2:
        raise PriorkitError(f"x must hold at least 2 samples, got {m}")
    mean = x.mean(0)
    xc = x - mean
    evals, evecs = torch.linalg.eigh(xc.T @ xc / m)
    evals, evecs = evals.flip(0), evecs.flip(1)
    noise_var = float(evals[rank:].mean().clamp_min(1e-12))
    loading = evecs[:, :rank] * (evals[:rank] - noise_var).clamp_min(0.0).sqrt()
    params = FactorParams(loading, mean, noise_var)
    return FactorParams(loading, mean, noise_var, factor_log_likelihood(x, params))


def factor_posterior_mean(x: torch.Tensor, params: FactorParams) -> torch.Tensor:
    """``E[z | x] = M^{-1} loading^T (x - mean)``, ``M = loading^T loading + noise_var I_r``."""
    x = _x("x", x, params.loading.shape[0])
    a = params.loading.double()
    m = a.T @ a + params.noise_var * torch.eye(a.shape[1], dtype=a.dtype)
    return torch.linalg.solve(m, a.T @ (x - params.mean.double()).T).T


@dataclass(frozen=True)
class FactorClass:
    """The latent class ``Phi`` of rank-``rank`` isotropic factor models (closed-form PPCA MLE)."""

    rank: int = 3

    def __post_init__(self) -> None:
        check_positive_int("rank", self.rank)

    def fit(self, x: torch.Tensor) -> FactorParams:
        return fit_factor_mle(x, self.rank)


# ------------------------------------------------------------------------------------- stage 1 and stage 2


def fit_latent(model_class: GMMClass | FactorClass, x_unlabelled: torch.Tensor) -> GMMParams | FactorParams:
    """Stage 1: ``phi_hat = argmax_phi sum_i log p_phi(x_i)`` over ``model_class`` on the unlabelled samples."""
    if not isinstance(model_class, GMMClass | FactorClass):
        raise PriorkitError(f"model_class must be a GMMClass or a FactorClass, got {type(model_class).__name__}")
    return model_class.fit(x_unlabelled)


def _train_linear(
    features: torch.Tensor,
    y: torch.Tensor,
    out_dim: int,
    loss: str,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> nn.Linear:
    """ERM of a zero-initialised linear layer through the engine (Adam; cross-entropy or squared loss)."""
    head = nn.Linear(features.shape[1], out_dim)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    train_erm(head, features.float(), y, loss, steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
              seed=seed)  # fmt: skip
    return head


def train_erm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> float:
    """ERM of any module through :class:`Trainer`: about ``steps`` Adam steps of cross-entropy (``loss="ce"``) or
    squared loss (``"mse"``, on ``[N, 1]`` outputs); returns the final mean training loss over ``(x, y)``."""
    check_choice("loss", loss, ("ce", "mse"))
    bs = min(batch_size, len(x))
    epochs = max(1, -(-steps // -(-len(x) // bs)))
    if loss == "ce":
        y = y.long()

        def step_loss(state, batch):
            return {"ce": F.cross_entropy(batch.output, batch.y)}
    else:
        y = y.float()

        def step_loss(state, batch):
            return {"mse": F.mse_loss(batch.output.squeeze(1), batch.y)}

    phase = Phase(
        "fit",
        epochs=epochs,
        loss=step_loss,
        optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=lr, weight_decay=weight_decay),
    )
    Trainer(model, TensorDataset(x, y), recipe=Recipe([phase]), config=TrainConfig(batch_size=bs, seed=seed,
            progress=False)).fit()  # fmt: skip
    model.eval()
    with torch.no_grad():
        out = model(x)
        return float(F.cross_entropy(out, y) if loss == "ce" else F.mse_loss(out.squeeze(1), y))


class TwoStagePredictor(nn.Module):
    """``psi_hat o phi_hat``: the fitted latent model's representation followed by the fitted linear head.

    ``forward`` gives logits (``logistic``) or ``[N, 1]`` values (``linear``); ``predict`` labels or values."""

    def __init__(self, phi: GMMParams | FactorParams, head: nn.Linear, predictor: str) -> None:
        super().__init__()
        self.phi, self.head, self.predictor = phi, head, predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.phi.represent(x).float())

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = self(x)
        return out.argmax(1) if self.predictor == "logistic" else out.squeeze(1)


def _check_targets(y: object, n: int, predictor: str, num_classes: int | None) -> tuple[torch.Tensor, int]:
    y = as_tensor("y", y)
    if predictor == "logistic":
        if y.is_floating_point():
            raise PriorkitError(f"y must hold integer class labels for predictor='logistic', got dtype {y.dtype}")
        c = num_classes if num_classes is not None else (int(y.max()) + 1 if y.numel() else 0)
        check_positive_int("num_classes", c, 2)
        return check_labels("y", y, c, length=n).long(), c
    if y.shape != (n,) or not y.is_floating_point():
        raise PriorkitError(f"y must be a float vector of shape [{n}] for predictor='linear', got {list(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise PriorkitError("y holds NaN or infinite values")
    return y.double(), 1


def fit_downstream(
    phi_hat: GMMParams | FactorParams,
    predictor: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int | None = None,
    steps: int = 300,
    lr: float = 0.1,
    weight_decay: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> TwoStagePredictor:
    """Stage 2: ERM of ``psi`` (``logistic``: multinomial logistic regression with cross-entropy; ``linear``: least
    squares) on the representation of the labelled ``x`` under the frozen ``phi_hat``, through the engine."""
    if not isinstance(phi_hat, GMMParams | FactorParams):
        raise PriorkitError(f"phi_hat must be GMMParams or FactorParams, got {type(phi_hat).__name__}")
    check_choice("predictor", predictor, PREDICTORS)
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        check_positive_int(name, v)
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("weight_decay", weight_decay, 0.0)
    dim = phi_hat.means.shape[1] if isinstance(phi_hat, GMMParams) else phi_hat.loading.shape[0]
    x = _x("x", x, dim)
    y, out_dim = _check_targets(y, len(x), predictor, num_classes)
    feats = phi_hat.represent(x)
    loss = "ce" if predictor == "logistic" else "mse"
    head = _train_linear(feats, y, out_dim, loss, steps=steps, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, seed=seed)  # fmt: skip
    return TwoStagePredictor(phi_hat, head, predictor).eval()


class ComposedGMM(nn.Module):
    """The composed class ``Psi o Phi`` as one network: mixture means and log-weights, the posterior vector, then
    a linear head (what supervised-only ERM searches, end to end)."""

    def __init__(self, means: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.means = nn.Parameter(means.float().clone())
        self.log_weights = nn.Parameter(torch.zeros(means.shape[0]))
        self.head = nn.Linear(means.shape[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lj = torch.log_softmax(self.log_weights, 0) - 0.5 * torch.cdist(x.float(), self.means).pow(2)
        return self.head(torch.softmax(lj, dim=1))


def fit_supervised(
    model_class: GMMClass | FactorClass,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int | None = None,
    restarts: int = 5,
    steps: int = 500,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> nn.Module:
    """The supervised baseline: ERM over the composed class ``Psi o Phi`` on the labels only, through the engine.

    Mixtures: :class:`ComposedGMM` trained end to end from ``restarts`` starts (means at k-means++ seeds of the
    labelled ``x``; Adam), the lowest final training loss kept. Factor models: ``{x -> beta^T E_phi[z | x]}`` is the
    set of all linear functions of ``x``, so least squares on ``x`` (zero start: gradient descent tends to the
    minimum-norm solution when ``n < d``). Returns a module giving logits or ``[N, 1]`` values."""
    if not isinstance(model_class, GMMClass | FactorClass):
        raise PriorkitError(f"model_class must be a GMMClass or a FactorClass, got {type(model_class).__name__}")
    for name, v in (("restarts", restarts), ("steps", steps), ("batch_size", batch_size)):
        check_positive_int(name, v)
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("weight_decay", weight_decay, 0.0)
    x = _x("x", x)
    if isinstance(model_class, FactorClass):
        yv, _ = _check_targets(y, len(x), "linear", None)
        return _train_linear(x, yv, 1, "mse", steps=steps, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                             seed=seed).eval()  # fmt: skip
    yv, c = _check_targets(y, len(x), "logistic", num_classes)
    k = model_class.num_components
    if len(x) < k:
        raise PriorkitError(f"x must hold at least num_components={k} samples, got {len(x)}")
    g = torch.Generator().manual_seed(seed)
    best, best_loss = None, math.inf
    for r in range(restarts):
        torch.manual_seed(seed * 1009 + r)
        model = ComposedGMM(_kmeans_pp(x, k, g), c)
        final = train_erm(model, x.float(), yv, "ce", steps=steps, lr=lr, weight_decay=weight_decay,
                          batch_size=batch_size, seed=seed * 1009 + r)  # fmt: skip
        if final < best_loss:
            best, best_loss = model, final
    assert best is not None
    return best.eval()


# -------------------------------------------------------------------------------------------------- the rate


def bound(
    C_phi: float,  # noqa: N803
    C_psi: float,  # noqa: N803
    m: int,
    n: int,
    kappa: float = 1.0,
    L: float = 1.0,  # noqa: N803
    delta: float = 0.05,
) -> float:
    """Excess-risk rate of the two-stage estimator (main theorem's shape, constants 1):
    ``kappa L sqrt((C_phi + ln 1/delta) / m) + sqrt(C_psi / n) + L sqrt(ln(1/delta) / n)``."""
    for name, v in (("C_phi", C_phi), ("C_psi", C_psi)):
        check_range(name, v, 0.0)
    check_positive_int("m", m)
    check_positive_int("n", n)
    check_range("kappa", kappa, 0.0, low_inclusive=False)
    check_range("L", L, 0.0, low_inclusive=False)
    check_range("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    log_d = math.log(1.0 / delta)
    return kappa * L * math.sqrt((C_phi + log_d) / m) + math.sqrt(C_psi / n) + L * math.sqrt(log_d / n)


def supervised_bound(C_composed: float, n: int, L: float = 1.0, delta: float = 0.05) -> float:  # noqa: N803
    """Rate of supervised ERM over ``Phi o Psi`` (constants 1): ``sqrt(C_composed / n) + L sqrt(ln(1/delta) / n)``."""
    check_range("C_composed", C_composed, 0.0)
    check_positive_int("n", n)
    check_range("L", L, 0.0, low_inclusive=False)
    check_range("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return math.sqrt(C_composed / n) + L * math.sqrt(math.log(1.0 / delta) / n)


def complexity(model_class: GMMClass | FactorClass, dim: int) -> dict[str, float]:
    """``C_phi``, ``C_psi`` and ``C_composed`` of an instance as parameter counts (log factors hidden in O~):
    mixtures ``K d``, ``K``, ``K d + K``; factor models ``d r``, ``r``, ``d``."""
    check_positive_int("dim", dim)
    if isinstance(model_class, GMMClass):
        k = model_class.num_components
        return {"C_phi": float(k * dim), "C_psi": float(k), "C_composed": float(k * dim + k)}
    if isinstance(model_class, FactorClass):
        r = model_class.rank
        return {"C_phi": float(dim * r), "C_psi": float(r), "C_composed": float(dim)}
    raise PriorkitError(f"model_class must be a GMMClass or a FactorClass, got {type(model_class).__name__}")


def loglog_slope(xs: Sequence[float], ys: Sequence[float | None]) -> float | None:
    """Least-squares slope of ``log y`` on ``log x`` over the points with ``y > 0`` (``None`` if fewer than 3)."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(xs, ys) if b is not None and b > 0 and a > 0]
    if len(pts) < 3:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


# -------------------------------------------------------------------------------------------- generated tasks


@dataclass(frozen=True)
class GMMTask:
    """The true ``phi* = (means, weights)`` and ``psi*``: ``y = label_map[z]``. Bayes rule and excess risk."""

    phi: GMMParams
    label_map: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return max(self.label_map) + 1

    @property
    def dim(self) -> int:
        return int(self.phi.means.shape[1])

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x [n, d] float64, z [n], y [n])`` drawn i.i.d. with a generator seeded by ``seed``."""
        check_positive_int("n", n)
        g = torch.Generator().manual_seed(seed)
        z = torch.multinomial(self.phi.weights.double(), n, replacement=True, generator=g)
        x = self.phi.means[z] + torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return x, z, torch.as_tensor(self.label_map, dtype=torch.long)[z]

    def label_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """``eta(x) = P(y | x)`` ``[N, C]`` under the true model."""
        post = self.phi.represent(x)
        onehot = F.one_hot(torch.as_tensor(self.label_map), self.num_classes).to(post.dtype)
        return post @ onehot

    def bayes_predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.label_posterior(x).argmax(1)

    def excess_risk(self, pred: torch.Tensor, x: torch.Tensor) -> float:
        """``mean_x [max_y eta_y(x) - eta_pred(x)(x)]``: the 0-1 excess risk of ``pred`` given the inputs."""
        eta = self.label_posterior(x)
        pred = check_labels("pred", torch.as_tensor(pred), self.num_classes, length=len(x))
        return float((eta.max(1).values - eta.gather(1, pred.long().unsqueeze(1)).squeeze(1)).mean())

    def bayes_error(self, x: torch.Tensor) -> float:
        """``mean_x [1 - max_y eta_y(x)]`` (the Bayes risk estimated on the inputs ``x``)."""
        return float((1.0 - self.label_posterior(x).max(1).values).mean())


def _orthonormal(d: int, k: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q


def make_gmm_task(
    num_components: int = 4,
    dim: int = 50,
    sep: float = 4.0,
    label_map: Sequence[int] = (0, 1, 1, 0),
    *,
    layout: str = "square",
    seed: int = 0,
) -> GMMTask:
    """The card's GMM task: equal weights, unit covariance, ``y = label_map[z]``, in a random orientation.

    ``square`` (K = 4): the means are the corners of a square of side ``sep`` in a random 2-D plane, components
    0 and 3 (and 1 and 2) on the diagonals, so the map ``(0, 1, 1, 0)`` is an XOR that no linear rule on ``x``
    solves (the card's "clusters 1,4 -> 0; 2,3 -> 1"). ``simplex``: a regular simplex with pairwise distance
    ``sep`` (any labelling of its vertices is linearly separable)."""
    check_positive_int("num_components", num_components, 2)
    check_positive_int("dim", dim)
    check_range("sep", sep, 0.0, low_inclusive=False)
    check_choice("layout", layout, LAYOUTS)
    label_map = tuple(int(v) for v in label_map)
    if len(label_map) != num_components or min(label_map) < 0 or len(set(label_map)) < 2:
        raise PriorkitError(
            f"label_map must give a label >= 0 for each of the {num_components} components with at least 2 distinct "
            f"labels, got {label_map}"
        )
    g = torch.Generator().manual_seed(seed)
    if layout == "square":
        if num_components != 4 or dim < 2:
            raise PriorkitError(f"layout='square' needs num_components=4 and dim >= 2, got {num_components}, {dim}")
        corners = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
        means = (sep / 2) * corners @ _orthonormal(dim, 2, g).T
    else:
        if dim < num_components:
            raise PriorkitError(f"layout='simplex' needs dim >= num_components, got dim={dim}")
        means = (sep / math.sqrt(2)) * _orthonormal(dim, num_components, g).T
        means = means - means.mean(0)
    weights = torch.full((num_components,), 1.0 / num_components, dtype=torch.float64)
    return GMMTask(GMMParams(means, weights), label_map)


@dataclass(frozen=True)
class FactorTask:
    """The true factor model ``phi*`` and ``y = beta^T z + label_noise eps``; Bayes predictor ``beta^T E[z|x]``."""

    phi: FactorParams
    beta: torch.Tensor
    label_noise: float = 0.5

    @property
    def dim(self) -> int:
        return int(self.phi.loading.shape[0])

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_positive_int("n", n)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.phi.rank, generator=g, dtype=torch.float64)
        noise = torch.randn(n, self.dim, generator=g, dtype=torch.float64) * math.sqrt(self.phi.noise_var)
        x = z @ self.phi.loading.T + self.phi.mean + noise
        y = z @ self.beta + self.label_noise * torch.randn(n, generator=g, dtype=torch.float64)
        return x, z, y

    def bayes_predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.phi.represent(x) @ self.beta

    def excess_risk(self, pred: torch.Tensor, x: torch.Tensor) -> float:
        """``mean_x (pred(x) - E[y | x])^2``: the squared-loss excess risk of ``pred`` given the inputs."""
        pred = as_tensor("pred", pred).double().reshape(-1)
        if len(pred) != len(x):
            raise PriorkitError(f"pred must have {len(x)} values, got {len(pred)}")
        return float((pred - self.bayes_predict(x)).pow(2).mean())

    def bayes_risk(self) -> float:
        """``beta^T Cov(z | x) beta + label_noise^2``, ``Cov(z | x) = noise_var M^{-1}``."""
        a = self.phi.loading
        m = a.T @ a + self.phi.noise_var * torch.eye(a.shape[1], dtype=a.dtype)
        return float(self.phi.noise_var * self.beta @ torch.linalg.solve(m, self.beta)) + self.label_noise**2


def make_factor_task(
    dim: int = 50, rank: int = 3, noise_var: float = 1.0, label_noise: float = 0.5, *, seed: int = 0
) -> FactorTask:
    """A factor model with Gaussian loadings (entries N(0, 1)), zero mean and a unit-norm ``beta``."""
    check_positive_int("dim", dim, 2)
    check_positive_int("rank", rank)
    if rank >= dim:
        raise PriorkitError(f"rank must be < dim={dim}, got {rank}")
    check_range("noise_var", noise_var, 0.0, low_inclusive=False)
    check_range("label_noise", label_noise, 0.0)
    g = torch.Generator().manual_seed(seed)
    loading = torch.randn(dim, rank, generator=g, dtype=torch.float64)
    beta = torch.randn(rank, generator=g, dtype=torch.float64)
    phi = FactorParams(loading, torch.zeros(dim, dtype=torch.float64), float(noise_var))
    return FactorTask(phi, beta / beta.norm(), float(label_noise))


# ------------------------------------------------------------------------------------------------- the entry


class PretrainAdvantage:
    """The two-stage estimator: MLE of the latent model on unlabelled ``x``, then ERM of the downstream head.

    ``PretrainAdvantage(**SPEC.presets["paper"]).fit(x_unlabelled, x, y).predict(x_test)``; ``rate()`` gives the
    theorem's rate at the fitted ``m`` and ``n`` and ``supervised_rate()`` the composed-class ERM rate.
    """

    def __init__(
        self,
        latent: str = "gmm",
        *,
        num_components: int = 4,
        rank: int = 3,
        restarts: int = 5,
        max_iter: int = 500,
        tol: float = 1e-10,
        predictor: str | None = None,
        num_classes: int | None = None,
        steps: int = 300,
        lr: float = 0.1,
        weight_decay: float = 1e-3,
        batch_size: int = 256,
        delta: float = 0.05,
        kappa: float = 1.0,
        loss_bound: float = 1.0,
        seed: int = 0,
    ) -> None:
        check_choice("latent", latent, LATENTS)
        self.model_class: GMMClass | FactorClass = (
            GMMClass(num_components, restarts, max_iter, tol, seed) if latent == "gmm" else FactorClass(rank)
        )
        self.predictor = predictor if predictor is not None else ("logistic" if latent == "gmm" else "linear")
        check_choice("predictor", self.predictor, PREDICTORS)
        for name, v in (("steps", steps), ("batch_size", batch_size)):
            check_positive_int(name, v)
        check_range("lr", lr, 0.0, low_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("delta", delta, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_range("kappa", kappa, 0.0, low_inclusive=False)
        check_range("loss_bound", loss_bound, 0.0, low_inclusive=False)
        self.num_classes, self.steps, self.lr, self.weight_decay = num_classes, steps, lr, weight_decay
        self.batch_size, self.delta, self.kappa, self.loss_bound, self.seed = batch_size, delta, kappa, loss_bound, seed
        self.phi: GMMParams | FactorParams | None = None
        self.model: TwoStagePredictor | None = None
        self.m = self.n = 0

    def fit(self, x_unlabelled: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> PretrainAdvantage:
        """Stage 1 on ``x_unlabelled`` (``m`` samples), stage 2 on ``(x, y)`` (``n`` samples)."""
        self.phi = fit_latent(self.model_class, x_unlabelled)
        self.model = fit_downstream(self.phi, self.predictor, x, y, num_classes=self.num_classes, steps=self.steps,
                                    lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
                                    seed=self.seed)  # fmt: skip
        self.m, self.n = len(x_unlabelled), len(x)
        return self

    def _fitted(self) -> TwoStagePredictor:
        if self.model is None:
            raise PriorkitError("PretrainAdvantage is not fitted: call fit(x_unlabelled, x, y) first")
        return self.model

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (``logistic``) or values (``linear``) of ``psi_hat o phi_hat``."""
        model = self._fitted()
        return model.predict(x)

    def _dim(self) -> int:
        phi = self._fitted().phi
        return int(phi.means.shape[1] if isinstance(phi, GMMParams) else phi.loading.shape[0])

    def rate(self, m: int | None = None, n: int | None = None) -> float:
        """:func:`bound` with this instance's complexities at ``m``, ``n`` (default: the fitted sizes)."""
        c = complexity(self.model_class, self._dim())
        return bound(c["C_phi"], c["C_psi"], m or self.m, n or self.n, self.kappa, self.loss_bound, self.delta)

    def supervised_rate(self, n: int | None = None) -> float:
        """:func:`supervised_bound` of ERM over the composed class at ``n`` (default: the fitted ``n``)."""
        c = complexity(self.model_class, self._dim())
        return supervised_bound(c["C_composed"], n or self.n, self.loss_bound, self.delta)
