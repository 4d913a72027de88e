"""INS: the card's invariants (candidate masks, confidence rows, prototype EMA, phi schedule, queue pointer), the
losses against brute force, DDP equivalence, checkpoint resume, the docstring example and bad input."""

import re

import pytest
import torch
import torch.nn.functional as F

import priorkit.prototypes.ins as ins_mod
from priorkit.core.errors import NonFiniteError, PriorkitError
from priorkit.data.mil import mil_gaussian
from priorkit.prototypes.ins import (
    INS,
    SPEC,
    INSHook,
    bag_constraint_loss,
    candidate_sets,
    confidence_update,
    masked_pseudo_labels,
    mlp_encoder,
    moco_loss,
    partial_loss,
    phi_at,
    prototype_ema,
    prototype_ema_sequential,
    prototype_scores,
    pseudo_label_mask,
    supcon_loss,
    uniform_confidence,
    warmup_targets,
)
from priorkit.train import TrainConfig, fit
from priorkit.train.distributed import run_gloo


def _data(seed=0):
    return mil_gaussian(n=800, num_bags=(16, 8), bag_size=8, positives_per_bag=(1, 3), dim=6, seed=seed)


def _model(seed=0, queue=64):
    torch.manual_seed(seed)
    return INS(mlp_encoder(6, 16), feature_dim=16, low_dim=8, queue_size=queue)


def _fit(model, bags, *, batch_size=32, seed=0, tmp=None, stop=None, resume=False, **kw):
    hook = INSHook(bags, **kw)
    strategy = "ddp_find_unused_parameters_true" if torch.distributed.is_initialized() else "auto"
    cfg = TrainConfig(batch_size=batch_size, seed=seed, progress=False, strategy=strategy,
                      ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)  # fmt: skip
    hist = fit(model, None, hook.recipe(), hooks=[hook], config=cfg, resume=resume)
    return hook, hist


def test_candidates_confidence_and_warmup_targets():
    by = torch.tensor([0, 1, 1, 0])
    cand = candidate_sets(by)
    assert torch.equal(cand, torch.tensor([[1.0, 0], [1, 1], [1, 1], [1, 0]]))
    assert torch.equal(uniform_confidence(cand), torch.tensor([[1.0, 0], [0.5, 0.5], [0.5, 0.5], [1, 0]]))
    assert torch.equal(warmup_targets(by), torch.tensor([[1.0, 0], [0, 1], [0, 1], [1, 0]]))


def test_negative_bag_instance_never_gets_pos_label():
    cand = candidate_sets(torch.tensor([0, 0, 1, 1]))
    scores = torch.tensor([[0.01, 0.99], [0.0, 1.0], [0.01, 0.99], [0.9, 0.1]])
    assert masked_pseudo_labels(scores, cand).tolist() == [0, 0, 1, 0]


def test_confidence_update_invariants_and_formula():
    g = torch.Generator().manual_seed(0)
    by = (torch.rand(50, generator=g) > 0.5).long()
    cand = candidate_sets(by)
    conf = uniform_confidence(cand)
    for _ in range(5):
        s = torch.softmax(torch.randn(50, 2, generator=g) * 3, 1)
        s[by == 0] = torch.tensor([0.0, 1.0])  # prototypes say "pos" for every negative-bag instance
        new = confidence_update(conf, s, cand, phi=0.9)
        # brute force, row by row
        for i in range(50):
            if by[i] == 0:
                want = torch.tensor([1.0, 0.0])
            else:
                want = 0.9 * conf[i] + 0.1 * F.one_hot((s[i] * cand[i]).argmax(), 2).float()
            assert torch.allclose(new[i], want)
        conf = new
    assert torch.equal(conf[by == 0], torch.tensor([[1.0, 0.0]]).expand(int((by == 0).sum()), 2))
    assert torch.allclose(conf.sum(1), torch.ones(50))
    assert ((conf > 0) <= (cand > 0)).all()  # support inside the candidate set


