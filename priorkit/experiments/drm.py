"""DRM vs ERM on rotated digits, leave one rotation out (card: regularizers-theory.md, "Small-scale check on CPU").

Data: scikit-learn's 8x8 digits split disjointly into four domains rotated by 0, 30, 60 and 90 degrees
(:func:`priorkit.data.domains.rotated_domains`); each split holds one rotation out as the target and keeps a 70/30
train / validation split inside each source domain. Model: a small GroupNorm CNN featurizer (DomainBed's MNIST
CNN, narrowed) with linear heads. Both sides train through the engine on the same per-domain minibatches (one
minibatch of ``per_domain`` rows from every source domain per step, :func:`priorkit.train.domain_phase_parts`),
from the same initial featurizer, with Adam: ERM (DomainBed's: one head on the pooled minibatches) and DRM (K
domain heads + ``h_all``, :meth:`priorkit.regularizers.drm.DRM.phase`). Model selection is DomainBed's
training-domain validation: a checkpoint every ``eval_every`` steps, keeping the one of best mean accuracy on the
source domains' validation parts (DRM predicting with its own rule, entropy selection over batches of
``test_batch``). The featurizer runs once on the pooled batch (``per_domain_forward=False``): with GroupNorm that
equals the official per-domain forward (tested).

Test: the target domain's images in one seeded random order, predicted online with entropy selection per batch
of ``test_batch`` (``target_acc_b64``) and per sample (batch 1, ``target_acc_b1``), and with online steering
(batch 1; ``target_acc_steer``; SGD rate ``steer_lr`` = the training rate, the middle of the official adaptation
grid lr x {0.1, 1, 10}; confidence ``steer_conf`` = the code's ``test_conf``). ERM predicts each sample alone
(its accuracy does not depend on the batch). Source accuracy: the source validation parts, DRM with each sample's
own domain head (``source_acc_own``) and with entropy selection (``source_acc_entropy``). Also reported (no
rule): the other selection rules at batch 1 (``target_acc_nn``, ``_cosine``, ``_p2``), ``h_all`` alone and the
per-split accuracies. Metrics are means over the splits of a seed.

Rules (fixed before the first run, from the card's "Expected: DRM >= ERM on targets by ~1-3 points on average and
>= ERM on sources; steering adds a little more on the hardest split"): target accuracy at least 1 point (the low
end of the card's range) above ERM's at test batch 64 and at batch 1; source accuracy with the own head no more
than 0.5 points below ERM's (the card's ">=", with the tolerance PS-KD's rule uses for "equal or better"); and on
the hardest split (the one of lowest ERM target accuracy in the seed) steering's gain over DRM at batch 1 is
positive.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.domains import DomainData, rotated_domains
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.regularizers.drm import DRM, SPEC
from priorkit.train import Phase, Recipe, RunState, TrainConfig, Trainer, domain_phase_parts

_P = SPEC.presets["small"]


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    angles: tuple[float, ...] = (0.0, 30.0, 60.0, 90.0)
    targets: tuple[int, ...] = (0, 1, 2, 3)  # held-out rotation of each split (indices into angles)
    val: float = 0.3  # training-domain validation part of every source domain
    width: int = 16  # CNN channels (w, 2w, 2w); features are 2w
    steps: int = 500
    eval_every: int = 100  # training-domain validation checkpoints
    per_domain: int = 32
    lr: float = 1e-3  # Adam (DomainBed's small-image default), both sides
    prototype_K: int = _P["prototype_K"]
    discriminator: bool = True  # train DRM's domain discriminator too (for the "nn" rule's report)
    test_batch: int = 64
    steer_lr: float = _P["steer_lr"]  # = lr
    steer_conf: float = _P["steer_conf"]
    steer_lr_sweep: tuple[float, ...] = (1e-5,)  # a smaller steering rate, on the hardest split (no rule)


FULL = Config()
QUICK = Config(targets=(3,), steps=150, eval_every=50, discriminator=False, steer_lr_sweep=())


def featurizer(width: int) -> nn.Module:
    """DomainBed's MNIST CNN narrowed for 8x8 digits: three 3x3 conv-ReLU-GroupNorm blocks, global average pool."""
    w2 = 2 * width
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.GroupNorm(4, width),
        nn.Conv2d(width, w2, 3, stride=2, padding=1), nn.ReLU(), nn.GroupNorm(4, w2),
        nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(), nn.GroupNorm(4, w2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


@torch.no_grad()
def _batched(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Predictions (log-probabilities or logits) of ``x`` in consecutive batches of ``batch`` rows, in eval mode."""
    was = model.training
    model.eval()
    out = torch.cat([model(x[s : s + batch]) for s in range(0, len(x), batch)])
    model.train(was)
    return out


def _acc(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(1) == y).float().mean())


def _val_acc(model: nn.Module, val: list[IndexedTensorDataset], batch: int) -> float:
    """Training-domain validation: mean accuracy over the source domains' validation parts."""
    return sum(_acc(_batched(model, v.x, batch), v.y) for v in val) / len(val)


def _fit_selected(model: nn.Module, phase: Phase, data: DomainData, c: Config, seed: int) -> nn.Module:
    """Train ``model`` through the engine and restore the checkpoint of best training-domain validation accuracy."""
    best = {"acc": -1.0, "state": None}

    def eval_fn(state: RunState) -> dict[str, float]:
        acc = _val_acc(state.model, data.val, c.test_batch)
        if acc > best["acc"]:
            best["acc"], best["state"] = acc, copy.deepcopy(state.model.state_dict())
        return {"val_acc": acc}

    cfg = TrainConfig(seed=seed, progress=False)
    Trainer(model, None, recipe=Recipe([phase], loss_fn=None), config=cfg, eval_fn=eval_fn).fit()
    model.load_state_dict(best["state"])
    return model.eval()


def _erm(data: DomainData, c: Config, seed: int) -> nn.Module:
    seed_everything(seed)
    feat = featurizer(c.width)
    model = nn.Sequential(feat, nn.Linear(2 * c.width, data.num_classes))
    batches, make_batch = domain_phase_parts(data, c.per_domain, c.eval_every)

    def loss(state: RunState, batch: object) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(batch.output, batch.y)}

    phase = Phase("erm", epochs=c.steps // c.eval_every, batches=batches, make_batch=make_batch, loss=loss,
                  optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=c.lr))  # fmt: skip
    return _fit_selected(model, phase, data, c, seed)


