"""SuSana losses vs ProtoNet cross-entropy on Fashion-MNIST features (card: prototypes-fewshot-ood.md,
"Small-scale check").

Data and backbone: Fashion-MNIST (all 70,000 images pooled, :func:`priorkit.data.load_fewshot`), base classes 0-4
(the classes the zoo backbone ``fmnist_conv_base5`` was pretrained on) and novel classes 5-9, disjoint from them
(checked with :func:`priorkit.zoo.check_disjoint`). The backbone is frozen; its 256-d features are cached on disk
(:func:`priorkit.zoo.extract_features`), so an image goes through it once. SuSana's embedding network is a head
trained on top of those features, the CPU-scale version of episodically fine-tuning the last block of the paper's
ResNet-12 pretrained on the base classes: a residual MLP ``x + W2 relu(W1 x)`` whose last layer starts at zero, so
that episodic training starts from the pretrained embedding (a head initialised at random would start from a random
embedding instead: ablation ``mlp_head``, the card's MLP). Each seed draws ``base_per_class`` training images per
base class (of the seed's base training split, which also holds images the backbone was pretrained on, as in the
paper's two stages) and ``novel_per_class`` images per novel class. The features are divided by one scalar, their
root-mean-square on the base training set (``rms_scale``), so that the scale of the ProtoNet logits does not depend
on the backbone's arbitrary output scale.

Episodic training on the base classes (ProtoNet with squared-Euclidean logits, N-way K-shot episodes, Adam).
Test: the novel classes, N-way episodes at each test shot count with the 95% CI over episodes, and the
silhouette score of the novel embeddings. Compared: CE only (baseline) vs CE + ProtoTriplet + full ICNN
(method); CE + ProtoTriplet is reported beside them when ``Config.ce_prototriplet`` is set (full tier only),
and the same test episodes on the backbone's features without any head beside the baseline
(``*@frozen_features``: whether episodic training on the base classes helps or hurts transfer).
Every setting is in :class:`Config` (``QUICK`` and ``FULL``), which the report prints. Claim (fixed before the
first run, from the card: "the combined loss gives >= CE accuracy with a higher silhouette; the gain is small
and may be within the CI"): 5-shot accuracy >= CE - 0.5 point, and silhouette >= CE's.

Ablations (``Config.backbone`` / ``Config.head`` / ``Config.dataset``): ``random_init`` puts the head on the same
conv architecture randomly initialised (pretrained vs scratch features); ``mlp_head`` trains the card's MLP
(in-hidden-emb_dim) from a random initialisation on the pretrained features; ``digits_pixels`` is the former setup,
that MLP trained from scratch on the 8x8 pixels of scikit-learn digits (base 0-4, novel 5-9), where the averaged
loss (CE is one term of three) trained the ProtoNet objective less than CE alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.metrics import silhouette_score
from torch import nn

from priorkit.core.errors import PriorkitError, check_choice
from priorkit.core.seeding import seed_everything
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.episodes import EpisodeSampler, load_fewshot
from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.metrics.fewshot import fewshot_summary
from priorkit.prototypes.susana import SuSanaRecipe, protonet_logits, prototypes
from priorkit.train import TrainConfig, fit


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    dataset: str = "fashion_mnist"  # or "digits" (the former setup; backbone "pixels" only)
    backbone: str = "fmnist_conv_base5"  # frozen zoo features; "random_init" or "pixels"
    base_classes: int = 5
    base_per_class: int = 1000  # base training images per class drawn each seed (0 = all)
    novel_per_class: int = 500  # novel images per class drawn each seed (0 = all)
    rms_scale: bool = True  # zoo features divided by one scalar: their root-mean-square on the base training set
    head: str = "residual"  # x + MLP(x), last layer zero-initialised; "mlp": in-hidden-emb_dim from scratch
    hidden: int = 128
    emb_dim: int = 64  # head "mlp" only (the residual head keeps the feature dimension)
    n_way: int = 5
    n_shot: int = 5
    n_query: int = 10
    train_episodes: int = 2000
    lr: float = 1e-3
    weight_decay: float = 0.0
    margin: float = 0.5
    k: int = 4
    temperature: float = 1.0
    test_episodes: int = 1000
    test_way: int = 5
    test_shots: tuple[int, ...] = (1, 5)
    test_query: int = 15
    test_seed_offset: int = 1000  # test episodes are drawn from seed + offset
    ce_prototriplet: bool = True  # also train the CE + ProtoTriplet arm (reported as *@ce+prototriplet)


FULL = Config()
QUICK = Config(train_episodes=400, test_episodes=300, ce_prototriplet=False)

ARMS = {
    "baseline": ("cross",),
    "method": ("cross", "prototriplet", "fullicnn"),
    "ce_prototriplet": ("cross", "prototriplet"),
}


DATASETS = {"fashion_mnist": "fashion_mnist_image", "digits": "digits"}  # Config.dataset -> load_fewshot name
ZOO_BACKBONE = "fmnist_conv_base5"
BACKBONES = (ZOO_BACKBONE, "random_init", "pixels")


HEADS = ("residual", "mlp")


class ResidualHead(nn.Module):
    """``x + W2 relu(W1 x)`` with ``W2`` (and its bias) zero-initialised: episodic training starts from the frozen
    backbone's own embedding, as the paper's episodic stage starts from its pretrained ResNet-12."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inner, self.out = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.relu(self.inner(x)))


