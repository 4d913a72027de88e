import doctest
import math

import pytest
import torch
import torch.nn.functional as F

import priorkit.prototypes.inp_former as inp
from priorkit.core.errors import PriorkitError
from priorkit.prototypes.inp_former import (
    ConvEncoder,
    INPFormer,
    PrototypeBlock,
    StableAdamW,
    anomaly_map,
    coherence_distance,
    coherence_loss,
    image_score,
    scale_grad,
    soft_mining_factor,
    soft_mining_loss,
)
from priorkit.train import Hook, TrainConfig, Trainer


def _model(decoder="inp", dim=16, m=3):
    enc = ConvEncoder(channels=dim, depth=2)
    return INPFormer(
        enc,
        dim,
        num_inp=m,
        num_heads=2,
        num_decoder_blocks=2,
        encoder_groups=((0,), (1,)),
        decoder_groups=((0,), (1,)),
        decoder=decoder,
    )


def test_docstring_example_runs():
    assert doctest.testmod(inp, raise_on_error=True).attempted > 0


def test_prototype_attention_rank_at_most_m_per_head():
    torch.manual_seed(0)
    blk = PrototypeBlock(dim=64, num_heads=2)  # head dim 32 > M
    with torch.no_grad():
        blk.learn_scale.fill_(3.0)
    out = blk.heads(torch.randn(2, 50, 64), torch.randn(2, 5, 64))  # [B, h, N, d]
    assert out.shape == (2, 2, 50, 32)
    for b in range(2):
        for h in range(2):
            assert torch.linalg.matrix_rank(out[b, h].double(), rtol=1e-5) <= 5


def test_prototype_block_has_no_residual_from_tokens():
    # if all INPs are the same vector, every token attends to identical values: the outputs differ only by a
    # per-token scalar (the summed ReLU attention), never by a copy of the token itself
    torch.manual_seed(0)
    blk = PrototypeBlock(dim=8, num_heads=1)
    p = torch.randn(1, 1, 8).expand(1, 4, 8)
    out = blk.heads(torch.randn(1, 10, 8), p)[0, 0]  # [N, d]
    assert torch.linalg.matrix_rank(out.double(), rtol=1e-5) <= 1


def test_coherence_zero_when_every_token_is_an_inp():
    inps = torch.randn(2, 4, 8)
    idx = torch.randint(0, 4, (2, 30))
    tokens = torch.gather(inps, 1, idx.unsqueeze(-1).expand(-1, -1, 8)) * 2.5  # positive scaling keeps cos = 1
    assert coherence_loss(tokens, inps).abs() < 1e-6
    assert coherence_loss(torch.randn(2, 30, 8), inps) > 0.05


def test_coherence_distance_bruteforce():
    x, p = torch.randn(2, 7, 5), torch.randn(2, 3, 5)
    want = torch.tensor(
        [[min(1 - F.cosine_similarity(x[b, n], p[b, m], dim=0) for m in range(3)) for n in range(7)] for b in range(2)]
    )
    torch.testing.assert_close(coherence_distance(x, p), want, atol=1e-6, rtol=0)


def test_scale_grad_scales_exactly():
    x = torch.randn(3, 4, requires_grad=True)
    f = torch.rand(3, 1) + 0.5
    w = torch.randn(3, 4)
    (scale_grad(x, f) * w).sum().backward()
    torch.testing.assert_close(x.grad, w * f)


def test_soft_mining_value_and_gradient_reweighting():
    torch.manual_seed(0)
    e = torch.randn(2, 6, 4, 4)
    d = torch.randn(2, 6, 4, 4, requires_grad=True)
    loss = soft_mining_loss([e], [d], gamma=3.0)
    plain = (1 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).mean()
    torch.testing.assert_close(loss, plain)
    loss.backward()
    d2 = d.detach().clone().requires_grad_(True)
    (1 - F.cosine_similarity(e.flatten(1), d2.flatten(1), dim=1)).mean().backward()
    delta = 1 - F.cosine_similarity(e, d.detach(), dim=1)
    factor = (delta / delta.mean()) ** 3
    torch.testing.assert_close(d.grad, d2.grad * factor.unsqueeze(1))
    torch.testing.assert_close(soft_mining_factor(e, d.detach()), factor.unsqueeze(1))


def test_anomaly_map_zero_for_perfect_reconstruction_and_image_score_topk():
    e = torch.randn(2, 8, 4, 4)
    assert anomaly_map([e, e], [e.clone(), e.clone()], 16).abs().max() < 1e-5
    maps = torch.rand(3, 1, 20, 20)
    k = math.ceil(0.01 * 400)
    want = torch.stack([torch.sort(m.flatten(), descending=True).values[:k].mean() for m in maps])
    torch.testing.assert_close(image_score(maps, 0.01), want)
    assert math.ceil(0.05 * 400) == 20
    torch.testing.assert_close(image_score(maps, 0.05), torch.stack([m.flatten().topk(20).values.mean() for m in maps]))


