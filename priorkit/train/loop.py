"""The reference training loop: hooks, named loss terms, seeding, checkpoint/resume and DDP.

It is deliberately small: a user who has a loop of their own calls the methods' functional cores instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from priorkit.core.config import from_dict
from priorkit.core.errors import check_choice, check_finite_losses, check_positive_int, check_range
from priorkit.core.seeding import rng_state, seed_everything, set_rng_state
from priorkit.data.datasets import IndexedTensorDataset
from priorkit.train import distributed as D
from priorkit.train.checkpoint import load_checkpoint, save_checkpoint
from priorkit.train.hooks import Batch, Hook

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step")


@dataclass
class TrainConfig:
    """Settings of :class:`Trainer`. ``batch_size`` is the global batch (split across ranks under DDP)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    scheduler: str = "none"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    seed: int = 0
    drop_last: bool = False
    grad_clip: float | None = None
    ckpt_dir: str | None = None
    ckpt_every: int = 1
    progress: bool = True  # a bar on rank 0 when stderr is a terminal
    device: str = "cpu"  # "cuda" puts each rank on cuda:LOCAL_RANK under torchrun
    stop_after_epoch: int | None = None  # end the run early after this epoch (used to test resume)

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_range("lr", self.lr, 0.0, low_inclusive=False)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_positive_int("ckpt_every", self.ckpt_every)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer labels ``[B]`` or probability rows ``[B, C]`` (batch mean)."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def make_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch schedules: cosine to zero over ``epochs``, or step decay at ``milestones``."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return None