def _drm(data: DomainData, c: Config, seed: int) -> DRM:
    seed_everything(seed)  # the same featurizer initialisation as ERM's
    model = DRM(featurizer(c.width), 2 * c.width, data.num_classes, data.num_domains, rule="entropy",
                prototype_K=c.prototype_K, discriminator=c.discriminator, per_domain_forward=False,
                steer_lr=c.steer_lr, steer_conf=c.steer_conf)  # fmt: skip
    phase = model.phase(data, epochs=c.steps // c.eval_every, steps_per_epoch=c.eval_every,
                        per_domain=c.per_domain, lr=c.lr)  # fmt: skip
    return _fit_selected(model, phase, data, c, seed)


def _steer(drm: DRM, x: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, float]:
    """Online steering of a copy of ``drm`` over the stream ``x`` at rate ``lr``: accuracy, the fraction of samples
    that updated the model, and the fraction of predictions in the most frequent class (1/C when balanced)."""
    logp, _, updated = copy.deepcopy(drm).configure(steer_lr=lr).steer(x)
    top = float(torch.bincount(logp.argmax(1)).max()) / len(x)
    return {"steer": _acc(logp, y), "steer_updated": float(updated.float().mean()), "steer_top_class": top}


def _split(seed: int, target: int, c: Config) -> tuple[dict[str, float], DRM, torch.Tensor, torch.Tensor]:
    data = rotated_domains(angles=c.angles, target=target, val=c.val, seed=seed)
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed + 1000 * target))
    x, y = data.test.x[order], data.test.y[order]
    erm, drm = _erm(data, c, seed), _drm(data, c, seed)
    r: dict[str, float] = {"erm_target": _acc(_batched(erm, x, c.test_batch), y)}
    r["erm_source"] = _val_acc(erm, data.val, c.test_batch)
    r["b64"] = _acc(_batched(drm, x, c.test_batch), y)
    r["source_entropy"] = _val_acc(drm, data.val, c.test_batch)
    with torch.no_grad():
        own = [_acc(drm(v.x, torch.full((len(v),), k), parts=True)["head_logits"][k], v.y)
               for k, v in enumerate(data.val)]  # fmt: skip
        r["source_own"] = sum(own) / len(own)
        r["h_all"] = _acc(drm(x, parts=True)["head_logits"][-1], y)
    r["b1"] = _acc(_batched(drm.configure(per_sample=True), x, len(x)), y)  # per-sample selection = batch 1
    rules = ["cosine", "p2"] + (["nn"] if c.discriminator else [])
    for rule in rules:
        r[rule] = _acc(_batched(drm.configure(rule=rule), x, len(x)), y)
    drm.configure(rule="entropy", per_sample=True)
    r.update(_steer(drm, x, y, c.steer_lr))
    return r, drm, x, y


