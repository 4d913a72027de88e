"""Prototype-supervised Adversarial Network for Targeted Attack of Deep Hashing (ProS-GAN), Wang et al., CVPR 2021.

A generative targeted attack on a frozen deep-hashing model F. Stage 1 trains a *PrototypeNet* P that maps a
target label y_t to a hash-code *prototype* h_p = sign(h(y_t)) close (in the DPSH pairwise likelihood) to the
codes of database items sharing that label, plus a label reconstruction and a quantisation term. Stage 2
trains a label-conditioned generator G(x, f(y_t)) that outputs an adversarial image x' whose code matches the
prototype (a relaxed Hamming distance ``1 - <F(x'), h_p>/K``), stays close to x (``alpha_rec`` MSE), and fools
a C+1-output LSGAN discriminator that also predicts labels. At test time one forward pass attacks an image.
Reported effect: higher t-MAP than P2P and DHTA (iterative attacks) on FLICKR-25K / NUS-WIDE / MS-COCO with
DPH / DPSH / HashNet targets, better transfer, and far faster attacks.

Defaults follow the official code (xunguangwang/ProS-GAN, ``model/target_attack_gan.py``, ``model/module.py``):
PrototypeNet Adam 1e-4 betas (0.5, 0.999), batch 64, x0.1 at 1/2 and 3/4 of the steps, loss
``-(1/(N B)) sum[S theta - softplus(theta)] + |sign(h) - h|^2 / (1e4 B) + MSE(c_hat, y_t)`` (B = the batch size,
as in the code; the card writes b), theta = h B_train^T / 2; generator and discriminator Adam 1e-4 betas
(0.5, 0.999), batch 24, constant lr then linear decay to 0, D updated every 3rd step; L_G = alpha_rec MSE(x', x)
+ 5 (1 - mean(F((x'+1)/2) * h_p)) + 1 MSE(D(x'), [y_t, 0]); L_D = (MSE(D(x), [y, 0]) + MSE(D(x'), [y_t, 1])) / 2
(real flag 0, fake flag 1, the code's ``GANLoss(target_real_label=0, target_fake_label=1)``); images enter G and
D in [-1, 1] and F in [0, 1]. alpha_rec is 100 on FLICKR-25K and 50 on NUS-WIDE / MS-COCO; 50 here.

CPU scale (the card's stand-in): the paper's 224x224 conv generator (label map by transposed convs, 6 residual
blocks) and PatchGAN discriminator become MLPs on flattened small images with the same wiring: the label
feature is mapped to an image-sized "label map" and concatenated with the image, encoded, decoded, concatenated
with the image again, then a tanh layer; the discriminator is spectrally normalised with LeakyReLU(0.01) and
C+1 outputs. The DHTA baseline (:func:`pgd_targeted_attack` toward :func:`anchor_code`) and the target model
(:class:`HashMLP` + :func:`dpsh_recipe`) are here too. Advertorch / torchattacks were considered: they target
classifiers, not hash codes, so the few lines of PGD are written here.

Functional core: :func:`pairwise_likelihood_loss`, :func:`prototype_net_loss`, :func:`hash_loss`,
:func:`gan_targets`, :func:`discriminator_loss`, :func:`generator_loss`, :func:`anchor_code`,
:func:`pgd_targeted_attack`. Modules: :class:`PrototypeNet`, :class:`Generator`, :class:`Discriminator`,
:class:`HashMLP`; :class:`ProSGAN` (the public entry: prototype codes, codes, attack). Training goes through
:class:`priorkit.train.Trainer`: :func:`pros_gan_recipe` (stage 1 and the manual D-then-G GAN stage) and
:func:`dpsh_recipe` (the target model).

Example:

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> from priorkit.train import TrainConfig, Trainer
>>> g = torch.Generator().manual_seed(0)
>>> x, y = torch.rand(40, 16, generator=g), torch.arange(40) % 4
>>> F_hash = HashMLP(16, 8, hidden=16)
>>> cfg = TrainConfig(batch_size=20, progress=False)
>>> _ = Trainer(F_hash, TensorDataset(x, y), recipe=dpsh_recipe(F_hash, epochs=2), config=cfg).fit()
>>> attacker = ProSGAN(F_hash, in_dim=16, num_classes=4, feat_dim=8, hidden=16)
>>> recipe = pros_gan_recipe(attacker, x, y, steps=5, epochs=1, decay_epochs=1)
>>> _ = Trainer(attacker, None, recipe=recipe, config=cfg).fit()
>>> x_adv = attacker.attack(x[:3], torch.tensor([1, 2, 3]))
>>> x_adv.shape, bool(x_adv.min() >= 0 and x_adv.max() <= 1)
(torch.Size([3, 16]), True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.utils.data import TensorDataset

from priorkit.core.errors import (
    PriorkitError,
    as_tensor,
    check_batch,
    check_finite_losses,
    check_positive_int,
    check_range,
    check_shape,
)
from priorkit.core.spec import MethodSpec
from priorkit.nn.distributed import all_gather_cat, all_reduce_mean, gather_with_grad
from priorkit.train import Batch, Phase, Recipe

if TYPE_CHECKING:
    from priorkit.train import RunState

__all__ = [
    "Discriminator",
    "Generator",
    "HashMLP",
    "ProSGAN",
    "PrototypeNet",
    "anchor_code",
    "discriminator_loss",
    "gan_targets",
    "generator_loss",
    "hash_loss",
    "pairwise_likelihood_loss",
    "pgd_targeted_attack",
    "prototype_net_loss",
    "similarity",
    "draw_seed",
    "dpsh_recipe",
    "pros_gan_recipe",
]


# ----------------------------------------------------------------------------------------------- functional core


def _multi_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if labels.dim() == 1:
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise PriorkitError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
        return F.one_hot(labels.long(), num_classes).float()
    check_shape("labels", labels, (None, num_classes))
    return labels.float()


def similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """``S = 1[l_a . l_b > 0]`` for multi-hot label rows ``[A, C]`` and ``[B, C]`` -> ``[A, B]``."""
    return (labels_a.float() @ labels_b.float().T > 0).float()


def pairwise_likelihood_loss(h: torch.Tensor, codes: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """DPSH negative log-likelihood ``-(1/(N B)) sum_ij [S_ij theta_ij - softplus(theta_ij)]``,
    ``theta = h codes^T / 2``; softplus keeps it finite for any |theta| (the code's ``log_trick``)."""
    check_shape("S", S, (h.shape[0], codes.shape[0]))
    theta = h @ codes.T / 2
    return -(S * theta - F.softplus(theta)).sum() / (codes.shape[0] * h.shape[0])


def prototype_net_loss(
    h: torch.Tensor, c_hat: torch.Tensor, target: torch.Tensor, codes: torch.Tensor, code_labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Stage-1 loss terms for a batch of target labels ``target`` [B, C] (multi-hot), prototype outputs ``h``
    [B, K] (tanh), label reconstruction ``c_hat`` [B, C] and the training set's codes [N, K] / labels [N, C]."""
    S = similarity(target, code_labels)
    terms = {
        "likelihood": pairwise_likelihood_loss(h, codes, S),
        "quantisation": (torch.sign(h) - h).pow(2).sum() / (1e4 * h.shape[0]),
        "label": F.mse_loss(c_hat, target),
    }
    terms["loss"] = terms["likelihood"] + terms["quantisation"] + terms["label"]
    return terms


def hash_loss(adv_hash: torch.Tensor, prototype_code: torch.Tensor) -> torch.Tensor:
    """``1 - mean(F(x') * h_p)`` in [0, 2]; equals ``2 d_H / K`` when F(x') is binary (a relaxed Hamming distance)."""
    check_shape("prototype_code", prototype_code, tuple(adv_hash.shape))
    return 1.0 - (adv_hash * prototype_code).mean()


def gan_targets(labels: torch.Tensor, real: bool) -> torch.Tensor:
    """LSGAN targets ``[label, 0]`` for real and ``[label, 1]`` for fake (the code's convention)."""
    flag = torch.full((labels.shape[0], 1), 0.0 if real else 1.0, dtype=labels.dtype, device=labels.device)
    return torch.cat([labels, flag], dim=1)


def discriminator_loss(
    d_real: torch.Tensor, d_fake: torch.Tensor, y_true: torch.Tensor, y_target: torch.Tensor
) -> torch.Tensor:
    """``(MSE(D(x), [y, 0]) + MSE(D(x'.detach()), [y_t, 1])) / 2``."""
    return 0.5 * (F.mse_loss(d_real, gan_targets(y_true, True)) + F.mse_loss(d_fake, gan_targets(y_target, False)))


def generator_loss(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    adv_hash: torch.Tensor,
    prototype_code: torch.Tensor,
    d_fake: torch.Tensor,
    y_target: torch.Tensor,
    *,
    rec_weight: float = 50.0,
    hash_weight: float = 5.0,
    gan_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """L_G terms: ``rec`` = alpha_rec MSE(x', x), ``hash`` = 5 (1 - <F(x'), h_p>), ``gan`` = MSE(D(x'), [y_t, 0])."""
    terms = {
        "rec": rec_weight * F.mse_loss(x_adv, x),
        "hash": hash_weight * hash_loss(adv_hash, prototype_code),
        "gan": gan_weight * F.mse_loss(d_fake, gan_targets(y_target, True)),
    }
    terms["loss"] = terms["rec"] + terms["hash"] + terms["gan"]
    return terms


def anchor_code(db_codes: torch.Tensor, db_labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DHTA's anchor: ``sign(sum of the codes of database items sharing a label with each target)``, [B, K]
    (a zero sum is broken towards +1)."""
    a = similarity(target, db_labels) @ db_codes.float()
    return torch.where(a >= 0, torch.ones_like(a), -torch.ones_like(a))


def pgd_targeted_attack(
    model: nn.Module,
    x: torch.Tensor,
    target_code: torch.Tensor,
    *,
    eps: float = 0.1,
    steps: int = 100,
    step_size: float | None = None,
) -> torch.Tensor:
    """DHTA-style targeted PGD: maximise ``<F(x'), target_code>/K`` with ``|x' - x|_inf <= eps`` and x' in
    [0, 1]; ``step_size`` defaults to ``2.5 eps / steps``."""
    check_range("eps", eps, 0.0, low_inclusive=False)
    check_positive_int("steps", steps)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    model.eval()
    x = x.detach()
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = -(model(adv) * target_code).mean()
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv - alpha * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    return adv.detach()


# ------------------------------------------------------------------------------------------------------- modules


class PrototypeNet(nn.Module):
    """``f = MLP(C -> hidden -> ReLU -> feat)``; ``h = tanh(Linear(feat -> bits))``; ``c = sigmoid(Linear(feat -> C))``
    (official sizes hidden 4096, feat 512; the card's CPU scale 256 / 64)."""

    def __init__(self, num_classes: int, bits: int, hidden: int = 4096, feat_dim: int = 512) -> None:
        super().__init__()
        for n, v in (("num_classes", num_classes), ("bits", bits), ("hidden", hidden), ("feat_dim", feat_dim)):
            check_positive_int(n, v)
        self.feature = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, feat_dim))
        self.hashing = nn.Sequential(nn.Linear(feat_dim, bits), nn.Tanh())
        self.classifier = nn.Sequential(nn.Linear(feat_dim, num_classes), nn.Sigmoid())

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.feature(labels)
        return f, self.hashing(f), self.classifier(f)


class Generator(nn.Module):
    """Label-conditioned MLP generator on flattened images in [-1, 1]: label feature -> image-sized label map,
    concatenated with x -> encoder -> decoder -> concatenated with x again -> Linear -> tanh."""

    def __init__(self, in_dim: int, feat_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.label_encoder = nn.Sequential(nn.Linear(feat_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, in_dim))
        self.encoder = nn.Sequential(nn.Linear(2 * in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, in_dim), nn.ReLU())
        self.out = nn.Linear(2 * in_dim, in_dim, bias=False)

    def forward(self, x: torch.Tensor, label_feature: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.label_encoder(label_feature), x], dim=1)
        return torch.tanh(self.out(torch.cat([self.decoder(self.encoder(mixed)), x], dim=1)))


class Discriminator(nn.Module):
    """Spectrally normalised MLP with LeakyReLU(0.01) and C+1 outputs (C label scores + the fake flag)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Linear(in_dim, hidden)),
            nn.LeakyReLU(0.01),
            spectral_norm(nn.Linear(hidden, hidden // 2)),
            nn.LeakyReLU(0.01),
            nn.Linear(hidden // 2, num_classes + 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HashMLP(nn.Module):
    """DPSH-style target hashing model: MLP ``in -> hidden -> bits`` with tanh codes (inputs in [0, 1])."""

    def __init__(self, in_dim: int, bits: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, bits), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProSGAN(nn.Module):
    """The attacker: :class:`PrototypeNet`, :class:`Generator` and :class:`Discriminator` against a frozen
    ``hash_model`` (inputs in [0, 1], flattened ``[B, in_dim]``)."""

    def __init__(
        self,
        hash_model: nn.Module,
        in_dim: int,
        num_classes: int,
        *,
        bits: int | None = None,
        proto_hidden: int = 256,
        feat_dim: int = 64,
        hidden: int = 256,
        rec_weight: float = 50.0,
        hash_weight: float = 5.0,
        gan_weight: float = 1.0,
        d_every: int = 3,
    ) -> None:
        super().__init__()
        check_positive_int("in_dim", in_dim)
        check_positive_int("num_classes", num_classes, 2)
        check_positive_int("d_every", d_every)
        for n, v in (("rec_weight", rec_weight), ("hash_weight", hash_weight), ("gan_weight", gan_weight)):
            check_range(n, v, 0.0)
        self.hash_model = hash_model.eval()
        for p in self.hash_model.parameters():
            p.requires_grad_(False)
        if bits is None:
            with torch.no_grad():
                bits = int(hash_model(torch.zeros(1, in_dim)).shape[1])
        self.in_dim, self.num_classes, self.bits = in_dim, num_classes, bits
        self.weights = {"rec_weight": rec_weight, "hash_weight": hash_weight, "gan_weight": gan_weight}
        self.d_every = d_every
        self.prototype_net = PrototypeNet(num_classes, bits, proto_hidden, feat_dim)
        self.generator = Generator(in_dim, feat_dim, hidden)
        self.discriminator = Discriminator(in_dim, num_classes, hidden)

    def _labels(self, y: torch.Tensor) -> torch.Tensor:
        return _multi_hot(as_tensor("labels", y), self.num_classes)

    def train(self, mode: bool = True) -> ProSGAN:
        """Set the mode of the attacker's parts; the target hashing model always stays in eval mode (frozen)."""
        super().train(mode)
        self.hash_model.eval()
        return self

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes ``sign(F(x))`` of the target model (a zero output maps to +1)."""
        u = self.hash_model(x)
        return torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u))

    @torch.no_grad()
    def prototype_code(self, target: torch.Tensor) -> torch.Tensor:
        """``h_p = sign(h(y_t))`` in {-1, +1}^bits for target labels (ids [B] or multi-hot [B, C])."""
        self.prototype_net.eval()
        h = self.prototype_net(self._labels(target))[1]
        return torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))

    @torch.no_grad()
    def attack(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One forward pass: adversarial images in [0, 1] for images ``x`` in [0, 1] and target labels."""
        x = as_tensor("x", x)
        check_shape("x", x, (None, self.in_dim))
        check_batch("x", x)
        self.prototype_net.eval()
        self.generator.eval()
        feat = self.prototype_net(self._labels(target))[0]
        return (self.generator(x * 2 - 1, feat) + 1) / 2


# ------------------------------------------------------------------------------------------------------ training


def draw_seed(seed: int, step: int) -> int:
    """Seed of a step's random draws (target labels): a function of ``(seed, step)`` only, so a resumed run draws
    what an uninterrupted one draws and every DDP rank draws the same global batch of targets."""
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


def _local_rows(state: RunState, n_local: int) -> slice:
    """This rank's rows of the current global batch (the engine's contiguous ``rank_slice``)."""
    per = -(-len(state.global_indices) // state.world_size)
    return slice(state.rank * per, state.rank * per + n_local)


def _sync_grads(state: RunState, module: nn.Module) -> None:
    """Average ``module``'s gradients over ranks (the manual phases call parts of the model, not its DDP forward)."""
    if state.world_size > 1:
        for p in module.parameters():
            if p.grad is not None:
                p.grad.copy_(all_reduce_mean(p.grad))


def _check_data(x: torch.Tensor, y: torch.Tensor, in_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_tensor("x", x), as_tensor("y", y)
    check_batch("x", x, dim=2)
    if in_dim is not None:
        check_shape("x", x, (None, in_dim))
    if y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
        n = x.shape[0]
        raise PriorkitError(f"y must have shape [{n}] (ids) or [{n}, C] (multi-hot), got {list(y.shape)}")
    if y.is_floating_point() and y.dim() == 1:
        raise PriorkitError(f"y must hold integer class ids (or multi-hot rows), got dtype {y.dtype}")
    return x, y


def dpsh_recipe(model: nn.Module, *, epochs: int = 30, lr: float = 3e-3, eta: float = 0.1) -> Recipe:
    """Train a target hashing model (e.g. :class:`HashMLP`) with the DPSH loss: pairwise likelihood over the pairs
    of each (global) batch, gradient through both codes, plus ``eta`` times the quantisation error; Adam ``lr``.
    At the end its parameters are frozen (:class:`ProSGAN` also keeps it in eval mode). Under DDP the pairs
    span the global batch (``gather_with_grad``).
    (DPSH's per-sample buffer of stale outputs converged to the all-zero code on digits, hence in-batch pairs.)
    Run it with :class:`priorkit.train.Trainer` on ``(x, y)`` data (``y`` ids ``[N]`` or multi-hot ``[N, C]``)."""
    if not isinstance(model, nn.Module):
        raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("epochs", epochs)
    check_range("lr", lr, 0.0, low_inclusive=False)
    check_range("eta", eta, 0.0)

    def loss(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        _check_data(batch.x, batch.y)
        u = gather_with_grad(batch.output)  # every rank computes the whole global-batch term
        y = all_gather_cat(batch.y)
        S = (y.view(-1, 1) == y.view(1, -1)).float() if y.dim() == 1 else similarity(y, y)
        return {"loss": pairwise_likelihood_loss(u, u, S) + eta * (u - torch.sign(u)).pow(2).mean()}

    def freeze(state: RunState) -> None:
        for p in model.parameters():
            p.requires_grad_(False)

    adam = lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)  # noqa: E731
    return Recipe([Phase("dpsh", epochs=epochs, loss=loss, optimizer=adam, rescale=False, on_end=freeze)], loss_fn=None)


def pros_gan_recipe(
    attacker: ProSGAN,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    target_labels: torch.Tensor | None = None,
    steps: int = 30000,
    steps_per_epoch: int = 300,
    prototype_batch_size: int = 64,
    prototype_lr: float = 1e-4,
    epochs: int = 50,
    decay_epochs: int = 50,
    batch_size: int = 24,
    lr: float = 1e-4,
) -> Recipe:
    """ProS-GAN's two stages as engine phases (run with :class:`priorkit.train.Trainer` on ``(x, y)`` data):

    - ``"prototype"``: ``steps`` Adam steps (betas (0.5, 0.999), lr ``prototype_lr``, x0.1 at 1/2 and 3/4 of the
      steps; official: 100 epochs x 300 steps) of the PrototypeNet on target labels drawn uniformly from
      ``target_labels`` (default: the distinct label rows of ``y``) against the codes of ``x``;
    - ``"gan"``: ``epochs`` at constant lr then ``decay_epochs`` of linear decay to 0 (official
      ``lr_policy='linear'``) of the generator and discriminator with the prototype net frozen, a manual step
      that updates D (every ``d_every``-th batch) then G. D and G are the two parameter groups of one Adam
      (betas (0.5, 0.999)); each of its steps moves only the group that holds gradients, so it is the pair of
      optimisers of the official code, with one checkpointed state.

    Target labels come from a generator seeded by ``(config.seed, step)`` for the global batch, so resume and
    DDP runs draw what a single uninterrupted run draws. ``x`` is in [0, 1], flattened ``[N, in_dim]``.
    """
    if not isinstance(attacker, ProSGAN):
        raise PriorkitError(f"attacker must be a ProSGAN, got {type(attacker).__name__}")
    x, y = _check_data(x, y, attacker.in_dim)
    for name, v in (("steps", steps), ("steps_per_epoch", steps_per_epoch), ("epochs", epochs),
                    ("prototype_batch_size", prototype_batch_size), ("batch_size", batch_size)):  # fmt: skip
        check_positive_int(name, v)
    check_positive_int("decay_epochs", decay_epochs, 0)
    check_range("prototype_lr", prototype_lr, 0.0, low_inclusive=False)
    check_range("lr", lr, 0.0, low_inclusive=False)
    labels = attacker._labels(y)
    targets = torch.unique(labels, dim=0) if target_labels is None else attacker._labels(target_labels)
    codes = attacker.codes(x)
    proto_epochs = -(-steps // steps_per_epoch)
    data = TensorDataset(x, y)  # the GAN stage's data (stage 1 draws its batches from the target labels)

    def draw(state: RunState, n_global: int, n_local: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(draw_seed(state.config.seed, state.step))
        t = targets[torch.randint(len(targets), (n_global,), generator=g)]
        return t[_local_rows(state, n_local)].to(state.device)

    # --- stage 1: the PrototypeNet on drawn target labels (a step budget, no data)
    def proto_plan(state: RunState) -> list[list[int]]:
        n = min(steps_per_epoch, steps - state.phase_epoch * steps_per_epoch)
        return [list(range(prototype_batch_size))] * n

    def proto_batch(state: RunState, local: torch.Tensor) -> Batch:
        t = draw(state, prototype_batch_size, len(local))
        return Batch(x=t, y=t, index=local)

    def proto_step(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        net, opt = attacker.prototype_net, state.optimizer
        _, h, c_hat = net(batch.x)
        terms = prototype_net_loss(h, c_hat, batch.x, codes.to(h.device), labels.to(h.device))
        check_finite_losses(terms, state.step)
        opt.zero_grad(set_to_none=True)
        state.backward(terms["loss"])
        _sync_grads(state, net)
        opt.step()
        return {k: v.detach() for k, v in terms.items() if k != "loss"}

    def proto_opt(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(attacker.prototype_net.parameters(), lr=prototype_lr, betas=(0.5, 0.999))

    def proto_sched(opt: torch.optim.Optimizer, spe: int) -> Any:
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[steps // 2, 3 * steps // 4], gamma=0.1)

    # --- stage 2: generator and discriminator
    def gan_opt(m: nn.Module) -> torch.optim.Optimizer:
        groups = [{"params": list(attacker.generator.parameters())},
                  {"params": list(attacker.discriminator.parameters())}]  # fmt: skip
        return torch.optim.Adam(groups, lr=lr, betas=(0.5, 0.999))

    def rule(e: int) -> float:
        return 1.0 - max(0, e + 1 - epochs) / float(decay_epochs + 1)

    def gan_step(state: RunState, batch: Batch) -> dict[str, torch.Tensor]:
        G, D, opt = attacker.generator, attacker.discriminator, state.optimizer
        bx, by = _check_data(batch.x, batch.y, attacker.in_dim)
        attacker.prototype_net.eval()
        real, yb = bx * 2 - 1, attacker._labels(by)
        t = draw(state, len(state.global_indices), len(bx))
        with torch.no_grad():
            feat, h, _ = attacker.prototype_net(t)
            h_p = torch.sign(h)
        fake = G(real, feat)
        d_loss = torch.zeros((), device=real.device)
        if state.batch_in_epoch % attacker.d_every == 0:
            d_loss = discriminator_loss(D(real), D(fake.detach()), yb, t)
            check_finite_losses({"d_loss": d_loss}, state.step)
            opt.zero_grad(set_to_none=True)
            state.backward(d_loss)
            _sync_grads(state, D)
            opt.step()  # only D holds gradients
        D.requires_grad_(False)
        try:
            terms = generator_loss(
                fake, real, attacker.hash_model((fake + 1) / 2), h_p, D(fake), t, **attacker.weights
            )
            check_finite_losses(terms, state.step)
            opt.zero_grad(set_to_none=True)
            state.backward(terms["loss"])
            _sync_grads(state, G)
            opt.step()  # only G holds gradients
        finally:
            D.requires_grad_(True)
        out = {k: v.detach() for k, v in terms.items() if k != "loss"}
        out["d_loss"] = d_loss.detach()
        return out

    def end_proto(state: RunState) -> None:
        attacker.prototype_net.eval()

    def end_gan(state: RunState) -> None:
        attacker.eval()

    return Recipe(
        [
            Phase("prototype", epochs=proto_epochs, trainable=["prototype_net"], optimizer=proto_opt,
                  scheduler=proto_sched, interval="step", batches=proto_plan, make_batch=proto_batch, data=data,
                  loss=proto_step, manual=True, on_end=end_proto),
            Phase("gan", epochs=epochs + decay_epochs, trainable=["generator", "discriminator"], optimizer=gan_opt,
                  scheduler=lambda o, spe: torch.optim.lr_scheduler.LambdaLR(o, rule), interval="epoch",
                  data=data, batch_size=batch_size, loss=gan_step, manual=True, on_end=end_gan),
        ],
        loss_fn=None,
    )  # fmt: skip


SPEC = MethodSpec(
    status="implemented",
    entry="ProSGAN",
    missing="MLP-scale generator/discriminator on flattened 8x8 digits only (224x224 conv G and PatchGAN D not "
    "built); multi-label loaders, P2P baseline and transferability sweeps not built; the manual GAN/prototype steps "
    "average gradients over ranks by hand (no DDP-equality test: the method holds no state)",
    presets={
        "paper": {"proto_hidden": 4096, "feat_dim": 512, "rec_weight": 50.0, "hash_weight": 5.0, "gan_weight": 1.0,
                  "d_every": 3, "steps": 30000, "steps_per_epoch": 300, "prototype_batch_size": 64,
                  "prototype_lr": 1e-4, "epochs": 50, "decay_epochs": 50, "batch_size": 24, "lr": 1e-4},
        "small": {"proto_hidden": 256, "feat_dim": 64, "hidden": 256, "rec_weight": 10.0, "d_every": 3,
                  "steps": 600, "prototype_lr": 1e-3, "epochs": 6, "decay_epochs": 6, "batch_size": 24, "lr": 1e-3},
    },
)  # fmt: skip
