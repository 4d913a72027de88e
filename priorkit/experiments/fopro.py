"""FoPro vs cross-entropy on web-noisy digits with 5 real shots per class (card: prototypes-fewshot-ood.md).

Data (:func:`priorkit.data.webly.make_webly`, per the card): 1,200 "web" digits with a domain shift (random 1-px
translation, inversion of half the images, Gaussian noise sigma 0.2) and 40% asymmetric label noise y -> y+1,
plus K=5 clean real digits per class; test on 400 held-out clean digits. Backbone: the card's stand-in for the
pretrained B-CNN, an MLP 64 -> 128 trained from scratch (no pretrained backbone exists here, so the frozen-backbone
warm start is set to 0 epochs). FoPro: d=32, queue 256, batch 64, 60 epochs with E_init/E_clean/E_rel =
10/15/20 (card), relation-head stage 6 epochs (20/200 of the schedule), fusion cleaning, paper defaults
tau=0.1, mu=0.999, gamma=0.6, alpha=0.5, margin 0.5, density temperature; projection hidden width 256 instead
of 2048 (CPU scale). Optimiser for both sides: Adam with the paper's warm-up + cosine schedule and beta1 drop at
epoch 40, lr 1e-3 instead of 1e-4 because the backbone starts from random weights; encoder momentum 0.99
instead of 0.999 (the run has ~1,200 steps, not ~40,000: at 0.999 the key encoder would barely leave its
random initialisation, and the prototypes are built from its keys). Baseline: the same MLP
trained with CE on web + few-shot with the same optimiser, schedule, epochs, batch and weak augmentation.

Rule (fixed before the first run, from the card's "FoPro beats the baseline by >= 5 points"): method real-test
accuracy >= baseline + 0.05. Quick mode (a smaller budget, same rule): 800 web images, 30 epochs with phases
5/8/10 and a 3-epoch relation stage, 1 seed; full mode: 3 seeds and also K=0, K=1 and alpha=1 (no prototype
mixing) as extra method metrics (card: K=5 >= K=1 >= K=0, alpha=1 loses part of the gain). ``acc_prototype`` is
the nearest-prototype accuracy in FoPro's embedding (not the paper's inference, reported for diagnosis).

Outcome during development (seed 0, full budget, before the rule was checked by bench): NOT reproduced. FoPro's h
reached 0.757 real-test accuracy vs 0.785 for CE, while its nearest-prototype classifier reached 0.88. The
classifier h learns slowly under the six loss terms at this scale (its CE stays near 1.8 while the prototype and
low-dim losses fall), so the cleaned, prototype-guided embedding does not carry over to h within 60 epochs. No
hyper-parameter was tuned to change this. With the quick budget (30 epochs) the gap is larger.
"""

from __future__ import annotations

import torch

from priorkit.core.seeding import seed_everything
from priorkit.data.webly import make_webly
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.prototypes.fopro import SPEC, FoPro, FoProConfig, default_weak, fopro_lr
from priorkit.train import Augment, Hook, Phase, Recipe, RunState, TrainConfig, fit

EPOCHS = SPEC.presets["small"]["epochs"]


def config(**kw) -> FoProConfig:  # noqa: ANN003
    """The ``small`` preset of FoPro's SPEC (the CPU-scale settings above), with overrides."""
    return FoProConfig(**dict(SPEC.presets["small"], **kw))


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


QUICK = dict(epochs=30, init_epoch=5, clean_epoch=8, relation_epoch=10, relation_epochs=3, beta1_drop_epoch=20)


def run_fopro(seed: int, shots: int = 5, web_size: int = 1200, **kw) -> tuple[float, float]:  # noqa: ANN003
    """Real-test accuracy of h (the paper's inference) and of the nearest prototype in the embedding."""
    data = make_webly("digits", shots=shots, web_size=web_size, seed=seed)
    cfg = config(**kw)
    seed_everything(seed)
    model = FoPro(MLP(64, (128,), 10), 10, cfg)
    fit(model, None, model.recipe(data.train, data.domain), config=TrainConfig(seed=seed, progress=False))
    model.eval()
    with torch.no_grad():
        proto = model.embed(model.features(data.test.x)) @ model.memory.prototypes.t()
    return _acc(model.predict(data.test.x), data.test.y), _acc(proto, data.test.y)


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


def run_baseline(seed: int, shots: int = 5, web_size: int = 1200, **kw) -> float:  # noqa: ANN003
    """Plain CE on web + few-shot: the same backbone, optimiser, schedule, epochs, batch and weak view."""
    data = make_webly("digits", shots=shots, web_size=web_size, seed=seed)
    cfg = config(**kw)
    seed_everything(seed)
    model = MLP(64, (128,), 10)

    def adam(m: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    recipe = Recipe([Phase("ce", epochs=cfg.epochs, optimizer=adam, batch_size=cfg.batch_size)])
    hooks = [_WarmCosineAdam(cfg), Augment(default_weak, name="weak")]
    fit(model, data.train, recipe, hooks=hooks, config=TrainConfig(seed=seed, progress=False))
    model.eval()
    with torch.no_grad():
        return _acc(model(data.test.x), data.test.y)


def run(seed: int, quick: bool) -> SeedResult:
    kw = dict(QUICK, web_size=800) if quick else {}
    acc, acc_proto = run_fopro(seed, **kw)
    method = {"acc": acc, "acc_prototype": acc_proto}
    baseline = {"acc": run_baseline(seed, **kw)}
    if not quick:
        method["acc_K1"] = run_fopro(seed, shots=1)[0]
        method["acc_K0"] = run_fopro(seed, shots=0)[0]
        method["acc_alpha1"] = run_fopro(seed, alpha=1.0)[0]
        baseline["acc_K1"] = run_baseline(seed, shots=1)
        baseline["acc_K0"] = run_baseline(seed, shots=0)
    return {"method": method, "baseline": baseline}


EXPERIMENT = Experiment(
    id="fopro",
    claim="With noisy, domain-shifted web data and a few real shots, FoPro beats plain CE by >= 5 points on real test",
    setup=(
        "digits: 1,200 shifted web images, 40% asym. noise, K=5 real shots/class, 400 clean test; MLP 64-128 "
        "(stand-in for the pretrained B-CNN), 60 epochs, E_init/E_clean/E_rel 10/15/20, fusion cleaning; "
        "3 seeds (quick: 800 web images, 30 epochs, 1 seed)"
    ),
    method_name="FoPro (3 stages, fusion cleaning)",
    baseline_name="cross-entropy on web + few-shot",
    checks=[Check("acc", "higher", 0.05)],
    run=run,
    threads=1,
    seeds=3,
    quick_seeds=1,
)
