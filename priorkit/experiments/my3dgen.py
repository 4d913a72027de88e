"""My3DGen on the generated "heads" world (card: adapters-lowrank.md, "Small-scale check on CPU").

The prior: a conditional generator ``G(w, yaw)`` (MLP on ``[w, yaw]`` -> 4x4 map -> three nearest-upsample + 3x3
conv blocks -> 32x32 grayscale) trained as an auto-decoder on renders of ``identities`` identities at yaws in
[-1, 1] (:mod:`priorkit.data.heads`), and an identity network ``phi`` (a small strided CNN with a cosine-softmax
head, the ArcFace stand-in) trained to classify those identities, then frozen. Both are trained through the engine
once per process and shared by every seed and variant (:func:`pretrained_prior`).

Each seed draws a held-out identity and ``anchors`` photos of it at yaw > ``seen_min_yaw`` only, projects each
photo into the frozen generator's latent space (the shared ``project`` phase, from the mean training latent), and
then personalises four ways on the same anchors, budget and optimizer: (a) latent fit only, (b) + full
fine-tuning, (c) + PEFT LoRA r = 1 on every conv and linear layer, (d) (c) + the lazy symmetry loss. Each variant
renders the mean anchor latent at unseen yaws in [-1, -0.25] and at seen-range yaws in [0.25, 1] and is compared
with the ground-truth renders: pixel MSE and phi-cosine.

Rules (the card's "Expected", fixed before any run): (d)'s unseen-pose MSE is at least 10 % below (c)'s
(``mse_unseen_ratio = MSE_unseen(d) / MSE_unseen(c) <= 0.9``); (c) beats (a) on the seen poses
(``seen_mse_ratio_c_over_a = MSE_seen(c) / MSE_seen(a) <= 1``); (c) and (d) train at least 20x fewer parameters
than (b) (``param_ratio >= 20``). The method row is (d), the baseline row (c); (a) and (b) are reported as
``metric@latent_only`` and ``metric@full_ft``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.adapters.my3dgen import My3DGen
from priorkit.core.seeding import seed_everything
from priorkit.data.heads import HeadsData, make_heads, render_heads, sample_identities, sample_yaws
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.train import Phase, Recipe, TrainConfig, fit


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    # the prior (shared by all seeds; trained once per process)
    identities: int = 200
    views: int = 6  # renders per training identity, yaw uniform in [-1, 1]
    prior_seed: int = 0
    w_dim: int = 16
    hidden: int = 128
    channels: tuple[int, int, int] = (16, 16, 8)  # the 4x4 map, then after the first and second conv blocks
    pretrain_epochs: int = 14
    pretrain_lr: float = 5e-3
    pretrain_batch: int = 64
    phi_dim: int = 64
    phi_width: int = 8
    phi_epochs: int = 20
    phi_lr: float = 5e-3
    # personalisation (per seed)
    anchors: int = 10
    seen_min_yaw: float = 0.2
    eval_views: int = 16  # per side: unseen yaws linspace(-1, -0.25), seen yaws linspace(0.25, 1)
    project_epochs: int = 40
    project_lr: float = 0.03
    tune_epochs: int = 60
    batch_size: int = 4
    r: int = 1
    lora_alpha: float = 1.0
    lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    lazy_interval: int = 4
    sym_weight: float = 1.0
    yaw_amplitude: float = 1.0  # the world's whole yaw range (the paper's 0.35 rad is EG3D's orbit)
    official_pairing: bool = False


FULL = Config()
QUICK = Config(identities=40, views=6, pretrain_epochs=8, phi_epochs=8, project_epochs=15, tune_epochs=20)


# ------------------------------------------------------------------------------------------------- the prior


class HeadGenerator(nn.Module):
    """``G(w, yaw)``: MLP on ``[w, yaw]`` -> ``c0 x 4 x 4`` -> 3 x (nearest x2, 3x3 conv) -> sigmoid, 32x32x1."""

    def __init__(self, w_dim: int = 16, hidden: int = 128, channels: tuple[int, int, int] = (32, 32, 16)) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.c0 = c0
        self.mlp = nn.Sequential(
            nn.Linear(w_dim + 1, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, c0 * 16),
            nn.LeakyReLU(0.2),
        )
        self.blocks = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c0, c1, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c2, 1, 3, padding=1),
        )

    def forward(self, w: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        h = self.mlp(torch.cat([w, yaw.reshape(-1, 1).to(w.dtype)], dim=1))
        return torch.sigmoid(self.blocks(h.view(-1, self.c0, 4, 4)))


class AutoDecoder(nn.Module):
    """The generator with one trainable latent per training identity (DeepSDF-style auto-decoding)."""

    def __init__(self, generator: HeadGenerator, num: int, w_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.latents = nn.Embedding(num, w_dim)
        nn.init.normal_(self.latents.weight, std=0.1)

    def forward(self, ids: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        return self.generator(self.latents(ids), yaw)


class IdentityEncoder(nn.Module):
    """``phi``: 3 strided 3x3 convs (32 -> 4; ``width``, 2x, 4x channels) and a linear embedding (the ArcFace
    stand-in)."""

    def __init__(self, dim: int = 64, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(4 * width * 16, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CosineClassifier(nn.Module):
    """``phi`` followed by a normalised-softmax head ``scale * cos(phi(x), W_c)`` (identities as classes)."""

    def __init__(self, encoder: IdentityEncoder, dim: int, classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.encoder, self.scale = encoder, scale
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(self.encoder(x), dim=1) @ F.normalize(self.weight, dim=1).T


@dataclass(frozen=True)
class Prior:
    generator: HeadGenerator
    phi: IdentityEncoder
    w_avg: torch.Tensor
    train_mse: float
    phi_acc: float


#: the fields that decide the prior (a shared prior is keyed by them only)
PRIOR_FIELDS = ("identities", "views", "prior_seed", "w_dim", "hidden", "channels", "pretrain_epochs", "pretrain_lr",
                "pretrain_batch", "phi_dim", "phi_width", "phi_epochs", "phi_lr")  # fmt: skip


@functools.lru_cache(maxsize=2)
def _pretrain(c: Config) -> Prior:
    data: HeadsData = make_heads(c.identities, c.views, seed=c.prior_seed)
    train = data.as_dataset()
    yaws = data.yaw
    seed_everything(c.prior_seed)
    gen = HeadGenerator(c.w_dim, c.hidden, c.channels)
    ad = AutoDecoder(gen, c.identities, c.w_dim)
    phase = Phase(
        "pretrain",
        epochs=c.pretrain_epochs,
        optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=c.pretrain_lr),
        scheduler=lambda opt, spe: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.pretrain_epochs),
        forward=lambda net, b: net(b.y, yaws[b.index]),
        loss=lambda s, b: {"rec": F.mse_loss(b.output, b.x)},
    )
    cfg = TrainConfig(batch_size=c.pretrain_batch, seed=c.prior_seed, progress=False)
    hist = fit(ad, train, Recipe([phase], loss_fn=None), config=cfg)
    seed_everything(c.prior_seed + 1)
    phi = IdentityEncoder(c.phi_dim, c.phi_width)
    clf = CosineClassifier(phi, c.phi_dim, c.identities)
    phase = Phase(
        "phi",
        epochs=c.phi_epochs,
        optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=c.phi_lr),
        scheduler=lambda opt, spe: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.phi_epochs),
    )
    fit(clf, train, Recipe([phase]), config=cfg)
    with torch.no_grad():
        acc = float((clf(data.images).argmax(1) == data.identity).float().mean())
    gen.eval().requires_grad_(False)
    phi.eval().requires_grad_(False)
    return Prior(gen, phi, ad.latents.weight.detach().mean(0), float(hist[-1]["rec"]), acc)


def pretrained_prior(c: Config) -> Prior:
    """The shared prior of ``c`` (cached per process on :data:`PRIOR_FIELDS`): generator, identity network, mean
    training latent, the generator's last training MSE and phi's training accuracy."""
    return _pretrain(Config(**{f: getattr(c, f) for f in PRIOR_FIELDS}))


# ------------------------------------------------------------------------------------------------ one seed


def _evaluate(model: My3DGen, phi: nn.Module, identity: torch.Tensor, yaws: torch.Tensor) -> dict[str, float]:
    """MSE and phi-cosine of the mean anchor latent's renders against the ground truth at ``yaws``."""
    with torch.no_grad():
        w = model.latents.mean(0, keepdim=True).expand(len(yaws), -1)
        fake = model.render(w, yaws)
        real = render_heads(identity, yaws)
        cos = F.cosine_similarity(phi(fake), phi(real), dim=1).mean()
        return {"mse": float(F.mse_loss(fake, real)), "cos": float(cos)}


