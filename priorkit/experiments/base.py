"""The experiment contract: a method against its baseline on the same data, seeds and budget.

Each ``priorkit/experiments/<id>.py`` defines ``EXPERIMENT = Experiment(...)``. Its ``run(seed, config)``
(``config`` is the tier's typed config, ``EXPERIMENT.quick`` or ``EXPERIMENT.full``) returns the numbers of
one seed for the method and the baseline; :func:`run_experiment` aggregates them over seeds and decides
``reproduced`` from the ``checks`` the experiment states up front (direction and margin) - never by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priorkit.core.errors import PriorkitError, check_choice

#: what ``run(seed, quick)`` returns: {"method": {metric: value}, "baseline": {metric: value}, "extra": {...}}
SeedResult = dict[str, Any]


@dataclass(frozen=True)
class Check:
    """One rule of the claim.

    ``against='baseline'``: ``higher`` passes when method >= baseline + margin, ``lower`` when
    method <= baseline - margin (a negative margin allows a stated tolerance). ``against='value'``: the
    method's mean is compared with the fixed ``margin`` itself (e.g. essential sparsity >= 0.3).
    """

    metric: str
    direction: str
    margin: float = 0.0
    against: str = "baseline"

    def __post_init__(self) -> None:
        check_choice("direction", self.direction, ("higher", "lower"))
        check_choice("against", self.against, ("baseline", "value"))

    def passed(self, method: float, baseline: float | None) -> bool:
        ref = self.margin if self.against == "value" else None
        if ref is None:
            if baseline is None:
                raise PriorkitError(f"check on {self.metric!r} needs a baseline value")
            ref = baseline + self.margin if self.direction == "higher" else baseline - self.margin
        return method >= ref if self.direction == "higher" else method <= ref

    def decide(self, method: list[float], baseline: list[float] | None, level: float = 0.95) -> dict[str, Any]:
        """The verdict on seed-paired values: the ``level`` t-interval of the per-seed differences
        (method - baseline; the method's values for ``against='value'``) must clear the margin entirely.

        ``higher``: lower bound >= margin (against a value: >= the value); ``lower``: upper bound <= -margin
        (<= the value). A non-finite value fails the check (an infinite ratio is not evidence), and one seed
        gives an unbounded interval, which never passes.
        """
        if self.against == "value":
            values = list(method)
        else:
            if baseline is None or len(baseline) != len(method):
                raise PriorkitError(f"check on {self.metric!r} needs one baseline value per seed")
            values = [m - b for m, b in zip(method, baseline)]
        mean, lo, hi = t_interval(values, level)
        if not all(math.isfinite(v) for v in values):
            ok, why = False, "non-finite value"
        elif self.against == "value":
            ok = lo >= self.margin if self.direction == "higher" else hi <= self.margin
            why = ""
        else:
            ok = lo >= self.margin if self.direction == "higher" else hi <= -self.margin
            why = ""
        return {"diff_mean": mean, "ci_low": lo, "ci_high": hi, "n": len(values), "passed": bool(ok), "why": why}

    def describe(self) -> str:
        """The rule in words: the 95% interval over seeds must clear the margin."""
        op = ">=" if self.direction == "higher" else "<="
        if self.against == "value":
            return f"95% CI of method {self.metric} {op} {self.margin:g}"
        ref = self.margin if self.direction == "higher" else -self.margin
        return f"95% CI of (method - baseline) {self.metric} {op} {ref:+g}"


@dataclass
class Experiment:
    """One method-vs-baseline experiment.

    ``quick`` and ``full`` are the two tiers' typed configs (frozen dataclasses: epochs, learning rates, data
    sizes, ... every number that decides the run); ``run(seed, config)`` receives one of them, and the report
    renders it field by field, so no setup number is typed twice. ``setup`` is the prose that no field holds
    (the data, the models). ``seeds`` / ``quick_seeds``: how many seeds each tier runs by default.
    """

    id: str
    claim: str
    setup: str
    method_name: str
    baseline_name: str
    checks: list[Check]
    run: Callable[[int, Any], SeedResult]
    quick: Any = None
    full: Any = None
    seeds: int = 3
    quick_seeds: int = 2
    plot: Callable[[list[SeedResult], Path], list[Path]] | None = None
    notes: str = ""
    #: torch intra-op and BLAS/OpenMP threads while this experiment runs (None: leave as is); tiny models run
    #: fastest on 1 (see :func:`thread_limit`)
    threads: int | None = None

    def __post_init__(self) -> None:
        for tier in ("quick", "full"):
            cfg = getattr(self, tier)
            if cfg is not None and not dataclasses.is_dataclass(cfg):
                raise PriorkitError(f"Experiment({self.id!r}).{tier} must be a dataclass instance, got {cfg!r}")

    def config(self, quick: bool) -> Any:
        """The tier's config (the bool itself for an experiment without typed configs)."""
        cfg = self.quick if quick else self.full
        return quick if cfg is None else cfg


