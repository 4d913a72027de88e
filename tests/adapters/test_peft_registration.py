"""priorkit's PEFT tuner registration: new tuner types through PEFT's own API, and `import priorkit` arranging it."""

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

peft = pytest.importorskip("peft")

from peft import PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraConfig, LoraModel  # noqa: E402

from priorkit.adapters._peft import peft_type, register_tuner  # noqa: E402
from priorkit.core.errors import PriorkitError  # noqa: E402


@dataclass
class _ToyConfig(LoraConfig):
    extra: int = field(default=3)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = peft_type("pktoy")


class _ToyModel(LoraModel):
    pass


def _net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_registered_type_round_trips_through_peft(tmp_path):
    import torch

    member = register_tuner("pktoy", _ToyConfig, _ToyModel)
    assert register_tuner("pktoy", _ToyConfig, _ToyModel) is member  # idempotent
    model = get_peft_model(_net(), _ToyConfig(r=2, target_modules=["0", "2"], extra=5, init_lora_weights=False))
    assert isinstance(model.base_model, _ToyModel)
    x = torch.randn(3, 4)
    y = model(x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_net(), tmp_path)
    assert isinstance(loaded.peft_config["default"], _ToyConfig) and loaded.peft_config["default"].extra == 5
    assert torch.equal(loaded(x), y)
    torch.testing.assert_close(loaded.merge_and_unload()(x), y, atol=1e-6, rtol=0)


def test_a_taken_type_or_bad_name_is_refused():
    register_tuner("pktoy", _ToyConfig, _ToyModel)
    with pytest.raises(PriorkitError, match="already registered"):
        register_tuner("pktoy", LoraConfig, LoraModel)
    with pytest.raises(PriorkitError, match="lower-case identifier"):
        register_tuner("Bad-Name", _ToyConfig, _ToyModel)


def test_import_priorkit_registers_the_adapters_when_peft_is_imported_later():
    code = (
        "import sys, priorkit; assert 'peft' not in sys.modules; import peft; "
        "print('priorkit.adapters' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