def run(seed: int, c: Config) -> SeedResult:
    prior = pretrained_prior(c)
    identity = sample_identities(1, seed=10_000 + seed)[0]
    yaws = sample_yaws(c.anchors, c.seen_min_yaw, 1.0, seed=20_000 + seed)
    images = render_heads(identity, yaws)
    unseen = torch.linspace(-1.0, -0.25, c.eval_views)
    seen = torch.linspace(0.25, 1.0, c.eval_views)
    cfg = TrainConfig(batch_size=c.batch_size, seed=seed, progress=False)
    tune = {
        "tune_epochs": c.tune_epochs,
        "lr": c.lr,
        "betas": c.betas,
        "lazy_interval": c.lazy_interval,
        "yaw_amplitude": c.yaw_amplitude,
        "official_pairing": c.official_pairing,
    }

    # (a) latent fit: project every anchor into the frozen prior (shared by all variants)
    latent = My3DGen(copy.deepcopy(prior.generator), prior.phi, yaws, w_init=prior.w_avg, adapter="none")
    fit(latent, latent.anchors(images), latent.recipe(project_epochs=c.project_epochs, project_lr=c.project_lr),
        config=cfg)  # fmt: skip
    w_fit = latent.latents.detach().clone()

    def personalise(adapter: str, sym_weight: float) -> My3DGen:
        model = My3DGen(
            copy.deepcopy(prior.generator),
            prior.phi,
            yaws,
            w_init=w_fit,
            adapter=adapter,
            r=c.r,
            lora_alpha=c.lora_alpha,
        )
        recipe = model.recipe(project_epochs=0, sym_weight=sym_weight, **tune)
        fit(model, model.anchors(images), recipe, config=cfg)
        return model

    variants = {
        "latent_only": latent,
        "full_ft": personalise("full", 0.0),
        "lora": personalise("lora", 0.0),
        "lora_sym": personalise("lora", c.sym_weight),
    }
    out: dict[str, dict[str, float]] = {}
    for name, model in variants.items():
        u, s = _evaluate(model, prior.phi, identity, unseen), _evaluate(model, prior.phi, identity, seen)
        out[name] = {
            "mse_unseen": u["mse"],
            "cos_unseen": u["cos"],
            "mse_seen": s["mse"],
            "cos_seen": s["cos"],
            "trained_params": float(model.parameter_accounting()["trained"]),
        }
    method, baseline = dict(out["lora_sym"]), dict(out["lora"])
    method["mse_unseen_ratio"] = out["lora_sym"]["mse_unseen"] / out["lora"]["mse_unseen"]
    method["seen_mse_ratio_c_over_a"] = out["lora"]["mse_seen"] / out["latent_only"]["mse_seen"]
    method["param_ratio"] = out["full_ft"]["trained_params"] / out["lora_sym"]["trained_params"]
    for name in ("latent_only", "full_ft"):
        method.update({f"{k}@{name}": v for k, v in out[name].items()})
    method["prior_train_mse"] = prior.train_mse
    method["phi_train_acc"] = prior.phi_acc
    return {"method": method, "baseline": baseline}


