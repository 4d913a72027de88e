"""``priorkit bench``: run each method's experiment (method vs baseline) and write the report."""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from priorkit.core.errors import PriorkitError
from priorkit.core.registry import FAMILIES, get, list_methods
from priorkit.experiments.base import Experiment, config_hash, run_ablations, run_experiment
from priorkit.nn.distributed import rank
from priorkit.report.render import write_report


def has_experiment(method_id: str) -> bool:
    return importlib.util.find_spec(f"priorkit.experiments.{method_id}") is not None


def load_experiment(method_id: str) -> Experiment:
    info = get(method_id)
    if not has_experiment(method_id):
        raise PriorkitError(f"method {method_id!r} ({info.status}) has no experiment yet: {info.missing}")
    return importlib.import_module(f"priorkit.experiments.{method_id}").EXPERIMENT


def select_ids(ids: list[str] | None = None, family: str | None = None) -> list[str]:
    """The ids to bench: the given ones (validated), else every implemented method (of ``family``).

    ``partial`` methods run only when named with ``--ids``."""
    if ids:
        for i in ids:
            get(i)
        return ids
    if family is not None and family not in FAMILIES:
        raise PriorkitError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    return [m.id for m in list_methods(family=family, status="implemented") if has_experiment(m.id)]


RESERVED = ("results", "overhead")  # file stems in an output folder that are not one method's record


def record_path(out: Path, method_id: str) -> Path:
    """Where one method's result record lives: ``<out>/<id>.json`` (committed under ``results/``)."""
    return Path(out) / f"{method_id}.json"


def collect(out: Path, quick: bool) -> list[dict[str, Any]]:
    """Every method record in ``out`` of the given tier, in registry order (a later run replaces its id's file).

    The combined report is rebuilt from these files, so methods benched in separate runs share one table."""
    from priorkit.core.registry import list_methods
    from priorkit.report.render import load_results

    order = {m.id: i for i, m in enumerate(list_methods())}
    records = []
    for f in sorted(Path(out).glob("*.json")):
        if f.stem in RESERVED:
            continue
        r = load_results(f)
        if isinstance(r, dict) and "id" in r and bool(r.get("quick")) == quick:
            records.append(_refresh_text(r))
    return sorted(records, key=lambda r: (order.get(r["id"], len(order)), r["id"]))


def _add_ablations(exp: Experiment, out: Path, quick: bool) -> dict[str, Any]:
    from priorkit.report.render import load_results

    if quick:
        raise PriorkitError("ablations run at the full budget only: drop --quick")
    path = record_path(out, exp.id)
    if not path.is_file():
        raise PriorkitError(f"no record {path} to add ablations to: run `priorkit bench --ids {exp.id}` first")
    record = load_results(path)
    if record.get("config_hash") != config_hash(exp.full):
        raise PriorkitError(f"{path} was run with another config ({record.get('config_hash')}); rerun it in full")
    return {**record, "ablations": run_ablations(exp)}


TEXT_FIELDS = ("claim", "setup", "method_name", "baseline_name", "notes", "diagnosis", "former_note")


def _refresh_text(record: dict[str, Any]) -> dict[str, Any]:
    """The prose of a record (claim, setup, notes, diagnosis) from the current experiment when the record's
    numbers are still its numbers (same config hash): prose edited after a run needs no rerun."""
    if record.get("error") or not has_experiment(record["id"]):
        return record
    exp = load_experiment(record["id"])
    cfg = exp.config(bool(record.get("quick")))
    if record.get("config_hash") is None or record["config_hash"] != config_hash(cfg):
        return record
    return {**record, **{k: getattr(exp, k) for k in TEXT_FIELDS}}


def _error_record(exp: Experiment, quick: bool, err: Exception) -> dict[str, Any]:
    return {
        "id": exp.id,
        "claim": exp.claim,
        "metric": exp.checks[0].metric,
        "method": None,
        "baseline": None,
        "reproduced": False,
        "seconds": None,
        "quick": quick,
        "error": f"{type(err).__name__}: {err}",
        "traceback": traceback.format_exc(),
    }


def run_bench(
    ids: list[str] | None = None,
    *,
    family: str | None = None,
    quick: bool = False,
    seeds: int | None = None,
    out: Path = Path("bench-out"),
    progress: bool = True,
    title: str = "priorkit bench",
    overhead: bool = False,
    ablations_only: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Run the experiments; write each method's record to ``<out>/<id>.json`` as soon as it finishes, then the
    combined ``results.json``, ``report.md`` and ``report.html`` over every record of this tier in ``out``
    (methods benched earlier into the same folder stay in the table). ``ablations_only``: run only the
    experiments' ablations and add them to the records already in ``out`` (whose config must still be the
    experiment's). With ``overhead`` also the engine-overhead benchmark (:mod:`priorkit.report.overhead`).
    Only rank 0 of a multi-process launch writes."""
    from priorkit.report.render import write_record

    chosen = select_ids(ids, family)
    if not chosen:
        raise PriorkitError("nothing to bench: no implemented method with an experiment matched")
    if seeds is not None and seeds < 1:
        raise PriorkitError(f"seeds must be >= 1, got {seeds}")
    out = Path(out)
    experiments = [load_experiment(i) for i in chosen]
    writer = rank() == 0
    results = []
    for exp in tqdm(experiments, desc="bench", disable=not progress):
        try:
            if ablations_only:
                r = _add_ablations(exp, out, quick)
            else:
                r = run_experiment(exp, quick=quick, seeds=seeds, figdir=out / "figures", ablations=False)
        except Exception as err:  # one failing experiment must not hide the others' numbers
            r = _error_record(exp, quick, err)
        if writer:  # the main result is written before its ablations run: it is the evidence, they explain it
            write_record(r, record_path(out, exp.id), base=out)
        if not (ablations_only or quick or r.get("error")) and exp.ablations:
            try:
                r = {**r, "ablations": run_ablations(exp)}
            except Exception as err:  # a failing ablation keeps the main result
                r = {**r, "ablation_error": f"{type(err).__name__}: {err}"}
            if writer:
                write_record(r, record_path(out, exp.id), base=out)
        results.append(r)
    rows = None
    if overhead:
        from priorkit.report.overhead import engine_overhead

        rows = engine_overhead()  # the same settings in both tiers: it is a measurement, not a smoke run
    paths = {"json": out / "results.json", "md": out / "report.md", "html": out / "report.html"}
    if not writer:  # under a multi-process launch every rank ran the experiments; rank 0 writes the report
        return results, paths
    return results, write_report(collect(out, quick), out, title, overhead=rows)
