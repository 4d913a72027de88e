"""T-JEPA: the card's property tests (masks, no gradient into the target, EMA formula and schedule, predictor
shape), the tokenizer / index conventions, the schedules, and the engine run (resume, DDP)."""

import math

import pytest
import torch

from priorkit.core.errors import PriorkitError
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.regularizers import tjepa
from priorkit.regularizers.tjepa import (
    TJEPA,
    TJEPAHook,
    collapse_stats,
    draw_mask_sizes,
    ema_update,
    jepa_loss,
    lr_at,
    mask_bounds,
    momentum_at,
    param_groups,
    sample_masks,
    wd_at,
)
from priorkit.train import Hook, TrainConfig, fit
from priorkit.train.distributed import run_gloo

TINY = {"hidden": 8, "layers": 1, "heads": 2, "ffn": 16, "pred_dim": 8, "pred_layers": 1, "pred_heads": 2,
        "pred_ffn": 16}  # fmt: skip


def _model(d=10, **kw):
    torch.manual_seed(0)
    return TJEPA(d, **{**TINY, **kw})


# ------------------------------------------------------------------------------------------- masks (card)
def test_masks_disjoint_sizes_in_range_and_seeded():
    d, share_c, share_t = 20, (0.136, 0.368), (0.156, 0.622)
    (lc, hc), (lt, ht) = mask_bounds(d, *share_c), mask_bounds(d, *share_t)
    assert (lc, hc, lt, ht) == (3, 7, 3, 12)
    g = torch.Generator().manual_seed(0)
    seen_c, seen_t = set(), set()
    for _ in range(300):
        k_c, k_t = draw_mask_sizes(d, share_c, share_t, g)
        assert lc <= k_c <= hc and lt <= k_t <= ht and k_c + k_t <= d
        seen_c.add(k_c)
        seen_t.add(k_t)
    assert seen_c == set(range(lc, hc + 1)) and seen_t == set(range(lt, ht + 1))
    ctx, tgt = sample_masks(64, d, 5, 9, 4, torch.Generator().manual_seed(1))
    assert ctx.shape == (64, 5) and tgt.shape == (4, 64, 9) and ctx.dtype == tgt.dtype == torch.long
    for b in range(64):
        c = set(ctx[b].tolist())
        assert len(c) == 5 and all(0 <= i < d for i in c)
        for m in range(4):
            t = set(tgt[m, b].tolist())
            assert len(t) == 9 and not (c & t)
    assert not torch.equal(tgt[0], tgt[1])  # the target sets are redrawn (they may overlap)
    again = sample_masks(64, d, 5, 9, 4, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], ctx) and torch.equal(again[1], tgt)


def test_mask_bounds_refuse_empty_or_impossible_masks():
    with pytest.raises(PriorkitError, match="ctx_share min 0.01 gives round"):
        draw_mask_sizes(10, (0.01, 0.3), (0.2, 0.5))
    with pytest.raises(PriorkitError, match="smallest context"):
        draw_mask_sizes(10, (0.6, 0.7), (0.5, 0.6))
    with pytest.raises(PriorkitError, match=r"k_ctx \+ k_tgt must be <= num_features \(6\)"):
        sample_masks(4, 6, 3, 4)


# ------------------------------------------------------------------------------------------- model (card)
def test_predictor_output_shape_and_target_gets_no_gradient():
    m = _model(12)
    x = torch.randn(5, 12)
    ctx, tgt = sample_masks(5, 12, 3, 4, 3, torch.Generator().manual_seed(0))
    pred, target = m(x, ctx, tgt)
    assert pred.shape == target.shape == (3 * 5, 4, 8)
    assert not target.requires_grad and pred.requires_grad
    jepa_loss(pred, target).backward()
    assert all(p.grad is None and not p.requires_grad for p in m.target.parameters())
    assert all(p.grad is not None for p in m.predictor.parameters())
    assert m.context.tokenizer.reg.grad is not None and m.context.tokenizer.reg.grad.abs().sum() > 0