class Trainer:
    """Train ``model`` on a dataset of ``(x, y, index)`` items with any number of hooks.

    ``loss_fn=None`` drops the base cross-entropy, for methods whose hooks define the whole loss (e.g. a
    prototype or contrastive objective without a classifier).

    Example::

        trainer = Trainer(model, train_set, hooks=[ELR(num_samples=len(train_set), num_classes=10)],
                          config=TrainConfig(epochs=50, lr=0.05))
        history = trainer.fit()          # one dict per epoch, one key per named loss term
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        *,
        hooks: Sequence[Hook] = (),
        config: TrainConfig | dict[str, Any] | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = soft_cross_entropy,
        optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        eval_fn: Callable[[nn.Module, int], dict[str, float]] | None = None,
    ) -> None:
        if isinstance(config, dict) or config is None:
            config = from_dict(TrainConfig, config or {})
        self.cfg = config
        self.hooks = list(hooks)
        self._check_conflicts()
        seed_everything(config.seed)
        D.init_from_env()
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and D.is_dist():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.model = model.to(self.device)
        self.net: nn.Module = self.model
        if D.is_dist():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.train_data = train_data
        self.loss_fn = loss_fn
        self.eval_fn = eval_fn
        self._optimizer_factory = optimizer
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.sampler = D.ShardedBatchSampler(
            len(train_data), config.batch_size, drop_last=config.drop_last, seed=config.seed
        )
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ----------------------------------------------------------------------------------------- set-up
    def _check_conflicts(self) -> None:
        names = {h.name for h in self.hooks}
        for h in self.hooks:
            clash = names.intersection(h.conflicts)
            if clash:
                raise ValueError(f"hook {h.name} cannot be combined with {sorted(clash)} in one run")

    def build_optimizer(self) -> None:
        """Create optimizer and scheduler (after ``on_fit_start``, so hooks may add parameters first)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = (self._optimizer_factory or (lambda ps: make_optimizer(ps, self.cfg)))(params)
        self.scheduler = make_scheduler(self.optimizer, self.cfg)

    @property
    def num_epochs(self) -> int:
        return self.cfg.epochs

    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.cfg.ckpt_dir) / "last.pt" if self.cfg.ckpt_dir else None

    # ------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        assert self.optimizer is not None
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "rng": rng_state(),
            "hooks": {f"{i}:{h.name}": h.state_dict() for i, h in enumerate(self.hooks)},
            "history": self.history,
            "config": self._config_record(),
        }

    def _config_record(self) -> dict[str, Any]:
        """The settings that decide the trajectory (a resumed run must use the same ones)."""
        skip = {"stop_after_epoch", "progress", "ckpt_dir", "ckpt_every", "device"}
        return {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in skip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None
        mine = self._config_record()
        diff = sorted(k for k in mine if k in state["config"] and state["config"][k] != mine[k])
        if diff:
            raise ValueError(
                "the checkpoint was written with a different config: "
                + ", ".join(f"{k}={state['config'][k]!r} (now {mine[k]!r})" for k in diff)
            )
        keys = [f"{i}:{h.name}" for i, h in enumerate(self.hooks)]
        if sorted(keys) != sorted(state["hooks"]):
            raise ValueError(f"checkpoint hooks {sorted(state['hooks'])} differ from this run's {keys}")
        for key, h in zip(keys, self.hooks):  # hooks first: they may restore structure (e.g. hard masks)
            h.load_state_dict(state["hooks"][key])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])

    def save(self) -> None:
        if self.checkpoint_path is not None and D.rank() == 0:
            save_checkpoint(self.checkpoint_path, self.state_dict())
        if D.is_dist():
            torch.distributed.barrier()

    # ---------------------------------------------------------------------------------------- training
    def fit(self, resume: bool = False) -> list[dict[str, float]]:
        """Train for ``config.epochs`` epochs; with ``resume`` continue from ``ckpt_dir/last.pt``."""
        for h in self.hooks:
            h.on_fit_start(self)
        self.build_optimizer()
        if resume:
            if self.checkpoint_path is None or not self.checkpoint_path.is_file():
                raise FileNotFoundError(f"resume=True but no checkpoint at {self.checkpoint_path}")
            self.load_state_dict(load_checkpoint(self.checkpoint_path))
        bar = tqdm(
            range(self.epoch, self.cfg.epochs),
            desc="train",
            disable=True if (not self.cfg.progress or D.rank() != 0) else None,
            initial=self.epoch,
            total=self.cfg.epochs,
        )
        for epoch in bar:
            self.epoch = epoch
            record = self.train_epoch(epoch)
            if self.eval_fn is not None:
                self.model.eval()
                with torch.no_grad():
                    record.update(self.eval_fn(self.model, epoch))
            self.history.append(record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
            self.epoch = epoch + 1
            if self.cfg.ckpt_dir and (self.epoch % self.cfg.ckpt_every == 0 or self.epoch == self.cfg.epochs):
                self.save()
            if self.cfg.stop_after_epoch is not None and epoch >= self.cfg.stop_after_epoch:
                break
        return self.history

    def _batches(self, epoch: int):
        self.sampler.set_epoch(epoch)
        if isinstance(self.train_data, IndexedTensorDataset):  # fast path: no per-item collation
            batches = (self.train_data.batch(torch.as_tensor(i, dtype=torch.long)) for i in self.sampler)
        else:
            batches = DataLoader(self.train_data, batch_sampler=self.sampler)
        for x, y, index in batches:
            yield x.to(self.device), y.to(self.device), index

    def train_epoch(self, epoch: int) -> dict[str, float]:
        assert self.optimizer is not None
        self.net.train()
        for h in self.hooks:
            h.on_epoch_start(self, epoch)
        sums: dict[str, float] = defaultdict(float)
        count = 0
        for x, y, index in self._batches(epoch):
            batch = Batch(x=x, y=y, index=index, target=y)
            for h in self.hooks:
                batch = h.transform_batch(self, batch)
            batch.output = self.net(batch.x)
            terms = {"ce": self.loss_fn(batch.output, batch.target)} if self.loss_fn is not None else {}
            for h in self.hooks:
                for k, v in h.extra_loss(self, batch).items():
                    if k in terms:
                        raise ValueError(f"loss term {k!r} of {h.name} is already defined by another part")
                    terms[k] = v
            if not terms:
                raise ValueError("no loss term: loss_fn=None needs a hook whose extra_loss returns a term")
            check_finite_losses(terms, self.step)
            loss = sum(terms.values())
            # Under DDP gradients are averaged over ranks; rescale so the result is the global-batch mean
            # even when the last global batch splits unevenly.
            if D.is_dist():
                n_global = D.all_reduce_mean(torch.tensor(float(len(y)))) * D.world_size()
                loss = loss * (len(y) * D.world_size() / n_global)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for h in self.hooks:
                h.on_after_backward(self)
            if self.cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            for h in self.hooks:
                h.on_step_end(self, batch)
            self.step += 1
            for k, v in terms.items():
                sums[k] += float(v.detach()) * len(y)
            count += len(y)
        if self.scheduler is not None:
            self.scheduler.step()
        for h in self.hooks:
            h.on_epoch_end(self, epoch)
        record = {"epoch": float(epoch)}
        for k, v in sums.items():
            total = D.all_reduce_mean(torch.tensor([v, float(count)], dtype=torch.float64))
            record[k] = float(total[0] / total[1]) if total[1] > 0 else math.nan
        record["loss"] = sum(record[k] for k in sums)
        return record


@torch.no_grad()
def predict(model: nn.Module, data: Dataset | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on a dataset of ``(x, y, index)`` items or on a tensor of inputs."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    if isinstance(data, torch.Tensor):
        xs = data
    elif isinstance(data, IndexedTensorDataset):
        xs = data.x
    else:
        xs = None
    outs = []
    if xs is not None:
        for s in range(0, len(xs), batch_size):
            outs.append(model(xs[s : s + batch_size].to(device)))
    else:
        for x, _, _ in DataLoader(data, batch_size=batch_size):
            outs.append(model(x.to(device)))
    model.train(was)
    return torch.cat(outs)
