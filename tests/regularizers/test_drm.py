import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.domains import DomainData
from priorkit.regularizers.drm import (
    DRM,
    drm_loss,
    entropy_select,
    head_entropies,
    mixture_weights,
    prototype_scores,
    select_by_scores,
    steer_step,
)
from priorkit.train import Hook, Recipe, TrainConfig, Trainer

K, C, D_IN, D = 3, 4, 6, 5


def _data(seed=0, n=24):
    g = torch.Generator().manual_seed(seed)

    def ds(shift):
        y = torch.arange(n) % C
        return IndexedTensorDataset(torch.randn(n, D_IN, generator=g) + shift + y[:, None] * 0.5, y)

    return DomainData([ds(k) for k in range(K)], [ds(k) for k in range(K)], ds(K), [f"d{k}" for k in range(K)],
                      "t", C, (D_IN,))  # fmt: skip


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return DRM(nn.Sequential(nn.Linear(D_IN, D), nn.Tanh()), D, C, K, **kw)


def _half_sums(model, xs, ys):
    """The official update's loss: per-domain minibatches, featurizer per minibatch, mean of the half-sums."""
    total = 0
    for k, (x, y) in enumerate(zip(xs, ys)):
        f = model.featurizer(x)
        total = total + (F.cross_entropy(model.heads[k](f), y) + F.cross_entropy(model.heads[-1](f), y)) / 2
    return total / len(xs)


# ------------------------------------------------------------------------------------------- the loss
def test_loss_equals_mean_of_half_sums_and_per_domain_forward():
    m, d = _model(), _data()
    xs, ys = [t.x[:8] for t in d.train], [t.y[:8] for t in d.train]
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(1))  # rows in any order
    x, y = torch.cat(xs)[perm], torch.cat(ys)[perm]
    dom = torch.arange(K).repeat_interleave(8)[perm]
    out = m(x, dom)
    assert torch.allclose(drm_loss(out["head_logits"], y, dom), _half_sums(m, xs, ys), atol=1e-6)
    pooled = copy.deepcopy(m)
    pooled.per_domain_forward = False  # no BatchNorm: one pooled forward equals the per-domain forward
    assert torch.allclose(pooled(x, dom)["features"], out["features"], atol=1e-6)


def test_per_domain_forward_uses_each_domains_batch_statistics():
    torch.manual_seed(0)
    m = DRM(nn.Sequential(nn.Linear(D_IN, D), nn.BatchNorm1d(D)), D, C, K)
    x, dom = torch.randn(12, D_IN), torch.tensor([2, 0, 1] * 4)
    f = m(x, dom)["features"]
    for k in range(K):
        assert torch.allclose(f[dom == k], m.featurizer(x[dom == k]), atol=1e-6)
    m.per_domain_forward = False
    assert not torch.allclose(m(x, dom)["features"], f, atol=1e-3)


def test_head_k_gets_no_gradient_from_other_domains():
    m, d = _model(), _data()
    x = torch.cat([t.x[:6] for t in d.train])
    y = torch.cat([t.y[:6] for t in d.train])
    dom = torch.arange(K).repeat_interleave(6)
    logits = m(x, dom)["head_logits"]
    g = torch.autograd.grad(drm_loss(logits, y, dom), logits)[0]
    for k in range(K):
        assert torch.equal(g[k][dom != k], torch.zeros_like(g[k][dom != k]))  # exact zeros
        assert g[k][dom == k].abs().sum() > 0
    assert (g[K].abs().sum(1) > 0).all()  # h_all sees every row
    # and in parameter space: head k's gradient is that of (1/K) * 1/2 * CE(h_k(phi(x_k)), y_k) alone
    drm_loss(m(x, dom)["head_logits"], y, dom).backward()
    for k in range(K):
        ref = _model()
        f = ref.featurizer(x[dom == k])
        (F.cross_entropy(ref.heads[k](f), y[dom == k]) / (2 * K)).backward()
        assert torch.allclose(m.heads[k].weight.grad, ref.heads[k].weight.grad, atol=1e-7)


