import doctest

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import priorkit.prototypes.pros_gan as pg
from priorkit.core.errors import PriorkitError
from priorkit.metrics.hashing import hamming_distance, mean_average_precision, precision_at_k, targeted_success_rate
from priorkit.prototypes.pros_gan import (
    Generator,
    HashMLP,
    ProSGAN,
    anchor_code,
    discriminator_loss,
    dpsh_recipe,
    gan_targets,
    generator_loss,
    hash_loss,
    pairwise_likelihood_loss,
    pgd_targeted_attack,
    pros_gan_recipe,
    prototype_net_loss,
)
from priorkit.train import TrainConfig, Trainer


def _pm1(*shape):
    return torch.randint(0, 2, shape).float() * 2 - 1


def test_docstring_example_runs():
    assert doctest.testmod(pg, raise_on_error=True).attempted > 0


def test_prototype_code_is_binary():
    torch.manual_seed(0)
    att = ProSGAN(HashMLP(16, 8, hidden=16), 16, 4, proto_hidden=16, feat_dim=8, hidden=16)
    hp = att.prototype_code(torch.arange(4))
    assert hp.shape == (4, 8) and torch.all((hp == 1) | (hp == -1))


def test_hash_loss_range_and_hamming_identity():
    a, b = _pm1(6, 16), _pm1(6, 16)
    d_h = hamming_distance(a, b).diagonal()
    torch.testing.assert_close(hash_loss(a, b), 2 * d_h.mean() / 16)
    for _ in range(5):
        u = torch.rand(6, 16) * 2 - 1
        v = hash_loss(u, b)
        assert 0.0 <= float(v) <= 2.0
    assert float(hash_loss(b, b)) == 0.0 and float(hash_loss(-b, b)) == 2.0


def test_pairwise_likelihood_bruteforce_and_stable_for_large_theta():
    torch.manual_seed(0)
    h, codes = torch.randn(3, 4), _pm1(5, 4)
    S = torch.randint(0, 2, (3, 5)).float()
    want = 0.0
    for i in range(3):
        for j in range(5):
            th = 0.5 * float(h[i] @ codes[j])
            want -= float(S[i, j]) * th - float(torch.log1p(torch.exp(torch.tensor(th))))
    torch.testing.assert_close(pairwise_likelihood_loss(h, codes, S), torch.tensor(want / 15))
    big = torch.full((2, 64), 1.0) * 50  # theta = 1600: exp would overflow
    labels = torch.eye(3)[:2]
    terms = prototype_net_loss(big, torch.rand(2, 3), labels, _pm1(7, 64), torch.eye(3)[torch.randint(0, 3, (7,))])
    assert all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(terms["loss"], terms["likelihood"] + terms["quantisation"] + terms["label"])


def test_discriminator_targets_and_losses():
    y = F.one_hot(torch.tensor([0, 2]), 3).float()
    torch.testing.assert_close(gan_targets(y, True), torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]]))
    torch.testing.assert_close(gan_targets(y, False), torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 1]]))
    yt = F.one_hot(torch.tensor([1, 1]), 3).float()
    perfect = discriminator_loss(gan_targets(y, True), gan_targets(yt, False), y, yt)
    assert float(perfect) == 0.0
    x, xa = torch.rand(2, 5), torch.rand(2, 5)
    hp = _pm1(2, 4)
    t = generator_loss(xa, x, hp, hp, gan_targets(yt, True), yt, rec_weight=10.0)
    assert float(t["hash"]) == 0.0 and float(t["gan"]) == 0.0
    torch.testing.assert_close(t["rec"], 10.0 * F.mse_loss(xa, x))


def test_generator_output_in_range():
    g = Generator(16, 8, hidden=32)
    out = g(torch.rand(5, 16) * 2 - 1, torch.randn(5, 8) * 100)
    assert out.shape == (5, 16) and out.min() >= -1 and out.max() <= 1


def test_anchor_code_bruteforce_and_pgd_budget():
    db, lab = _pm1(20, 8), torch.randint(0, 3, (20,))
    tgt = torch.tensor([0, 2])
    a = anchor_code(db, F.one_hot(lab, 3), F.one_hot(tgt, 3))
    for i, t in enumerate(tgt):
        s = db[lab == t].sum(0)
        torch.testing.assert_close(a[i], torch.where(s >= 0, 1.0, -1.0))
    torch.manual_seed(0)
    model = HashMLP(10, 8, hidden=16)
    x = torch.rand(4, 10)
    xa = pgd_targeted_attack(model, x, _pm1(4, 8), eps=0.05, steps=10)
    assert (xa - x).abs().max() <= 0.05 + 1e-6 and xa.min() >= 0 and xa.max() <= 1


def test_map_matches_loop_and_metrics():
    torch.manual_seed(0)
    q, d = _pm1(4, 6), _pm1(15, 6)
    ql, dl = torch.randint(0, 3, (4,)), torch.randint(0, 3, (15,))
    aps = []
    for i in range(4):
        dist = [(float((q[i] != d[j]).sum()), j) for j in range(15)]
        order = [j for _, j in sorted(dist, key=lambda t: (t[0], t[1]))]
        rel = [int(dl[j] == ql[i]) for j in order]
        hits, ap = 0, 0.0
        for r, v in enumerate(rel, 1):
            if v:
                hits += 1
                ap += hits / r
        aps.append(ap / max(1, sum(rel)))
    assert abs(mean_average_precision(q, d, ql, dl) - sum(aps) / 4) < 1e-6
    # querying with the database itself and class-pure codes gives MAP 1 and full success
    codes = torch.tensor([[1.0] * 6, [-1.0] * 6, [1.0, -1.0] * 3])
    lab = torch.arange(3).repeat(4)
    assert mean_average_precision(codes[lab], codes[lab], lab, lab) == pytest.approx(1.0)
    assert targeted_success_rate(codes[lab], codes[lab], lab, lab, k=4) == 1.0
    assert precision_at_k(codes[lab], codes[lab], lab, lab, k=4).min() == 1.0
    with pytest.raises(PriorkitError, match="-1, \\+1"):
        mean_average_precision(torch.zeros(2, 6), d, ql[:2], dl)