def config_record(cfg: Any) -> dict[str, Any]:
    """A typed config as a JSON-able dict (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg):
        return {}
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_hash(cfg: Any) -> str:
    """A short stable hash of a typed config (results of different configs never share one)."""
    text = json.dumps(config_record(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean (unbounded for fewer than two finite values)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0 or not np.all(np.isfinite(v)):
        m = float(v.mean()) if len(v) else math.nan
        return m, -math.inf, math.inf
    m = float(v.mean())
    if len(v) < 2:
        return m, -math.inf, math.inf
    half = float(t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def _stats(values: list[float]) -> dict[str, float]:
    """Mean and population std over seeds (inf-safe: a metric may be infinite, e.g. a knee ratio)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        std = float(v.std()) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "std": std if math.isfinite(std) else 0.0, "n": len(values)}


def run_stamp(threads: int | None, seconds: float) -> dict[str, Any]:
    """Where a result came from: priorkit commit (and whether the tree was dirty), torch, Python, CPU, threads,
    wall time."""
    import platform
    import subprocess

    import priorkit

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                 cwd=Path(priorkit.__file__).resolve().parent)  # fmt: skip
            return out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "priorkit": priorkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "seconds": round(seconds, 2),
    }


@contextmanager
def thread_limit(n: int | None) -> Iterator[None]:
    """The bench's one thread policy: torch's intra-op threads and the BLAS/OpenMP pools of NumPy, SciPy and
    scikit-learn (via threadpoolctl) limited to ``n`` inside the block (``None``: unchanged)."""
    if n is None:
        yield
        return
    import sklearn.linear_model  # noqa: F401  (load scikit-learn's and SciPy's BLAS/OpenMP before limiting them)
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(old)


def run_experiment(exp: Experiment, *, quick: bool, seeds: int | None = None, figdir: Path | None = None) -> dict:
    """Run ``exp`` over seeds ``0..n-1`` and return the result record of ``results.json``."""
    n = seeds if seeds is not None else (exp.quick_seeds if quick else exp.seeds)
    start = time.perf_counter()
    cfg = exp.config(quick)
    with thread_limit(exp.threads):
        per_seed = [exp.run(seed, cfg) for seed in range(n)]
    seconds = time.perf_counter() - start
    metrics = {side: sorted({k for r in per_seed for k in r[side]}) for side in ("method", "baseline")}
    agg = {
        side: {k: _stats([r[side][k] for r in per_seed if k in r[side]]) for k in metrics[side]}
        for side in ("method", "baseline")
    }
    checks = []
    for c in exp.checks:
        sides = ("method",) if c.against == "value" else ("method", "baseline")
        for side in sides:
            lacking = [i for i, r in enumerate(per_seed) if c.metric not in r[side]]
            if lacking:
                raise PriorkitError(f"{exp.id}: the {side}'s {c.metric!r} is missing in seed(s) {lacking}")
        m_vals = [float(r["method"][c.metric]) for r in per_seed]
        b_vals = None if c.against == "value" else [float(r["baseline"][c.metric]) for r in per_seed]
        m = agg["method"][c.metric]["mean"]
        b = agg["baseline"].get(c.metric, {}).get("mean") if c.against != "value" else None
        verdict = c.decide(m_vals, b_vals)
        checks.append({"rule": c.describe(), "metric": c.metric, "method": m, "baseline": b, **verdict})
    primary = exp.checks[0].metric
    figures: list[str] = []
    if exp.plot is not None and figdir is not None:
        figdir.mkdir(parents=True, exist_ok=True)
        figures = [str(p) for p in exp.plot(per_seed, figdir)]
    return {
        "id": exp.id,
        "claim": exp.claim,
        "setup": exp.setup,
        "config": config_record(cfg),
        "config_hash": config_hash(cfg) if dataclasses.is_dataclass(cfg) else None,
        "method_name": exp.method_name,
        "baseline_name": exp.baseline_name,
        "metric": primary,
        "method": agg["method"][primary],
        "baseline": agg["baseline"].get(primary),
        "all_metrics": agg,
        "checks": checks,
        "reproduced": all(c["passed"] for c in checks),
        "seeds": n,
        "seconds": round(seconds, 2),
        "quick": quick,
        "tier": "quick (smoke run: verdicts are not evidence)" if quick else "full",
        "stamp": run_stamp(exp.threads, seconds),
        "notes": exp.notes,
        "per_seed": [{k: v for k, v in r.items() if k != "curves"} for r in per_seed],
        "figures": figures,
    }
