"""The committed evidence: every implemented method has a full-budget record in ``results/`` that its current
experiment would produce (same config hash, same rules, enough seeds), and the combined report lists it."""

import dataclasses
from pathlib import Path

import pytest

from priorkit.experiments.base import config_hash
from priorkit.report.bench import load_experiment, select_ids
from priorkit.report.render import load_results

RESULTS = Path(__file__).resolve().parents[2] / "results"
IDS = select_ids()


@pytest.mark.parametrize("method_id", IDS)
def test_committed_full_result_matches_the_experiment(method_id):
    path = RESULTS / f"{method_id}.json"
    assert path.is_file(), f"no committed result: run `priorkit bench --ids {method_id}` and commit {path.name}"
    r = load_results(path)
    exp = load_experiment(method_id)
    assert not r.get("error"), r.get("error")
    assert not r["quick"] and r["seeds"] >= 5
    assert r["config_hash"] == config_hash(exp.full), f"{method_id}: config changed since the committed run; rerun"
    assert [c["rule"] for c in r["checks"]] == [c.describe() for c in exp.checks], f"{method_id}: rules changed"
    assert r["reproduced"] == all(c["passed"] for c in r["checks"])
    assert r["stamp"]["commit"] != "unknown" and not r["stamp"]["dirty"]
    ran = {a["name"]: a["config_hash"] for a in r.get("ablations", [])}
    want = {n: config_hash(dataclasses.replace(exp.full, **o)) for n, o in exp.ablations.items()}
    stale = {n for n, h in ran.items() if want.get(n) != h}
    assert not stale, f"{method_id}: ablations {stale} changed; `priorkit bench --ids {method_id} --ablations-only`"