def test_targets_are_target_encoder_tokens_offset_by_reg_and_the_quirk():
    x = torch.randn(4, 6)
    ctx, tgt = torch.tensor([[0, 1]] * 4), torch.tensor([[[5, 2]] * 4])
    for quirk, off in ((False, 2), (True, 0)):
        m = _model(6, num_reg=2, index_quirk=quirk, dropout=0.0).eval()
        full = m.target(x)
        assert full.shape == (4, 2 + 6, 8)
        _, target = m(x, ctx, tgt)
        assert torch.equal(target, full[:, [5 + off, 2 + off]])
    # default: feature 5 (the last) is a token of its own; the quirk's index 0 is the first [REG] token
    m = _model(6, num_reg=1, index_quirk=True).eval()
    _, target = m(x, ctx, torch.tensor([[[0, 3]] * 4]))
    assert torch.equal(target[:, 0], m.target(x)[:, 0])


def test_context_encoder_sees_reg_tokens_and_gathers_after_the_encoding():
    m = _model(6, num_reg=2, dropout=0.0).eval()
    x = torch.randn(3, 6)
    every = torch.arange(8).expand(3, -1)
    assert torch.allclose(m.context(x, every), m.context(x), atol=1e-6)
    tok = m.context.tokenizer
    t = tok(x)
    assert torch.equal(t[:, :2], tok.reg.expand(3, -1, -1))
    assert torch.allclose(t[:, 2 + 4], x[:, 4:5] * tok.weight[4] + tok.bias[4])
    # the encoding is added before the gather: a context token keeps its own position's encoding
    keep = torch.tensor([[6, 3]] * 3)
    enc = m.context.trunk(torch.gather(t + m.context.pe, 1, keep[..., None].expand(-1, -1, 8)))
    assert torch.allclose(m.context(x, keep), enc, atol=1e-6)


def test_categorical_columns_are_embedded_and_checked():
    torch.manual_seed(0)
    m = TJEPA(4, categories={1: 3}, **TINY)
    x = torch.tensor([[0.5, 2.0, -1.0, 0.3], [1.0, 0.0, 0.0, 0.0]])
    tok = m.context.tokenizer(x)
    t = m.context.tokenizer
    assert torch.allclose(tok[:, 1 + 1], t.cat_emb[0].weight[[2, 0]] + t.bias[1])
    assert torch.allclose(tok[:, 1 + 2], x[:, 2:3] * t.weight[1] + t.bias[2])  # numeric column 2 is numeric #1
    with pytest.raises(PriorkitError, match=r"x\[:, 1\] is categorical: it must hold integer codes in \[0, 2\]"):
        m(torch.tensor([[0.5, 3.0, 0.0, 0.0]]))


def test_embedding_export():
    m = _model(5, num_reg=1)
    x = torch.randn(7, 5)
    emb = m.embed(x)
    assert emb.shape == (7, m.embedding_dim) == (7, 6 * 8) and m.training
    m.eval()
    assert torch.allclose(m(x), emb, atol=1e-6)


# ------------------------------------------------------------------------------------ EMA and schedules (card)
def test_ema_formula_and_momentum_schedule_ends_at_one():
    a, b = [torch.randn(3, 2), torch.randn(4)], [torch.randn(3, 2), torch.randn(4)]
    want = [0.9 * t + 0.1 * s for t, s in zip(a, b)]
    ema_update(a, b, 0.9)
    assert all(torch.allclose(t, w) for t, w in zip(a, want))
    assert momentum_at(0, 100) == 0.996 and momentum_at(100, 100) == 1.0
    assert momentum_at(50, 100) == pytest.approx(0.998)
    vals = [momentum_at(s, 7) for s in range(8)]
    assert all(v2 > v1 for v1, v2 in zip(vals, vals[1:]))


