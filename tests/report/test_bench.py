import dataclasses
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
        "method": {"acc": 0.9 + 0.01 * seed, "ratio": None if seed == 1 else 4.0 + seed,
                   "threads": float(torch.get_num_threads())},
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
    seeds=5,
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
    r = run_experiment(TOY, quick=True, seeds=4)
    assert torch.get_num_threads() == before
    assert r["seeds"] == 4 and r["method"]["mean"] == pytest.approx(0.915)
    assert r["all_metrics"]["method"]["threads"]["mean"] == 1.0
    acc, ratio = r["checks"]
    # differences 0.10..0.13: the 95% t-interval clears +0.05; a ratio the experiment declares undefined in one
    # seed fails the check and says where (it is not averaged over the other seeds)
    assert acc["passed"] and acc["ci_low"] > 0.05 and acc["n"] == 4
    assert not ratio["passed"] and ratio["why"] == "undefined in seed(s) [1]" and not r["reproduced"]
    assert r["all_metrics"]["method"]["ratio"]["n"] == 3
    stamp = r["stamp"]
    assert stamp["torch"] == torch.__version__ and stamp["threads"] == 1 and stamp["seconds"] >= 0
    failing = run_experiment(Experiment(**{**TOY.__dict__, "checks": [Check("acc", "higher", 0.2)]}), quick=True)
    assert not failing["reproduced"]
    paths = write_report([r, failing], tmp_path)
    rows = json.loads(paths["json"].read_text())  # standard JSON: inf is written as a string
    assert {"id", "claim", "metric", "method", "baseline", "reproduced", "seconds", "quick", "stamp"} <= set(rows[0])
    assert "not reproduced" in paths["md"].read_text() and "<table>" in paths["html"].read_text()
    assert "smoke run" in paths["md"].read_text()
    assert main(["report", str(tmp_path)]) == 0  # re-rendering the bench's own output (with None) works


def test_paired_interval_rule():
    c = Check("acc", "higher", 0.05)
    assert c.decide([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])["passed"]
    assert not c.decide([0.9], [0.8])["passed"]  # one seed: unbounded interval
    assert not c.decide([0.9, 0.7, 0.95], [0.8, 0.8, 0.8])["passed"]  # mean +0.05 but noisy
    low = Check("ece", "lower", 0.005)
    assert low.decide([0.02, 0.021, 0.019], [0.04, 0.041, 0.04])["passed"]
    assert Check("s", "higher", 0.3, against="value").decide([0.4, 0.41, 0.39], None)["passed"]
    for bad_value in (float("nan"), float("inf")):  # NaN or inf is an error, never a verdict
        with pytest.raises(PriorkitError, match="not finite in seed"):
            c.decide([0.9, bad_value, 0.92], [0.8, 0.8, 0.81])
    assert not c.decide([0.9, None, 0.92], [0.8, 0.8, 0.81])["passed"]
    with pytest.raises(PriorkitError, match="missing in seed"):
        bad = Experiment(**{**TOY.__dict__, "run": lambda seed, q: {"method": {} if seed else {"acc": 1.0},
                                                                       "baseline": {"acc": 0.5}}})  # fmt: skip
        run_experiment(bad, quick=True)


def test_bench_selection_and_errors():
    assert "pskd" in select_ids() and all(i for i in select_ids(family="sparsity"))
    with pytest.raises(PriorkitError, match="closest"):
        select_ids(["pskdd"])


def test_cli_bench_writes_records_and_the_combined_report(tmp_path, capsys, monkeypatch):
    from priorkit.report.bench import load_experiment

    teen = load_experiment("teen")  # its digits setup: no real data set needed
    monkeypatch.setattr(teen, "quick", dataclasses.replace(teen.quick, **teen.ablations["digits_mlp"]))
    out = tmp_path / "b"
    assert main(["bench", "--ids", "teen", "--quick", "--seeds", "1", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"teen.json", "results.json", "report.md", "report.html"}
    assert main(["bench", "--ids", "tmv_hlp", "--quick", "--seeds", "1", "--out", str(out)]) == 0
    combined = json.loads((out / "results.json").read_text())  # the earlier method stays, in registry order
    assert [r["id"] for r in combined] == ["tmv_hlp", "teen"]
    (out / "results.json").unlink()
    assert main(["report", str(out)]) == 0  # rebuilt from the per-method records
    assert {r["id"] for r in json.loads((out / "results.json").read_text())} == {"teen", "tmv_hlp"}
    assert "report:" in capsys.readouterr().out
    assert main(["bench", "--ids", "teen", "--seeds", "0", "--out", str(out)]) == 2


def test_engine_overhead_section_is_rendered(tmp_path):
    from priorkit.report.overhead import engine_overhead
    from priorkit.report.render import write_report

    rows = engine_overhead(("ce", "elr"), sizes=("mlp-256",), epochs=1, n=256, repeats=1)
    assert [r["case"] for r in rows] == ["ce", "elr"] and all(r["engine_ms"] > 0 and r["ratio"] > 0 for r in rows)
    paths = write_report([], tmp_path, overhead=rows)
    assert "## Engine overhead" in paths["md"].read_text() and "engine-overhead" in paths["html"].read_text()
    again = write_report([], tmp_path)  # overhead.json from the earlier run is rendered again
    assert "## Engine overhead" in again["md"].read_text()


@dataclasses.dataclass(frozen=True)
class _Cfg:
    gain: float = 0.1


def _cfg_run(seed: int, c: _Cfg) -> dict:
    return {"method": {"acc": 0.8 + c.gain + 0.001 * seed}, "baseline": {"acc": 0.8}}


CFG_EXP = Experiment(
    id="toy_cfg", claim="c", setup="s", method_name="m", baseline_name="b", checks=[Check("acc", "higher", 0.05)],
    run=_cfg_run, quick=_Cfg(), full=_Cfg(), ablations={"no gain": {"gain": 0.0}}, ablation_seeds=2,
)  # fmt: skip


def test_ablations_run_beside_the_main_result_and_never_change_it(tmp_path, monkeypatch):
    from priorkit.experiments.base import config_hash
    from priorkit.report import bench

    r = run_experiment(CFG_EXP, quick=False)
    assert r["reproduced"] and r["config_hash"] == config_hash(_Cfg())
    (a,) = r["ablations"]
    assert a["name"] == "no gain" and a["seeds"] == 2 and not a["checks"][0]["passed"]
    assert a["config_hash"] == config_hash(_Cfg(gain=0.0)) != r["config_hash"]
    assert run_experiment(CFG_EXP, quick=True)["ablations"] == []  # the smoke tier runs none
    paths = write_report([r], tmp_path)
    assert "Measured ablations" in paths["md"].read_text() and "no gain" in paths["html"].read_text()
    # --ablations-only adds them to a committed record whose config still matches, and refuses otherwise
    monkeypatch.setattr(bench, "load_experiment", lambda i: CFG_EXP)
    monkeypatch.setattr(bench, "select_ids", lambda ids, family: ["toy_cfg"])
    from priorkit.report.render import write_record

    write_record({**r, "ablations": []}, tmp_path / "toy_cfg.json")
    (again,), _ = bench.run_bench(["toy_cfg"], out=tmp_path, ablations_only=True, progress=False)
    assert again["ablations"][0]["name"] == "no gain" and again["per_seed"] == r["per_seed"]
    write_record({**r, "config_hash": "stale"}, tmp_path / "toy_cfg.json")
    (bad,), _ = bench.run_bench(["toy_cfg"], out=tmp_path, ablations_only=True, progress=False)
    assert "another config" in bad["error"]
