"""Same code, same thread count, same seeds: same numbers (the committed results are reproducible)."""

import dataclasses

from priorkit.experiments.base import run_experiment
from priorkit.report.bench import load_experiment


def test_an_experiment_run_twice_gives_identical_numbers(monkeypatch):
    exp = load_experiment("teen")  # a short experiment that trains a backbone through the engine
    # its digits setup (the MLP backbone trained per seed), so that no real data set is needed
    monkeypatch.setattr(exp, "quick", dataclasses.replace(exp.quick, **exp.ablations["digits_mlp"]))
    a = run_experiment(exp, quick=True, seeds=1)
    b = run_experiment(exp, quick=True, seeds=1)
    assert a["per_seed"] == b["per_seed"] and a["checks"] == b["checks"]