def test_stable_adamw_equals_adamw_amsgrad_without_clipping():
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(5, 3))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1 = StableAdamW([p1], lr=1e-2, weight_decay=1e-2, clip_threshold=float("inf"))
    o2 = torch.optim.AdamW([p2], lr=1e-2, weight_decay=1e-2, amsgrad=True, eps=1e-10)
    for _ in range(5):
        g = torch.randn(5, 3)
        for p, o in ((p1, o1), (p2, o2)):
            p.grad = g.clone()
            o.step()
    torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-5)


def test_forward_shapes_training_and_zero_shot_map():
    torch.manual_seed(0)
    m = _model()
    x = torch.rand(4, 3, 16, 16)
    out = m(x)
    assert [e.shape for e in out.en] == [torch.Size([4, 16, 8, 8])] * 2 == [d.shape for d in out.de]
    assert out.inps.shape == (4, 3, 16) and out.distance.shape == (4, 64)
    terms = m.loss(out)
    torch.testing.assert_close(terms["loss"], terms["soft_mining"] + terms["coherence"])
    torch.testing.assert_close(terms["coherence"], 0.2 * out.coherence)
    enc_before = [p.clone() for p in m.encoder.parameters()]
    recipe = inp.inp_former_recipe(m, x, iters=3, batch_size=2, warmup_iters=1)
    lrs = []
    opt_hook = _LR(lrs)
    hist = Trainer(m, None, recipe=recipe, hooks=[opt_hook], config=TrainConfig(progress=False)).fit()
    assert len(lrs) == 3 and lrs[0] == 0.0 and lrs[1] == pytest.approx(1e-3)  # warm-up then cosine, per step
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)  # 2 images/step: 2 epochs for 3 steps
    assert all(torch.equal(a, b) for a, b in zip(enc_before, m.encoder.parameters()))  # frozen encoder
    maps, scores = m.predict(x, mode="zero_shot", blur=False)
    out = m(x)
    want = F.interpolate(out.distance.view(4, 1, 8, 8), size=(16, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(maps, want)


def test_self_attention_baseline_has_no_inps():
    m = _model("self_attention")
    out = m(torch.rand(2, 3, 16, 16))
    assert out.inps is None and float(out.coherence) == 0.0
    with pytest.raises(PriorkitError, match="zero_shot"):
        m.predict(torch.rand(2, 3, 16, 16), mode="zero_shot")


def test_bad_inputs():
    enc = ConvEncoder(channels=16, depth=2)
    with pytest.raises(PriorkitError, match="decoder"):
        INPFormer(enc, 16, decoder="mlp")
    with pytest.raises(PriorkitError, match="decoder_groups"):
        INPFormer(enc, 16, num_decoder_blocks=2, encoder_groups=((0,),), decoder_groups=((5,),))
    with pytest.raises(PriorkitError, match="equal length"):
        INPFormer(enc, 16, num_decoder_blocks=2, encoder_groups=((0,), (1,)), decoder_groups=((0,),))
    with pytest.raises(PriorkitError, match="top_ratio"):
        image_score(torch.rand(2, 1, 4, 4), 0.0)
    with pytest.raises(PriorkitError, match="divisible"):
        PrototypeBlock(10, 3)
    m = INPFormer(enc, 32, num_decoder_blocks=2, encoder_groups=((0,), (1,)), decoder_groups=((0,), (1,)))
    with pytest.raises(PriorkitError, match="encoder output"):
        m(torch.rand(2, 3, 16, 16))  # encoder gives 16 channels, head expects 32


class _LR(Hook):
    def __init__(self, out):
        self.out = out

    def on_step_end(self, state, batch):
        self.out.append(state.optimizer.param_groups[0]["lr"])


def _fit_head(tmp=None, stop=None, resume=False):
    torch.manual_seed(0)
    m = _model()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(seed=2, progress=False, ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)
    recipe = inp.inp_former_recipe(m, x, iters=5, batch_size=2, warmup_iters=2)
    return m, Trainer(m, None, recipe=recipe, config=cfg).fit(resume=resume)


def test_recipe_resume_is_bit_identical(tmp_path):
    full, h_full = _fit_head()
    _fit_head(tmp_path, stop=0)
    resumed, h = _fit_head(tmp_path, resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r.get("loss") for r in h] == [r.get("loss") for r in h_full]


def test_pretrain_recipe_and_bad_images():
    enc = ConvEncoder(channels=8, depth=1)
    x = torch.rand(4, 3, 8, 8)
    recipe = inp.pretrain_encoder_recipe(enc, x, epochs=2)
    hist = Trainer(enc, None, recipe=recipe, config=TrainConfig(batch_size=2)).fit()
    assert len(hist) == 2 and hist[1]["mse"] < hist[0]["mse"] * 1.5
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(PriorkitError, match="images holds 1 NaN"):
        inp.pretrain_encoder_recipe(enc, bad)
    m = _model()
    with pytest.raises(PriorkitError, match="images holds"):
        inp.inp_former_recipe(m, bad, iters=2)
    with pytest.raises(PriorkitError, match="images must have 4"):
        m(torch.rand(3, 16, 16))
