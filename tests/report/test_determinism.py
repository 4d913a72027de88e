"""Same code, same thread count, same seeds: same numbers (the committed results are reproducible)."""

from priorkit.experiments.base import run_experiment
from priorkit.report.bench import load_experiment


def test_an_experiment_run_twice_gives_identical_numbers():
    exp = load_experiment("teen")  # a short experiment that trains a backbone through the engine
    a = run_experiment(exp, quick=True, seeds=1)
    b = run_experiment(exp, quick=True, seeds=1)
    assert a["per_seed"] == b["per_seed"] and a["checks"] == b["checks"]
