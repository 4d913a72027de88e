"""ProtoGCD: the card's property tests, loop-vs-vectorised equalities, OOD scores, the trainer, and errors."""

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

import priorkit.prototypes.protogcd as pg
from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.ood import shift_noise_views
from priorkit.experiments.protogcd import semi_supervised_kmeans
from priorkit.metrics.clustering import cluster_acc
from priorkit.models import MLP
from priorkit.nn.contrastive import info_nce
from priorkit.nn.contrastive import supcon_views as supcon
from priorkit.prototypes.protogcd import (
    SPEC,
    ProtoGCD,
    ProtoGCDRecipe,
    balanced_indices,
    dapl_loss,
    dapl_targets,
    entropy_regularization,
    ood_score,
    param_groups,
    protogcd_loss,
    prototype_separation,
    ratio_schedule,
)
from priorkit.train import TrainConfig, fit
from priorkit.train.distributed import run_gloo


def test_docstring_example_runs():
    res = doctest.testmod(pg)
    assert res.attempted > 0 and res.failed == 0


def test_prototypes_unit_norm_inside_forward_and_logits_are_cosines():
    torch.manual_seed(0)
    model = ProtoGCD(MLP(10, (16,), 3), 5, proj_dims=(8, 4))
    with torch.no_grad():
        model.head.prototype_layer.weight.mul_(7.0)  # the raw weights' norm must not matter
    x = torch.randn(6, 10)
    proj, logits, protos = model(x)
    assert torch.allclose(protos.norm(dim=1), torch.ones(5), atol=1e-6)
    u = model.features(x)
    assert torch.allclose(
        logits, F.cosine_similarity(u[:, None], model.head.prototype_layer.weight[None], dim=2), atol=1e-5
    )
    assert proj.shape == (6, 4) and logits.abs().max() <= 1 + 1e-6


def test_entropy_regularization_zero_uniform_logk_collapsed():
    k = 6
    uniform = torch.zeros(10, k)
    assert abs(float(entropy_regularization(uniform))) < 1e-6
    collapsed = torch.zeros(10, k)
    collapsed[:, 2] = 100.0
    assert abs(float(entropy_regularization(collapsed)) - math.log(k)) < 1e-5
    balanced = torch.eye(k).repeat(2, 1) * 100.0  # every sample confident, classes balanced -> mean uniform
    assert abs(float(entropy_regularization(balanced))) < 1e-5


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_dapl_exactly_floor_rB_rows_one_hot(ratio):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(13, 5, generator=g) * 0.3
    t = dapl_targets(logits, ratio, tau_t=0.05)
    one_hot = ((t == 1.0).sum(1) == 1) & ((t == 0.0).sum(1) == 4)
    assert int(one_hot.sum()) == int(13 * ratio)
    assert torch.allclose(t.sum(1), torch.ones(13), atol=1e-6)
    # the one-hot rows are the most confident by the top-1 / top-2 ratio
    p = F.softmax(logits / 0.05, dim=1).topk(2).values
    conf = p[:, 0] / (p[:, 1] + 1e-6)
    if 0 < int(13 * ratio) < 13:
        assert conf[one_hot].min() >= conf[~one_hot].max()


def test_dapl_loss_equals_loop_and_skips_same_view():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 4, generator=g).requires_grad_(True)
    got = dapl_loss(logits, 0.5, n_views=2, tau=0.1, tau_t=0.05)
    v = logits.detach().chunk(2)
    t = [dapl_targets(x, 0.5, 0.05) for x in v]
    ref = 0.0
    for w, s in ((0, 1), (1, 0)):
        ref += float(-(t[w] * F.log_softmax(v[s] / 0.1, dim=1)).sum(1).mean())
    assert abs(float(got.detach()) - ref / 2) < 1e-5
    (grad,) = torch.autograd.grad(got, logits)
    assert grad.abs().sum() > 0


def test_ratio_schedule_linear():
    sched = [ratio_schedule(e, 200, 0.0, 1.0, ramp=100) for e in range(200)]
    assert sched[0] == 0.0 and abs(sched[99] - 1.0) < 1e-12 and sched[150] == 1.0
    assert all(abs(sched[e] - e / 99) < 1e-12 for e in range(100))
    assert ratio_schedule(3, 20, 0.2, 1.0, ramp=10, wait=5) == 0.0
    assert abs(ratio_schedule(5, 20, 0.2, 1.0, ramp=10, wait=5) - 0.2) < 1e-12
    with pytest.raises(PriorkitError, match="must cover"):
        ratio_schedule(0, 50, ramp=100)
    with pytest.raises(PriorkitError, match="epoch must lie in"):
        ratio_schedule(200, 200)


