"""``priorkit bench``: run each method's experiment (method vs baseline) and write the report."""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from priorkit.core.errors import PriorkitError
from priorkit.core.registry import FAMILIES, get, list_methods
from priorkit.experiments.base import Experiment, run_experiment
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
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Run the experiments and write ``results.json``, ``report.md``, ``report.html`` into ``out``; with
    ``overhead`` also the engine-overhead benchmark (:mod:`priorkit.report.overhead`)."""
    chosen = select_ids(ids, family)
    if not chosen:
        raise PriorkitError("nothing to bench: no implemented method with an experiment matched")
    if seeds is not None and seeds < 1:
        raise PriorkitError(f"seeds must be >= 1, got {seeds}")
    experiments = [load_experiment(i) for i in chosen]
    results = []
    for exp in tqdm(experiments, desc="bench", disable=not progress):
        try:
            results.append(run_experiment(exp, quick=quick, seeds=seeds, figdir=out / "figures"))
        except Exception as err:  # one failing experiment must not hide the others' numbers
            results.append(
                {
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
            )
    rows = None
    if overhead:
        from priorkit.report.overhead import engine_overhead

        rows = engine_overhead()  # the same settings in both tiers: it is a measurement, not a smoke run
    if rank() != 0:  # under a multi-process launch every rank ran the experiments; rank 0 writes the report
        return results, {"json": out / "results.json", "md": out / "report.md", "html": out / "report.html"}
    return results, write_report(results, out, title, overhead=rows)
