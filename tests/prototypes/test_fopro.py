"""FoPro: the card's property tests, brute-force checks of the vectorised prototype EMA, DDP and resume."""

import doctest

import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data.webly import make_webly
from priorkit.models import MLP
from priorkit.prototypes import fopro as fp
from priorkit.train import TrainConfig, fit
from priorkit.train.distributed import run_gloo


def _rand(b=12, c=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1)
    protos = F.normalize(torch.randn(c, d, generator=g), dim=1)
    y = torch.randint(0, c, (b,), generator=g)
    few = torch.rand(b, generator=g) < 0.3
    return z, protos, y, few


def test_init_prototypes_are_normalised_class_means():
    z, _, y, _ = _rand(30, 4)
    protos, counts = fp.init_prototypes(z, y, 4)
    for c in range(4):
        want = F.normalize(z[y == c].mean(0), dim=0)
        assert torch.allclose(protos[c], want, atol=1e-6)
        assert counts[c] == (y == c).sum()


def test_ema_matches_sequential_loop_and_stays_unit_norm():
    keys, protos, y, _ = _rand(25, 3, 5, seed=1)
    keep = torch.rand(25, generator=torch.Generator().manual_seed(2)) < 0.7
    mu = 0.9
    new, visits, dist = fp.ema_prototypes(protos, keys, y, keep, mu)
    ref, ref_d = protos.clone(), torch.zeros(3)
    for k, c, m in zip(keys, y, keep):
        if m:
            ref_d[c] += (k - protos[c]).norm()
            ref[c] = mu * ref[c] + (1 - mu) * k
    assert torch.allclose(new, F.normalize(ref, dim=1), atol=1e-6)
    assert torch.allclose(dist, ref_d, atol=1e-6)
    assert torch.equal(visits, torch.bincount(y[keep], minlength=3).float())
    assert torch.allclose(new.norm(dim=1), torch.ones(3), atol=1e-6)


def test_samples_not_kept_never_move_a_prototype():
    keys, protos, y, _ = _rand(20, 4, seed=3)
    keep = y != 2  # class 2 gets no kept sample
    new, _, _ = fp.ema_prototypes(protos, keys, y, keep, 0.5)
    assert torch.allclose(new[2], protos[2], atol=1e-7)
    new, visits, dist = fp.ema_prototypes(protos, keys, y, torch.zeros(20, dtype=torch.bool), 0.5)
    assert torch.allclose(new, protos, atol=1e-7) and visits.sum() == 0 and dist.sum() == 0


@pytest.mark.parametrize("rule", ["ruleA", "relation", "fusion"])
def test_few_shot_samples_are_never_dropped_or_relabelled(rule):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        soft = torch.softmax(3 * torch.randn(40, 5, generator=g), 1)
        rho = torch.rand(40, 5, generator=g)
        y = torch.randint(0, 5, (40,), generator=g)
        few = torch.rand(40, generator=g) < 0.4
        if rule == "ruleA":
            keep, ny = fp.clean_rule_a(soft, y, few, 0.6)
        elif rule == "relation":
            keep, ny = fp.clean_relation(rho, y, few, 0.6)
        else:
            keep, ny = fp.clean_fusion(soft, rho, y, few, 0.6)
        assert keep[few].all() and torch.equal(ny[few], y[few])


def test_rule_a_with_gamma_one_changes_no_label_and_keeps_by_score():
    g = torch.Generator().manual_seed(0)
    soft = torch.softmax(5 * torch.randn(50, 4, generator=g), 1)
    y = torch.randint(0, 4, (50,), generator=g)
    few = torch.zeros(50, dtype=torch.bool)
    keep, ny = fp.clean_rule_a(soft, y, few, 1.0)
    assert torch.equal(ny, y)
    assert torch.equal(keep, soft[torch.arange(50), y] > 0.25)


def test_prototype_logits_margin_only_on_few_shot_true_class_and_density():
    z, protos, y, few = _rand()
    phi = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits, raw = fp.prototype_logits(z, protos, y, few, margin=0.5, temperature=phi)
    sim = z @ protos.t()
    assert torch.allclose(raw, sim / phi)
    diff = (raw - logits) * phi
    want = torch.zeros_like(diff)
    want[few, y[few]] = 0.5
    assert torch.allclose(diff, want, atol=1e-6)


