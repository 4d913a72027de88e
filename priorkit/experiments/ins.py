"""INS vs naive instance MIL and gated-attention MIL (ABMIL) on digits-as-MIL (card: prototypes-fewshot-ood.md).

Data (card): digits split into disjoint train/test pools; the positive digit class against the rest; bags of
instances, positive bags hold a few positives; training and test bags, half positive (instances are reused across
bags because the bags exceed a pool, see :mod:`priorkit.data.mil`).

Models, same data, seeds and epochs (every setting is in :class:`Config`, ``QUICK`` and ``FULL``, which the
report prints):
- INS: MLP encoder, 2-way classifier, low-dim projection, queue, prototype phase from ``prot_start`` (bag step in
  the warm-up epochs), SGD, phi schedule, bag score = mean p(pos). Views: :func:`priorkit.prototypes.ins.noise_views`
  (assumption).
- naive (the baseline of the checks): the same encoder + 2-way classifier, CE with each instance taking its
  bag's label, same views, optimizer, batch and epochs.
- ABMIL (Ilse et al. 2018, gated attention): the same encoder, gated attention (tanh x sigmoid) -> 1, bag
  classifier on the attention-pooled feature, BCE, one bag per step, Adam (the ABMIL paper's optimizer), same
  epochs. Instance scores = attention weights (as in the card), bag score = bag probability.

Rule, fixed before the first run (card's "Expected"): INS instance AUC >= naive + 0.05; INS instance AUC >=
ABMIL + 0.02 ("a clear margin"); INS bag AUC >= ABMIL - 0.02 ("on par or better"). The ABMIL comparisons are
the method-side metrics ``instance_auc_gain_vs_abmil`` and ``bag_auc_gain_vs_abmil`` checked against fixed values.

What the runs taught (the figures are in the committed ``results/ins.json`` and ``results/report.md``): the
ABMIL instance-AUC rule holds by a wide margin (attention weights are poor instance scores), but the naive rule
and the bag-AUC rule do not reproduce. Why, as far as diagnosed:

- digits-9 is easy, so the naive learner (instance label = bag label) already ranks instances almost perfectly:
  its score is monotone in p(9 | x) when negatives look alike in both bag types. There is no room for +5 points.
- INS is unstable at this scale. At ``prot_start`` the classifier's targets for positive-bag instances drop from
  the warm-up [0, 1] to the uniform [0.5, 0.5]. Within the first main-phase epoch the masked argmax of
  p(pos) falls below 0.5 for almost every instance. SupCon then has a single pseudo-class and drives the
  projection to one point (the contrastive loss sits at log(N - 1), the value of fully collapsed features), the
  two prototypes merge, and the confidences drift to "neg", so the instance AUC falls well below its value at
  the end of warm-up. A key encoder with the paper's moco_m barely moves in the run's few steps; a smaller
  moco_m was tried as a diagnosis and still collapsed. The paper starts from an ImageNet-pretrained ResNet-18
  whose features separate the classes before the prototype phase; a small MLP after a few warm-up epochs does
  not. The collapse is seed-dependent (bistable): probes on collapsing seeds showed the prototypes merging within
  the first main-phase epoch, after which the confidences of true positives decay towards "neg" exactly like
  those of the negatives in positive bags.

Measured ablations (``ablations``, full budget): ``prot_start_15`` (the card's CIFAR-10-MIL warm-up length, the
key hyperparameter) and ``no_supcon`` (``loss_weight = 0``: no contrastive term, which isolates SupCon as the
driver of the collapse). Both keep the prototypes apart and the instance AUC at the naive level on seeds
where the main config collapses; neither can clear the naive + 0.05 rule, whose headroom the naive baseline
leaves no room for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from priorkit.baselines.mil import GatedABMIL, abmil_recipe, eval_abmil, naive_recipe
from priorkit.core.seeding import seed_everything
from priorkit.data.mil import MILBags, mil_digits
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.prototypes.ins import INS, INSHook, evaluate, mlp_encoder, noise_views
from priorkit.train import TrainConfig, fit


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it); the INS settings are its ``small`` preset."""

    epochs: int = 40
    batch_size: int = 64
    positive_classes: tuple[int, ...] = (9,)
    num_bags: tuple[int, int] = (100, 100)  # training, test bags
    bag_size: int = 20
    positives_per_bag: tuple[int, int] = (2, 4)
    pool_test: float = 0.5  # test fraction of the train/test instance pools
    hidden: int = 128  # MLP encoder 64 -> hidden
    low_dim: int = 32
    queue_size: int = 512
    moco_m: float = 0.999
    proto_m: float = 0.9
    temperature: float = 0.07
    lr: float = 0.01  # INS and naive: SGD
    momentum: float = 0.9
    weight_decay: float = 1e-3
    prot_start: int = 5
    phi_range: tuple[float, float] = (0.95, 0.8)
    loss_weight: float = 0.5
    w_l: float = 0.5
    bag_head: str = "mean_prob"
    aggregator: str = "mean"
    bag_batch: int = 1
    abmil_attn_dim: int = 64
    abmil_lr: float = 5e-4  # Adam, one bag per step
    abmil_weight_decay: float = 1e-4


FULL = Config()
QUICK = Config(epochs=20)


def train_abmil(bags: MILBags, seed: int, c: Config) -> GatedABMIL:
    seed_everything(seed)
    model = GatedABMIL(mlp_encoder(bags.x[0].numel(), c.hidden), feature_dim=c.hidden, attn_dim=c.abmil_attn_dim)
    recipe = abmil_recipe(bags, c.epochs, lr=c.abmil_lr, weight_decay=c.abmil_weight_decay)
    fit(model, None, recipe, config=TrainConfig(batch_size=1, seed=seed, progress=False))
    return model