def _embedding(in_dim: int, c: Config) -> nn.Module:
    check_choice("head", c.head, HEADS)
    if c.head == "residual":
        return ResidualHead(in_dim, c.hidden)
    return nn.Sequential(nn.Linear(in_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, c.emb_dim))


def _subset(data: IndexedTensorDataset, per_class: int, seed: int) -> IndexedTensorDataset:
    """``per_class`` items of each class drawn from ``seed`` (in index order); ``data`` itself when no class has
    more (so the digits setup sees exactly the former data)."""
    counts = torch.bincount(data.y)
    if per_class == 0 or int(counts.max()) <= per_class:
        return data
    g = torch.Generator().manual_seed(seed)
    idx = [
        m[torch.randperm(len(m), generator=g)[:per_class]]
        for m in (torch.nonzero(data.y == k).flatten() for k in range(len(counts)))
    ]
    keep = torch.cat(idx).sort().values
    return IndexedTensorDataset(data.x[keep], data.y[keep])


@torch.no_grad()
def features(x: torch.Tensor, backbone: str, batch_size: int = 512) -> torch.Tensor:
    """``x`` as the embedding head sees it: frozen ``fmnist_conv_base5`` features (pretrained ones cached on disk;
    ``"random_init"``: the same architecture randomly initialised, cached too), or the flattened pixels."""
    check_choice("backbone", backbone, BACKBONES)
    if backbone == "pixels":
        return x.flatten(1).float()
    from priorkit.zoo import extract_features

    return extract_features(ZOO_BACKBONE, x, batch_size=batch_size, pretrained=backbone == ZOO_BACKBONE)


def _data(seed: int, c: Config) -> tuple[IndexedTensorDataset, IndexedTensorDataset]:
    """(base training, novel) sets as features of the configured backbone."""
    check_choice("dataset", c.dataset, tuple(DATASETS))
    check_choice("backbone", c.backbone, BACKBONES)
    if c.dataset == "digits" and c.backbone != "pixels":
        raise PriorkitError(f"backbone must be 'pixels' with dataset 'digits', got {c.backbone!r}")
    data = load_fewshot(DATASETS[c.dataset], base_classes=c.base_classes, seed=seed)
    if c.backbone != "pixels":
        from priorkit.zoo import check_disjoint

        check_disjoint(ZOO_BACKBONE, data.novel_classes, dataset=DATASETS[c.dataset])
    out = []
    for part, per_class, offset in ((data.base_train, c.base_per_class, 0), (data.novel, c.novel_per_class, 1)):
        part = _subset(part, per_class, 2 * seed + offset)
        out.append(IndexedTensorDataset(features(part.x, c.backbone), part.y))
    base, novel = out
    if c.rms_scale and c.backbone != "pixels":
        # one scalar for every feature: the ProtoNet logits' scale stops depending on the backbone's arbitrary output
        # scale (the random-init net's is far smaller); distance ratios, hence nearest-prototype accuracy and the
        # silhouette of the frozen features, are unchanged
        rms = base.x.double().pow(2).mean().sqrt().float()
        base, novel = IndexedTensorDataset(base.x / rms, base.y), IndexedTensorDataset(novel.x / rms, novel.y)
    return base, novel


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: Config, seed: int) -> dict[str, float]:
    emb = model(x)
    out: dict[str, float] = {}
    for shot in c.test_shots:
        accs = []
        episodes = EpisodeSampler(
            y, n_way=c.test_way, n_shot=shot, n_query=c.test_query, n_episodes=c.test_episodes,
            seed=seed + c.test_seed_offset,
        )  # fmt: skip
        for ep in episodes:
            logits = protonet_logits(ep.query(emb), prototypes(ep.support(emb), ep.support_y))
            accs.append(float((logits.argmax(1) == ep.query_y).float().mean()))
        out.update(fewshot_summary(accs, prefix=f"acc_{shot}shot"))
    out["silhouette"] = float(silhouette_score(emb.numpy(), y.numpy()))
    return out