def test_soft_targets_mix_and_one_hot_few_shot_rows():
    z, protos, y, few = _rand()
    h = torch.randn(12, 4)
    s = fp.soft_targets(h, z @ protos.t() / 0.1, y, few, alpha=0.5)
    want = 0.5 * h.softmax(1) + 0.5 * (z @ protos.t() / 0.1).softmax(1)
    assert torch.allclose(s[~few], want[~few], atol=1e-6)
    assert torch.equal(s[few], F.one_hot(y[few], 4).float())


def test_dist_sim_brute_force():
    z, protos, y, _ = _rand()
    got = fp.dist_sim(z, protos, y)
    for i in range(12):
        ref = 0.0
        for c in range(4):
            d = abs(float(protos[y[i]] @ protos[c] - z[i] @ protos[c]))
            ref += 0.5 * d
        assert abs(float(got[i]) - ref) < 1e-5


def test_density_keeps_old_value_for_unvisited_classes():
    phi = fp.density_from_stats(torch.tensor([5.0, 0.0]), torch.tensor([10.0, 0.0]), torch.tensor([0.1, 0.1]))
    assert abs(float(phi[0]) - 5.0 / (10 * torch.log(torch.tensor(20.0)))) < 1e-6 and phi[1] == 0.1


def test_soft_cls_loss_equals_ce_when_scores_are_one():
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss = fp.soft_cls_loss(logits, y, torch.rand(8, 3), torch.ones(8))
    assert torch.allclose(loss, F.cross_entropy(logits, y))


def test_instance_logits_positive_first():
    z, protos, _, _ = _rand()
    logits = fp.instance_logits(z, z, protos, 0.1)
    assert torch.allclose(logits[:, 0], torch.full((12,), 10.0), atol=1e-5)


def test_bad_input_errors():
    with pytest.raises(PriorkitError, match="cleaning"):
        fp.FoProConfig(cleaning="rule_a")
    with pytest.raises(PriorkitError, match="init_epoch <= clean_epoch"):
        fp.FoProConfig(init_epoch=30, clean_epoch=25)
    z, protos, y, few = _rand()
    with pytest.raises(PriorkitError, match="y must lie"):
        fp.clean_rule_a(torch.rand(12, 4), y + 10, few)
    with pytest.raises(PriorkitError, match="bool mask"):
        fp.clean_rule_a(torch.rand(12, 4), y, few.long())
    with pytest.raises(PriorkitError, match="gamma"):
        fp.clean_rule_a(torch.rand(12, 4), y, few, 1.5)
    with pytest.raises(PriorkitError, match="feature_dim"):
        fp.FoPro(torch.nn.Linear(3, 3), 4)


def _memory_run(keys, y, keep):
    mem = fp.FoProMemory(3, 5, queue_size=8)
    mem.prototypes.copy_(F.normalize(torch.ones(3, 5), dim=1))
    for step in range(3):
        mem.update(keys[step], y[step], keep[step], 0.8)
        mem.enqueue(keys[step])
    mem.end_epoch()
    return mem.state_dict()


def _memory_data():
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(3, 6, 5, generator=g), dim=2)
    y = torch.randint(0, 3, (3, 6), generator=g)
    keep = torch.rand(3, 6, generator=g) < 0.7
    return keys, y, keep


def _memory_worker(rank, out):
    keys, y, keep = _memory_data()
    sl = slice(3 * rank, 3 * rank + 3)
    state = _memory_run(keys[:, sl], y[:, sl], keep[:, sl])
    if rank == 0:
        torch.save(state, out)


def test_memory_under_two_process_ddp_equals_one_process(tmp_path):
    single = _memory_run(*_memory_data())
    out = str(tmp_path / "mem.pt")
    run_gloo(_memory_worker, 2, out)
    multi = torch.load(out, weights_only=True)
    for k, v in single.items():
        assert torch.allclose(v.float(), multi[k].float(), atol=1e-6), k