# -------------------------------------------------------------------------------------- entropy rule
def _logits_with_entropy_order(order, b=5):
    """[len(order), b, C] logits whose head j has sharpness order[j] (larger: lower entropy)."""
    base = torch.randn(b, C, generator=torch.Generator().manual_seed(0))
    return torch.stack([base * s for s in order])


def test_entropy_selection_is_the_argmin_head():
    logits = _logits_with_entropy_order([1.0, 4.0, 2.0, 0.5])
    ent = head_entropies(logits)
    p = logits.softmax(-1)
    assert torch.allclose(ent, -(p * p.log()).sum(-1), atol=1e-6)
    assert entropy_select(logits).tolist() == [ent.mean(1).argmin().item()] * 5 == [1] * 5
    # per sample: each row its own argmin (rows built so that different heads win)
    z = torch.zeros(K + 1, 3, C)
    z[0, 0, 0], z[2, 1, 1], z[3, 2, 2] = 9.0, 9.0, 9.0
    assert entropy_select(z, per_sample=True).tolist() == [0, 2, 3]
    # batch mode picks the head of lowest mean entropy even where a row prefers another
    z[1, :, 3] = 5.0
    assert entropy_select(z).tolist() == [1, 1, 1]


def test_h_all_is_a_candidate_and_wins_ties():
    sharp = _logits_with_entropy_order([1.0, 1.0, 1.0, 3.0])
    assert entropy_select(sharp).tolist() == [K] * 5
    assert entropy_select(sharp, per_sample=True).tolist() == [K] * 5
    tied = _logits_with_entropy_order([2.0, 2.0, 2.0, 2.0])
    assert entropy_select(tied).tolist() == [K] * 5 and entropy_select(tied, per_sample=True).tolist() == [K] * 5
    # the model's prediction is the selected head's log-softmax
    m = _model()
    m.eval()
    x = torch.randn(7, D_IN)
    with torch.no_grad():
        parts = m(x, parts=True)
        logp, heads = m.select(x)
    ent = head_entropies(parts["head_logits"]).mean(1)
    assert heads.tolist() == [int(torch.argmin(ent))] * 7
    assert torch.allclose(logp, parts["head_logits"][heads[0]].log_softmax(-1))


# ------------------------------------------------------------------------------ prototype and nn rules
def test_cosine_rule_fix_and_code_flag():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    f = torch.tensor([[0.9, 0.1], [-0.2, 1.0]])
    s = prototype_scores(f, protos, "cosine")
    assert torch.allclose(s, F.normalize(f, dim=1) @ protos.T, atol=1e-6)
    assert select_by_scores(s, "cosine").tolist() == [0, 1]  # FIX: nearest prototype (argmax similarity)
    assert select_by_scores(s, "cosine", cosine_select="argmin").tolist() == [2, 0]  # the code's argmin
    w = mixture_weights(s, "cosine")
    assert torch.allclose(w, s.softmax(1)) and (w > 0).all()  # FIX: softmax
    raw = mixture_weights(s, "cosine", cosine_weights="raw")
    assert torch.allclose(raw, s / s.sum(1, keepdim=True)) and (raw < 0).any()  # the code's raw weights


def test_pnorm_rule_and_inverse_distance_weights():
    protos = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    f = torch.tensor([[1.0, 1.0], [2.5, 0.5]])
    for p in (1, 2):
        d = prototype_scores(f, protos, f"p{p}")
        assert torch.allclose(d, torch.stack([(f - q).abs().pow(p).sum(1).pow(1 / p) for q in protos], 1))
        assert select_by_scores(d, f"p{p}").tolist() == [0, 1]
    d = prototype_scores(f, protos, "p2")
    w = mixture_weights(d, "p2", gamma=2.0)
    ref = d.pow(-2.0) / d.pow(-2.0).sum(1, keepdim=True)
    assert torch.allclose(w, ref, atol=1e-6)
    assert torch.allclose(mixture_weights(d, "p2", gamma=0.0), torch.full_like(d, 1 / 3))  # the code's gamma=0


