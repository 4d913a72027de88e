import math

import pytest
import torch
import torch.nn.functional as F

from priorkit.core.errors import PriorkitError
from priorkit.data import IndexedTensorDataset
from priorkit.models.vit import ViT
from priorkit.regularizers import ovor
from priorkit.regularizers.ovor import (
    OVOR,
    SPEC,
    OnePrompt,
    OnePromptViT,
    boundary_indices,
    cosine_factor,
    energy,
    kth_neighbour_distance,
    masked_cross_entropy,
    masked_logits,
    oneprompt_num_params,
    outlier_candidates,
    prefix_attention,
    select_outliers,
    synthesize_outliers,
    vor_loss,
)
from priorkit.train import Hook, Recipe, TrainConfig, Trainer

SMALL_VOR = {"k": 5, "select": 10, "sample_from": 20, "num_per_class": 8, "id_batch_size": 16}
LAYOUT = {"g_layers": (0,), "g_length": 2, "e_layers": (1,), "e_length": 4}


def _encoder(seed=0):
    torch.manual_seed(seed)
    return ViT(image_size=2, patch_size=1, in_channels=4, num_classes=1, dim=16, depth=2, heads=2, mlp_dim=32)


def _tasks(n_per_class=24, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 4, 2, 2, generator=g) * 2
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + 0.5 * torch.randn(len(y), 4, 2, 2, generator=g)
    return [IndexedTensorDataset(x[y // 2 == t], y[y // 2 == t]) for t in range(classes // 2)]


def _brute_kth(q, bank, k):
    return torch.cdist(q, bank).sort(dim=1).values[:, k - 1]


# ----------------------------------------------------------------------------------------- outlier synthesis
def test_kth_distance_is_exact_and_counts_the_point_itself():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(50, 6, generator=g), torch.randn(30, 6, generator=g)
    assert torch.allclose(kth_neighbour_distance(q, bank, 7, chunk=8), _brute_kth(q, bank, 7))
    # float32 matrix-product distances (as faiss's IndexFlatL2): the point itself at ~0, up to rounding
    assert torch.allclose(kth_neighbour_distance(bank, bank, 1), torch.zeros(50), atol=5e-3)


def test_boundary_samples_have_the_largest_kth_distance():
    normed = F.normalize(torch.randn(40, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    idx = boundary_indices(normed, 4, 6)
    kth = _brute_kth(normed, normed, 4)
    rest = torch.ones(40, dtype=torch.bool)
    rest[idx] = False
    assert len(set(idx.tolist())) == 6 and kth[idx].min() >= kth[rest].max() - 1e-6


def test_outlier_count_and_every_kept_candidate_is_farther_than_every_rejected_one():
    feats = torch.randn(90, 8, generator=torch.Generator().manual_seed(2)) * 3
    out = synthesize_outliers(feats, 3, generator=torch.Generator().manual_seed(0), **{
        k: v for k, v in SMALL_VOR.items() if k != "id_batch_size"})  # fmt: skip
    assert out.shape == (8 * 3, 8)
    normed = F.normalize(feats, dim=1)
    cand = outlier_candidates(normed, boundary_indices(normed, 5, 10), sample_from=20,
                              generator=torch.Generator().manual_seed(3))  # fmt: skip
    outliers, kept, dist = select_outliers(cand, normed, 5, 17)
    assert outliers.shape == (17, 8) and torch.equal(outliers, cand[kept])
    assert torch.allclose(dist, _brute_kth(cand, normed, 5), atol=1e-5)
    rejected = torch.ones(len(cand), dtype=torch.bool)
    rejected[kept] = False
    assert dist[kept].min() >= dist[rejected].max()


def test_paper_and_released_candidates():
    normed = F.normalize(torch.randn(30, 4, generator=torch.Generator().manual_seed(4)), dim=1)
    b = torch.tensor([3, 7, 11])

    def cands(**kw):
        return outlier_candidates(normed, b, sample_from=5, cov=0.1, generator=torch.Generator().manual_seed(9), **kw)

    paper, offsets = cands(), cands(add_boundary_point=False)
    # the paper's candidates are the boundary points plus the same offsets; block i belongs to boundary[i]
    assert torch.allclose(paper, normed[b].repeat_interleave(5, dim=0) + offsets)
    released = cands(add_boundary_point=False, shared_offsets=True)
    blocks = released.view(3, 5, 4)
    assert torch.equal(blocks[0], blocks[1]) and torch.equal(blocks[0], blocks[2])
    assert SPEC.presets["released"]["add_boundary_point"] is False and SPEC.presets["released"]["shared_offsets"]


# ----------------------------------------------------------------------------------------------- losses
def test_vor_term_is_zero_inside_the_thresholds():
    id_logits = torch.full((4, 3), 20.0, requires_grad=True)  # E = -20 - ln 3 <= -15
    ood_logits = torch.full((5, 3), -5.0, requires_grad=True)  # E = 5 - ln 3 >= -3
    loss = vor_loss(id_logits, ood_logits)
    loss.backward()
    assert loss.item() == 0.0 and not id_logits.grad.any() and not ood_logits.grad.any()


@pytest.mark.parametrize("huber", [True, False])
def test_vor_loss_matches_its_formula(huber):
    g = torch.Generator().manual_seed(5)
    id_logits, ood_logits = torch.randn(6, 2, generator=g) * 8, torch.randn(7, 2, generator=g) * 3 + 2
    d_in = (-torch.logsumexp(id_logits, 1) + 15).clamp_min(0)
    d_out = (-3 + torch.logsumexp(ood_logits, 1)).clamp_min(0)

    def dist(d):  # Huber with delta 1 against 0, or the squared error
        return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean() if huber else (d**2).mean()

    want = 0.1 * (dist(d_in) + dist(d_out))
    assert torch.allclose(vor_loss(id_logits, ood_logits, huber=huber), want)
    assert torch.allclose(energy(id_logits), -torch.logsumexp(id_logits, 1))


def test_masked_cross_entropy_gives_zero_gradient_to_other_tasks_rows():
    model = OnePromptViT(_encoder(), 6, **LAYOUT)
    x, y = torch.randn(5, 4, 2, 2), torch.tensor([2, 3, 2, 3, 3])
    logits = model(x)
    loss = masked_cross_entropy(logits, y, 2, 4)
    assert torch.allclose(loss, F.cross_entropy(logits[:, 2:4], y - 2))
    loss.backward()
    grad = model.head.weight.grad
    assert not grad[:2].any() and not grad[4:].any() and grad[2:4].abs().sum() > 0
    assert not model.head.bias.grad[:2].any() and all(p.grad is not None for p in model.prompt.parameters())
    assert all(p.grad is None for p in model.encoder.parameters())
    m = masked_logits(torch.zeros(2, 6), 2, 4)
    assert m.shape == (2, 4) and torch.isinf(m[:, :2]).all() and not m[:, 2:].any()


# ---------------------------------------------------------------------------------------------- OnePrompt
def test_oneprompt_parameter_count_matches_the_formula():
    paper = {k: SPEC.presets["paper"][k] for k in ("g_layers", "g_length", "e_layers", "e_length")}
    assert OnePrompt(768, 12, **paper).num_params == oneprompt_num_params(768, **paper) == 2 * 10 * 768 + 3 * 40 * 768
    assert oneprompt_num_params(768) == 107_520
    model = OnePromptViT(_encoder(), 3, **LAYOUT)
    assert sum(p.numel() for p in model.parameter_groups()["prompt"]) == 16 * (2 + 4)
    p = OnePrompt(8, 3, g_layers=(0, 1), g_length=2, e_layers=(1,), e_length=4).prefix(1, 3)
    assert p[0].shape == (3, 3, 8)  # layer 1 has E (2 keys) then G (1 key)


def test_prefix_attention_without_prompt_is_the_plain_attention():
    enc = _encoder()
    x = torch.randn(3, 5, 16)
    attn = enc.blocks[0].attn
    assert torch.allclose(prefix_attention(attn, x), attn(x), atol=1e-6)
    bare = OnePromptViT(_encoder(), 3, g_layers=(), e_layers=())
    images = torch.randn(4, 4, 2, 2)
    assert bare.prompt.num_params == 0
    assert torch.allclose(bare.features(images), _encoder().features(images), atol=1e-6)


def test_prefix_attention_matches_the_written_out_formula():
    enc = _encoder()
    attn, x = enc.blocks[1].attn, torch.randn(2, 5, 16)
    pk, pv = torch.rand(1, 3, 16), torch.rand(1, 3, 16)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    k, v = torch.cat([pk.expand(2, -1, -1), k], 1), torch.cat([pv.expand(2, -1, -1), v], 1)
    heads = []
    for h in range(2):
        sl = slice(8 * h, 8 * (h + 1))
        w = (q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8)).softmax(-1)
        heads.append(w @ v[..., sl])
    want = attn.proj(torch.cat(heads, -1))
    assert torch.allclose(prefix_attention(attn, x, (pk, pv)), want, atol=1e-5)


def test_frozen_encoder_stays_in_eval_mode_and_untrainable():
    model = OnePromptViT(_encoder(), 3, **LAYOUT).train()
    assert model.training and not model.encoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert set(model.parameter_groups()) == {"prompt", "head"}


# ------------------------------------------------------------------------------------------ the CIL driver
def _cfg(**kw):
    base = {"epochs": 3, "batch_size": 16, "lr": 1e-2, "optimizer": "adam", "scheduler": "cosine", "progress": False}
    return TrainConfig(**{**base, **kw})


def _learner(vor_epochs=2, **kw):
    torch.manual_seed(0)
    return OVOR(_encoder(), 4, **LAYOUT, vor_epochs=vor_epochs, **{**SMALL_VOR, **kw})


def test_vor_epochs_train_only_the_current_tasks_head_rows():
    tasks = _tasks()
    learner = _learner()
    learner.learn_task(tasks[0], _cfg())
    snaps = []

    def spy(state):
        m = state.model
        snaps.append((state.phase.name, [p.detach().clone() for p in m.prompt.parameters()],
                      m.head.weight.detach().clone(), m.head.bias.detach().clone()))  # fmt: skip
        return {}

    out = learner.learn_task(tasks[1], _cfg(), eval_fn=spy)
    assert out["classes"] == (2, 4) and learner.seen == 4 and learner.task == 2
    regular = [s for s in snaps if s[0] == "task1_regular"][-1]
    final = snaps[-1]
    assert final[0] == "task1_vor" and any(h.get("vor", 0) > 0 for h in out["history"])
    assert all(torch.equal(a, b) for a, b in zip(regular[1], final[1]))  # prompts frozen in the VOR epochs
    assert torch.equal(regular[2][:2], final[2][:2]) and torch.equal(regular[3][:2], final[3][:2])
    assert not torch.equal(regular[2][2:], final[2][2:])
    assert learner.predict(tasks[1].x).shape == (len(tasks[1]), 4)


def test_virtual_outlier_batches_pair_every_real_batch_with_its_own_outliers():
    tasks = _tasks()
    learner = _learner(vor_epochs=1)
    seen = []

    class Spy(Hook):
        def on_step_end(self, state, batch):
            if state.phase.name == "vor":
                seen.append((batch.index.clone(), batch.extras["outliers"].clone()))

    hook = ovor.VirtualOutliers(tasks[0].x, tasks[0].y, 0, 2, phase="vor", **SMALL_VOR)
    phase = hook.phase(1)
    Trainer(learner.model, tasks[0], recipe=Recipe([phase]), hooks=[hook, Spy()], config=_cfg()).fit()
    n_out, n_batches = 8 * 2, -(-48 // 16)
    assert len(seen) == n_batches and len(hook.outliers) == n_out
    assert sorted(torch.cat([i for i, _ in seen]).tolist()) == list(range(48))
    used = torch.cat([o for _, o in seen])
    assert torch.equal(used, hook.outliers[: n_batches * (n_out // n_batches)])


def test_labels_must_be_the_next_block_of_classes():
    tasks = _tasks()
    with pytest.raises(PriorkitError, match="next contiguous block of classes starting at 0"):
        _learner().learn_task(tasks[1], _cfg())
    with pytest.raises(PriorkitError, match="predict needs at least one learned task"):
        _learner().predict(tasks[0].x)


def test_checkpoint_resume_inside_the_vor_epochs_is_bit_identical(tmp_path):
    tasks = _tasks()
    straight = _learner()
    straight.learn_task(tasks[0], _cfg())
    straight.learn_task(tasks[1], _cfg())

    resumed = _learner()
    resumed.learn_task(tasks[0], _cfg())
    cut = _cfg(ckpt_dir=str(tmp_path), stop_after_epoch=3)  # epochs 0-2 regular, 3-4 VOR: stop after the first VOR
    out = resumed.learn_task(tasks[1], cut)
    assert out["stopped"] and resumed.task == 1
    resumed.learn_task(tasks[1], _cfg(ckpt_dir=str(tmp_path)), resume=True)
    assert resumed.task == 2
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_vor_zero_epochs_is_oneprompt_alone():
    tasks = _tasks()
    base = _learner(vor_epochs=0)
    out = base.learn_task(tasks[0], _cfg())
    assert all("vor" not in h for h in out["history"]) and len(out["history"]) == 3


def test_official_cosine_schedule():
    assert cosine_factor(0, 25) == 1.0
    assert cosine_factor(24, 25) == pytest.approx(math.cos(0.495 * math.pi))
    assert cosine_factor(0, 1) == 1.0
    with pytest.raises(PriorkitError, match=r"epoch must be an integer in \[0, 4\]"):
        cosine_factor(5, 5)


def test_presets_construct_the_entry():
    assert SPEC.entry == "OVOR" and "OVOR" in ovor.__all__
    assert {"paper", "small", "released"} <= set(SPEC.presets)
    for preset in SPEC.presets.values():
        learner = OVOR(ViT(image_size=2, patch_size=1, in_channels=4, dim=16, depth=5, heads=2), 10, **preset)
        assert learner.vor_epochs == preset["vor_epochs"]
        assert learner.model.prompt.num_params == oneprompt_num_params(16, **{
            k: preset[k] for k in ("g_layers", "g_length", "e_layers", "e_length")})  # fmt: skip


def test_faiss_backend_matches_torch():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(60, 6, generator=g), torch.randn(20, 6, generator=g)
    assert torch.allclose(kth_neighbour_distance(q, bank, 5, knn="faiss"), kth_neighbour_distance(q, bank, 5),
                          atol=1e-4)  # fmt: skip