def _tiny(seed=0):
    data = make_webly("digits", shots=2, web_size=80, test_size=40, seed=seed)
    cfg = fp.FoProConfig(
        epochs=6, frozen_epochs=1, init_epoch=1, clean_epoch=2, relation_epoch=3, relation_epochs=1,
        warmup_epochs=1, lr=1e-3, low_dim=8, proj_hidden=16, rel_hidden=8, queue_size=40, batch_size=20,
        beta1_drop_epoch=4,
    )  # fmt: skip
    torch.manual_seed(seed)
    return data, cfg, fp.FoPro(MLP(64, (16,), 10), 10, cfg)


def _fit(tmp=None, stop=None, resume=False, double=False):
    data, cfg, model = _tiny()
    if double:
        data.train.x, model = data.train.x.double(), model.double()
    tc = TrainConfig(seed=1, progress=False, ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)
    hist = fit(model, None, model.recipe(data.train, data.domain), config=tc, resume=resume)
    return model, hist


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    full, hist_full = _fit()
    _fit(tmp_path, stop=3)  # ends after stage 2's epoch (global epoch 3)
    resumed, hist = _fit(tmp_path, resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert torch.allclose(resumed.memory.prototypes.norm(dim=1), torch.ones(10), atol=1e-5)
    epochs = [h for h in hist if "action" not in h]
    assert [h["stage"] for h in epochs] == [1, 1, 1, 2, 3, 3]
    assert [h.get("loss") for h in hist] == [h.get("loss") for h in hist_full]


def test_schedule_stages_freeze_and_fresh_optimizers():
    data, cfg, model = _tiny()
    rec = model.recipe(data.train, data.domain)
    assert [p.name for p in rec.phases] == [f"stage{s}_epoch{e}" for s, e in fp.fopro_schedule(cfg)]
    assert [p.optimizer_key for p in rec.phases] == [
        "stage1_frozen", "stage1", "stage1", "stage2", "stage3", "stage3"
    ]  # fmt: skip
    assert "encoder" not in rec.phases[0].trainable and "relation" not in rec.phases[1].trainable
    assert rec.phases[3].trainable == ["relation"] and "relation" in rec.phases[4].trainable


def _ddp_worker(rank, out):
    torch.set_num_threads(1)
    model, _ = _fit(double=True)
    if rank == 0:
        torch.save(model.state_dict(), out)


def test_training_two_process_ddp_equals_one_process(tmp_path):
    # float64: in float32 the per-rank forward differs from the global one in the last bits, and the first Adam
    # step of a fresh optimizer turns gradient entries near eps=1e-8 into +-lr; in float64 that noise is gone
    single, _ = _fit(double=True)
    out = str(tmp_path / "ddp.pt")
    run_gloo(_ddp_worker, 2, out)
    multi = torch.load(out, weights_only=True)
    for k, v in single.state_dict().items():
        assert torch.allclose(v.double(), multi[k].double(), atol=1e-6), k


def test_nan_inputs_raise_and_leave_the_state_unchanged():
    mem = fp.FoProMemory(3, 5, queue_size=8)
    mem.prototypes.copy_(F.normalize(torch.ones(3, 5), dim=1))
    before = {k: v.clone() for k, v in mem.state_dict().items()}
    bad = torch.full((4, 5), float("nan"))
    y, keep = torch.tensor([0, 1, 2, 0]), torch.ones(4, dtype=torch.bool)
    with pytest.raises(NonFiniteError, match="keys"):
        mem.update(bad, y, keep, 0.9)
    with pytest.raises(NonFiniteError, match="keys"):
        mem.enqueue(bad)
    with pytest.raises(NonFiniteError, match="emb"):
        mem.set_prototypes(bad, y)
    for k, v in mem.state_dict().items():
        assert torch.equal(v, before[k]), k
    # a NaN batch in a run raises at the batch boundary (or at the prototype init), before anything moves
    for init_epoch, row in ((1, slice(None)), (0, -1)):
        data, cfg, model = _tiny()
        data.train.x[row] = float("nan")
        model.config = fp.FoProConfig(**{**cfg.__dict__, "init_epoch": init_epoch})
        state0 = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(NonFiniteError, match="x holds"):
            fit(model, None, model.recipe(data.train, data.domain), config=TrainConfig(progress=False))
        for k, v in model.state_dict().items():
            assert torch.equal(v, state0[k]), k


def test_docstring_example_runs():
    res = doctest.testmod(fp, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0
