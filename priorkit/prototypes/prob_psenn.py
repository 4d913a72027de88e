"""Uncertainty-Aware Explanations Through Probabilistic Self-Explainable Neural Networks (Vadillo et al., 2024/25).

A prototype-based self-explainable network (PSENN: encoder, prototypes in latent space, distances -> logits,
optionally a decoder that renders prototypes) uses point prototypes. Prob-PSENN learns a distribution over
each prototype, so that one input gives a *distribution* of predictions and of explanations (which prototype
is nearest). The Monte-Carlo predictive ``p(y|x) = E_P[softmax f(x; P)]`` carries, besides the usual entropy,
the mutual information between the label and the prototypes (explanatory / epistemic uncertainty), and the
spread of the nearest prototype across samples is the uncertainty of the explanation. The paper reports (abstract
only): more meaningful and robust explanations than the deterministic PSENN, competitive accuracy, and
detection of uninformed or uncertain predictions.

Only the abstract was available to the card (arXiv 2403.13740), and no official code exists. Everything
below beyond "prototypes are distributions, learned end to end" is the card's reconstruction, marked
ASSUMPTION there and configurable here: the deterministic base is Li et al. 2018 (autoencoder + prototype
layer, losses ``lam_cls CE + lam_ae recon + lam_1 R1 + lam_2 R2``); prototypes are diagonal (or isotropic)
Gaussians ``N(mu, softplus(rho)^2)`` sampled by reparameterisation, one prototype set per MC sample shared
across the batch (``per_example=True``: one per input); the objective is ``E_q[L_base] + beta KL(q || N(0,
prior_scale^2 I))`` (``beta=0`` drops the KL); the CE term is the expected CE over samples (``ce='expected'``)
or the NLL of the MC predictive (``ce='predictive'``); R1/R2 are taken in expectation over the same samples
(``reg_on='samples'``) or on the means (``'mean'``); logits are ``-min`` distance over each class's
prototypes (``head='class_min'``) or a linear layer on the distances (``head='linear'``, Li et al.). The
"uninformed" threshold is a quantile (0.99) of the nearest-prototype distance on training data.

Functional core: :func:`prototype_sigma`, :func:`sample_prototypes`, :func:`latent_distances`,
:func:`class_min_logits`, :func:`mc_log_predictive`, :func:`uncertainty_decomposition`,
:func:`explanation_entropy`, :func:`gaussian_kl`, :func:`psenn_regularizers`. Modules:
:class:`ProbPrototypeLayer`, :class:`ProbPSENN` (``probabilistic=False`` is the deterministic PSENN);
:func:`prob_psenn_loss` and :func:`prob_psenn_recipe` (the training: Adam, fresh prototype samples per step, as a
:class:`priorkit.train.Recipe` run by :class:`priorkit.train.Trainer`). Public entry: :class:`ProbPSENN`.

Example::

    model = ProbPSENN(encoder, latent_dim=8, num_classes=10, decoder=decoder)
    Trainer(model, TensorDataset(x, y), recipe=prob_psenn_recipe(model, PSENNLossConfig(beta=0.01), epochs=40),
            config=TrainConfig(batch_size=128, seed=0)).fit()
    u = model.uncertainty(x_test, 50)          # predictive, entropies, mutual information, explanation entropy
Libraries considered: Pyro / torch.distributions (a Bayesian layer would need a guide and the ELBO
machinery for one Gaussian per prototype); ``torch.distributions.Normal`` and ``kl_divergence`` are used for
the KL; the rest is a few tensor lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_batch,
    check_choice,
    check_labels,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.train import Batch, Phase, Recipe

if TYPE_CHECKING:
    from priorkit.train import RunState

FAMILIES = ("diag", "isotropic")
HEADS = ("class_min", "linear")
CE_MODES = ("expected", "predictive")
REG_ON = ("samples", "mean")


# ----------------------------------------------------------------------------------------------------------
# functional core
# ----------------------------------------------------------------------------------------------------------
def prototype_sigma(rho: torch.Tensor, sigma_min: float = 1e-4) -> torch.Tensor:
    """``sigma = max(softplus(rho), sigma_min)`` (``sigma_min=0`` lets ``rho -> -inf`` give exactly 0)."""
    check_range("sigma_min", sigma_min, 0.0)
    return F.softplus(rho).clamp_min(sigma_min)


def sample_prototypes(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    num_samples: int,
    *,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Reparameterised samples ``mu + sigma * eps``: ``[S, m, q]`` (one set per sample, shared across the
    batch) or, with ``batch_size``, ``[S, B, m, q]`` (one set per input: the per-example variant)."""
    check_shape("mu", mu, [None, None])
    if sigma.shape not in (mu.shape, (mu.shape[0], 1)):
        raise PriorkitError(f"sigma must have shape {list(mu.shape)} or [{mu.shape[0]}, 1], got {list(sigma.shape)}")
    check_positive_int("num_samples", num_samples)
    shape = (num_samples, *mu.shape) if batch_size is None else (num_samples, batch_size, *mu.shape)
    eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + sigma * eps


