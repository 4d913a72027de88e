"""The engine: priorkit's research loop (recipes, phases, hooks) on top of Lightning Fabric.

Fabric owns devices, the distributed strategy (DDP, FSDP), precision, launching (``torchrun``, SLURM,
Fabric's own launcher) and checkpoint I/O. priorkit owns what a method needs on top: phases with their
trainable groups, optimizers and schedules; a step that returns named loss terms; hooks acting on a
:class:`RunState`; per-sample indices on every batch; global batches that are the same whatever the world
size, so a W-process run equals a 1-process run; and checkpoints at every epoch boundary that hold every
hook's state, so a resumed run ends where an uninterrupted one would.

One loop for every method: a method is a hook, a module or a recipe, never a private loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data import default_collate as _collate
from tqdm.auto import tqdm

from priorkit.core.config import from_dict
from priorkit.core.errors import (
    CheckpointMismatchError,
    HookConflictError,
    PriorkitError,
    check_finite_losses,
)
from priorkit.core.seeding import rng_state, seed_everything, set_rng_state
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.nn.views import dataset_rows
from priorkit.train.config import (
    TrainConfig,
    make_optimizer,
    make_scheduler,
    soft_cross_entropy,
    with_launch_options,
)
from priorkit.train.hooks import Batch, Hook
from priorkit.train.recipe import Phase, Recipe, default_forward, freeze_except

EvalFn = Callable[["RunState"], dict[str, float]]


def shuffled_batches(n: int, batch_size: int, *, seed: int, epoch: int, drop_last: bool = False) -> list[list[int]]:
    """Global batches of a seeded per-epoch permutation (the engine's default plan)."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(n, generator=g)
    out = [order[s : s + batch_size].tolist() for s in range(0, n, batch_size)]
    if drop_last and out and len(out[-1]) < batch_size:
        out.pop()
    return out


def rank_slice(glob: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a global batch (ceil-sized blocks, the last ones may be shorter)."""
    if world == 1:
        return list(glob)
    per = -(-len(glob) // world)
    return list(glob[rank * per : (rank + 1) * per])


def make_fabric(cfg: TrainConfig) -> Fabric:
    """Fabric for ``cfg``; under an external launcher (``torchrun``) its world size wins over ``devices``."""
    cfg = with_launch_options(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    devices, num_nodes, strategy = cfg.devices, cfg.num_nodes, cfg.strategy
    if world > 1:
        devices = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        num_nodes = max(1, world // devices)
        if strategy == "auto":
            strategy = "ddp"
    fabric = Fabric(
        accelerator=cfg.accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes, precision=cfg.precision
    )
    fabric.launch()
    return fabric


class RunState:
    """What hooks and phase functions see: the run, not the engine that drives it."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self.fabric: Fabric = trainer.fabric
        self.model: nn.Module = trainer.model
        self.net: nn.Module = trainer.model
        self.config: TrainConfig = trainer.cfg
        self.recipe: Recipe = trainer.recipe
        self.data: Dataset = trainer.train_data
        self.phase: Phase = trainer.recipe.phases[0]
        self.phase_index = 0
        self.phase_epoch = 0  # epoch within the phase
        self.epoch = 0  # global epoch counter over all phases
        self.step = 0  # global optimizer-step counter
        self.batch_in_epoch = 0
        self.steps_per_epoch = 0
        self.global_indices: list[int] = []
        self.optimizers: dict[str, Any] = {}
        self.schedulers: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._logged: dict[str, list[float]] = defaultdict(list)
        self.stop_requested = False

    # --------------------------------------------------------------------------------------- properties
    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def rank(self) -> int:
        return self.fabric.global_rank

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """The run's hooks, in order (read-only: a manual phase uses it to refuse hooks it cannot honour)."""
        return tuple(self._trainer.hooks)

    @property
    def optimizer(self) -> Any:
        """The current phase's optimizer (``None`` in an action-only phase)."""
        return self.optimizers.get(self.phase.key)

    @property
    def num_epochs(self) -> int:
        return self.recipe.epochs

    # ------------------------------------------------------------------------------------------ actions
    def backward(self, loss: torch.Tensor) -> None:
        """Backward through Fabric (precision scaling, DDP gradient sync); for ``manual`` phases."""
        if self._trainer._wrap:
            self.fabric.backward(loss)
        else:
            loss.backward()

    def request_stop(self) -> None:
        """End the run after the current epoch (early stopping); the checkpoint of that epoch is still written.

        Under DDP every rank must request it (decide from all-reduced values) or the ranks would diverge."""
        self.stop_requested = True

    def log(self, **values: float) -> None:
        """Add scalar metrics to this epoch's record (averaged over the calls in the epoch)."""
        for k, v in values.items():
            self._logged[k].append(float(v))


class Trainer:
    """Train ``model`` on ``train_data`` with a recipe and any number of hooks, through Lightning Fabric.

    Without ``recipe`` the run is one phase of ``config.epochs`` epochs with the config's optimizer and
    ``loss_fn`` on ``batch.target`` (``loss_fn=None`` drops it, for methods whose hooks define the whole
    loss). ``train_data`` items are ``(x, y, index)`` or ``(x, y)`` (the sample index is then added).

    Example::

        trainer = Trainer(model, train_set, hooks=[ELR(num_samples=len(train_set), num_classes=10)],
                          config=TrainConfig(epochs=50, lr=0.05))
        history = trainer.fit()          # one dict per epoch, one key per named loss term
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset | None,
        *,
        recipe: Recipe | None = None,
        hooks: Sequence[Hook] = (),
        config: TrainConfig | dict[str, Any] | None = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = soft_cross_entropy,
        optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        eval_fn: EvalFn | None = None,
    ) -> None:
        if isinstance(config, dict) or config is None:
            config = from_dict(TrainConfig, config or {})
        if not isinstance(config, TrainConfig):
            raise PriorkitError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise PriorkitError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.cfg = config
        if recipe is not None and (loss_fn is not soft_cross_entropy or optimizer is not None):
            raise PriorkitError(
                "with a recipe, give loss_fn to Recipe(loss_fn=...) and optimizers to its Phases; "
                "Trainer's loss_fn and optimizer only build the default one-phase recipe"
            )
        if recipe is None:
            opt = None if optimizer is None else (lambda m: optimizer([p for p in m.parameters() if p.requires_grad]))
            recipe = Recipe([Phase("fit", epochs=config.epochs, optimizer=opt)], loss_fn=loss_fn)
        self.recipe = recipe
        no_data = [p.name for p in recipe.phases if p.data is None and p.epochs > 0 and p.make_batch is None]
        if train_data is None and no_data:
            raise PriorkitError(
                f"train_data is None but phase(s) {no_data} have epochs > 0 and neither data nor a make_batch "
                "of their own"
            )
        self.hooks = list(hooks)
        self._check_hooks()
        self.train_data = train_data
        self.eval_fn = eval_fn
        seed_everything(config.seed)
        self.fabric = make_fabric(config)
        self.model = model.to(self.fabric.device)
        # what the user froze before the run (a PEFT model's base weights): no phase unfreezes it
        self._frozen = {id(p) for p in self.model.parameters() if not p.requires_grad}
        # One process in full precision: Fabric's module/optimizer wrappers would only add Python calls per step
        # (they exist for DDP/FSDP gradient sync and precision plugins), so the raw ones are used.
        self._wrap = self.fabric.world_size > 1 or config.precision != "32-true" or config.strategy != "auto"
        self.state = RunState(self)

    # ----------------------------------------------------------------------------------------- set-up
    def _check_hooks(self) -> None:
        for h in self.hooks:
            if not isinstance(h, Hook):
                raise PriorkitError(f"hooks must be priorkit.train.Hook objects, got {type(h).__name__}")
        keys = [h.state_key for h in self.hooks]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise HookConflictError(f"two hooks share the state_key {dup}: give each a distinct state_key")
        owner: dict[str, Hook] = {}
        for h in self.hooks:
            for res in h.claims:
                other = owner.get(res)
                if other is not None and not (res in h.shares and res in other.shares):
                    raise HookConflictError(
                        f"hooks {other.name} and {h.name} both claim {res!r}: they would silently fight over it "
                        "in one run; use one of them (or declare the resource in both hooks' shares)"
                    )
                owner[res] = h

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state.history

    @property
    def num_epochs(self) -> int:
        return self.recipe.epochs

    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.cfg.ckpt_dir) / "last.pt" if self.cfg.ckpt_dir else None

    def _enter_phase(self, index: int) -> None:
        s = self.state
        s.phase_index, s.phase = index, self.recipe.phases[index]
        ph = s.phase
        freeze_except(self.model, ph.trainable, keep_frozen=self._frozen)
        s.net = self.fabric.setup_module(self.model) if ph.epochs > 0 and self._wrap else self.model
        if ph.epochs > 0 and ph.key not in s.optimizers:
            if ph.optimizer is not None:
                opt = ph.optimizer(self.model)
            else:
                opt = make_optimizer([p for p in self.model.parameters() if p.requires_grad], self.cfg)
            s.steps_per_epoch = self._steps_per_epoch(ph)
            if ph.scheduler is not None:
                sched = ph.scheduler(opt, s.steps_per_epoch)
            elif ph.optimizer is None:
                sched = make_scheduler(opt, self.cfg, ph.epochs)
            else:
                sched = None
            s.optimizers[ph.key] = self.fabric.setup_optimizers(opt) if self._wrap else opt
            s.schedulers[ph.key] = sched
        self.model.train(ph.train_mode)

    def _steps_per_epoch(self, ph: Phase) -> int:
        data = ph.data if ph.data is not None else self.train_data
        if ph.batches is not None or data is None:
            return 0
        bs = ph.batch_size or self.cfg.batch_size
        n = len(data)
        return n // bs if self.cfg.drop_last else -(-n // bs)

    # ------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "phase_index": s.phase_index,
            "phase_epoch": s.phase_epoch,
            "epoch": s.epoch,
            "step": s.step,
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in s.optimizers.items()},
            "schedulers": {k: sc.state_dict() for k, sc in s.schedulers.items() if sc is not None},
            "rng": rng_state(),
            "hooks": {h.state_key: h.state_dict() for h in self.hooks},
            "history": s.history,
            "config": self._config_record(),
            "phases": [p.name for p in self.recipe.phases],
            "stopped": s.stop_requested,
        }

    def _config_record(self) -> dict[str, Any]:
        """The settings that decide the trajectory (a resumed run must use the same ones)."""
        skip = {"stop_after_epoch", "progress", "ckpt_dir", "ckpt_every", "accelerator", "devices", "num_nodes"}
        out = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in skip}
        out["milestones"] = list(out["milestones"])
        return out

    def _check_checkpoint(self, ckpt: dict[str, Any]) -> None:
        mine = self._config_record()
        diff = sorted(k for k in mine if k in ckpt["config"] and ckpt["config"][k] != mine[k])
        if diff:
            raise CheckpointMismatchError(
                "the checkpoint was written with a different config: "
                + ", ".join(f"{k}={ckpt['config'][k]!r} (now {mine[k]!r})" for k in diff)
            )
        keys = sorted(h.state_key for h in self.hooks)
        if keys != sorted(ckpt["hooks"]):
            raise CheckpointMismatchError(f"checkpoint hooks {sorted(ckpt['hooks'])} differ from this run's {keys}")
        phases = [p.name for p in self.recipe.phases]
        if ckpt["phases"] != phases:
            raise CheckpointMismatchError(f"checkpoint recipe phases {ckpt['phases']} differ from this run's {phases}")

    def _restore(self, ckpt: dict[str, Any]) -> None:
        s = self.state
        self._check_checkpoint(ckpt)
        for h in self.hooks:  # hooks first: they may restore structure (e.g. hard masks)
            h.load_state_dict(ckpt["hooks"][h.state_key])
        self.model.load_state_dict(ckpt["model"])
        # re-create every optimizer the checkpoint holds, in phase order, then load their states
        s.optimizers.clear()
        s.schedulers.clear()
        for i, ph in enumerate(self.recipe.phases):
            if ph.key in ckpt["optimizers"] and ph.key not in s.optimizers:
                self._enter_phase(i)
        for k, o in s.optimizers.items():
            o.load_state_dict(ckpt["optimizers"][k])
            if s.schedulers.get(k) is not None:
                s.schedulers[k].load_state_dict(ckpt["schedulers"][k])
        set_rng_state(ckpt["rng"])
        s.phase_index, s.phase_epoch = int(ckpt["phase_index"]), int(ckpt["phase_epoch"])
        s.epoch, s.step, s.history = int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt["history"])
        s.stop_requested = bool(ckpt.get("stopped", False))

    def save(self) -> None:
        if self.checkpoint_path is not None:
            self.fabric.save(self.checkpoint_path, self.state_dict())
            self.fabric.barrier()

    # ---------------------------------------------------------------------------------------- training
    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Run the recipe; with ``resume`` continue from ``ckpt_dir/last.pt`` at its epoch boundary."""
        s = self.state
        for h in self.hooks:
            h.on_fit_start(s)
        start_phase, start_epoch = 0, 0
        if resume:
            if self.checkpoint_path is None or not self.checkpoint_path.is_file():
                raise FileNotFoundError(f"resume=True but no checkpoint at {self.checkpoint_path}")
            self._restore(self.fabric.load(self.checkpoint_path, weights_only=True))
            start_phase, start_epoch = s.phase_index, s.phase_epoch
            if s.stop_requested:  # the run ended early (request_stop): nothing left to do
                return s.history
        total = self.recipe.epochs
        bar = tqdm(
            total=total,
            initial=s.epoch,
            desc="train",
            disable=True if (not self.cfg.progress or s.rank != 0) else None,
        )
        try:
            for i in range(start_phase, len(self.recipe.phases)):
                first = start_epoch if i == start_phase else 0
                if self._run_phase(i, first, resumed=resume and i == start_phase, bar=bar):
                    break
        finally:
            bar.close()
        return s.history

    def _run_phase(self, index: int, first_epoch: int, *, resumed: bool, bar: tqdm) -> bool:
        """Run phase ``index`` from ``first_epoch``; returns True when the run stops early."""
        s = self.state
        self._enter_phase(index)
        ph = s.phase
        fresh = not (resumed and first_epoch > 0)
        if fresh:
            for h in self.hooks:
                h.on_phase_start(s)
            if ph.on_start is not None:
                self._action_entry(ph.on_start, "start")
        for pe in range(first_epoch, ph.epochs):
            s.phase_epoch = pe
            record = self._train_epoch()
            if self.eval_fn is not None:
                was = self.model.training
                self.model.eval()
                with torch.no_grad():
                    record.update(self.eval_fn(s))
                self.model.train(was)
            s.history.append(record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if isinstance(v, float) and k != "epoch"})
            s.epoch += 1
            s.phase_epoch = pe + 1
            last = s.phase_epoch == ph.epochs
            if last:
                self._finish_phase(index)
            if self.cfg.ckpt_dir and (s.epoch % self.cfg.ckpt_every == 0 or s.epoch == self.recipe.epochs or last):
                self.save()
            if s.stop_requested or (self.cfg.stop_after_epoch is not None and s.epoch - 1 >= self.cfg.stop_after_epoch):
                return True
        if ph.epochs == 0:
            self._finish_phase(index)
            if self.cfg.ckpt_dir:
                self.save()
        return False

    def _finish_phase(self, index: int) -> None:
        s = self.state
        ph = s.phase
        if ph.on_end is not None:
            self._action_entry(ph.on_end, "end")
        for h in self.hooks:
            h.on_phase_end(s)
        # the checkpoint written now must resume at the next phase's start
        s.phase_index, s.phase_epoch = index + 1, 0

    def _action_entry(self, fn: Callable[[RunState], Any], when: str) -> None:
        s = self.state
        was = self.model.training
        out = fn(s)
        self.model.train(was)
        entry: dict[str, Any] = {"epoch": float(s.epoch), "phase": s.phase.name, "action": when}
        if out:
            entry.update(out)
        s.history.append(entry)

    # ----------------------------------------------------------------------------------------- batches
    def _plan(self, ph: Phase, data: Dataset | None) -> Iterable[Sequence[int]]:
        s = self.state
        if ph.batches is not None:
            return ph.batches(s)
        if data is None:
            raise PriorkitError(f"phase {ph.name!r} has epochs but neither data nor a batches plan")
        bs = ph.batch_size or self.cfg.batch_size
        if bs % s.world_size:
            raise PriorkitError(f"batch_size ({bs}) must be divisible by the world size ({s.world_size})")
        return shuffled_batches(len(data), bs, seed=self.cfg.seed, epoch=s.epoch, drop_last=self.cfg.drop_last)

    def _make_batch(self, ph: Phase, data: Dataset | None, local: list[int]) -> Batch:
        s = self.state
        idx = torch.tensor(local, dtype=torch.long)
        if ph.make_batch is not None:
            return ph.make_batch(s, idx)
        if isinstance(data, TensorDataset) and len(data.tensors) > 2:
            x, y, index = (t[idx] for t in data.tensors[:3])
        elif isinstance(data, IndexedTensorDataset | TensorDataset) or data is None:
            x, y = dataset_rows(data, idx)
            index = idx
        else:
            items = [data[i] for i in local]
            if not items or not isinstance(items[0], tuple | list) or len(items[0]) < 2:
                raise PriorkitError(
                    "training items must be (x, y) or (x, y, index) tuples; give phase.make_batch for other data"
                )
            cols = _collate(items)
            x, y = cols[0], cols[1]
            index = torch.as_tensor(cols[2]) if len(cols) > 2 else idx
        dev = s.device
        y = torch.as_tensor(y)
        return Batch(x=x.to(dev), y=y.to(dev), index=torch.as_tensor(index, dtype=torch.long))

    # ---------------------------------------------------------------------------------------- one epoch
    def _train_epoch(self) -> dict[str, Any]:
        s, ph = self.state, self.state.phase
        data = ph.data if ph.data is not None else self.train_data
        self.model.train(ph.train_mode)
        s._logged = defaultdict(list)
        for h in self.hooks:
            h.on_epoch_start(s)
        forward = ph.forward or default_forward
        sums: dict[str, float] = defaultdict(float)
        count = 0
        plan = list(self._plan(ph, data))
        s.steps_per_epoch = len(plan)
        opt, sched = s.optimizers.get(ph.key), s.schedulers.get(ph.key)
        clip = ph.grad_clip if ph.grad_clip is not None else self.cfg.grad_clip
        for bi, glob in enumerate(plan):
            s.batch_in_epoch = bi
            s.global_indices = glob
            local = rank_slice(glob, s.rank, s.world_size)
            batch = self._make_batch(ph, data, local)
            for h in self.hooks:
                batch = h.transform_batch(s, batch)
            if ph.manual:
                terms = dict(ph.loss(s, batch))  # type: ignore[misc]
                values = self._values(terms)
            else:
                batch.output = forward(s.net, batch)
                terms = self._loss_terms(batch)
                loss = next(iter(terms.values())) if len(terms) == 1 else sum(terms.values())
                values = self._values(terms)  # the logged numbers; they also decide finiteness (no extra pass)
                if ph.rescale and s.world_size > 1:
                    loss = loss * (len(local) * s.world_size / len(glob))
                opt.zero_grad(set_to_none=True)
                s.backward(loss)
                for h in self.hooks:
                    h.on_after_backward(s)
                if clip is not None:
                    if self._wrap:
                        self.fabric.clip_gradients(s.net, opt, max_norm=clip)
                    else:
                        nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                opt.step()
            for h in self.hooks:
                h.on_step_end(s, batch)
            if sched is not None and ph.interval == "step":
                sched.step()
            s.step += 1
            for k, v in values.items():
                sums[k] += v * len(local)
            count += len(local)
            # drop this step's graph and activations now, not when the next step rebinds the names
            del batch, terms
            loss = None
        if sched is not None and ph.interval == "epoch":
            sched.step()
        for h in self.hooks:
            h.on_epoch_end(s)
        record: dict[str, Any] = {"epoch": float(s.epoch)}
        if len(self.recipe.phases) > 1:
            record["phase"] = ph.name
        keys = sorted(sums)
        if keys:
            vec = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
            if s.world_size > 1:
                vec = self.fabric.all_reduce(vec, reduce_op="sum")
            for k, v in zip(keys, vec[:-1].tolist()):
                record[k] = v / vec[-1].item() if vec[-1] > 0 else math.nan
            record["loss"] = sum(record[k] for k in keys)
        for k, vals in s._logged.items():
            record[k] = sum(vals) / len(vals)
        return record

    def _values(self, terms: dict[str, Any]) -> dict[str, float]:
        """Each term as a float (what the epoch record averages); a NaN or infinite one raises naming it."""
        values = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in terms.items()}
        if not math.isfinite(sum(values.values())):
            check_finite_losses(terms, self.state.step)
        return values

    def _loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        s, ph = self.state, self.state.phase
        if ph.loss is not None:
            terms = dict(ph.loss(s, batch))
        elif self.recipe.loss_fn is not None:
            terms = {"ce": self.recipe.loss_fn(batch.output, batch.target)}
        else:
            terms = {}
        for h in self.hooks:
            for k, v in h.extra_loss(s, batch).items():
                if k in terms:
                    raise HookConflictError(f"loss term {k!r} of {h.name} is already defined by another part")
                terms[k] = v
        if not terms:
            raise PriorkitError("no loss term: loss_fn=None needs a hook whose extra_loss returns a term")
        return terms


