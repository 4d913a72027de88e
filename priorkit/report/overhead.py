"""What the engine costs: step time of a method trained through :class:`priorkit.train.Trainer` against a plain
PyTorch loop doing the same math on the same batches (a benchmark for the bench report, not a timed test).

Each case runs the engine and the plain loop interleaved, ``repeats`` times each, on one thread, and reports
the median seconds per optimizer step and their ratio (engine / plain). The target is a ratio <= 1.05.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from priorkit.core.errors import check_positive_int
from priorkit.core.seeding import seed_everything
from priorkit.data import gaussian_mixture
from priorkit.models import MLP
from priorkit.regularizers.elr import ELR, clamped_softmax, elr_regularizer, elr_update
from priorkit.regularizers.pskd import PSKD
from priorkit.train import TrainConfig, Trainer, shuffled_batches

CASES = ("ce", "elr", "pskd")


def _plain(case: str, data: Any, cfg: TrainConfig, num_classes: int, hidden: tuple[int, ...]) -> float:
    """Seconds per step of the same math as the engine run, written as the plain loop a user would write."""
    seed_everything(cfg.seed)
    model = MLP(data.x.shape[1], hidden, num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    memory = torch.zeros(len(data), num_classes)
    steps = 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        if case == "pskd":
            alpha = 0.8 * epoch / cfg.epochs
        for glob in shuffled_batches(len(data), cfg.batch_size, seed=cfg.seed, epoch=epoch):
            idx = torch.as_tensor(glob)
            x, y = data.x[idx], data.y[idx]
            if case == "pskd":
                onehot = F.one_hot(y, num_classes).float()
                target = (1 - alpha) * onehot + alpha * memory[idx] if epoch > 0 else onehot
            out = model(x)
            if case == "pskd":
                loss = -(target * F.log_softmax(out, 1)).sum(1).mean()
                memory[idx] = F.softmax(out.detach(), 1)
            else:
                loss = F.cross_entropy(out, y)
            if case == "elr":
                p = clamped_softmax(out)
                rows = elr_update(memory[idx], p, 0.7)
                memory[idx] = rows
                loss = loss + 3.0 * elr_regularizer(p, rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    return (time.perf_counter() - t0) / steps


def _engine(case: str, data: Any, cfg: TrainConfig, num_classes: int, hidden: tuple[int, ...]) -> float:
    """Seconds per step of ``Trainer.fit`` (building the Trainer and Fabric is not counted: it happens once)."""
    seed_everything(cfg.seed)
    model = MLP(data.x.shape[1], hidden, num_classes)
    hooks = {"ce": [], "elr": [ELR(len(data), num_classes)], "pskd": [PSKD(len(data), num_classes)]}[case]
    tr = Trainer(model, data, hooks=hooks, config=cfg)
    t0 = time.perf_counter()
    tr.fit()
    return (time.perf_counter() - t0) / tr.step


SIZES = {"mlp-256": (256, 256), "mlp-1024": (1024, 1024)}


def engine_overhead(
    cases: tuple[str, ...] = CASES,
    *,
    sizes: tuple[str, ...] = tuple(SIZES),
    epochs: int = 8,
    n: int = 4096,
    repeats: int = 9,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Median seconds per step of each case through the engine and through a plain loop, and their ratio.

    The engine's cost is a fixed amount of Python per step (batch assembly, hook dispatch, logging), so its
    ratio is largest on the smallest model; ``sizes`` names the MLPs (``mlp-256``: the experiments' size)."""
    check_positive_int("epochs", epochs)
    check_positive_int("repeats", repeats)
    data = gaussian_mixture(int(n / 0.8) + 1, num_classes=10, dim=64, val=0.0, test=0.2, seed=0).train
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=0.05, seed=0, progress=False)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for size in sizes:
            hidden = SIZES[size]
            for case in cases:
                eng, plain = [], []
                for r in range(repeats):  # interleaved, alternating which goes first: load changes hit both
                    if r % 2:
                        plain.append(_plain(case, data, cfg, 10, hidden))
                        eng.append(_engine(case, data, cfg, 10, hidden))
                    else:
                        eng.append(_engine(case, data, cfg, 10, hidden))
                        plain.append(_plain(case, data, cfg, 10, hidden))
                e, p = sorted(eng)[repeats // 2], sorted(plain)[repeats // 2]
                rows.append(
                    {"case": case, "model": size, "engine_ms": 1e3 * e, "plain_ms": 1e3 * p, "ratio": e / p}
                )
    finally:
        torch.set_num_threads(old)
    return rows


def overhead_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "## Engine overhead",
        "",
        "Median ms per optimizer step, the engine (Lightning Fabric + priorkit's loop and hooks) against a plain "
        "PyTorch loop doing the same math on the same batches (1 thread, interleaved runs; target ratio <= 1.05).",
        "",
        "| case | model | engine ms/step | plain ms/step | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['case']} | {r.get('model', '-')} | {r['engine_ms']:.3f} | {r['plain_ms']:.3f} | {r['ratio']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"
