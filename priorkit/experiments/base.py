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

    def decide(
        self, method: list[float | None], baseline: list[float | None] | None, level: float = 0.95
    ) -> dict[str, Any]:
        """The verdict on seed-paired values: the ``level`` t-interval of the per-seed differences
        (method - baseline; the method's values for ``against='value'``) must clear the margin entirely.

        ``higher``: lower bound >= margin (against a value: >= the value); ``lower``: upper bound <= -margin
        (<= the value). ``None`` is a value the experiment declares undefined (e.g. a knee sharpness without a
        flat region): the check fails and says so. NaN or an infinite value is an error (a bug, not a result),
        and one seed gives an unbounded interval, which never passes.
        """
        if self.against != "value" and (baseline is None or len(baseline) != len(method)):
            raise PriorkitError(f"check on {self.metric!r} needs one baseline value per seed")
        sides = {"method": method} if self.against == "value" else {"method": method, "baseline": baseline}
        for side, vals in sides.items():
            bad = [i for i, v in enumerate(vals) if v is not None and not math.isfinite(v)]
            if bad:
                raise PriorkitError(
                    f"the {side}'s {self.metric!r} is not finite in seed(s) {bad}: {[vals[i] for i in bad]}"
                )
        undefined = sorted({i for vals in sides.values() for i, v in enumerate(vals) if v is None})
        if undefined:
            return {"diff_mean": None, "ci_low": None, "ci_high": None, "n": len(method), "passed": False,
                    "why": f"undefined in seed(s) {undefined}"}  # fmt: skip
        values = list(method) if self.against == "value" else [m - b for m, b in zip(method, baseline)]
        mean, lo, hi = t_interval(values, level)
        if self.against == "value":
            ok = lo >= self.margin if self.direction == "higher" else hi <= self.margin
        else:
            ok = lo >= self.margin if self.direction == "higher" else hi <= -self.margin
        return {"diff_mean": mean, "ci_low": lo, "ci_high": hi, "n": len(values), "passed": bool(ok), "why": ""}

    def describe(self) -> str:
        """The rule in words: the 95% interval over seeds must clear the margin."""
        op = ">=" if self.direction == "higher" else "<="
        if self.against == "value":
            return f"95% CI of method {self.metric} {op} {self.margin:g}"
        ref = self.margin if self.direction == "higher" else -self.margin
        return f"95% CI of (method - baseline) {self.metric} {op} {ref + 0.0:+g}"  # + 0.0: no "-0"


@dataclass
class Experiment:
    """One method-vs-baseline experiment.

    ``quick`` and ``full`` are the two tiers' typed configs (frozen dataclasses: epochs, learning rates, data
    sizes, ... every number that decides the run); ``run(seed, config)`` receives one of them, and the report
    renders it field by field, so no setup number is typed twice. ``setup`` is the prose that no field holds
    (the data, the models). ``seeds`` / ``quick_seeds``: how many seeds each tier runs by default (at least 5
    at the full budget: a paired interval needs them).
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
    seeds: int = 5
    quick_seeds: int = 2
    plot: Callable[[list[SeedResult], Path], list[Path]] | None = None
    notes: str = ""
    #: rules this experiment used before they were tightened to the card: still evaluated and reported beside
    #: the deciding ``checks`` (never silently dropped), but they do not decide ``reproduced``
    former_checks: list[Check] = dataclasses.field(default_factory=list)
    #: why the former rules were replaced (shown with them in the report)
    former_note: str = ""
    #: why the claim does not reproduce here, pointing at the measured ablation metrics (``ablation_*`` or a
    #: figure) this experiment reports; shown in the report when the verdict is "not reproduced"
    diagnosis: str = ""
    #: measured ablations (full tier only): name -> overrides of the full config (a budget curve, pretrained vs
    #: scratch, the card's key hyperparameter), each run on ``ablation_seeds`` seeds and decided by the same
    #: checks; recorded beside the main result, which they never change
    ablations: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    ablation_seeds: int = 3
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


def _stats(values: list[float | None]) -> dict[str, float]:
    """Mean and population std over seeds; ``n`` counts the seeds where the metric is defined (not ``None``)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    with np.errstate(invalid="ignore"):
        std = float(v.std()) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "std": std if math.isfinite(std) else 0.0, "n": len(v)}


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