def train_naive(bags: MILBags, seed: int, c: Config) -> nn.Module:
    seed_everything(seed)
    model = nn.Sequential(mlp_encoder(bags.x[0].numel(), c.hidden), nn.Linear(c.hidden, 2))
    rec = naive_recipe(c.epochs, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, views=noise_views)
    cfg = TrainConfig(batch_size=c.batch_size, seed=seed, drop_last=True, progress=False)
    fit(model, bags.instance_dataset(), rec, config=cfg)
    return model.eval()


def train_ins(bags: MILBags, seed: int, c: Config) -> tuple[INS, list[dict[str, float]]]:
    seed_everything(seed)
    model = INS(
        mlp_encoder(bags.x[0].numel(), c.hidden), feature_dim=c.hidden, low_dim=c.low_dim,
        queue_size=c.queue_size, moco_m=c.moco_m, proto_m=c.proto_m, temperature=c.temperature,
    )  # fmt: skip
    hook = INSHook(
        bags, epochs=c.epochs, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, prot_start=c.prot_start,
        phi_range=c.phi_range, loss_weight=c.loss_weight, w_l=c.w_l, bag_head=c.bag_head, aggregator=c.aggregator,
        bag_batch=c.bag_batch,
    )  # fmt: skip
    hist = fit(model, None, hook.recipe(), hooks=[hook], config=TrainConfig(batch_size=c.batch_size, seed=seed,
                                                                            progress=False))  # fmt: skip
    return model.eval(), [h for h in hist if str(h.get("phase", "")).startswith("instance")]


def run(seed: int, c: Config) -> SeedResult:
    data = mil_digits(
        positive_classes=c.positive_classes, num_bags=c.num_bags, bag_size=c.bag_size,
        positives_per_bag=c.positives_per_bag, test=c.pool_test, seed=seed,
    )  # fmt: skip
    ins_model, history = train_ins(data.train, seed, c)
    meth = evaluate(ins_model, data.test)
    meth["bag_auc_max"] = evaluate(ins_model, data.test, "max")["bag_auc"]
    naive = evaluate(train_naive(data.train, seed, c), data.test)
    abmil = eval_abmil(train_abmil(data.train, seed, c), data.test)
    meth["instance_auc_gain_vs_abmil"] = meth["instance_auc"] - abmil["instance_auc"]
    meth["bag_auc_gain_vs_abmil"] = meth["bag_auc"] - abmil["bag_auc"]
    base = dict(naive) | {f"abmil_{k}": v for k, v in abmil.items()}
    curves = {"cls": [h["cls"] for h in history], "cont": [h["cont"] for h in history]}
    return {"method": meth, "baseline": base, "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    names = ["naive", "ABMIL", "INS"]
    for j, metric in enumerate(("instance_auc", "bag_auc")):
        vals = [
            [r["baseline"][metric] for r in results],
            [r["baseline"][f"abmil_{metric}"] for r in results],
            [r["method"][metric] for r in results],
        ]
        means = [sum(v) / len(v) for v in vals]
        ax[j].bar(names, means, color=["#999", "#69c", "#c63"])
        for i, v in enumerate(vals):
            ax[j].scatter([i] * len(v), v, color="k", s=8, zorder=3)
        ax[j].set_ylim(0.5, 1.0)
        ax[j].set_title(metric.replace("_", " "))
    fig.tight_layout()
    path = outdir / "ins_auc.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="ins",
    claim="Higher instance AUC than naive instance MIL (>= 5 points) and gated-attention MIL, with bag AUC on par "
    "with or better than attention MIL",
    setup="digits-as-MIL (one positive digit class), training and test bags with a few positives each; MLP "
    "encoder; INS, naive instance CE and gated ABMIL on the same data, seeds and epochs",
    method_name="INS (prototype pseudo-labels + SupCon)",
    baseline_name="naive instance CE (bag label copied); ABMIL reported as abmil_*",
    checks=[
        Check("instance_auc", "higher", 0.05),
        Check("instance_auc_gain_vs_abmil", "higher", 0.02, against="value"),
        Check("bag_auc_gain_vs_abmil", "higher", -0.02, against="value"),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    threads=1,
    ablations={
        # the warm-up length before the prototype phase (the card's CIFAR-10-MIL recipe uses 15)
        "prot_start_15": {"prot_start": 15},
        # no contrastive term (MoCo in the warm-up, SupCon after): isolates SupCon's collapse onto one pseudo-class
        "no_supcon": {"loss_weight": 0.0},
    },
    diagnosis="Two causes. First, no headroom: digit 9 is easy, and the naive learner (instance label = bag "
    "label) already ranks instances almost perfectly (the baseline's instance_auc is within a few points of 1), "
    "so the card's margin of five points over it cannot be met by any method here, even where INS works. "
    "Second, INS collapses on some seeds (hence the wide spread of instance_auc over seeds, which also makes the "
    "gains over ABMIL noisy): when the prototype phase starts, the positive-bag targets drop to uniform, the "
    "classifier's masked argmax labels almost every instance negative, SupCon then has a single pseudo-class "
    "and pulls the projections to one point, the two prototypes merge and the confidences of true positives drift to "
    "negative. Both ablations remove the collapse: a longer warm-up (prot_start_15, the card's CIFAR-10-MIL "
    "value) and no contrastive term (no_supcon) bring INS to the naive level and its bag AUC close to ABMIL's, "
    "but not five points above naive.",
    seeds=5,
    quick_seeds=2,
    plot=plot,
)