def test_lr_and_weight_decay_schedules():
    assert lr_at(0, 100, 10, 1e-3) == 0.0 and lr_at(5, 100, 10, 1e-3) == pytest.approx(5e-4)
    assert lr_at(10, 100, 10, 1e-3) == pytest.approx(1e-3) and lr_at(100, 100, 10, 1e-3) == 0.0
    assert lr_at(55, 100, 10, 1e-3) == pytest.approx(5e-4)  # halfway through the cosine
    assert wd_at(0, 50, 0.04, 0.4) == pytest.approx(0.04) and wd_at(50, 50, 0.04, 0.4) == pytest.approx(0.4)
    assert wd_at(25, 50, 0.0, 0.0) == 0.0


class _Spy(Hook):
    """Saves the parameters before each step (after the T-JEPA hook's transform) and checks the EMA after."""

    def __init__(self, model):
        self.model, self.steps, self.lrs = model, 0, []

    def transform_batch(self, state, batch):
        self.before = [p.detach().clone() for p in self.model.target.parameters()]
        self.lrs.append(state.optimizer.param_groups[0]["lr"])
        return batch

    def on_after_backward(self, state):
        g = [p.grad for p in self.model.context.parameters() if p.grad is not None]
        assert max(float(t.abs().max()) for t in g) <= 1e-3  # the T-JEPA hook clamped them (it runs first)

    def on_step_end(self, state, batch):
        total = state.steps_per_epoch * state.phase.epochs
        step = state.phase_epoch * state.steps_per_epoch + state.batch_in_epoch
        m = momentum_at(step, total, 0.9, 0.99)
        for t0, t1, c in zip(self.before, self.model.target.parameters(), self.model.context.parameters()):
            assert torch.allclose(t1, m * t0 + (1 - m) * c.detach(), atol=1e-6)
        self.steps += 1


def _data(n=48, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g)
    x = torch.cat([z @ torch.randn(3, d - 2, generator=g), torch.randn(n, 2, generator=g)], 1)
    return IndexedTensorDataset(x, torch.zeros(n, dtype=torch.long))


def _hook(d=10, **kw):
    torch.manual_seed(0)
    base = {**TINY, "ctx_share": (0.2, 0.4), "tgt_share": (0.2, 0.4), "epochs": 3, "lr": 1e-2, "warmup_epochs": 1,
            "weight_decay": 0.04, "final_weight_decay": 0.4, "dropout": 0.1}  # fmt: skip
    return TJEPAHook(d, **{**base, **kw})


def test_engine_step_updates_target_by_ema_clamps_gradients_and_follows_the_schedule():
    hook = _hook(ema=(0.9, 0.99), grad_clamp=1e-3)
    spy = _Spy(hook.model)
    hist = fit(hook.model, _data(), hook.recipe(), hooks=[hook, spy],
               config=TrainConfig(batch_size=16, seed=0, progress=False))  # fmt: skip
    assert spy.steps == 9 and len(hist) == 3 and all(math.isfinite(h["jepa"]) for h in hist)
    total, warm = 9, 3
    assert spy.lrs == pytest.approx([lr_at(s, total, warm, 1e-2) for s in range(total)])
    assert hist[-1]["momentum"] == pytest.approx(sum(momentum_at(s, 9, 0.9, 0.99) for s in range(6, 9)) / 3)
    groups = param_groups(hook.model, 0.04)
    ids = {id(p) for g in groups for p in g["params"]}
    assert not ids & {id(p) for p in hook.model.target.parameters()}
    named = dict(hook.model.named_parameters())
    for g in groups:
        for p in g["params"]:
            name = next(n for n, q in named.items() if q is p)
            assert (g["weight_decay"] == 0) == ("bias" in name or p.dim() == 1), name


