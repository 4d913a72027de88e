import pytest
import torch

from priorkit.baselines.gmp import GMP
from priorkit.core.errors import HookConflictError, NonFiniteLossError
from priorkit.data import gaussian_mixture
from priorkit.data.augment import random_shift
from priorkit.models import MLP
from priorkit.regularizers import ELR, PSKD
from priorkit.sparsity import PDP
from priorkit.train import Augment, Hook, TrainConfig, Trainer, load_checkpoint

DATA = gaussian_mixture(300, num_classes=3, dim=6, seed=0)


def _run(tmp, hooks_fn, stop=None, resume=False, epochs=6):
    torch.manual_seed(0)
    model = MLP(6, (16,), 3)
    cfg = TrainConfig(
        epochs=epochs, batch_size=32, lr=0.05, scheduler="cosine", ckpt_dir=str(tmp), stop_after_epoch=stop, seed=1
    )
    trainer = Trainer(model, DATA.train, hooks=hooks_fn(model), config=cfg)
    trainer.fit(resume=resume)
    return model, trainer


HOOKS = {
    "elr+pskd+shift": lambda m: [
        Augment(lambda x: random_shift(x, 1), "shift"),
        PSKD(len(DATA.train), 3),
        ELR(len(DATA.train), 3),
    ],
    "pdp": lambda m: [PDP(m, 0.7, warmup_epochs=1, eps=0.4, tau=0.05, tau_mode="relative")],
    # three methods of three families in one run: PS-KD's targets, ELR's term on top, GMP's masks on the weights
    "elr+pskd+gmp": lambda m: [
        PSKD(len(DATA.train), 3),
        ELR(len(DATA.train), 3),
        GMP(m, 0.5, start_epoch=1, end_epoch=4),
    ],
}


def test_three_methods_compose_in_one_run(tmp_path):
    model, trainer = _run(tmp_path, HOOKS["elr+pskd+gmp"])
    assert all({"ce", "elr"} <= set(h) for h in trainer.history)  # each method's term logged on its own
    weights = [mod.weight for mod in model.modules() if isinstance(mod, torch.nn.Linear)]
    zero = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zero >= 0.49  # GMP reached its target while PS-KD and ELR trained the same weights


@pytest.mark.parametrize("name", list(HOOKS))
def test_resume_is_bit_identical(tmp_path, name):
    full, ft = _run(tmp_path / "a", HOOKS[name])
    _run(tmp_path / "b", HOOKS[name], stop=2)  # stops after epoch index 2, checkpoint at epoch 3
    resumed, rt = _run(tmp_path / "b", HOOKS[name], resume=True)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in ft.history] == [h["loss"] for h in rt.history]
    for h1, h2 in zip(ft.hooks, rt.hooks):
        for k, v in h1.state_dict().items():
            if isinstance(v, dict) and "table" in v:
                assert torch.equal(v["table"], h2.state_dict()[k]["table"])


def test_checkpoint_loads_weights_only(tmp_path):
    _run(tmp_path, HOOKS["elr+pskd+shift"], epochs=2)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and set(state) >= {"model", "optimizers", "schedulers", "rng", "hooks", "phases"}
    assert load_checkpoint(tmp_path / "last.pt")["step"] == state["step"]


def test_named_loss_terms_are_logged_separately(tmp_path):
    _, trainer = _run(tmp_path, lambda m: [ELR(len(DATA.train), 3)], epochs=1)
    rec = trainer.history[0]
    assert {"ce", "elr", "loss"} <= set(rec) and rec["loss"] == pytest.approx(rec["ce"] + rec["elr"])


class _NaN(Hook):
    def extra_loss(self, trainer, batch):
        return {"broken": batch.output.sum() * float("nan")}


def test_nan_loss_stops_with_named_term(tmp_path):
    with pytest.raises(NonFiniteLossError, match="broken=nan"):
        _run(tmp_path, lambda m: [_NaN()], epochs=1)


class _A(Hook):
    claims = ("weight_parametrization",)


class _B(Hook):
    claims = ("weight_parametrization",)


class _Shared(Hook):
    claims = shares = ("batch.x",)


class _Shared2(_Shared):
    pass


def test_conflicting_hooks_refused():
    with pytest.raises(HookConflictError, match="both claim 'weight_parametrization'"):
        Trainer(MLP(6, (4,), 3), DATA.train, hooks=[_A(), _B()])
    Trainer(MLP(6, (4,), 3), DATA.train, hooks=[_Shared(), _Shared2()])  # declared shareable: accepted


def test_pdp_and_gmp_refused_together():
    model = MLP(6, (4,), 3)
    with pytest.raises(HookConflictError, match="PDP and GMP both claim"):
        gmp = GMP(model, sparsity=0.5, start_epoch=0, end_epoch=2)
        Trainer(model, DATA.train, hooks=[PDP(model, sparsity=0.5), gmp])


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _run(tmp_path / "none", lambda m: [], resume=True)


def test_resume_with_a_different_config_is_refused(tmp_path):
    _run(tmp_path, lambda m: [], epochs=2)
    model = MLP(6, (16,), 3)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.5, scheduler="cosine", ckpt_dir=str(tmp_path), seed=1)
    with pytest.raises(ValueError, match=r"different config: lr=0.05 \(now 0.5\)"):
        Trainer(model, DATA.train, config=cfg).fit(resume=True)
