"""The shared contrastive losses, Sinkhorn and global views against brute force."""

import math

import torch
import torch.nn.functional as F

from priorkit.nn.contrastive import info_nce, moco_info_nce, supcon_loss, supcon_views
from priorkit.nn.sinkhorn import sinkhorn
from priorkit.nn.views import rank_rows, view_generator


def test_supcon_views_equals_loop():
    g = torch.Generator().manual_seed(0)
    feats, lab = torch.randn(4, 2, 6, generator=g), torch.tensor([0, 1, 0, 1])
    f = F.normalize(torch.cat(feats.unbind(1)), dim=1)
    labs = lab.repeat(2)
    total = 0.0
    for i in range(8):
        s = [float(f[i] @ f[j]) / 0.07 for j in range(8)]
        den = math.log(sum(math.exp(s[j] - max(s)) for j in range(8) if j != i)) + max(s)
        pos = [s[j] - den for j in range(8) if j != i and labs[j] == labs[i]]
        total += -sum(pos) / len(pos)
    assert abs(float(supcon_views(feats, lab)) - total / 8) < 1e-4
    mask = (labs[:, None] == labs[None, :]).float()
    assert torch.allclose(supcon_loss(f, mask), supcon_views(feats, lab), atol=1e-6)


def test_info_nce_and_moco_equal_cross_entropy():
    g = torch.Generator().manual_seed(1)
    f = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(float("-inf"))
    target = (torch.arange(6) + 3) % 6
    assert torch.allclose(info_nce(f, 2, 1.0), F.cross_entropy(sim, target), atol=1e-6)
    q, k, queue = f[:3], f[3:], F.normalize(torch.randn(5, 4, generator=g), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.07
    assert torch.allclose(moco_info_nce(q, k, queue), F.cross_entropy(logits, torch.zeros(3, dtype=torch.long)))


def test_sinkhorn_rows_sum_to_one_and_views_helpers():
    g = torch.Generator().manual_seed(2)
    q = sinkhorn(torch.randn(10, 4, generator=g), torch.randn(6, 4, generator=g))
    assert torch.allclose(q.sum(1), torch.ones(10), atol=1e-5)
    assert rank_rows(10, 1, 2) == slice(5, 10) and rank_rows(9, 1, 2) == slice(5, 9)
    assert torch.equal(torch.rand(3, generator=view_generator(1, 5)), torch.rand(3, generator=view_generator(1, 5)))
