"""Adapter costs (priorkit.report.adapter_costs): every method measured on one tiny MLP base, exact parameter counts,
consistent ratios, the written JSON/Markdown, and bad arguments."""

import functools
import json

import pytest

from priorkit.core.errors import PriorkitError
from priorkit.report import adapter_costs as ac
from priorkit.report.adapter_costs import (
    METHODS,
    RANK,
    SAID_D,
    adapter_costs_html,
    adapter_costs_markdown,
    load_adapter_costs,
    main_costs,
    measure_adapter_costs,
    mlp_base,
    mlp_task,
    write_adapter_costs,
)

IN, HIDDEN, CLASSES = 8, (16, 16), 3
BASE = functools.partial(mlp_base, IN, HIDDEN, CLASSES)


@pytest.fixture(scope="module")
def rows():
    data = mlp_task(48, IN, CLASSES, seed=0)
    return measure_adapter_costs(BASE, data, steps=3, warmup=1, batch_size=8, isolate=False)


def by_method(rows):
    return {r["method"]: r for r in rows}


def test_every_method_has_a_measured_row(rows):
    assert [r["method"] for r in rows] == list(METHODS)
    for r in rows:
        assert not r.get("error"), (r["method"], r.get("traceback"))
        assert r["file_bytes"] > 0 and r["step_ms"] > 0 and r["peak_mem_mb"] >= 0
        assert r["steps"] == 3 and r["warmup"] == 1 and r["batch_size"] == 8
        assert r["trainable_params"] > 0


def test_parameter_counts_by_hand(rows):
    r = by_method(rows)
    dims = [IN, *HIDDEN]
    base = sum(i * o + o for i, o in zip(dims, [*HIDDEN, CLASSES]))
    head = HIDDEN[-1] * CLASSES + CLASSES
    lora = sum(RANK * (i + o) for i, o in zip(dims[:-1], HIDDEN))  # r (in + out) per adapted hidden Linear
    assert r["full"]["trainable_params"] == r["full"]["total_params"] == r["full"]["base_params"] == base
    assert r["lora"]["trainable_params"] == lora + head  # plus the task head (modules_to_save)
    assert r["sora"]["trainable_params"] == lora + head + RANK * len(HIDDEN)  # one gate per rank component
    assert r["sorsa"]["trainable_params"] == lora + head + RANK * len(HIDDEN)  # the singular values sigma_p
    assert r["glad"]["trainable_params"] == r["gs_lora"]["trainable_params"] == lora + head
    assert r["said"]["trainable_params"] == SAID_D
    for m in ("lora", "sora", "sorsa", "glad", "my3dgen", "sara", "said", "gs_lora"):
        assert r[m]["total_params"] == base, m  # merged back into the base's shape
    assert r["pela"]["trainable_params"] == r["pela"]["total_params"] < base  # the compressed student


def test_ratios_are_the_rows_over_loras(rows):
    r = by_method(rows)
    lora = r["lora"]
    assert lora["time_vs_lora"] == lora["mem_vs_lora"] == lora["params_vs_lora"] == lora["file_vs_lora"] == 1.0
    for row in rows:
        assert row["time_vs_lora"] == pytest.approx(row["step_ms"] / lora["step_ms"])
        assert row["params_vs_lora"] == pytest.approx(row["trainable_params"] / lora["trainable_params"])
        assert row["file_vs_lora"] == pytest.approx(row["file_bytes"] / lora["file_bytes"])
        if lora["peak_mem_mb"] > 0:
            assert row["mem_vs_lora"] == pytest.approx(row["peak_mem_mb"] / lora["peak_mem_mb"])


def test_written_json_and_markdown(rows, tmp_path):
    paths = write_adapter_costs(tmp_path, rows, settings={"base": "tiny MLP", "steps": 3}, threads=1, seconds=1.5)
    record = load_adapter_costs(paths["json"])
    assert json.loads(paths["json"].read_text()) == record
    assert {"commit", "torch", "cpu", "threads"} <= set(record["stamp"]) and record["stamp"]["threads"] == 1
    assert [r["method"] for r in record["rows"]] == list(METHODS)
    assert all("traceback" not in r for r in record["rows"])
    md = paths["md"].read_text()
    assert md == adapter_costs_markdown(record) and md.startswith("## Adapter costs")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(METHODS)
    assert "<table>" in adapter_costs_html(record)


def test_missing_method_leaves_a_marked_hole(monkeypatch):
    monkeypatch.setitem(ac._MODULES, "said", "no_such_adapter_module")
    (row,) = measure_adapter_costs(BASE, mlp_task(8, IN, CLASSES), methods=["said"], steps=1, isolate=False)
    assert "not measured" in row["error"] and "no_such_adapter_module" in row["error"]
    assert row["time_vs_lora"] is None
    md = adapter_costs_markdown({"rows": [row]})
    assert "| said |" in md and "not measured" in md


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"methods": ["lora", "qlora"]}, ["method", "qlora", "sorsa"]),
        ({"methods": "lora"}, ["methods"]),
        ({"methods": ["lora", "lora"]}, ["methods", "repeat"]),
        ({"steps": 0}, ["steps", ">= 1"]),
        ({"warmup": -1}, ["warmup"]),
        ({"batch_size": 0}, ["batch_size"]),
    ],
)
def test_bad_arguments_are_refused(kwargs, words):
    with pytest.raises(PriorkitError) as err:
        measure_adapter_costs(BASE, mlp_task(8, IN, CLASSES), isolate=False, **kwargs)
    for w in words:
        assert w in str(err.value)


def test_bad_data_and_rows_are_refused(tmp_path):
    with pytest.raises(PriorkitError, match="data"):
        measure_adapter_costs(BASE, [(0, 1)], methods=["lora"], isolate=False)
    with pytest.raises(PriorkitError, match="rows"):
        write_adapter_costs(tmp_path, [])


def test_cli_in_process(tmp_path, capsys):
    out = tmp_path / "costs"
    argv = ["--base", "mlp", "--methods", "full,lora", "--steps", "1", "--warmup", "0", "--in-process"]
    assert main_costs([*argv, "--out", str(out)]) == 0
    record = load_adapter_costs(out / "adapter_costs.json")
    assert [r["method"] for r in record["rows"]] == ["full", "lora"]
    assert record["settings"]["isolated"] is False and (out / "adapter_costs.md").is_file()
    assert main_costs(["--base", "mlp", "--methods", "lora,dora", "--out", str(out)]) == 2
    assert "dora" in capsys.readouterr().err


@pytest.mark.slow
def test_isolated_child_process():
    """The default path: the method runs in a spawned process (one row, the same exact counts)."""
    (row,) = measure_adapter_costs(BASE, mlp_task(16, IN, CLASSES), methods=["lora"], steps=1, warmup=0,
                                   batch_size=8)  # fmt: skip
    assert not row.get("error"), row.get("traceback")
    assert row["trainable_params"] == sum(RANK * (i + o) for i, o in zip((IN, *HIDDEN[:-1]), HIDDEN)) + 51
    assert row["peak_mem_mb"] >= 0 and row["file_bytes"] > 0
