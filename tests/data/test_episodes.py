import doctest

import pytest
import torch

import priorkit.data.episodes as episodes
import priorkit.metrics.fewshot as fewshot
from priorkit.core.errors import PriorkitError
from priorkit.data.episodes import EpisodeSampler, make_fewshot
from priorkit.metrics.fewshot import episode_accuracy, mean_ci95


def test_docstring_examples_run():
    assert doctest.testmod(episodes).failed == 0
    assert doctest.testmod(fewshot).failed == 0


def test_episodes_are_disjoint_balanced_and_deterministic():
    y = torch.arange(8).repeat_interleave(20)
    s = EpisodeSampler(y, n_way=5, n_shot=3, n_query=4, n_episodes=5, seed=7)
    for i, ep in enumerate(s):
        assert not set(ep.support_idx.tolist()) & set(ep.query_idx.tolist())
        assert torch.equal(torch.tensor(ep.classes)[ep.support_y], y[ep.support_idx])
        assert torch.equal(torch.tensor(ep.classes)[ep.query_y], y[ep.query_idx])
        assert torch.equal(torch.bincount(ep.query_y), torch.full((5,), 4))
        again = EpisodeSampler(y, n_way=5, n_shot=3, n_query=4, n_episodes=5, seed=7)[i]
        assert torch.equal(again.support_idx, ep.support_idx) and torch.equal(again.query_idx, ep.query_idx)


def test_base_novel_split_is_disjoint():
    x, y = torch.randn(100, 3), torch.arange(10).repeat(10)
    fs = make_fewshot(x, y, base_classes=4, seed=0)
    assert fs.novel_classes == (4, 5, 6, 7, 8, 9) and len(fs.novel) == 60
    assert len(fs.base_train) + len(fs.base_val) == 40


def test_ci_and_hungarian():
    m, ci = mean_ci95([0.5, 0.5])
    assert m == 0.5 and ci == 0.0
    assert episode_accuracy(torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1]), hungarian=True) == 1.0
    assert episode_accuracy(torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1])) == 0.0


def test_bad_input():
    y = torch.arange(3).repeat_interleave(5)
    with pytest.raises(PriorkitError, match="class 0 has 5 items"):
        EpisodeSampler(y, n_way=2, n_shot=3, n_query=3)
    with pytest.raises(PriorkitError, match="n_way"):
        EpisodeSampler(y, n_way=4, n_shot=1, n_query=1)
    with pytest.raises(PriorkitError):
        mean_ci95([])


def test_make_fewshot_accepts_numpy_arrays():
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), np.repeat(np.arange(6), 10)
    fs = make_fewshot(x, y, base_classes=3, seed=0)
    assert fs.base_train.x.dtype == torch.float32 and fs.novel_classes == (3, 4, 5)
    ep = EpisodeSampler(y, n_way=3, n_shot=2, n_query=3, n_episodes=1)[0]
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2]
