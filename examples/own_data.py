"""Train a classifier on your own arrays with two priorkit methods in one run, on 1 process or many.

    python examples/own_data.py --epochs 5                                  # one CPU process
    torchrun --nproc_per_node 2 examples/own_data.py --epochs 5             # 2 processes (gloo on CPU)
    python examples/own_data.py --accelerator cuda --devices 4 --strategy ddp   # Fabric launches 4 GPUs
    srun python examples/own_data.py --accelerator cuda --devices 8 --num-nodes 2   # SLURM, 2 nodes

The data here are scikit-learn's 8x8 digits as plain NumPy arrays with 40% of the labels flipped (stand-ins
for your own); ELR (noisy-label regulariser) and PDP (differentiable pruning to 50% sparsity) act in the same
run (``--methods`` picks others), and the ranks of a multi-process run end with the weights of a 1-process run
with the same global batch, up to float rounding.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits

from priorkit.data import from_arrays, symmetric_noise
from priorkit.models import MLP
from priorkit.regularizers import ELR, PSKD
from priorkit.sparsity import PDP
from priorkit.train import TrainConfig, Trainer, predict


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--devices", default="1")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--methods", default="elr,pdp", help="comma-separated, from: elr, pskd, pdp")
    p.add_argument("--save", help="write the final state_dict here (rank 0)")
    args = p.parse_args(argv)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    train = from_arrays(x[:1400], y[:1400])
    noisy = symmetric_noise(train.y, rate=0.4, num_classes=10, seed=0)
    train = train.with_labels(noisy)
    torch.manual_seed(0)
    model = MLP(64, (128,), 10)
    make = {
        "elr": lambda: ELR(len(train), 10, beta=0.7, lam=3.0),
        "pskd": lambda: PSKD(len(train), 10),
        "pdp": lambda: PDP(model, sparsity=0.5, warmup_epochs=1, tau_mode="relative"),
    }
    hooks = [make[name]() for name in args.methods.split(",")]
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=64, lr=0.05, seed=0, progress=False, accelerator=args.accelerator,
        devices=devices, strategy=args.strategy, num_nodes=args.num_nodes, precision=args.precision,
    )  # fmt: skip
    trainer = Trainer(model, train, hooks=hooks, config=cfg)
    trainer.fit()
    acc = float((predict(model, torch.as_tensor(x[1400:])).argmax(1) == torch.as_tensor(y[1400:])).float().mean())
    if trainer.state.rank == 0:
        print(f"world size {trainer.state.world_size}: clean test accuracy {acc:.3f}")
        if args.save:
            torch.save(model.state_dict(), args.save)
    return {"acc": acc}


if __name__ == "__main__":
    main()
