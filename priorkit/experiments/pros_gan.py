"""ProS-GAN vs a DHTA-style targeted PGD attack on a DPSH hashing model (card: prototypes-fewshot-ood.md,
"Small-scale check on CPU").

Data: load_digits (8x8, flattened, [0, 1]); database = the training digits, queries = the first test digits,
each with a random target class (seeded). Target model: DPSH-style MLP (tanh codes), trained, then frozen.
ProS-GAN at the card's CPU scale: PrototypeNet label -> hidden -> feature (hash head to the code bits,
classifier to the classes), MLP generator with a label map concatenated to the image, spectrally normalised MLP
discriminator with classes + 1 outputs; D every 3rd step. Baseline: DHTA-style PGD towards the anchor code
(sign of the summed target-class database codes). "No attack" (the clean queries' codes against the random
targets) is reported as ``clean_t_map``. Every setting is in :class:`Config` (``QUICK`` and ``FULL``), which the
report prints.

Deciding run, at the card's settings and a matched perturbation budget: ProS-GAN with the card's alpha_rec = 50,
PGD with the card's L-inf eps = 0.1 (on [0, 1]) and 100 steps, and ProS-GAN's output projected onto the same
L-inf ball around the query (ProS-GAN has no L-inf bound of its own; the unprojected attack is reported as
``t_map_unprojected`` / ``linf_unprojected``). The learning rates are 10x the card's (PrototypeNet, G, D) because
the training budgets are ~100x shorter than the paper's (G: half its epochs at constant lr, half linear decay);
that is a budget setting, not a perturbation one. Timing is milliseconds per query on one thread (ProS-GAN:
PrototypeNet + G forward + projection; PGD: its forward/backward passes of F), so it varies with the machine's load.

Rule, from the card's "Expected. ProS-GAN t-MAP is far above no-attack (about 0.1) and in the same range as PGD,
with roughly 100x less time per query": t-MAP within 0.15 of PGD's (or above), at least 0.3 above no attack, and
at least 10x less time per query. The card's 100x is not the rule: at these MLP sizes one ProS-GAN pass costs
about a tenth of PGD's 100 forward/backward passes in multiply-adds (computed in ``notes``), so 100x could only
come from per-call overheads, not from the method; the time rule (unchanged) asks for about that compute ratio.

Former rule (kept as ``former_checks``, measured on the ``*@rescaled`` metrics): the same three checks at settings
rescaled after a calibration at the card's settings - ProS-GAN alpha_rec = 10, unprojected, against PGD at
eps = 0.2 - where ProS-GAN's perturbation was larger than the PGD baseline's it beat.

What was learnt (the calibration behind the former settings): on 8x8 digits PGD at the card's eps = 0.1 reaches a
much lower t-MAP than at eps = 0.2, and ProS-GAN at alpha_rec = 50 barely moves the codes, so the card's settings
are much harder for both attacks than the rescaled ones; a comparison at unequal perturbation favours whichever
attack perturbs more, hence the matched L-inf budget of the deciding run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from priorkit.core.seeding import seed_everything
from priorkit.data import load_digits
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.hashing import mean_average_precision, targeted_success_rate
from priorkit.prototypes.pros_gan import (
    HashMLP,
    ProSGAN,
    anchor_code,
    dpsh_recipe,
    pgd_targeted_attack,
    pros_gan_recipe,
)
from priorkit.train import TrainConfig, Trainer

C = 10  # digit classes


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    bits: int = 16  # target hash code length
    hash_hidden: int = 128  # DPSH target MLP 64-hidden-bits
    hash_epochs: int = 30
    hash_batch_size: int = 128
    n_queries: int = 300  # first test digits attacked
    proto_hidden: int = 256  # PrototypeNet hidden width
    feat_dim: int = 64  # PrototypeNet feature width
    gen_hidden: int = 256  # generator / discriminator hidden width
    rec_weight: float = 50.0  # alpha_rec, the card's (the paper's NUS-WIDE / MS-COCO value)
    prototype_steps: int = 3000
    prototype_lr: float = 1e-3  # card: 1e-4 over ~10x more steps
    gan_epochs: int = 30  # half at constant lr, half linear decay
    gan_lr: float = 1e-3  # card: 1e-4 over ~30x more steps
    eps: float = 0.1  # L-inf budget of both attacks on [0, 1] (card: PGD eps 0.1); ProS-GAN is projected onto it
    pgd_steps: int = 100
    # the former rule's rescaled settings (reported as *@rescaled, not deciding)
    former_rec_weight: float = 10.0
    former_pgd_eps: float = 0.2


FULL = Config()
QUICK = Config(prototype_steps=600, gan_epochs=12)


def _measure(att: ProSGAN, x_adv, x, targets, db_codes, db_labels, true_labels, seconds) -> dict[str, float]:
    codes = att.codes(x_adv)
    t_map = mean_average_precision(codes, db_codes, targets, db_labels)
    return {
        "t_map": t_map,
        "success_rate": targeted_success_rate(codes, db_codes, targets, db_labels, k=10),
        "true_map": mean_average_precision(codes, db_codes, true_labels, db_labels),
        "rmse": float((x_adv - x).pow(2).mean().sqrt()),
        "linf": float((x_adv - x).abs().amax(dim=1).mean()),  # mean over queries of the per-query L-inf
        "log10_ms_per_query": math.log10(max(1e-6, 1000 * seconds / len(x))),
    }


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_adv`` moved onto the L-inf ball of radius ``eps`` around ``x`` (and [0, 1]): the PGD baseline's budget."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)


def _gan_attack(hash_model, data, targets, c: Config, *, rec_weight: float, seed: int, eps: float | None = None):
    seed_everything(seed)
    att = ProSGAN(
        hash_model, data.train.x.shape[1], C, proto_hidden=c.proto_hidden, feat_dim=c.feat_dim, hidden=c.gen_hidden,
        rec_weight=rec_weight,
    )  # fmt: skip
    epochs = c.gan_epochs
    recipe = pros_gan_recipe(
        att, data.train.x, data.train.y, steps=c.prototype_steps, prototype_lr=c.prototype_lr,
        epochs=epochs - epochs // 2, decay_epochs=epochs // 2, lr=c.gan_lr,
    )  # fmt: skip
    Trainer(att, None, recipe=recipe, config=TrainConfig(seed=seed, progress=False)).fit()
    x = data.test.x[: c.n_queries]
    start = time.perf_counter()
    x_gan = att.attack(x, targets)
    x_adv = x_gan if eps is None else project_linf(x_gan, x, eps)
    return att, x_adv, x_gan, time.perf_counter() - start


def _pgd(hash_model, x, anchors, eps: float, steps: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    x_pgd = pgd_targeted_attack(hash_model, x, anchors, eps=eps, steps=steps)
    return x_pgd, time.perf_counter() - start


def run(seed: int, c: Config) -> SeedResult:
    data = load_digits(seed=seed)
    seed_everything(seed)
    hash_model = HashMLP(data.train.x.shape[1], c.bits, hidden=c.hash_hidden)
    cfg = TrainConfig(batch_size=c.hash_batch_size, seed=seed, progress=False)
    Trainer(hash_model, data.train, recipe=dpsh_recipe(hash_model, epochs=c.hash_epochs), config=cfg).fit()
    x, y = data.test.x[: c.n_queries], data.test.y[: c.n_queries]
    targets = torch.randint(C, (len(x),), generator=torch.Generator().manual_seed(seed + 1000))
    # the deciding run: the card's alpha_rec, both attacks inside the card's L-inf eps
    att, x_adv, x_gan, sec = _gan_attack(hash_model, data, targets, c, rec_weight=c.rec_weight, seed=seed, eps=c.eps)
    db_codes, db_labels = att.codes(data.train.x), data.train.y
    clean_codes = att.codes(x)
    clean = {
        "clean_t_map": mean_average_precision(clean_codes, db_codes, targets, db_labels),
        "clean_map": mean_average_precision(clean_codes, db_codes, y, db_labels),
    }
    method = _measure(att, x_adv, x, targets, db_codes, db_labels, y, sec)
    method["t_map_gain"] = method["t_map"] - clean["clean_t_map"]
    method["prototype_t_map"] = mean_average_precision(
        att.prototype_code(torch.arange(C)), db_codes, torch.arange(C), db_labels
    )
    unprojected = _measure(att, x_gan, x, targets, db_codes, db_labels, y, sec)
    method.update({f"{k}_unprojected": unprojected[k] for k in ("t_map", "rmse", "linf")})
    anchors = anchor_code(db_codes, F.one_hot(db_labels, C), F.one_hot(targets, C))
    x_pgd, pgd_sec = _pgd(hash_model, x, anchors, c.eps, c.pgd_steps)
    baseline = _measure(att, x_pgd, x, targets, db_codes, db_labels, y, pgd_sec)
    baseline["t_map_gain"] = baseline["t_map"] - clean["clean_t_map"]
    baseline.update(clean)
    # the former rule's rescaled settings: a smaller alpha_rec, unprojected, against PGD at a larger eps
    att_r, xa_r, _, sec_r = _gan_attack(hash_model, data, targets, c, rec_weight=c.former_rec_weight, seed=seed)
    x_pgd_r, pgd_sec_r = _pgd(hash_model, x, anchors, c.former_pgd_eps, c.pgd_steps)
    for side, res in (
        (method, _measure(att_r, xa_r, x, targets, db_codes, db_labels, y, sec_r)),
        (baseline, _measure(att_r, x_pgd_r, x, targets, db_codes, db_labels, y, pgd_sec_r)),
    ):
        res["t_map_gain"] = res["t_map"] - clean["clean_t_map"]
        side.update({f"{k}@rescaled": res[k] for k in ("t_map", "t_map_gain", "rmse", "linf", "log10_ms_per_query")})
    return {"method": method, "baseline": baseline}


def linear_macs(module: torch.nn.Module) -> int:
    """Multiply-adds of one forward pass of a module's linear layers for one input row."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