def test_prototype_ema_closed_form_equals_loop_and_is_unit_norm():
    g = torch.Generator().manual_seed(1)
    protos = F.normalize(torch.randn(3, 5, generator=g), dim=1)
    feats = F.normalize(torch.randn(40, 5, generator=g), dim=1)
    labels = torch.randint(0, 3, (40,), generator=g)
    labels[:5] = 1  # uneven class counts
    a = prototype_ema(protos, feats, labels, 0.9)
    b = prototype_ema_sequential(protos, feats, labels, 0.9)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-6)
    # a class with no sample keeps its direction; from the official zero init, one sample gives that sample's direction
    only0 = prototype_ema(protos, feats[:3], torch.zeros(3, dtype=torch.long), 0.9)
    assert torch.allclose(only0[1:], protos[1:], atol=1e-6)
    z = prototype_ema(torch.zeros(2, 5), feats[:1], torch.tensor([1]), 0.9)
    assert torch.allclose(z[1], feats[0], atol=1e-6) and torch.equal(z[0], torch.zeros(5))


def test_phi_linear_schedule():
    vals = [phi_at(e, 10) for e in range(10)]
    assert vals[0] == pytest.approx(0.95)
    assert all(a - b == pytest.approx(0.015) for a, b in zip(vals, vals[1:]))
    assert phi_at(5, 10, (0.9, 0.5)) == pytest.approx(0.7)
    with pytest.raises(PriorkitError, match="epoch"):
        phi_at(10, 10)


def test_queue_pointer_wraps():
    m = _model(queue=8)
    k1, k2, k3 = (F.normalize(torch.randn(4, 8), dim=1) for _ in range(3))
    sc, cand = torch.rand(4, 2), torch.ones(4, 2)
    m.enqueue(k1, sc, cand)
    assert int(m.queue_ptr) == 4
    m.enqueue(k2, sc, cand)
    assert int(m.queue_ptr) == 0 and torch.equal(m.queue[:4], k1) and torch.equal(m.queue[4:], k2)
    m.enqueue(k3, sc, cand)
    assert int(m.queue_ptr) == 4 and torch.equal(m.queue[:4], k3) and torch.equal(m.queue_pseudo[:4], sc)
    with pytest.raises(PriorkitError, match="multiple of the global batch"):
        m.enqueue(torch.randn(3, 8), torch.rand(3, 2), torch.ones(3, 2))


def test_supcon_and_moco_match_brute_force():
    g = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(12, 4, generator=g), dim=1)
    labels = torch.randint(0, 2, (12,), generator=g)
    b, t = 3, 0.07
    labels[b : 2 * b] = labels[:b]  # the keys share their query's label, so each anchor has a positive
    mask = pseudo_label_mask(labels, b)
    got = supcon_loss(feats, mask, b, t)
    total = 0.0
    for i in range(b):
        denom = sum(torch.exp(feats[i] @ feats[j] / t) for j in range(12) if j != i)
        pos = [j for j in range(12) if j != i and labels[j] == labels[i]]
        total += -sum(feats[i] @ feats[j] / t - torch.log(denom) for j in pos) / len(pos)
    assert torch.allclose(got, total / b, atol=1e-5)
    q, k, queue = feats[:3], feats[3:6], feats[6:]
    want = torch.stack(
        [-torch.log_softmax(torch.cat([(q[i] @ k[i]).view(1), queue @ q[i]]) / t, 0)[0] for i in range(3)]
    ).mean()
    assert torch.allclose(moco_loss(q, k, queue, t), want, atol=1e-6)
    with pytest.raises(PriorkitError, match="at least one positive"):
        supcon_loss(feats[:2], torch.eye(2), 2)


def test_partial_loss_gradient_is_softmax_minus_confidence():
    logits = torch.randn(5, 2, requires_grad=True)
    conf = uniform_confidence(candidate_sets(torch.tensor([0, 1, 1, 0, 1])))
    partial_loss(logits, conf).backward()
    assert torch.allclose(logits.grad, (torch.softmax(logits.detach(), 1) - conf) / 5, atol=1e-6)


