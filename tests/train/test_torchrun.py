"""The README's scale-out path: the same script under ``torchrun --nproc_per_node 2`` equals one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_data.py"


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = [str(EXAMPLE), "--epochs", "2", "--methods", "elr,pskd"]
    subprocess.run([sys.executable, *common, "--save", str(tmp_path / "one.pt")], check=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, *common, "--save", str(tmp_path / "two.pt")], check=True, env=env)
    one, two = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-6), k