def test_pushing_prototypes_apart_lowers_separation():
    g = torch.Generator().manual_seed(3)
    p = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    close = p.clone()
    close[1] = F.normalize(p[0] + 0.05 * p[1], dim=0)
    assert prototype_separation(p) < prototype_separation(close)
    # loop definition
    k, ref = 5, 0.0
    for i in range(k):
        ref += math.log(sum(math.exp(float(p[i] @ p[j]) / 0.1) for j in range(k) if j != i) / (k - 1))
    assert abs(float(prototype_separation(p)) - ref / k) < 1e-5


def test_info_nce_and_supcon_equal_loops():
    g = torch.Generator().manual_seed(4)
    f = torch.randn(8, 5, generator=g)
    n = F.normalize(f, dim=1)
    ref = 0.0
    for i in range(8):
        pos = (i + 4) % 8
        den = sum(math.exp(float(n[i] @ n[j])) for j in range(8) if j != i)
        ref += -(float(n[i] @ n[pos]) - math.log(den))
    assert abs(float(info_nce(f, 2, 1.0)) - ref / 8) < 1e-5
    feats = torch.randn(4, 2, 5, generator=g)
    lab = torch.tensor([0, 1, 0, 2])
    a = F.normalize(torch.cat(feats.unbind(1)), dim=1)
    la = lab.repeat(2)
    ref = 0.0
    for i in range(8):
        den = sum(math.exp(float(a[i] @ a[j]) / 0.07) for j in range(8) if j != i)
        pos = [j for j in range(8) if j != i and la[j] == la[i]]
        ref += -sum(float(a[i] @ a[j]) / 0.07 - math.log(den) for j in pos) / len(pos)
    assert abs(float(supcon(feats, lab)) - ref / 8) < 1e-4


def test_total_loss_weights_and_contrastive_objective():
    torch.manual_seed(5)
    model = ProtoGCD(MLP(10, (16,), 3), 4, proj_dims=(8, 6))
    x = torch.randn(6, 10)
    proj, logits, protos = model(torch.cat([x, x + 0.05]))
    y = torch.tensor([0, 1, 0, 3, 3, 3])
    lab = torch.tensor([True, True, True, False, False, False])
    t = protogcd_loss(proj, logits, protos, y, lab, ratio=0.5, lam=0.35, w_ent=2.0, w_sep=0.1)
    ce = F.cross_entropy(logits[lab.repeat(2)] / 0.1, y.repeat(2)[lab.repeat(2)])
    assert torch.allclose(t["cls"], 0.35 * ce)
    assert torch.allclose(t["ent"], 0.65 * 2.0 * entropy_regularization(logits))
    assert torch.allclose(t["sep"], 0.65 * 0.1 * prototype_separation(protos))
    c = protogcd_loss(proj, logits, protos, y, lab, ratio=0.5, objective="contrastive")
    assert sorted(c) == ["sup", "unsup"] and torch.allclose(c["unsup"], t["unsup"])


def test_ood_scores_rank_confident_above_uniform():
    conf = torch.tensor([[0.9, 0.1, 0.0]])
    flat = torch.tensor([[0.3, 0.3, 0.3]])
    for kind in ("msp", "energy", "max_logit", "proto"):
        assert ood_score(conf, kind) > ood_score(flat, kind), kind
    with pytest.raises(PriorkitError, match="kind must be one of"):
        ood_score(conf, "odin")


def test_hungarian_accuracy_invariant_to_permuting_predictions():
    g = torch.Generator().manual_seed(6)
    y = torch.randint(0, 6, (200,), generator=g)
    pred = torch.where(torch.rand(200, generator=g) < 0.7, y, torch.randint(0, 6, (200,), generator=g))
    perm = torch.randperm(6, generator=g)
    assert cluster_acc(y, pred) == cluster_acc(y, perm[pred])