def test_collapse_stats_and_logging():
    const = torch.ones(20, 3, 4)
    assert collapse_stats(const) == {"emb_std": 0.0, "pair_dist": 0.0, "eff_rank": 1.0}
    spread = collapse_stats(torch.randn(200, 3, 4, generator=torch.Generator().manual_seed(0)))
    assert spread["emb_std"] > 0.3 and spread["pair_dist"] > 3 and spread["eff_rank"] > 8
    hook = _hook(epochs=2, collapse_every=1)
    hist = fit(hook.model, _data(), hook.recipe(), hooks=[hook], config=TrainConfig(batch_size=16, progress=False))
    assert all({"emb_std", "pair_dist", "eff_rank", "k_ctx", "k_tgt", "lr"} <= set(h) for h in hist)


def test_zero_reg_tokens_train():
    hook = _hook(num_reg=0, epochs=1)
    fit(hook.model, _data(), hook.recipe(), hooks=[hook], config=TrainConfig(batch_size=16, progress=False))
    assert hook.model.embed(_data().x).shape == (48, 10 * 8)


def test_phase_without_the_hook_is_refused():
    hook = _hook(epochs=1)
    with pytest.raises(PriorkitError, match="pass the TJEPAHook in hooks"):
        fit(hook.model, _data(), hook.recipe(), config=TrainConfig(batch_size=16, progress=False))


# ------------------------------------------------------------------------------------------- resume, DDP
def _run(tmp=None, stop=None, resume=False, dropout=0.1):
    hook = _hook(epochs=3, dropout=dropout, pred_dropout=dropout)
    strategy = "ddp" if torch.distributed.is_initialized() else "auto"
    cfg = TrainConfig(batch_size=16, seed=3, progress=False, strategy=strategy,
                      ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)  # fmt: skip
    hist = fit(hook.model, _data(n=44), hook.recipe(), hooks=[hook], config=cfg, resume=resume)
    return hook.model, hist


def test_resume_is_bit_identical(tmp_path):
    ref, ref_hist = _run()
    _run(tmp_path, stop=0)
    model, hist = _run(tmp_path, resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert [h["jepa"] for h in hist] == [h["jepa"] for h in ref_hist]
    assert not torch.equal(ref.target.trunk.fc.weight, ref.context.trunk.fc.weight)


def _worker(rank, out):
    torch.set_num_threads(1)
    model, hist = _run(dropout=0.0)  # dropout masks would differ between the ranks and one process
    if rank == 0:
        torch.save({"model": model.state_dict(), "jepa": [h["jepa"] for h in hist]}, out)


@pytest.mark.slow  # two spawned processes: tens of seconds of start-up on a loaded machine
def test_two_process_run_equals_one_process(tmp_path):
    """Masks drawn over the global batch, the loss rescaled for the uneven last batch (44 = 16 + 16 + 12), the
    clamp after the all-reduce and the EMA on every rank: 2 processes end where 1 does."""
    out = str(tmp_path / "ddp.pt")
    run_gloo(_worker, 2, out)
    single, hist = _run(dropout=0.0)
    multi = torch.load(out, weights_only=True)
    for k, v in single.state_dict().items():
        # attention key biases have an exactly zero gradient (softmax is shift-invariant): Adam turns their
        # rounding noise, which depends on the summation order, into updates of up to ~1e-5
        assert torch.allclose(v, multi["model"][k], atol=1e-4 if "in_proj_bias" in k else 1e-5), k
    assert multi["jepa"] == pytest.approx([h["jepa"] for h in hist], abs=1e-5)


def test_presets_construct_the_hook():
    assert tjepa.SPEC.entry == "TJEPAHook" and "TJEPAHook" in tjepa.__all__
    for name, preset in tjepa.SPEC.presets.items():
        hook = TJEPAHook(16, **{**preset, "layers": 1, "pred_layers": 1})
        assert hook.epochs == preset["epochs"] and hook.model.num_reg == preset["num_reg"], name
