import math

import pytest
import torch

from priorkit.core.config import from_dict
from priorkit.core.errors import (
    ConfigKeyError,
    NonFiniteLossError,
    PriorkitError,
    check_finite_losses,
    check_shape,
    check_sparsity,
)
from priorkit.train import TrainConfig


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan])
def test_sparsity_outside_unit_interval(bad):
    with pytest.raises(PriorkitError, match=r"sparsity must be in \[0, 1\)"):
        check_sparsity("sparsity", bad)


def test_unknown_config_key_suggests():
    with pytest.raises(ConfigKeyError, match="did you mean epochs"):
        from_dict(TrainConfig, {"epoch": 3})


def test_config_value_errors():
    with pytest.raises(PriorkitError, match="optimizer must be one of"):
        TrainConfig(optimizer="lion")
    with pytest.raises(PriorkitError, match="epochs must be an integer >= 1"):
        TrainConfig(epochs=0)


def test_shape_error_names_argument():
    with pytest.raises(PriorkitError, match=r"logits must have shape \[\*, 10\], got \[4, 3\]"):
        check_shape("logits", torch.zeros(4, 3), [None, 10])


def test_nan_loss_names_term():
    with pytest.raises(NonFiniteLossError, match="elr=nan"):
        check_finite_losses({"ce": torch.tensor(1.0), "elr": torch.tensor(float("nan"))}, step=3)