def fit(
    model: nn.Module,
    train_data: Dataset | None,
    recipe: Recipe | None = None,
    *,
    hooks: Sequence[Hook] = (),
    config: TrainConfig | dict[str, Any] | None = None,
    eval_fn: EvalFn | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """One call: build a :class:`Trainer` and run it; returns the history (one record per epoch/action)."""
    return Trainer(model, train_data, recipe=recipe, hooks=hooks, config=config, eval_fn=eval_fn).fit(resume)


@torch.no_grad()
def predict(model: nn.Module, data: Dataset | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Outputs of ``model`` (in eval mode) on a dataset of ``(x, y[, index])`` items or on a tensor of inputs."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    if isinstance(data, torch.Tensor):
        xs = data
    elif isinstance(data, IndexedTensorDataset):
        xs = data.x
    elif isinstance(data, TensorDataset):
        xs = data.tensors[0]
    else:
        xs = None
    outs = []
    if xs is not None:
        for st in range(0, len(xs), batch_size):
            outs.append(model(xs[st : st + batch_size].to(device)))
    else:
        for st in range(0, len(data), batch_size):
            items = [data[i] for i in range(st, min(len(data), st + batch_size))]
            outs.append(model(_collate(items)[0].to(device)))
    model.train(was)
    return torch.cat(outs)