def test_bad_inputs():
    with pytest.raises(PriorkitError, match="num_classes"):
        ProSGAN(HashMLP(4, 4, hidden=4), 4, 1)
    att = ProSGAN(HashMLP(4, 4, hidden=4), 4, 3, proto_hidden=8, feat_dim=4, hidden=8)
    with pytest.raises(PriorkitError, match="labels"):
        att.prototype_code(torch.tensor([5]))
    with pytest.raises(PriorkitError, match="x must have shape"):
        att.attack(torch.rand(2, 5), torch.tensor([0, 1]))
    with pytest.raises(PriorkitError, match="eps"):
        pgd_targeted_attack(HashMLP(4, 4, hidden=4), torch.rand(2, 4), _pm1(2, 4), eps=0.0)


def _attack_run(tmp=None, stop=None, resume=False):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(30, 12, generator=g), torch.arange(30) % 3
    torch.manual_seed(0)
    hm = HashMLP(12, 6, hidden=8)
    cfg = TrainConfig(batch_size=10, seed=1, progress=False, ckpt_dir=str(tmp) if tmp else None, stop_after_epoch=stop)
    Trainer(hm, TensorDataset(x, y), recipe=dpsh_recipe(hm, epochs=2), config=TrainConfig(batch_size=10)).fit()
    torch.manual_seed(1)
    att = ProSGAN(hm, 12, 3, proto_hidden=8, feat_dim=4, hidden=8)
    recipe = pros_gan_recipe(att, x, y, steps=7, steps_per_epoch=4, prototype_batch_size=6, epochs=2,
                             decay_epochs=2, batch_size=12, lr=1e-3, prototype_lr=1e-3)  # fmt: skip
    hist = Trainer(att, None, recipe=recipe, config=cfg).fit(resume=resume)
    return att, hist, x


@pytest.mark.parametrize("stop", [0, 3])  # inside the prototype stage, inside the GAN stage
def test_gan_recipe_resume_is_bit_identical(tmp_path, stop):
    full, h_full, x = _attack_run()
    assert [h.get("phase") for h in h_full if "action" not in h] == ["prototype"] * 2 + ["gan"] * 4
    _attack_run(tmp_path, stop=stop)
    resumed, h, _ = _attack_run(tmp_path, resume=True)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r.get("loss") for r in h] == [r.get("loss") for r in h_full]
    assert not full.hash_model.training  # the frozen target stays in eval mode whatever the engine sets
    t = torch.tensor([0, 1, 2, 0])
    assert torch.equal(full.attack(x[:4], t), resumed.attack(x[:4], t))


def test_dpsh_recipe_freezes_and_refuses_bad_data():
    x, y = torch.rand(20, 6), torch.arange(20) % 2
    hm = HashMLP(6, 4, hidden=8)
    hist = Trainer(hm, TensorDataset(x, y), recipe=dpsh_recipe(hm, epochs=3), config=TrainConfig(batch_size=10)).fit()
    assert len([h for h in hist if "action" not in h]) == 3
    assert not any(p.requires_grad for p in hm.parameters())
    bad = x.clone()
    bad[0, 0] = float("nan")
    hm2 = HashMLP(6, 4, hidden=8)
    before = {k: v.clone() for k, v in hm2.state_dict().items()}
    with pytest.raises(PriorkitError, match="x holds"):
        Trainer(hm2, TensorDataset(bad, y), recipe=dpsh_recipe(hm2), config=TrainConfig(batch_size=20)).fit()
    assert all(torch.equal(v, hm2.state_dict()[k]) for k, v in before.items())
    att = ProSGAN(HashMLP(6, 4, hidden=8), 6, 2, proto_hidden=8, feat_dim=4, hidden=8)
    with pytest.raises(PriorkitError, match="x holds"):
        pros_gan_recipe(att, bad, y)


def _dpsh_fit():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 6, generator=g), torch.arange(24) % 3
    hm = HashMLP(6, 4, hidden=8)
    cfg = TrainConfig(batch_size=8, seed=0, progress=False)
    Trainer(hm, TensorDataset(x, y), recipe=dpsh_recipe(hm, epochs=2), config=cfg).fit()
    return hm


def _dpsh_worker(rank, out):
    torch.set_num_threads(1)
    hm = _dpsh_fit()
    if rank == 0:
        torch.save(hm.state_dict(), out)


def test_dpsh_pairs_span_the_global_batch_under_ddp(tmp_path):
    """The in-batch pairwise likelihood is batch-level: 2 gloo processes (gather_with_grad) equal 1 process."""
    from priorkit.train.distributed import run_gloo

    single = _dpsh_fit()
    out = str(tmp_path / "ddp.pt")
    run_gloo(_dpsh_worker, 2, out)
    multi = torch.load(out, weights_only=True)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, multi[k], atol=1e-6), k
