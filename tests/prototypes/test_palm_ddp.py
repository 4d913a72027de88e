"""PALM under DDP: a 2-process gloo run equals a 1-process run with the same global batch (DESIGN principle 8).

The prototype memory is written from the embeddings gathered over ranks (Sinkhorn, top-k, EMA), L_pcon's gradient
reaches every rank's rows, and L_mle is the global-batch mean; an uneven last batch (90 = 2 x 32 + 26) is included.
"""

import torch

from priorkit.data.datasets import IndexedTensorDataset
from priorkit.data.ood import shift_noise_views
from priorkit.models import MLP
from priorkit.prototypes.palm import PALMHook, PALMNet
from priorkit.train import TrainConfig, Trainer
from priorkit.train.distributed import run_gloo


def _aug(t, gen):
    return shift_noise_views(t, gen, sigma=0.1)


def _train(topk_source: str, out: str | None = None):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    x = torch.randn(3, 12, generator=g)[y] + 0.5 * torch.randn(90, 12, generator=g)
    torch.manual_seed(0)
    net = PALMNet(MLP(12, (24,), 3), proj_dim=8)
    loss = PALMHook(3, 8, num_protos=3, k=2, momentum=0.8, topk_source=topk_source, seed=1, epochs=3, lr=0.2,
                    warmup_epochs=1, augment=_aug)  # fmt: skip
    # the MLP's own classifier is not used by PALMNet (features only): DDP must allow unused parameters
    strategy = "ddp_find_unused_parameters_true" if torch.distributed.is_initialized() else "auto"
    cfg = TrainConfig(epochs=3, batch_size=32, seed=2, progress=False, strategy=strategy)
    Trainer(net, IndexedTensorDataset(x, y), recipe=loss.recipe(), hooks=[loss], config=cfg).fit()
    result = {"model": net.state_dict(), "protos": loss.prototypes.clone()}
    if out is not None:
        torch.save(result, out)
    return result


SOURCES = ("paper", "official")


def _worker(rank: int, out: str) -> None:
    for src in SOURCES:  # one spawn for both variants (process start-up dominates the test's time)
        _train(src, f"{out}.{src}" if rank == 0 else None)


def test_two_process_palm_equals_one_process(tmp_path):
    out = str(tmp_path / "ddp.pt")
    run_gloo(_worker, 2, out)
    init = PALMHook(3, 8, num_protos=3, k=2, seed=1).prototypes
    for src in SOURCES:
        single = _train(src)
        multi = torch.load(f"{out}.{src}", weights_only=True)
        for k, v in single["model"].items():
            assert torch.allclose(v, multi["model"][k], atol=1e-6), (src, k)
        assert torch.allclose(single["protos"], multi["protos"], atol=1e-6), src
        assert not torch.allclose(single["protos"], init, atol=1e-3)
