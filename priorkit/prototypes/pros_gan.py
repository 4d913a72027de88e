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
(:class:`HashMLP` + :func:`train_dpsh`) are here too. Advertorch / torchattacks were considered: they target
classifiers, not hash codes, so the few lines of PGD are written here.

Functional core: :func:`pairwise_likelihood_loss`, :func:`prototype_net_loss`, :func:`hash_loss`,
:func:`gan_targets`, :func:`discriminator_loss`, :func:`generator_loss`, :func:`anchor_code`,
:func:`pgd_targeted_attack`. Modules: :class:`PrototypeNet`, :class:`Generator`, :class:`Discriminator`,
:class:`HashMLP`; :class:`ProSGAN` (train_prototype_net / train_generator / attack).

Example:

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x, y = torch.rand(40, 16, generator=g), torch.arange(40) % 4
>>> F_hash = HashMLP(16, 8, hidden=16)
>>> _ = train_dpsh(F_hash, x, y, epochs=2)
>>> attacker = ProSGAN(F_hash, in_dim=16, num_classes=4, feat_dim=8, hidden=16)
>>> _ = attacker.train_prototype_net(x, y, steps=5)
>>> _ = attacker.train_generator(x, y, epochs=1, decay_epochs=1)
>>> x_adv = attacker.attack(x[:3], torch.tensor([1, 2, 3]))
>>> x_adv.shape, bool(x_adv.min() >= 0 and x_adv.max() <= 1)
(torch.Size([3, 16]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from priorkit.core.errors import PriorkitError, check_positive_int, check_range, check_shape

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
    "train_dpsh",
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


def train_dpsh(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 3e-3,
    eta: float = 0.1,
    seed: int = 0,
) -> list[float]:
    """Train the target hashing model with the DPSH loss (pairwise likelihood over the pairs of each mini-batch,
    gradient through both codes, plus ``eta`` times the quantisation error); returns the loss per epoch. The
    model is left frozen in eval mode. (DPSH's per-sample buffer of stale outputs converged to the all-zero
    code on digits, hence in-batch pairs.)"""
    labels = _multi_hot(y, int(y.max()) + 1) if y.dim() == 1 else y.float()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = []
    model.train()
    for _ in range(epochs):
        perm, tot = torch.randperm(len(x), generator=g), 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            u = model(x[idx])
            S = similarity(labels[idx], labels[idx])
            loss = pairwise_likelihood_loss(u, u, S) + eta * (u - torch.sign(u)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        hist.append(tot / len(x))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return hist


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
        return _multi_hot(y, self.num_classes)

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

    def train_prototype_net(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target_labels: torch.Tensor | None = None,
        steps: int = 30000,
        batch_size: int = 64,
        lr: float = 1e-4,
        seed: int = 0,
    ) -> list[dict[str, float]]:
        """Stage 1 on the training set's codes; targets drawn uniformly from ``target_labels`` (default: the
        distinct label rows of ``y``). Official: 100 epochs x 300 steps, lr x0.1 at 1/2 and 3/4."""
        check_positive_int("steps", steps)
        labels = self._labels(y)
        targets = torch.unique(labels, dim=0) if target_labels is None else self._labels(target_labels)
        codes = self.codes(x)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.prototype_net.parameters(), lr=lr, betas=(0.5, 0.999))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[steps // 2, 3 * steps // 4], gamma=0.1)
        self.prototype_net.train()
        hist = []
        for _ in range(steps):
            t = targets[torch.randint(len(targets), (batch_size,), generator=g)]
            _, h, c_hat = self.prototype_net(t)
            terms = prototype_net_loss(h, c_hat, t, codes, labels)
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
            sched.step()
            hist.append({k: float(v.detach()) for k, v in terms.items()})
        self.prototype_net.eval()
        return hist

    def train_generator(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        target_labels: torch.Tensor | None = None,
        epochs: int = 50,
        decay_epochs: int = 50,
        batch_size: int = 24,
        lr: float = 1e-4,
        seed: int = 0,
    ) -> list[dict[str, float]]:
        """Stage 2: G and D with the prototype net frozen; ``epochs`` at constant lr then ``decay_epochs`` of
        linear decay to 0 (official ``lr_policy='linear'``); D is updated on every ``d_every``-th step."""
        check_positive_int("epochs", epochs)
        check_positive_int("decay_epochs", decay_epochs, 0)
        labels = self._labels(y)
        targets = torch.unique(labels, dim=0) if target_labels is None else self._labels(target_labels)
        g = torch.Generator().manual_seed(seed)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        total = epochs + decay_epochs

        def rule(e: int) -> float:
            return 1.0 - max(0, e + 1 - epochs) / float(decay_epochs + 1)

        scheds = [torch.optim.lr_scheduler.LambdaLR(o, rule) for o in (opt_g, opt_d)]
        self.prototype_net.eval()
        self.generator.train()
        self.discriminator.train()
        hist = []
        for _ in range(total):
            perm = torch.randperm(len(x), generator=g)
            for i, start in enumerate(range(0, len(x), batch_size)):
                idx = perm[start : start + batch_size]
                real, yb = x[idx] * 2 - 1, labels[idx]
                t = targets[torch.randint(len(targets), (len(idx),), generator=g)]
                with torch.no_grad():
                    feat, h, _ = self.prototype_net(t)
                    h_p = torch.sign(h)
                fake = self.generator(real, feat)
                d_loss = torch.zeros(())
                if i % self.d_every == 0:
                    d_loss = discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()), yb, t)
                    opt_d.zero_grad()
                    d_loss.backward()
                    opt_d.step()
                self.discriminator.requires_grad_(False)
                terms = generator_loss(
                    fake, real, self.hash_model((fake + 1) / 2), h_p, self.discriminator(fake), t, **self.weights
                )
                opt_g.zero_grad()
                terms["loss"].backward()
                opt_g.step()
                self.discriminator.requires_grad_(True)
                hist.append({**{k: float(v.detach()) for k, v in terms.items()}, "d_loss": float(d_loss.detach())})
            for s in scheds:
                s.step()
        self.generator.eval()
        self.discriminator.eval()
        return hist

    @torch.no_grad()
    def attack(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One forward pass: adversarial images in [0, 1] for images ``x`` in [0, 1] and target labels."""
        check_shape("x", x, (None, self.in_dim))
        self.prototype_net.eval()
        self.generator.eval()
        feat = self.prototype_net(self._labels(target))[0]
        return (self.generator(x * 2 - 1, feat) + 1) / 2