def _cost_note(c: Config) -> str:
    """The multiply-add ratio of PGD to one ProS-GAN pass at this config's sizes (so it cannot go stale)."""
    att = ProSGAN(HashMLP(64, c.bits, hidden=c.hash_hidden), 64, C, bits=c.bits, proto_hidden=c.proto_hidden,
                  feat_dim=c.feat_dim, hidden=c.gen_hidden)  # fmt: skip
    gan = linear_macs(att.prototype_net) + linear_macs(att.generator)
    pgd = c.pgd_steps * 2 * linear_macs(att.hash_model)  # a forward and an input-gradient backward per step
    return (
        f"Cost per query in multiply-adds: ProS-GAN {gan} (PrototypeNet + generator), PGD {pgd} ({c.pgd_steps} "
        f"steps of a forward and a backward through F), a ratio of {pgd / gan:.1f}: the card's 'roughly 100x less "
        "time per query' cannot come from the method at these sizes, so the time rule asks for 10x, about that "
        "ratio (the measured times also carry the per-call overheads of PGD's sequential steps)."
    )


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.9))
    for ax, key in zip(axes, ("t_map", "rmse", "log10_ms_per_query")):
        vals = [[r["baseline"][key] for r in results], [r["method"][key] for r in results]]
        ax.boxplot(vals, tick_labels=["PGD (DHTA)", "ProS-GAN"])
        ax.set_title(key)
    axes[0].axhline(sum(r["baseline"]["clean_t_map"] for r in results) / len(results), color="0.5", ls="--", lw=1)
    fig.tight_layout()
    path = outdir / "pros_gan_metrics.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="pros_gan",
    claim="One-pass targeted attack at the card's alpha_rec with t-MAP in PGD's range at the same L-inf budget, far "
    "above no attack, >= 10x faster per query",
    setup=(
        "digits 8x8 flattened, DPSH MLP hashing target; ProS-GAN at MLP scale (alpha_rec 50) vs DHTA-style targeted "
        "PGD (eps 0.1, 100 steps), ProS-GAN projected onto the same L-inf ball; the former rescaled settings are "
        "reported as *@rescaled"
    ),
    method_name="ProS-GAN",
    baseline_name="DHTA-style PGD (anchor code)",
    checks=[
        Check("t_map", "higher", -0.15),
        Check("t_map_gain", "higher", 0.3, against="value"),
        Check("log10_ms_per_query", "lower", 1.0),
    ],
    former_checks=[
        Check("t_map@rescaled", "higher", -0.15),
        Check("t_map_gain@rescaled", "higher", 0.3, against="value"),
        Check("log10_ms_per_query@rescaled", "lower", 1.0),
    ],
    former_note="The former rule compared ProS-GAN at alpha_rec = 10 (no L-inf bound) with PGD at eps = 0.2, settings "
    "rescaled after the card's failed, where ProS-GAN perturbed more than the PGD it beat; the rule now compares "
    "them at the card's alpha_rec = 50 and eps = 0.1, ProS-GAN projected onto PGD's L-inf ball.",
    diagnosis="At the card's settings and PGD's L-inf budget, ProS-GAN's targeted mAP barely moves from no attack "
    "(t_map_gain), while PGD's does: the card's reconstruction weight keeps the generator's perturbation small (rmse "
    "below PGD's) and the unprojected output (t_map_unprojected, linf_unprojected) is no stronger, so the L-inf "
    "projection is not what removes the effect. The former rescaled run (the @rescaled metrics, kept as former "
    "rules) reaches and passes PGD's t-MAP only with more than twice the L-inf of the PGD it is compared with. "
    "The speed claim holds (one generator pass vs iterative PGD).",
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    notes="MLP-scale generator/discriminator on flattened 8x8 digits instead of the 224x224 conv networks. "
    + _cost_note(FULL),
)