def latent_distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared distances ``delta_j = ||z - p_j||^2``: z ``[B, q]`` and prototypes ``[S, m, q]`` or ``[S, B, m, q]``
    give ``[S, B, m]``."""
    check_shape("z", z, [None, None])
    if prototypes.dim() == 3:
        check_shape("prototypes", prototypes, [None, None, z.shape[1]])
        return (z.unsqueeze(0).unsqueeze(2) - prototypes.unsqueeze(1)).pow(2).sum(-1)
    check_shape("prototypes", prototypes, [None, z.shape[0], None, z.shape[1]])
    return (z.unsqueeze(0).unsqueeze(2) - prototypes).pow(2).sum(-1)


def class_min_logits(distances: torch.Tensor, prototype_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``logit_c = -min_{j in P_c} delta_j`` over the last axis (``[..., m] -> [..., C]``)."""
    if distances.shape[-1] != len(prototype_labels):
        raise PriorkitError(
            f"distances have {distances.shape[-1]} prototypes, prototype_labels {len(prototype_labels)}"
        )
    onehot = F.one_hot(prototype_labels, num_classes).bool()  # [m, C]
    big = torch.where(onehot, 0.0, math.inf).to(distances.dtype)
    return -(distances.unsqueeze(-1) + big).amin(dim=-2)


def mc_log_predictive(log_probs: torch.Tensor) -> torch.Tensor:
    """``log p_bar = logsumexp_s log p_s - log S`` (the average of probabilities, never of logits): ``[S, B, C]``."""
    check_shape("log_probs", log_probs, [None, None, None])
    return torch.logsumexp(log_probs, 0) - math.log(log_probs.shape[0])


def _entropy(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).nan_to_num(0.0).sum(-1)


