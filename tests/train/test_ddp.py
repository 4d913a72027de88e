"""A 2-process gloo run equals a 1-process run with the same global batch (DESIGN principle 8)."""

import pytest
import torch

from priorkit.data import gaussian_mixture
from priorkit.models import MLP
from priorkit.regularizers import ELR, PSKD
from priorkit.train import TrainConfig, Trainer
from priorkit.train.distributed import ShardedBatchSampler, run_gloo


def _train(method: str, out: str | None = None):
    torch.set_num_threads(1)
    data = gaussian_mixture(256, num_classes=4, dim=5, val=0.0, test=0.25, seed=0)
    torch.manual_seed(0)
    model = MLP(5, (32,), 4)
    n = len(data.train)
    hook = ELR(n, 4, beta=0.7, lam=3.0) if method == "elr" else PSKD(n, 4)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=2)
    Trainer(model, data.train, hooks=[hook], config=cfg).fit()
    result = {"model": model.state_dict(), "memory": hook.memory.table.clone()}
    if out is not None:
        torch.save(result, out)
    return result


def _worker(rank: int, method: str, out: str) -> None:
    _train(method, out if rank == 0 else None)


@pytest.mark.parametrize("method", ["elr", "pskd"])
def test_two_process_run_equals_one_process(tmp_path, method):
    single = _train(method)
    out = str(tmp_path / "ddp.pt")
    run_gloo(_worker, 2, method, out)
    multi = torch.load(out, weights_only=True)
    for k, v in single["model"].items():
        assert torch.allclose(v, multi["model"][k], atol=1e-6), k
    assert torch.allclose(single["memory"], multi["memory"], atol=1e-6)


def test_sharded_sampler_global_batches_match():
    one = list(ShardedBatchSampler(50, 10, seed=3, rank=0, world_size=1))
    r0 = list(ShardedBatchSampler(50, 10, seed=3, rank=0, world_size=2))
    r1 = list(ShardedBatchSampler(50, 10, seed=3, rank=1, world_size=2))
    for g, a, b in zip(one, r0, r1):
        assert sorted(g) == sorted(a + b) and not set(a) & set(b)
    with pytest.raises(ValueError, match="divisible by the world size"):
        ShardedBatchSampler(50, 9, rank=0, world_size=2)