def run(seed: int, c: Config) -> SeedResult:
    start = time.process_time()
    done = {t: _split(seed, t, c) for t in c.targets}
    splits = {t: d[0] for t, d in done.items()}

    def mean(key: str) -> float:
        return sum(s[key] for s in splits.values()) / len(splits)

    hard = min(splits, key=lambda t: splits[t]["erm_target"])
    method = {
        "target_acc_b64": mean("b64"),
        "target_acc_b1": mean("b1"),
        "target_acc_steer": mean("steer"),
        "source_acc_own": mean("source_own"),
        "source_acc_entropy": mean("source_entropy"),
        "steer_gain_hard": splits[hard]["steer"] - splits[hard]["b1"],
        "target_acc_h_all": mean("h_all"),
        "target_acc_cosine": mean("cosine"),
        "target_acc_p2": mean("p2"),
        "steer_updated_frac": mean("steer_updated"),
        "steer_top_class_frac": mean("steer_top_class"),
    }
    _, drm, x, y = done[hard]
    for lr in c.steer_lr_sweep:
        method[f"steer_gain_hard@steer_lr={lr:g}"] = _steer(drm, x, y, lr)["steer"] - splits[hard]["b1"]
    if c.discriminator:
        method["target_acc_nn"] = mean("nn")
    erm_t, erm_s = mean("erm_target"), mean("erm_source")
    baseline = {"target_acc_b64": erm_t, "target_acc_b1": erm_t, "target_acc_steer": erm_t,
                "source_acc_own": erm_s, "source_acc_entropy": erm_s}  # fmt: skip
    for t, s in splits.items():
        name = f"rot{c.angles[t]:g}"
        method[f"target_acc_b1@{name}"] = s["b1"]
        method[f"target_acc_steer@{name}"] = s["steer"]
        baseline[f"target_acc_b1@{name}"] = s["erm_target"]
    return {"method": method, "baseline": baseline, "extra": {"hard_split": f"rot{c.angles[hard]:g}",
            "cpu_seconds": time.process_time() - start}}  # fmt: skip


EXPERIMENT = Experiment(
    id="drm",
    claim="DRM (domain heads + h_all, entropy selection) beats pooled ERM on the held-out rotation by at least "
    "1 point (the card: 1-3) at test batch 64 and 1, matches it on the source domains with each domain's own head, "
    "and online steering adds accuracy on the hardest split",
    setup="scikit-learn digits in four disjoint rotated domains (0/30/60/90 degrees), leave one rotation out; a "
    "GroupNorm CNN featurizer with linear heads; Adam, one minibatch per source domain per step, training-domain "
    "validation for model selection; the same data, batches, initial featurizer and budget for both",
    method_name="DRM (entropy selection)",
    baseline_name="ERM (pooled, one head)",
    checks=[
        Check("target_acc_b64", "higher", 0.01),
        Check("target_acc_b1", "higher", 0.01),
        Check("source_acc_own", "higher", -0.005),
        Check("steer_gain_hard", "higher", 0.0, against="value"),
    ],
    diagnosis="Measured in the same runs: at test batch 64 the entropy rule picks h_all for every target batch, so "
    "DRM's target accuracy is that of the pooled head trained beside the domain heads, level with ERM "
    "within the interval; per-sample selection at batch 1 sometimes picks a domain head whose rotation is "
    "further from the target and loses a little more, while on the source domains each domain's own head "
    "matches ERM. Online steering with the card's assumed update (pseudo-label at confidence 0.5, one SGD "
    "step per sample; the paper's update is not public) collapses the stream onto one class and lowers "
    "accuracy on the hardest split (steer_gain_hard). With four small rotated-digit domains and a shared "
    "featurizer the domain-specific hypotheses are not different enough from the pooled one for selection "
    "to pay.",
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    threads=1,
    notes="Deviations from the card, for the CPU budget: 500 steps instead of 1,500 (the training loss has long "
    "converged by then and training-domain validation picks the checkpoint) and 5 seeds instead of 3; all four "
    "leave-one-rotation-out splits run. What was learnt while building it (one full-tier seed and the quick tier, "
    "not evidence): the card's steering assumption -- one SGD step on the whole featurizer and the selected head "
    "per sample, on a pseudo-label of confidence >= 0.5 -- collapses the stream onto one class at the training rate: "
    "the trained heads are over-confident, so nearly every sample passes the threshold (steer_updated_frac), a "
    "single sample's gradient on the GroupNorm CNN is large, and wrong pseudo-labels confirm themselves "
    "(steer_top_class_frac near 1 where 0.1 is balanced); the 100x smaller rate of the in-run sweep "
    "(steer_gain_hard@steer_lr=1e-05) loses less but did not gain. The official adaptation code instead updates "
    "only the heads with Adam, which is not built. With batches of 64 the entropy rule kept choosing h_all "
    "(target_acc_h_all equals target_acc_b64), so at that batch size DRM's target accuracy is that of h_all on "
    "the featurizer the multi-head loss trained.",
)
