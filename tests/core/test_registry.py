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


def test_implemented_methods_have_module_and_experiment():
    for m in list_methods(status="implemented"):
        assert m.load() is not None
        assert has_experiment(m.id), m.id


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
