"""Bad input at every public entry point of every implemented method gets a PriorkitError naming the argument.

Each ``tests/bad_input/cases_<id>.py`` lists ``CASES = [(name, zero-argument callable, regex), ...]``: wrong
shapes, dtypes, empty batches, NaN/inf and out-of-range labels for each public entry of that method. A test
below also fails when an implemented method has no such file.
"""

import importlib.util
from pathlib import Path

import pytest

from priorkit.core import PriorkitError, list_methods

HERE = Path(__file__).parent / "bad_input"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bad_input_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CASES


CASES = [
    pytest.param(fn, rx, id=f"{path.stem[6:]}:{name}")
    for path in sorted(HERE.glob("cases_*.py"))
    for name, fn, rx in _load(path)
]


@pytest.mark.parametrize("fn, pattern", CASES)
def test_bad_input_is_refused_by_name(fn, pattern):
    with pytest.raises(PriorkitError, match=pattern):
        fn()


def test_every_implemented_method_has_bad_input_cases():
    have = {p.stem[len("cases_") :] for p in HERE.glob("cases_*.py")}
    missing = sorted(m.id for m in list_methods(status="implemented") if m.id not in have)
    assert not missing, f"implemented methods without tests/bad_input/cases_<id>.py: {missing}"