def run(seed: int, c: Config) -> SeedResult:
    base, novel = _data(seed, c)
    res: dict[str, dict[str, float]] = {"method": {}, "baseline": {}}
    # reference beside the baseline: the same test episodes on the frozen features themselves (no head)
    frozen = _evaluate(nn.Identity(), novel.x, novel.y, c, seed)
    res["baseline"].update({f"{k}@frozen_features": v for k, v in frozen.items()})
    for arm, terms in ARMS.items():
        if arm == "ce_prototriplet" and not c.ce_prototriplet:
            continue
        seed_everything(seed)
        model = _embedding(base.x.shape[1], c)
        recipe = SuSanaRecipe(
            terms=terms, margin=c.margin, k=c.k, temperature=c.temperature, n_way=c.n_way, n_shot=c.n_shot,
            n_query=c.n_query, n_episodes=c.train_episodes, lr=c.lr, weight_decay=c.weight_decay,
            seed=seed,
        )  # fmt: skip
        fit(model, base, recipe, config=TrainConfig(seed=seed, progress=False))
        model.eval()
        metrics = _evaluate(model, novel.x, novel.y, c, seed)
        if arm == "ce_prototriplet":
            res["method"].update({f"{k}@ce+prototriplet": v for k, v in metrics.items()})
        else:
            res[arm].update(metrics)
    return res


EXPERIMENT = Experiment(
    id="susana",
    claim="CE + ProtoTriplet + ICNN gives >= ProtoNet-CE few-shot accuracy with a higher silhouette on novel classes",
    setup="Fashion-MNIST, base classes 0-4 / novel classes 5-9; frozen fmnist_conv_base5 features (a conv net "
    "priorkit pretrained on classes 0-4 only) under a residual MLP head whose last layer starts at zero, trained on "
    "base-class episodes (Adam; the CPU-scale version of episodically fine-tuning the pretrained last block), tested "
    "on novel-class episodes and the silhouette of the novel embeddings; the frozen features without a head are "
    "reported beside the baseline",
    method_name="CE + ProtoTriplet + full ICNN",
    baseline_name="ProtoNet cross-entropy",
    checks=[Check("acc_5shot", "higher", -0.005), Check("silhouette", "higher", 0.0)],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    ablations={
        "random_init": {"backbone": "random_init"},
        "mlp_head": {"head": "mlp"},
        "digits_pixels": {"dataset": "digits", "backbone": "pixels", "head": "mlp"},
    },
    diagnosis="The combined loss trails CE alone on both rules, on the pretrained features and in every ablation "
    "(random-init backbone, the card's MLP head, the former digits pixels). The in-run variant without the ICNN term "
    "(*@ce+prototriplet in the metrics table) is level with CE on accuracy and silhouette, so ProtoTriplet neither "
    "helps nor hurts here and the loss of accuracy and cluster quality comes from the ICNN term: it shapes the base "
    "classes' neighbourhoods, and on novel classes seen only at test time that structure does not carry over. The "
    "paper's gain is small and within its own intervals (the card says so), which these 5 seeds resolve as a small "
    "loss instead.",
)
