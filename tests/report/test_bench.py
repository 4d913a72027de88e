import json

import pytest
import torch

from priorkit.cli import main
from priorkit.core.errors import PriorkitError
from priorkit.experiments.base import Check, Experiment, run_experiment
from priorkit.report.bench import select_ids
from priorkit.report.render import write_report


def _toy_run(seed: int, quick: bool) -> dict:
    return {
        "method": {"acc": 0.9 + 0.01 * seed, "ratio": float("inf"), "threads": float(torch.get_num_threads())},
        "baseline": {"acc": 0.8},
    }


TOY = Experiment(
    id="toy",
    claim="higher accuracy",
    setup="none",
    method_name="m",
    baseline_name="b",
    checks=[Check("acc", "higher", 0.05), Check("ratio", "higher", 3.0, against="value")],
    run=_toy_run,
    seeds=3,
    quick_seeds=2,
    threads=1,
)


def test_checks_decide_reproduced_from_the_numbers():
    assert Check("acc", "higher", 0.05).passed(0.86, 0.8) and not Check("acc", "higher", 0.05).passed(0.84, 0.8)
    assert Check("ece", "lower", 0.01).passed(0.02, 0.04) and not Check("ece", "lower", 0.01).passed(0.035, 0.04)
    assert Check("s", "higher", 0.3, against="value").passed(0.3, None)
    with pytest.raises(ValueError, match="direction must be one of"):
        Check("acc", "up")


def test_run_experiment_aggregates_seeds_and_restores_threads(tmp_path):
    before = torch.get_num_threads()
    r = run_experiment(TOY, quick=True)
    assert torch.get_num_threads() == before
    assert (
        r["seeds"] == 2 and r["method"]["mean"] == pytest.approx(0.905) and r["method"]["std"] == pytest.approx(0.005)
    )
    assert r["all_metrics"]["method"]["threads"]["mean"] == 1.0
    assert r["reproduced"] and [c["passed"] for c in r["checks"]] == [True, True]
    failing = run_experiment(Experiment(**{**TOY.__dict__, "checks": [Check("acc", "higher", 0.2)]}), quick=True)
    assert not failing["reproduced"]
    paths = write_report([r, failing], tmp_path)
    rows = json.loads(paths["json"].read_text())  # standard JSON: inf is written as a string
    assert {"id", "claim", "metric", "method", "baseline", "reproduced", "seconds", "quick"} <= set(rows[0])
    assert "not reproduced" in paths["md"].read_text() and "<table>" in paths["html"].read_text()


def test_bench_selection_and_errors():
    assert "pskd" in select_ids() and all(i for i in select_ids(family="sparsity"))
    with pytest.raises(PriorkitError, match="closest"):
        select_ids(["pskdd"])


def test_cli_bench_writes_the_three_files(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["bench", "--ids", "teen", "--quick", "--seeds", "1", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "report.html"}
    assert "report:" in capsys.readouterr().out
    assert main(["bench", "--ids", "teen", "--seeds", "0", "--out", str(out)]) == 2


def test_engine_overhead_section_is_rendered(tmp_path):
    from priorkit.report.overhead import engine_overhead
    from priorkit.report.render import write_report

    rows = engine_overhead(("ce", "elr"), epochs=1, n=256, repeats=1)
    assert [r["case"] for r in rows] == ["ce", "elr"] and all(r["engine_ms"] > 0 and r["ratio"] > 0 for r in rows)
    paths = write_report([], tmp_path, overhead=rows)
    assert "## Engine overhead" in paths["md"].read_text() and "engine-overhead" in paths["html"].read_text()
    again = write_report([], tmp_path)  # overhead.json from the earlier run is rendered again
    assert "## Engine overhead" in again["md"].read_text()
