import json
import re
from pathlib import Path

import pytest

from priorkit.cli import main
from priorkit.core import REGISTRY, UnknownIdError, get, list_methods
from priorkit.core.registry import FAMILIES, KINDS, STATUSES
from priorkit.report.bench import has_experiment

CARDS = Path(__file__).resolve().parents[3] / "shared" / "methods"


def test_registry_has_all_69_ids_with_valid_fields():
    assert len(REGISTRY) == 69
    for m in REGISTRY.values():
        assert m.family in FAMILIES and m.kind in KINDS and m.status in STATUSES
        assert m.title and m.card.endswith(".md") and 1990 < m.year < 2030


@pytest.mark.skipif(not CARDS.is_dir(), reason="shared/methods not beside the checkout")
def test_registry_ids_match_the_cards():
    ids = set()
    for card in CARDS.glob("*.md"):
        ids |= set(re.findall(r"id: `([a-z0-9_]+)`", card.read_text()))
    assert ids == set(REGISTRY)


TESTS = Path(__file__).resolve().parents[1]


def test_implemented_methods_have_module_test_and_experiment():
    """Adding a method touches three places: module, experiment, test; a missing one fails here."""
    for m in list_methods(status="implemented"):
        assert m.load() is not None
        assert has_experiment(m.id), f"{m.id}: no priorkit/experiments/{m.id}.py"
        assert (TESTS / m.family / f"test_{m.id}.py").is_file(), f"{m.id}: no tests/{m.family}/test_{m.id}.py"


def test_method_modules_follow_the_contract():
    """Docstring, __all__, a SPEC whose entry is public and listed in __all__, presets paper and small."""
    for m in list_methods(status="implemented"):
        mod = m.load()
        assert (mod.__doc__ or "").strip(), f"{m.id}: module docstring"
        names = getattr(mod, "__all__", None)
        assert names, f"{m.id}: __all__"
        assert m.entry and m.entry in names and hasattr(mod, m.entry), f"{m.id}: SPEC.entry {m.entry!r}"
        assert {"paper", "small"} <= set(m.presets), f"{m.id}: presets {sorted(m.presets)}"
        assert all(not n.startswith("_") and hasattr(mod, n) for n in names), f"{m.id}: __all__ {names}"


def test_planned_method_cannot_be_loaded():
    planned = list_methods(status="planned")[0]
    with pytest.raises(NotImplementedError, match=planned.id):
        planned.load()


def test_unknown_id_names_closest():
    with pytest.raises(UnknownIdError, match="closest: pskd"):
        get("pskdd")


def test_bad_filter_values_are_named():
    with pytest.raises(ValueError, match="family must be one of"):
        list_methods(family="nope")


def test_cli_list_json(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 69
    assert {"id", "family", "status"} <= set(rows[0])


def test_cli_show_unknown_is_error(capsys):
    assert main(["show", "elrr"]) == 2
    assert "closest: elr" in capsys.readouterr().err


def test_experiments_have_typed_quick_and_full_configs():
    import dataclasses

    from priorkit.report.bench import load_experiment

    for m in list_methods(status="implemented"):
        exp = load_experiment(m.id)
        assert dataclasses.is_dataclass(exp.quick) and dataclasses.is_dataclass(exp.full), m.id
        assert type(exp.quick) is type(exp.full), m.id
