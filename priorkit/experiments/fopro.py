"""FoPro vs cross-entropy on web-noisy digits with a few real shots per class (card: prototypes-fewshot-ood.md).

Data (:func:`priorkit.data.webly.make_webly`, per the card): "web" digits with a domain shift (random 1-px
translation, inversion of half the images, Gaussian noise) and asymmetric label noise y -> y+1, plus K clean real
digits per class; test on held-out clean digits. Backbone: the card's stand-in for the pretrained B-CNN, an MLP
trained from scratch (no pretrained backbone exists here, so the frozen-backbone warm start is off). FoPro: the
card's three stages (E_init/E_clean/E_rel) with a relation-head stage, fusion cleaning, the paper's defaults for
tau, mu, gamma, alpha, margin and the density temperature; a narrower projection than the paper's 2048 (CPU
scale). Optimiser for both sides: Adam with the paper's warm-up + cosine schedule and beta1 drop, a larger lr
than the paper's 1e-4 because the backbone starts from random weights; encoder momentum below the paper's 0.999
(the run has ~1,200 steps, not ~40,000: at 0.999 the key encoder would barely leave its random initialisation,
and the prototypes are built from its keys). Baseline: the same MLP trained with CE on web + few-shot with the
same optimiser, schedule, epochs, batch and weak augmentation. Every setting is in :class:`Config` (``QUICK`` and
``FULL``, which the report prints); the FoPro settings of ``FULL`` are its SPEC's ``small`` preset.

Rule (fixed before the first run, from the card's "FoPro beats the baseline by >= 5 points"): method real-test
accuracy >= baseline + 0.05. The quick tier is a smaller budget with the same rule; the full tier also runs other
shot counts (``extra_shots``) and the ablation ``ablation_alpha`` (alpha=1: no prototype mixing) as extra method
metrics (card: K=5 >= K=1 >= K=0, alpha=1 loses part of the gain). ``acc_prototype`` is the nearest-prototype
accuracy in FoPro's embedding (not the paper's inference, reported for diagnosis).

What development taught (the figures are in the committed ``results/fopro.json`` and ``results/report.md``):
FoPro's classifier h does not beat CE at this scale, while its nearest-prototype classifier (``acc_prototype``)
does better than h. The classifier h learns slowly under the six loss terms (its CE stays high while the
prototype and low-dim losses fall), so the cleaned, prototype-guided embedding does not carry over to h within
the epoch budget; the shorter quick budget makes the gap larger. No hyper-parameter was tuned to change this.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from priorkit.core.seeding import seed_everything
from priorkit.data.webly import make_webly
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics import accuracy
from priorkit.models import MLP
from priorkit.prototypes.fopro import SPEC, FoPro, FoProConfig, default_weak, fopro_lr
from priorkit.train import Augment, Hook, Phase, Recipe, RunState, TrainConfig, fit


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it). ``method`` is FoPro's own config (FULL: its SPEC's ``small``
    preset); the baseline uses the optimiser, schedule, epochs and batch of the same config."""

    shots: int = 5  # K real shots per class
    web_size: int = 1200
    test_size: int = 400
    noise: str = "asymmetric"
    noise_rate: float = 0.4
    noise_std: float = 0.2  # web domain shift: Gaussian noise
    hidden: tuple[int, ...] = (128,)  # MLP 64-128
    extra_shots: tuple[int, ...] = (1, 0)  # also reported (acc_K<k>), not part of the rule
    ablation_alpha: float | None = 1.0  # also reported (acc_alpha<a>): FoPro without prototype mixing
    method: FoProConfig = field(default_factory=lambda: FoProConfig(**SPEC.presets["small"]))


FULL = Config()
QUICK = Config(
    web_size=800, extra_shots=(), ablation_alpha=None,
    method=replace(
        FULL.method, epochs=30, init_epoch=5, clean_epoch=8, relation_epoch=10, relation_epochs=3, beta1_drop_epoch=20
    ),
)  # fmt: skip


def fopro_config(c: Config, **kw) -> FoProConfig:  # noqa: ANN003
    """FoPro's settings held by ``c``, with overrides."""
    return replace(c.method, **kw)


def _data(seed: int, c: Config, shots: int | None):  # noqa: ANN202
    return make_webly(
        "digits", shots=c.shots if shots is None else shots, web_size=c.web_size, test_size=c.test_size,
        noise=c.noise, noise_rate=c.noise_rate, noise_std=c.noise_std, seed=seed,
    )  # fmt: skip