def test_balanced_sampler_and_param_groups():
    lab = torch.tensor([True] * 10 + [False] * 90)
    idx = balanced_indices(lab, torch.Generator().manual_seed(0))
    frac = float(lab[idx].float().mean())
    assert len(idx) == 100 and 0.35 < frac < 0.65
    model = ProtoGCD(MLP(10, (16,), 3), 4, proj_dims=(8, 6))
    decay, no_decay = param_groups(model, 5e-5)
    assert all(p.dim() > 1 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def _aug(t, gen):
    return shift_noise_views(t, gen, sigma=0.05)


def _gcd_data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 4
    x = 2.0 * torch.randn(4, 16, generator=g)[y] + 0.4 * torch.randn(48, 16, generator=g)
    lab = (y < 2) & (torch.arange(48) % 8 < 4)
    return x, y, lab


def _gcd_run(out=None, tmp=None, stop=None, resume=False):
    torch.set_num_threads(1)
    x, y, lab = _gcd_data()
    torch.manual_seed(0)
    model = ProtoGCD(MLP(16, (32,), 4), 4, proj_dims=(16, 8))
    strategy = "ddp_find_unused_parameters_true" if torch.distributed.is_initialized() else "auto"
    cfg = TrainConfig(batch_size=16, seed=1, progress=False, strategy=strategy, ckpt_dir=str(tmp) if tmp else None,
                      stop_after_epoch=stop)  # fmt: skip
    fit(model, IndexedTensorDataset(x, y), ProtoGCDRecipe(lab, epochs=4, ramp=2, augment=_aug), config=cfg,
        resume=resume)  # fmt: skip
    if out is not None:
        torch.save(model.state_dict(), out)
    return model


def _ddp_worker(rank, out):
    _gcd_run(out if rank == 0 else None)


def test_two_process_protogcd_equals_one_process(tmp_path):
    """The batch-level terms (DAPL ranking, entropy of the mean prediction, InfoNCE/SupCon negatives) are
    computed on the gathered global batch: 2 gloo processes give the 1-process parameters within 1e-6."""
    out = str(tmp_path / "ddp.pt")
    run_gloo(_ddp_worker, 2, out)
    single = _gcd_run().state_dict()
    multi = torch.load(out, weights_only=True)
    for k, v in single.items():
        assert torch.allclose(v, multi[k], atol=1e-6), k


def test_resume_is_bit_identical(tmp_path):
    full = _gcd_run().state_dict()
    _gcd_run(tmp=tmp_path, stop=1)
    resumed = _gcd_run(tmp=tmp_path, resume=True).state_dict()
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), k


def test_spec_presets_build_the_recipe():
    assert SPEC.entry == "ProtoGCDRecipe"
    for preset in SPEC.presets.values():
        ProtoGCDRecipe(torch.tensor([True, False]), **preset)


def test_train_protogcd_learns_and_ss_kmeans_pins_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 4
    x = 2.0 * torch.randn(4, 16, generator=g)[y] + 0.4 * torch.randn(120, 16, generator=g)
    lab = (y < 2) & (torch.arange(120) % 8 < 4)
    torch.manual_seed(0)
    model = ProtoGCD(MLP(16, (32,), 4), 4, proj_dims=(16, 8))
    rec = ProtoGCDRecipe(lab, epochs=12, ramp=6, augment=_aug)
    hist = fit(model, IndexedTensorDataset(x, y), rec, config=TrainConfig(batch_size=30, seed=0, progress=False))
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert hist[0]["ratio"] == 0.0 and hist[-1]["ratio"] == 1.0
    assert cluster_acc(y[~lab], model.predict(x[~lab])) > 0.9
    assign = semi_supervised_kmeans(x, lab, y, 4, seed=0)
    assert torch.equal(assign[lab], y[lab])


def test_init_old_prototypes_from_labelled_means():
    torch.manual_seed(0)
    model = ProtoGCD(MLP(10, (16,), 3), 5, proj_dims=(8, 4))
    before = model.head.prototype_layer.weight.clone()
    x, y = torch.randn(12, 10), torch.tensor([0, 1, 2] * 4)
    model.init_old_prototypes(x, y)
    f = model.features(x).detach()
    for c in range(3):
        assert torch.allclose(model.head.prototype_layer.weight[c], f[y == c].mean(0), atol=1e-6)
    assert torch.equal(model.head.prototype_layer.weight[3:], before[3:])
    with pytest.raises(PriorkitError, match="y_labelled must be"):
        model.init_old_prototypes(x, y + 4)


def test_bad_inputs():
    with pytest.raises(PriorkitError, match="objective must be one of"):
        ProtoGCDRecipe(torch.tensor([True, False]), objective="simgcd")
    with pytest.raises(PriorkitError, match="ratio must be in"):
        dapl_targets(torch.randn(4, 3), 1.5)
    with pytest.raises(PriorkitError, match="not a multiple of n_views"):
        dapl_loss(torch.randn(5, 3), 0.5)
    with pytest.raises(PriorkitError, match="labelled must be a boolean"):
        protogcd_loss(
            torch.randn(4, 3),
            torch.randn(4, 3),
            torch.randn(3, 5),
            torch.zeros(2).long(),
            torch.ones(2).long(),
            ratio=0.0,
        )
    with pytest.raises(PriorkitError, match="need labelled and unlabelled"):
        balanced_indices(torch.ones(5, dtype=torch.bool), torch.Generator())
    with pytest.raises(PriorkitError, match="feat_dim is needed"):
        ProtoGCD(torch.nn.Linear(3, 3), 4)
