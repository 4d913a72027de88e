"""The MIL baselines train through the engine and score bags."""

import torch
from torch import nn

from priorkit.baselines.mil import GatedABMIL, abmil_recipe, eval_abmil, naive_recipe
from priorkit.data.mil import mil_gaussian
from priorkit.prototypes.ins import mlp_encoder
from priorkit.train import TrainConfig, fit


def test_abmil_and_naive_train_through_fit():
    data = mil_gaussian(n=200, num_bags=(6, 6), bag_size=4, positives_per_bag=(1, 2), dim=6, seed=0)
    torch.manual_seed(0)
    m = GatedABMIL(mlp_encoder(6, 16), 16, 8)
    hist = fit(m, None, abmil_recipe(data.train, 2), config=TrainConfig(batch_size=1, progress=False))
    assert len(hist) == 2 and "bce" in hist[0]
    res = eval_abmil(m, data.test)
    assert 0.0 <= res["bag_auc"] <= 1.0
    naive = nn.Sequential(mlp_encoder(6, 16), nn.Linear(16, 2))
    hist = fit(naive, data.train.instance_dataset(), naive_recipe(2), config=TrainConfig(batch_size=8, progress=False))
    assert len(hist) == 2 and "ce" in hist[0]