def run_fopro(seed: int, c: Config, shots: int | None = None, **kw) -> tuple[float, float]:  # noqa: ANN003
    """Real-test accuracy of h (the paper's inference) and of the nearest prototype in the embedding."""
    data = _data(seed, c, shots)
    cfg = fopro_config(c, **kw)
    seed_everything(seed)
    model = FoPro(MLP(64, c.hidden, 10), 10, cfg)
    fit(model, None, model.recipe(data.train, data.domain), config=TrainConfig(seed=seed, progress=False))
    model.eval()
    with torch.no_grad():
        proto = model.embed(model.features(data.test.x)) @ model.memory.prototypes.t()
    return accuracy(model.predict(data.test.x), data.test.y), accuracy(proto, data.test.y)


class _WarmCosineAdam(Hook):
    """The baseline's per-epoch schedule, the same as FoPro's: warm-up + cosine lr (fopro_lr) and the beta1 drop."""

    def __init__(self, cfg: FoProConfig) -> None:
        self.cfg = cfg

    def on_epoch_start(self, state: RunState) -> None:
        c, e = self.cfg, state.epoch
        drop = c.beta1_drop_epoch is not None and e >= c.beta1_drop_epoch
        for grp in state.optimizer.param_groups:
            grp["lr"] = fopro_lr(e, c.lr, c.warmup_epochs, c.epochs)
            grp["betas"] = (0.1 if drop else 0.9, grp["betas"][1])


def run_baseline(seed: int, c: Config, shots: int | None = None) -> float:
    """Plain CE on web + few-shot: the same backbone, optimiser, schedule, epochs, batch and weak view."""
    data = _data(seed, c, shots)
    cfg = fopro_config(c)
    seed_everything(seed)
    model = MLP(64, c.hidden, 10)

    def adam(m: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    recipe = Recipe([Phase("ce", epochs=cfg.epochs, optimizer=adam, batch_size=cfg.batch_size)])
    hooks = [_WarmCosineAdam(cfg), Augment(default_weak, name="weak")]
    fit(model, data.train, recipe, hooks=hooks, config=TrainConfig(seed=seed, progress=False))
    model.eval()
    with torch.no_grad():
        return accuracy(model(data.test.x), data.test.y)


def run(seed: int, c: Config) -> SeedResult:
    acc, acc_proto = run_fopro(seed, c)
    method = {"acc": acc, "acc_prototype": acc_proto}
    baseline = {"acc": run_baseline(seed, c)}
    for k in c.extra_shots:
        method[f"acc_K{k}"] = run_fopro(seed, c, shots=k)[0]
    if c.ablation_alpha is not None:
        method[f"acc_alpha{c.ablation_alpha:g}"] = run_fopro(seed, c, alpha=c.ablation_alpha)[0]
    for k in c.extra_shots:
        baseline[f"acc_K{k}"] = run_baseline(seed, c, shots=k)
    return {"method": method, "baseline": baseline}


EXPERIMENT = Experiment(
    id="fopro",
    claim="With noisy, domain-shifted web data and a few real shots, FoPro beats plain CE by >= 5 points on real test",
    setup=(
        "digits: domain-shifted web images with asymmetric label noise, K real shots per class, clean test; MLP "
        "(stand-in for the pretrained B-CNN) from scratch; three stages E_init/E_clean/E_rel, fusion cleaning"
    ),
    method_name="FoPro (3 stages, fusion cleaning)",
    baseline_name="cross-entropy on web + few-shot",
    checks=[Check("acc", "higher", 0.05)],
    diagnosis="FoPro's classifier ties cross-entropy on average (seeds split both ways), far from the 5-point gain. "
    "The in-run measurements locate the loss: the nearest-prototype classifier in FoPro's own embedding "
    "(acc_prototype) is well above both classifiers, so the cleaned, prototype-guided embedding is "
    "learnt; it is the linear classifier h, trained under six loss terms from a random MLP, that does not "
    "pick it up within the budget. Without prototype mixing (acc_alpha1) accuracy drops well below the "
    "main run, so the mixing is what keeps h level with CE; with one or no real shot (acc_K1, acc_K0) "
    "FoPro is at or below CE, as the card's ordering K=5 > K=1 expects. The paper starts h from a "
    "pretrained B-CNN over 40k steps; here h starts from scratch over about 1,200.",
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=1,
)