def test_bag_constraint_heads():
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(4, 2, generator=g), torch.randn(6, 2, generator=g)]
    y = torch.tensor([1, 0])
    p = [torch.softmax(lg, 1)[:, 1] for lg in logits]
    want = (-torch.log(p[0].mean()) - torch.log(1 - p[1].mean())) / 2
    assert torch.allclose(bag_constraint_loss(y, logits=logits), want, atol=1e-6)
    want_max = (-torch.log(p[0].max()) - torch.log(1 - p[1].max())) / 2
    assert torch.allclose(bag_constraint_loss(y, logits=logits, aggregator="max"), want_max, atol=1e-6)
    feats = [torch.randn(4, 5, generator=g), torch.randn(6, 5, generator=g)]
    off = sum(F.cross_entropy(torch.softmax(f.mean(0, keepdim=True), 1), t.view(1)) for f, t in zip(feats, y)) / 2
    assert torch.allclose(bag_constraint_loss(y, features=feats, head="official"), off, atol=1e-6)
    with pytest.raises(PriorkitError, match="non-empty"):
        bag_constraint_loss(torch.tensor([1]), logits=[torch.zeros(0, 2)])
    with pytest.raises(PriorkitError, match="one tensor per bag"):
        bag_constraint_loss(torch.tensor([1, 0]), logits=logits[:1])
    with pytest.raises(PriorkitError, match="needs features"):
        bag_constraint_loss(y, logits=logits, head="official")
    with pytest.raises(PriorkitError, match="bag_head"):
        bag_constraint_loss(y, logits=logits, head="attention")


def test_step_uses_old_prototypes_and_orders_contrast_set():
    m = _model()
    m.prototypes.copy_(F.normalize(torch.randn(2, 8), dim=1))
    old = m.prototypes.clone()
    x = torch.randn(16, 6)
    cand = candidate_sets((torch.arange(16) % 2).long())
    out = m.step(x, x + 0.1, cand)
    assert torch.allclose(out["score_prot"], prototype_scores(out["q"].detach(), old))
    pseudo = masked_pseudo_labels(torch.softmax(out["logits"].detach(), 1), cand)
    assert torch.allclose(m.prototypes, prototype_ema(old, out["q"].detach(), pseudo, 0.9), atol=1e-6)
    assert out["features"].shape == (16 + 16 + 64, 8)
    assert torch.equal(out["pseudo_labels"][:16], pseudo) and torch.equal(out["pseudo_labels"][16:32], pseudo)
    assert (out["pseudo_labels"][:32][cand[:, 1].repeat(2) == 0] == 0).all()
    assert int(m.queue_ptr) == 16 and torch.allclose(m.queue[:16], out["k"])


