"""The engine's recipes: phases, frozen groups, shared optimizers, actions, manual steps, step schedules,
resume in the middle of a multi-phase recipe, and DDP equality for a recipe."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from priorkit.core.errors import CheckpointMismatchError, PriorkitError
from priorkit.data import gaussian_mixture
from priorkit.train import Phase, Recipe, TrainConfig, Trainer
from priorkit.train.distributed import run_gloo

DATA = gaussian_mixture(120, num_classes=3, dim=6, val=0.0, test=0.2, seed=0)


class TwoPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))

    def parameter_groups(self):
        return {"body": list(self.body.parameters()), "head": list(self.head.parameters())}


def _recipe(pushes: list[int] | None = None) -> Recipe:
    log = pushes if pushes is not None else []

    def push(state):
        log.append(state.epoch)
        with torch.no_grad():
            state.model.head.bias.zero_()
        return {"pushed": 1.0}

    adam = lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)  # noqa: E731
    step_sched = lambda o, spe: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)  # noqa: E731
    return Recipe(
        [
            Phase("warm", epochs=2, trainable=["head"], optimizer=adam),
            Phase("joint", epochs=2, optimizer=adam, optimizer_key="joint", scheduler=step_sched, interval="step"),
            Phase("push", epochs=0, on_end=push),
            Phase("last", epochs=1, trainable=["head"], train_mode=False),
            Phase("joint2", epochs=1, optimizer=adam, optimizer_key="joint", scheduler=step_sched, interval="step"),
        ]
    )


def _fit(tmp=None, stop=None, resume=False, pushes=None):
    model = TwoPart()
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=3, ckpt_dir=str(tmp) if tmp else None, progress=False,
                      stop_after_epoch=stop)  # fmt: skip
    tr = Trainer(model, DATA.train, recipe=_recipe(pushes), config=cfg)
    hist = tr.fit(resume=resume)
    return model, hist, tr


def test_phases_freeze_groups_and_share_optimizers():
    pushes = []
    model, hist, tr = _fit(pushes=pushes)
    assert [h.get("phase") for h in hist if "action" not in h] == ["warm", "warm", "joint", "joint", "last", "joint2"]
    assert pushes == [4] and any(h.get("pushed") == 1.0 for h in hist)
    assert set(tr.state.optimizers) == {"warm", "joint", "last"}  # joint and joint2 share one Adam
    # the shared StepLR counted the steps of both joint phases (8 per epoch: 96 samples / 16)
    assert tr.state.schedulers["joint"].last_epoch == 3 * 6


def test_frozen_group_does_not_move():
    model = TwoPart()
    body0 = [p.detach().clone() for p in model.body.parameters()]
    rec = Recipe([Phase("head_only", epochs=2, trainable=["head"])])
    Trainer(model, DATA.train, recipe=rec, config=TrainConfig(batch_size=16, progress=False)).fit()
    assert all(torch.equal(a, b) for a, b in zip(body0, model.body.parameters()))
    with pytest.raises(PriorkitError, match="trainable group must be one of"):
        Trainer(TwoPart(), DATA.train, recipe=Recipe([Phase("x", trainable=["neck"])])).fit()


@pytest.mark.parametrize("stop", [1, 3, 4])
def test_resume_mid_recipe_is_bit_identical(tmp_path, stop):
    full, hist_full, _ = _fit()
    _fit(tmp_path, stop=stop)
    resumed, hist, _ = _fit(tmp_path, resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h.get("loss") for h in hist] == [h.get("loss") for h in hist_full]


def test_resume_with_other_recipe_refused(tmp_path):
    _fit(tmp_path, stop=1)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, seed=3, ckpt_dir=str(tmp_path), progress=False)
    tr = Trainer(TwoPart(), DATA.train, recipe=Recipe([Phase("fit", epochs=2)]), config=cfg)
    with pytest.raises(CheckpointMismatchError, match="phases"):
        tr.fit(resume=True)


def test_manual_phase_steps_two_optimizers():
    model = TwoPart()

    def opts(m):
        return torch.optim.SGD(m.parameters(), lr=0.1)

    def gan_like(state, batch):
        opt = state.optimizer
        out = state.net(batch.x)
        loss = nn.functional.cross_entropy(out, batch.y)
        opt.zero_grad()
        state.backward(loss)
        opt.step()
        return {"g": loss.detach()}

    hist = Trainer(model, DATA.train, recipe=Recipe([Phase("gan", epochs=2, optimizer=opts, loss=gan_like,
                   manual=True)]), config=TrainConfig(batch_size=32, progress=False)).fit()  # fmt: skip
    assert hist[1]["g"] < hist[0]["g"]


def test_plain_tensor_dataset_gets_an_index_and_custom_forward():
    ds = TensorDataset(DATA.train.x, DATA.train.y)
    seen = []

    def fwd(net, batch):
        seen.append(batch.index.clone())
        return net(batch.x)

    Trainer(TwoPart(), ds, recipe=Recipe([Phase(forward=fwd, epochs=1)]), config=TrainConfig(batch_size=32)).fit()
    assert sorted(torch.cat(seen).tolist()) == list(range(len(ds)))


def _ddp_worker(rank, out):
    torch.set_num_threads(1)
    model, _, _ = _fit()
    if rank == 0:
        torch.save(model.state_dict(), out)


def test_recipe_two_process_equals_one_process(tmp_path):
    single, _, _ = _fit()
    out = str(tmp_path / "ddp.pt")
    run_gloo(_ddp_worker, 2, out)
    multi = torch.load(out, weights_only=True)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, multi[k], atol=1e-6), k


def test_recipe_with_trainer_loss_fn_is_refused():
    with pytest.raises(PriorkitError, match="give loss_fn to Recipe"):
        Trainer(TwoPart(), DATA.train, recipe=Recipe([Phase()]), loss_fn=None)


def test_a_phase_without_trainable_keeps_what_the_user_froze():
    """A PEFT model arrives with its base frozen: the default phase trains only what was trainable."""
    import torch

    from priorkit.data import gaussian_mixture
    from priorkit.models import MLP
    from priorkit.train import TrainConfig, fit

    data = gaussian_mixture(64, num_classes=3, dim=6, seed=0)
    model = MLP(6, (8,), 3)
    model.body.requires_grad_(False)
    before = [p.detach().clone() for p in model.body.parameters()]
    fit(model, data.train, config=TrainConfig(epochs=1, lr=0.1, progress=False))
    assert all(torch.equal(a, b) for a, b in zip(before, model.body.parameters()))
    assert not any(p.requires_grad for p in model.body.parameters()) and model.head.weight.requires_grad