def _aggregate(per_seed: list[SeedResult]) -> dict[str, Any]:
    metrics = {side: sorted({k for r in per_seed for k in r[side]}) for side in ("method", "baseline")}
    return {
        side: {k: _stats([r[side][k] for r in per_seed if k in r[side]]) for k in metrics[side]}
        for side in ("method", "baseline")
    }


def run_ablations(exp: Experiment, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Run ``exp``'s ablations (all, or ``names``) on ``ablation_seeds`` seeds each: one record per ablation with
    its overrides, config hash, metrics and the main checks decided on its seeds."""
    if exp.full is None or not dataclasses.is_dataclass(exp.full):
        raise PriorkitError(f"{exp.id}: ablations need a typed full config")
    names = list(exp.ablations) if names is None else names
    for n in names:
        check_choice("ablation", n, list(exp.ablations))
    records = []
    with thread_limit(exp.threads):
        for n in names:
            cfg = dataclasses.replace(exp.full, **exp.ablations[n])
            start = time.perf_counter()
            per_seed = [exp.run(seed, cfg) for seed in range(exp.ablation_seeds)]
            agg = _aggregate(per_seed)
            records.append({
                "name": n,
                "overrides": json.loads(json.dumps(exp.ablations[n], default=str)),
                "config_hash": config_hash(cfg),
                "seeds": exp.ablation_seeds,
                "seconds": round(time.perf_counter() - start, 2),
                "all_metrics": agg,
                "checks": [_decide(exp.id, c, per_seed, agg) for c in exp.checks],
                "per_seed": [{k: v for k, v in r.items() if k != "curves"} for r in per_seed],
            })  # fmt: skip
    return records


def _decide(exp_id: str, c: Check, per_seed: list[SeedResult], agg: dict[str, Any]) -> dict[str, Any]:
    """One check's verdict record; a metric missing from a seed is an error, never averaged over the others."""
    sides = ("method",) if c.against == "value" else ("method", "baseline")
    for side in sides:
        lacking = [i for i, r in enumerate(per_seed) if c.metric not in r[side]]
        if lacking:
            raise PriorkitError(f"{exp_id}: the {side}'s {c.metric!r} is missing in seed(s) {lacking}")

    def values(side: str) -> list[float | None]:
        return [None if r[side][c.metric] is None else float(r[side][c.metric]) for r in per_seed]

    try:
        verdict = c.decide(values("method"), None if c.against == "value" else values("baseline"))
    except PriorkitError as err:
        raise PriorkitError(f"{exp_id}: {err}") from None
    m = agg["method"][c.metric]["mean"]
    b = agg["baseline"].get(c.metric, {}).get("mean") if c.against != "value" else None
    return {"rule": c.describe(), "metric": c.metric, "method": m, "baseline": b, **verdict}


def run_experiment(
    exp: Experiment, *, quick: bool, seeds: int | None = None, figdir: Path | None = None, ablations: bool = True
) -> dict:
    """Run ``exp`` over seeds ``0..n-1`` and return its result record (with the measured ablations at the full
    budget, unless ``ablations`` is off)."""
    n = seeds if seeds is not None else (exp.quick_seeds if quick else exp.seeds)
    start = time.perf_counter()
    cfg = exp.config(quick)
    with thread_limit(exp.threads):
        per_seed = [exp.run(seed, cfg) for seed in range(n)]
    seconds = time.perf_counter() - start
    agg = _aggregate(per_seed)
    checks = [_decide(exp.id, c, per_seed, agg) for c in exp.checks]
    former = [_decide(exp.id, c, per_seed, agg) for c in exp.former_checks]
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
        "former_checks": former,
        "former_note": exp.former_note,
        "diagnosis": exp.diagnosis,
        "seeds": n,
        "seconds": round(seconds, 2),
        "quick": quick,
        "tier": "quick (smoke run: verdicts are not evidence)" if quick else "full",
        "stamp": run_stamp(exp.threads, seconds),
        "notes": exp.notes,
        "per_seed": [{k: v for k, v in r.items() if k != "curves"} for r in per_seed],
        "figures": figures,
        "ablations": run_ablations(exp) if ablations and not quick and exp.ablations else [],
    }