def test_model_prototype_nn_and_mixture_predictions():
    m, d = _model(discriminator=True, prototype_K=2), _data()
    Trainer(m, None, recipe=Recipe([m.phase(d, steps_per_epoch=3, per_domain=4, lr=1e-2)], loss_fn=None),
            config=TrainConfig(seed=0, progress=False)).fit()  # fmt: skip
    m.eval()
    x = torch.randn(6, D_IN)
    with torch.no_grad():
        parts = m(x, parts=True)
        logp = parts["head_logits"].log_softmax(-1)
        rows = torch.arange(6)
        m.configure(rule="cosine", per_sample=True)
        s = prototype_scores(parts["features"], m.prototypes(), "cosine")
        out, heads = m.select(x)
        assert heads.tolist() == s.argmax(1).tolist() and torch.allclose(out, logp[heads, rows])
        m.configure(mix=True)
        mixed = torch.einsum("bk,kbc->bc", s.softmax(1), logp[:K].exp())
        assert torch.allclose(m.select(x)[0].exp(), mixed, atol=1e-6)
        m.configure(rule="nn", mix=False)
        q = parts["disc_logits"].softmax(1)
        out, heads = m.select(x)
        assert heads.tolist() == q.argmax(1).tolist()  # per row (FIX of the code's flattened argmax)
        m.configure(per_sample=False)
        assert m.select(x)[1].tolist() == [int(q.mean(0).argmax())] * 6
        m.configure(rule="p2", mix=True, per_sample=True, gamma=1.0)
        dist = torch.cdist(parts["features"], m.prototypes())
        w = (1 / dist) / (1 / dist).sum(1, keepdim=True)
        assert torch.allclose(m.select(x)[0].exp(), torch.einsum("bk,kbc->bc", w, logp[:K].exp()), atol=1e-5)


class _Spy(Hook):
    def __init__(self):
        self.steps = []

    def on_step_end(self, state, batch):
        out = batch.output
        self.steps.append((out["features"].detach().clone(), batch.extras["domain"].clone(),
                           drm_loss(out["head_logits"].detach(), batch.y, batch.extras["domain"])))  # fmt: skip


def test_engine_phase_loss_prototypes_and_detached_discriminator():
    d = _data()
    m, spy = _model(discriminator=True, prototype_K=3), _Spy()
    hist = Trainer(m, None, recipe=Recipe([m.phase(d, steps_per_epoch=5, per_domain=4, lr=1e-2)], loss_fn=None),
                   hooks=[spy], config=TrainConfig(seed=0, progress=False)).fit()  # fmt: skip
    assert len(spy.steps) == 5 and {"drm", "disc"} <= set(hist[0])
    assert hist[0]["drm"] == pytest.approx(sum(float(s[2]) for s in spy.steps) / 5, rel=1e-5)
    # prototypes: the mean feature of each domain over the last prototype_K (= 3) minibatches
    last = spy.steps[-3:]
    ref = torch.stack([torch.cat([f[dm == k] for f, dm, _ in last]).mean(0) for k in range(K)])
    assert torch.allclose(m.prototypes(), ref, atol=1e-6)
    # the discriminator sees detached features: featurizer and heads train exactly as without it
    plain = _model(discriminator=False, prototype_K=3)
    Trainer(plain, None, recipe=Recipe([plain.phase(d, steps_per_epoch=5, per_domain=4, lr=1e-2)], loss_fn=None),
            config=TrainConfig(seed=0, progress=False)).fit()  # fmt: skip
    theirs = dict(plain.named_parameters())
    for n, p in m.named_parameters():
        if not n.startswith("discriminator."):
            assert torch.allclose(p, theirs[n], atol=1e-6), n


def test_prototype_ring_keeps_the_last_K_minibatches():
    m = _model(prototype_K=2)
    with pytest.raises(PriorkitError, match=r"prototypes of domains \[0, 1, 2\] are empty"):
        m.prototypes()
    dom = torch.tensor([0, 0, 1, 2])
    for v in (1.0, 2.0, 3.0):
        m.update_prototypes(torch.full((4, D), v), dom)
    assert torch.allclose(m.prototypes(), torch.full((K, D), 2.5))  # mean of the last two steps (2 and 3)