EXPERIMENT = Experiment(
    id="my3dgen",
    claim="the symmetry prior lowers the unseen-pose (mirrored) MSE of the LoRA-personalised generator by at least "
    "10 %; LoRA personalisation beats the latent fit alone on the seen poses; LoRA trains at least 20x fewer "
    "parameters than full fine-tuning",
    setup="generated 32x32 'heads' (mirror-exact 3-D layouts projected at yaw in [-1, 1]); a conditional conv "
    "generator pretrained as an auto-decoder and a cosine-softmax identity CNN (phi) on the training identities; "
    "a held-out identity personalised from anchors at yaw > 0.2 only; evaluated at unseen yaw in [-1, -0.25]",
    method_name="latent fit + LoRA r=1 + L_sym (d)",
    baseline_name="latent fit + LoRA r=1 (c)",
    checks=[
        Check("mse_unseen_ratio", "lower", 0.9, against="value"),
        Check("seen_mse_ratio_c_over_a", "lower", 1.0, against="value"),
        Check("param_ratio", "higher", 20.0, against="value"),
    ],
    diagnosis="The symmetry prior lowers the unseen-pose MSE of the LoRA-personalised generator on average, but the "
    "per-seed ratio (each seed personalises a different held-out identity) spreads so widely that its "
    "interval straddles the card's 0.9, and neither a ten times smaller symmetry weight nor the paper's "
    "yaw amplitude (the ablations) narrows it. The measured mechanism (the metrics table): under the one "
    "shared Adam the symmetry gradient outweighs the reconstruction gradient, so (d) stays near the "
    "latent-only fit (the @latent_only metrics) instead of learning the identity, and its advantage over "
    "(c) comes mostly from (c) drifting on unseen poses. Without LPIPS and ArcFace (none offline) the "
    "plain-pixel reconstruction term is too weak a counterweight for the paper's balance to appear.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    notes="What was learnt while building the check (seed 0, before the bench): on the stand-in the symmetry "
    "term's gradient on the adapter is much larger than the reconstruction term's (plain MSE on [0, 1] pixels, no "
    "LPIPS), and the paper's lazy scheme shares one Adam (beta1 = 0) between the main and the symmetry steps, so the "
    "symmetry gradients set the second moment and the reconstruction steps nearly stop: (d) stays close to the "
    "latent fit (a) on seen and unseen poses, while (c) fits the seen poses and drifts on the unseen ones, as full "
    "fine-tuning (b) does more strongly. The ablations measure a lighter symmetry weight (0.1) and the paper's yaw "
    "amplitude (0.35 rad, whose mirrored pairs do not reach the unseen yaws below -0.35).",
    ablations={"sym_weight_0.1": {"sym_weight": 0.1}, "paper_amplitude": {"yaw_amplitude": 0.35}},
    ablation_seeds=3,
    threads=1,
)

__all__ = ["EXPERIMENT", "FULL", "QUICK", "Config", "HeadGenerator", "IdentityEncoder", "pretrained_prior", "run"]