def uncertainty_decomposition(log_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Total predictive entropy, expected entropy (aleatoric) and mutual information (total - expected: the
    prototype-induced, explanatory part), each ``[B]``, from per-sample log-probabilities ``[S, B, C]``."""
    total = _entropy(mc_log_predictive(log_probs))
    expected = _entropy(log_probs).mean(0)
    return {"total": total, "expected": expected, "mi": total - expected}


def explanation_entropy(distances: torch.Tensor) -> torch.Tensor:
    """Entropy of the nearest-prototype index across the S samples (``[S, B, m] -> [B]``); 0 when all agree."""
    check_shape("distances", distances, [None, None, None])
    s, _, m = distances.shape
    counts = F.one_hot(distances.argmin(-1), m).sum(0).to(distances.dtype) / s  # [B, m]
    return -(counts * counts.clamp_min(1e-30).log()).sum(-1)


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_scale: float = 1.0) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, prior_scale^2))`` summed over all prototype coordinates."""
    check_range("prior_scale", prior_scale, 0.0, low_inclusive=False)
    q = Normal(mu, sigma.expand_as(mu))
    p = Normal(torch.zeros_like(mu), torch.full_like(mu, prior_scale))
    return kl_divergence(q, p).sum()


def psenn_regularizers(z: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Li et al. 2018: ``R1 = mean_j min_i ||p_j - z_i||^2`` (every prototype near some encoded input) and
    ``R2 = mean_i min_j ||z_i - p_j||^2`` (every input near some prototype), averaged over the S prototype sets
    (``prototypes`` ``[S, m, q]``)."""
    d = latent_distances(z, prototypes)  # [S, B, m]
    return d.amin(1).mean(), d.amin(2).mean()


# ----------------------------------------------------------------------------------------------------------
# modules
# ----------------------------------------------------------------------------------------------------------
class ProbPrototypeLayer(nn.Module):
    """``m`` Gaussian prototypes ``N(mu_j, diag sigma_j^2)`` in a ``q``-d latent space (``family='isotropic'``:
    one sigma per prototype). ``probabilistic=False`` keeps only ``mu`` (the deterministic PSENN)."""

    def __init__(
        self,
        num_prototypes: int,
        dim: int,
        *,
        probabilistic: bool = True,
        family: str = "diag",
        init_sigma: float = 0.1,
        sigma_min: float = 1e-4,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_prototypes", num_prototypes)
        check_positive_int("dim", dim)
        check_choice("family", family, FAMILIES)
        check_range("init_sigma", init_sigma, 0.0, low_inclusive=False)
        check_range("sigma_min", sigma_min, 0.0)
        self.probabilistic, self.family, self.sigma_min = probabilistic, family, sigma_min
        self.mu = nn.Parameter(torch.rand(num_prototypes, dim, generator=generator))
        if probabilistic:
            shape = (num_prototypes, dim) if family == "diag" else (num_prototypes, 1)
            inv_softplus = math.log(math.expm1(init_sigma))
            self.rho = nn.Parameter(torch.full(shape, inv_softplus))

    @property
    def sigma(self) -> torch.Tensor:
        if not self.probabilistic:
            return torch.zeros(self.mu.shape[0], 1, dtype=self.mu.dtype, device=self.mu.device)
        return prototype_sigma(self.rho, self.sigma_min)

    def sample(
        self, num_samples: int, *, batch_size: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if not self.probabilistic:
            check_positive_int("num_samples", num_samples)
            shape = (num_samples, *self.mu.shape) if batch_size is None else (num_samples, batch_size, *self.mu.shape)
            return self.mu.expand(shape)
        return sample_prototypes(self.mu, self.sigma, num_samples, batch_size=batch_size, generator=generator)

    def kl(self, prior_scale: float = 1.0) -> torch.Tensor:
        if not self.probabilistic:
            return self.mu.new_zeros(())
        return gaussian_kl(self.mu, self.sigma, prior_scale)


class ProbPSENN(nn.Module):
    """Prob-PSENN head on any encoder (and optional decoder): ``forward(x, num_samples)`` returns a dict with
    ``z`` ``[B, q]``, ``recon`` (or None), ``distances`` ``[S, B, m]``, ``log_probs`` ``[S, B, C]`` and the
    MC predictive ``log_predictive`` ``[B, C]``. ``probabilistic=False`` is the deterministic PSENN baseline."""

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        num_classes: int,
        *,
        decoder: nn.Module | None = None,
        prototypes_per_class: int = 2,
        num_prototypes: int | None = None,
        head: str = "class_min",
        probabilistic: bool = True,
        family: str = "diag",
        init_sigma: float = 0.1,
        sigma_min: float = 1e-4,
        per_example: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes, 2)
        check_choice("head", head, HEADS)
        self.encoder, self.decoder, self.num_classes, self.head = encoder, decoder, num_classes, head
        self.per_example = per_example
        if head == "class_min":
            check_positive_int("prototypes_per_class", prototypes_per_class)
            m = num_classes * prototypes_per_class
            self.register_buffer("prototype_labels", torch.arange(num_classes).repeat_interleave(prototypes_per_class))
        else:
            if num_prototypes is None:
                raise PriorkitError("head='linear' needs num_prototypes (free prototypes, Li et al. 2018: 15)")
            m = check_positive_int("num_prototypes", num_prototypes)
            self.last = nn.Linear(m, num_classes)
        self.prototypes = ProbPrototypeLayer(
            m, latent_dim, probabilistic=probabilistic, family=family, init_sigma=init_sigma, sigma_min=sigma_min,
            generator=generator,
        )  # fmt: skip

    def logits_from_distances(self, distances: torch.Tensor) -> torch.Tensor:
        if self.head == "class_min":
            return class_min_logits(distances, self.prototype_labels, self.num_classes)
        return self.last(distances)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        return z.reshape(len(z), -1)

    def forward(
        self, x: torch.Tensor, num_samples: int = 1, *, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | None]:
        check_batch("x", as_tensor("x", x))
        z = self.encode(x)
        protos = self.prototypes.sample(
            num_samples, batch_size=len(z) if self.per_example else None, generator=generator
        )
        dist = latent_distances(z, protos)
        log_probs = F.log_softmax(self.logits_from_distances(dist), -1)
        return {
            "z": z,
            "recon": self.decoder(z) if self.decoder is not None else None,
            "prototype_samples": protos,
            "distances": dist,
            "log_probs": log_probs,
            "log_predictive": mc_log_predictive(log_probs),
        }

    @torch.no_grad()
    def uncertainty(
        self, x: torch.Tensor, num_samples: int = 50, *, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Per input: ``predictive`` ``[B, C]``, ``total``/``expected``/``mi`` entropies, ``max_prob``,
        ``explanation_entropy`` and ``min_distance`` (nearest-prototype distance, averaged over samples)."""
        out = self(x, num_samples, generator=generator)
        dec = uncertainty_decomposition(out["log_probs"])
        pred = out["log_predictive"].exp()
        return {
            "predictive": pred,
            "max_prob": pred.max(1).values,
            "explanation_entropy": explanation_entropy(out["distances"]),
            "min_distance": out["distances"].amin(-1).mean(0),
            **dec,
        }

    @torch.no_grad()
    def decode_prototypes(self, num_samples: int = 10, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoded prototype samples ``[S, m, *output]`` (the explanation's visual spread)."""
        if self.decoder is None:
            raise PriorkitError("decode_prototypes needs a decoder (ProbPSENN(decoder=...))")
        p = self.prototypes.sample(num_samples, generator=generator)
        s, m = p.shape[:2]
        out = self.decoder(p.reshape(s * m, -1))
        return out.reshape(s, m, *out.shape[1:])


@dataclass
class PSENNLossConfig:
    """Weights (PrototypeDL defaults, ASSUMPTION in the card): lam_cls 20, lam_ae 1, lam_1 1, lam_2 1."""

    lam_cls: float = 20.0
    lam_ae: float = 1.0
    lam_1: float = 1.0
    lam_2: float = 1.0
    beta: float = 1e-3
    prior_scale: float = 1.0
    ce: str = "expected"
    reg_on: str = "samples"

    def __post_init__(self) -> None:
        for name in ("lam_cls", "lam_ae", "lam_1", "lam_2", "beta"):
            check_range(name, getattr(self, name), 0.0)
        check_range("prior_scale", self.prior_scale, 0.0, low_inclusive=False)
        check_choice("ce", self.ce, CE_MODES)
        check_choice("reg_on", self.reg_on, REG_ON)


def prob_psenn_loss(
    model: ProbPSENN, x: torch.Tensor, y: torch.Tensor, out: dict, cfg: PSENNLossConfig, num_train: int
) -> dict[str, torch.Tensor]:
    """Named terms of ``E_q[L_base] + beta KL / num_train`` (the KL is per data set, spread over its samples)."""
    check_labels("y", y, model.num_classes, length=len(x))
    s = out["log_probs"].shape[0]
    if cfg.ce == "expected":
        ce = F.nll_loss(out["log_probs"].reshape(-1, model.num_classes), y.repeat(s))
    else:
        ce = F.nll_loss(out["log_predictive"], y)
    terms = {"ce": cfg.lam_cls * ce}
    if out["recon"] is not None and cfg.lam_ae > 0:
        terms["ae"] = cfg.lam_ae * (out["recon"].reshape(len(x), -1) - x.reshape(len(x), -1)).pow(2).sum(1).mean()
    protos = out["prototype_samples"]
    if cfg.reg_on == "mean" or protos.dim() == 4:
        protos = model.prototypes.mu.unsqueeze(0)
    r1, r2 = psenn_regularizers(out["z"], protos)
    terms["r1"], terms["r2"] = cfg.lam_1 * r1, cfg.lam_2 * r2
    if cfg.beta > 0 and model.prototypes.probabilistic:
        terms["kl"] = cfg.beta * model.prototypes.kl(cfg.prior_scale) / num_train
    return terms


def sample_seed(seed: int, step: int) -> int:
    """Seed of the prototype draws at a training step: a function of ``(seed, step)`` only, so a resumed run
    draws what an uninterrupted one draws and every DDP rank draws the same prototype sets."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


def prob_psenn_recipe(
    model: ProbPSENN,
    loss_config: PSENNLossConfig | None = None,
    *,
    epochs: int = 100,
    lr: float = 1e-3,
    num_samples: int = 10,
) -> Recipe:
    """Adam on :func:`prob_psenn_loss` as one engine phase, with fresh prototype samples (``num_samples``; 1
    for the deterministic PSENN) at every step, drawn from a generator seeded by ``(config.seed, step)``. The
    KL is spread over the training set (``len(train_data)``). Batch size and seed come from the run's
    :class:`~priorkit.train.TrainConfig`; run it with :class:`priorkit.train.Trainer`."""
    if not isinstance(model, ProbPSENN):
        raise PriorkitError(f"model must be a ProbPSENN, got {type(model).__name__}")
    cfg = PSENNLossConfig() if loss_config is None else loss_config
    if not isinstance(cfg, PSENNLossConfig):
        raise PriorkitError(f"loss_config must be a PSENNLossConfig, got {type(cfg).__name__}")
    check_positive_int("epochs", epochs)
    check_positive_int("num_samples", num_samples)
    check_range("lr", lr, 0.0, low_inclusive=False)
    s = num_samples if model.prototypes.probabilistic else 1

    def step(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        # the forward runs here because its prototype draws depend on the step (x is checked by the forward,
        # y by the loss, before any optimiser step)
        g = torch.Generator(device=batch.x.device).manual_seed(sample_seed(state.config.seed, state.step))
        batch.output = state.net(batch.x, s, generator=g)
        return prob_psenn_loss(model, batch.x, batch.y, batch.output, cfg, len(state.data))

    def finish(state: RunState) -> None:
        model.eval()

    phase = Phase(
        "fit",
        epochs=epochs,
        forward=lambda net, batch: None,
        loss=step,
        on_end=finish,
        optimizer=lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr),
    )
    return Recipe([phase], loss_fn=None)


@torch.no_grad()
def uninformed_threshold(
    model: ProbPSENN, x_train: torch.Tensor, quantile: float = 0.99, num_samples: int = 20
) -> float:
    """ASSUMPTION (card): a prediction is uninformed when its nearest-prototype distance exceeds this quantile of
    the training inputs' nearest-prototype distances."""
    check_range("quantile", quantile, 0.0, 1.0)
    return float(model.uncertainty(x_train, num_samples)["min_distance"].quantile(quantile))


SPEC = MethodSpec(
    status="implemented",
    entry="ProbPSENN",
    missing="objective reconstructed from the abstract per the card's ASSUMPTIONs (Gaussian prototypes, expected CE + "
    "beta*KL to N(0, I), mutual information as explanatory uncertainty), all configurable; not checked against "
    "the paper text; decoder visualisation only as decode_prototypes",
    presets={
        "paper": {"prototypes_per_class": 2, "family": "diag", "init_sigma": 0.1, "lam_cls": 20.0, "lam_ae": 1.0,
                  "lam_1": 1.0, "lam_2": 1.0, "beta": 1e-3, "ce": "expected", "reg_on": "samples", "lr": 1e-3,
                  "batch_size": 128, "num_samples": 10, "epochs": 100},
        "small": {"latent_dim": 8, "prototypes_per_class": 2, "family": "diag", "init_sigma": 0.1, "beta": 0.01,
                  "lr": 1e-3, "batch_size": 128, "num_samples": 10, "epochs": 40},
    },
)  # fmt: skip

__all__ = [
    "PSENNLossConfig",
    "ProbPSENN",
    "ProbPrototypeLayer",
    "class_min_logits",
    "explanation_entropy",
    "gaussian_kl",
    "latent_distances",
    "mc_log_predictive",
    "prob_psenn_loss",
    "prob_psenn_recipe",
    "prototype_sigma",
    "psenn_regularizers",
    "sample_prototypes",
    "sample_seed",
    "uncertainty_decomposition",
    "uninformed_threshold",
]
