"""The OOD baselines (priorkit.baselines.ood) rank outliers below in-distribution samples."""

import torch

from priorkit.baselines.ood import (
    class_mahalanobis_fit,
    class_mahalanobis_score,
    energy_score,
    knn_score,
    ssd_fit,
    ssd_score,
)


def test_scores_rank_outliers_lower():
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([[3.0, 0, 0], [0, 3.0, 0]])
    y = torch.arange(200) % 2
    x = mu[y] + 0.3 * torch.randn(200, 3, generator=g)
    ood = torch.tensor([[0.0, 0.0, 3.0]]) + 0.3 * torch.randn(20, 3, generator=g)
    cm = class_mahalanobis_fit(x, y)
    assert class_mahalanobis_score(cm, x[:20]).min() > class_mahalanobis_score(cm, ood).max()
    assert knn_score(x, x[:20], k=5).min() > knn_score(x, ood, k=5).max()
    fit = ssd_fit(x.numpy())  # numpy accepted at the boundary
    assert ssd_score(fit, x[:20]).mean() > ssd_score(fit, ood).mean()
    assert energy_score(torch.tensor([[5.0, 0.0]])) > energy_score(torch.tensor([[0.0, 0.0]]))