def test_training_keeps_invariants():
    data = _data()
    m = _model()
    tr, hist = _fit(m, data.train, epochs=3, prot_start=1)
    names = [h["phase"] for h in hist]
    assert names == ["instance0", "bag0", "instance1", "instance1"]  # the bag step only after the warm-up epoch
    assert "phi" not in hist[0] and "phi" in hist[2] and "bag" in hist[1]
    conf, neg = tr.confidence.table, data.train.instance_bag_y == 0
    assert torch.equal(conf[neg], torch.tensor([[1.0, 0.0]]).expand(int(neg.sum()), 2))
    assert torch.allclose(conf.sum(1), torch.ones(len(conf)), atol=1e-6)
    assert torch.allclose(m.prototypes.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.equal(conf[~neg], torch.full((int((~neg).sum()), 2), 0.5))  # the prototypes moved them


def test_resume_equals_uninterrupted(tmp_path):
    data = _data()
    cfg = dict(epochs=4, batch_size=32, prot_start=2, seed=1)
    full = _model(1)
    h_full, _ = _fit(full, data.train, **cfg)
    part = _model(1)
    _fit(part, data.train, **cfg, tmp=tmp_path, stop=1)
    resumed = _model(5)  # different init: everything must come from the checkpoint
    h_res, _ = _fit(resumed, data.train, **cfg, tmp=tmp_path, resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert torch.equal(h_full.confidence.table, h_res.confidence.table)
    with pytest.raises(PriorkitError, match="phases"):
        _fit(_model(1), data.train, **(cfg | {"prot_start": 3}), tmp=tmp_path, resume=True)


def test_nan_batch_raises_and_leaves_state_unchanged():
    m = _model()
    x = torch.randn(16, 6)
    cand = candidate_sets((torch.arange(16) % 2).long())
    m.step(x, x + 0.1, cand)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="x_w"):
        m.step(bad, x, cand)
    with pytest.raises(NonFiniteError, match="x_s"):
        m.step(x, bad, cand)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    hook = INSHook(_data().train)
    table = hook.confidence.table.clone()
    with pytest.raises(NonFiniteError, match="rows"):
        hook.confidence.write(torch.arange(2), torch.full((2, 2), float("nan")))
    assert torch.equal(hook.confidence.table, table)


def test_spec_presets_build_the_hook():
    assert SPEC.entry == "INSHook"
    for preset in SPEC.presets.values():
        INSHook(_data().train, **preset)


def _ddp_train(out=None):
    torch.set_num_threads(1)
    data = _data()
    m = _model(2)
    tr, _ = _fit(m, data.train, epochs=3, batch_size=32, prot_start=1, bag_batch=2, seed=3)
    res = {"model": m.state_dict(), "conf": tr.confidence.table.clone()}
    if out is not None:
        torch.save(res, out)
    return res


def _ddp_worker(rank, out):
    _ddp_train(out if rank == 0 else None)


def test_two_process_run_equals_one_process(tmp_path):
    single = _ddp_train()
    out = str(tmp_path / "ddp.pt")
    run_gloo(_ddp_worker, 2, out)
    multi = torch.load(out, weights_only=True)
    for k, v in single["model"].items():
        assert torch.allclose(v.float(), multi["model"][k].float(), atol=1e-6), k
    assert torch.allclose(single["conf"], multi["conf"], atol=1e-6)


def test_docstring_example_runs(capsys):
    doc = ins_mod.__doc__
    block = doc[doc.index("Example::") + len("Example::") :]
    code = "\n".join(line[4:] for line in block.splitlines() if line.startswith("    ") or not line.strip())
    exec(compile(code, "ins_docstring", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"'instance_auc': 0\.\d+, 'bag_auc': [01]\.\d+", printed)


def test_bad_input():
    data = _data()
    with pytest.raises(PriorkitError, match="multiple of batch_size"):
        _fit(_model(queue=60), data.train, epochs=1)
    with pytest.raises(PriorkitError, match="MILBags"):
        INSHook(data.train.instance_dataset())
    with pytest.raises(PriorkitError, match="exceeds the number of instances"):
        _fit(_model(queue=1024), data.train, batch_size=512, epochs=1)
    with pytest.raises(PriorkitError, match="bag_head"):
        INSHook(data.train, bag_head="attention")
    with pytest.raises(PriorkitError, match="aggregator"):
        INSHook(data.train, aggregator="median")
    with pytest.raises(PriorkitError, match="phi_range"):
        INSHook(data.train, phi_range=(0.95, 1.2))
    m = _model()
    with pytest.raises(PriorkitError, match="candidates"):
        m.step(torch.randn(4, 6), torch.randn(4, 6), torch.ones(4, 3))
    with pytest.raises(PriorkitError, match="x_s"):
        m.step(torch.randn(4, 6), torch.randn(5, 6), torch.ones(4, 2))
    with pytest.raises(PriorkitError, match="feature_dim"):
        INS(mlp_encoder(6, 16), feature_dim=12).instance_scores(torch.randn(2, 6))
    with pytest.raises(PriorkitError, match="0/1 bag labels"):
        candidate_sets(torch.tensor([0, 2]))
    with pytest.raises(PriorkitError, match="labels must lie"):
        prototype_ema(torch.zeros(2, 3), torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(PriorkitError, match="non-empty"):
        uniform_confidence(torch.tensor([[0.0, 0.0]]))
    with pytest.raises(PriorkitError, match="confidence"):
        partial_loss(torch.randn(3, 2), torch.rand(2, 2))