# -------------------------------------------------------------------------------------------- steering
def test_steer_step_is_one_sgd_step_on_featurizer_and_selected_head():
    m = _model()
    m.eval()
    x = torch.randn(1, D_IN) * 3
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    new, logp, head, updated = steer_step(m, params, x, lr=0.1, conf=0.0)
    h = int(head)
    ref = copy.deepcopy(m)
    parts = ref(x, parts=True)
    pseudo = parts["head_logits"][h].argmax(1)
    assert torch.allclose(logp, parts["head_logits"][h].log_softmax(-1).detach())  # predicted before the step
    F.cross_entropy(parts["head_logits"][h], pseudo).backward()
    assert updated
    for n, p in ref.named_parameters():
        if n.startswith("featurizer.") or n.startswith(f"heads.{h}."):
            assert torch.allclose(new[n], params[n] - 0.1 * p.grad, atol=1e-7), n
            assert not torch.equal(new[n], params[n])
        else:
            assert torch.equal(new[n], params[n]), n
    # below the confidence threshold nothing changes
    same, _, _, up = steer_step(m, params, x, lr=0.1, conf=1.0)
    assert not up and all(torch.equal(same[n], params[n]) for n in params)


def test_steer_stream_equals_repeated_steps_and_updates_in_place():
    m = _model()
    xs = torch.randn(4, D_IN)
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    ref = []
    m.eval()
    for i in range(4):
        params, logp, _, _ = steer_step(m, params, xs[i : i + 1], lr=0.05, conf=0.0)
        ref.append(logp)
    m.configure(steer_lr=0.05, steer_conf=0.0)
    out, heads, updated = m.steer(xs)
    assert torch.allclose(out, torch.cat(ref), atol=1e-6) and updated.all() and heads.shape == (4,)
    for n, p in m.named_parameters():
        assert torch.allclose(p, params[n], atol=1e-6)


# -------------------------------------------------------------------------------------- resume, presets
def _fit(tmp=None, stop=None, resume=False):
    d = _data()
    m = _model(discriminator=True, prototype_K=2)
    cfg = TrainConfig(seed=3, progress=False, ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)
    ph = m.phase(d, epochs=3, steps_per_epoch=3, per_domain=4, lr=1e-2)
    Trainer(m, None, recipe=Recipe([ph], loss_fn=None), config=cfg).fit(resume=resume)
    return m


def test_checkpoint_resume_is_bit_identical(tmp_path):
    full = _fit()
    _fit(tmp_path, stop=0)
    resumed = _fit(tmp_path, resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and int(a["proto_ptr"]) == 9 % 2
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_presets_construct_the_model():
    from priorkit.regularizers import drm

    assert drm.SPEC.entry == "DRM" and "DRM" in drm.__all__
    for preset in drm.SPEC.presets.values():
        assert _model(**preset).rule == preset["rule"]


# ------------------------------------------------------------------------------------------------ DDP
def _ddp_train(out=None):
    torch.set_num_threads(1)
    m = _fit_ddp()
    if out is not None:
        torch.save(m.state_dict(), out)
    return m.state_dict()


def _fit_ddp():
    m = _model(discriminator=True, prototype_K=2)
    ph = m.phase(_data(), epochs=2, steps_per_epoch=3, per_domain=4, lr=1e-2)
    Trainer(m, None, recipe=Recipe([ph], loss_fn=None), config=TrainConfig(seed=1, progress=False)).fit()
    return m


def _ddp_worker(rank, out):
    _ddp_train(out if rank == 0 else None)


def test_two_process_run_equals_one_process(tmp_path):
    """Each rank holds half of every domain's minibatch: gradients, the discriminator and the all-reduced
    prototypes end as in a 1-process run with the same global batch (DESIGN principle 8)."""
    from priorkit.train.distributed import run_gloo

    out = str(tmp_path / "ddp.pt")
    run_gloo(_ddp_worker, 2, out)
    single, multi = _ddp_train(), torch.load(out, weights_only=True)
    for k, v in single.items():
        assert torch.allclose(v.float(), multi[k].float(), atol=1e-6), k
