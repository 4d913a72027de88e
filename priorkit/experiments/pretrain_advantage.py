"""MLE pretraining + ERM vs supervised ERM on a Gaussian mixture (card: regularizers-theory.md, "On the Provable
Advantage of Unsupervised Pretraining", "Small-scale check on CPU").

Data (:func:`priorkit.theory.pretrain_advantage.make_gmm_task`, a fresh orientation per seed): K = 4 unit-variance
components in d = 50, means on the corners of a square of side ``sep`` (diagonals ``sep * sqrt 2``), labels by the
XOR map ``(0, 1, 1, 0)`` so no linear rule on ``x`` works. Unlabelled sets of size ``m`` and labelled sets of size
``n`` are nested prefixes of one draw each (so curves over ``m`` and ``n`` are paired).

- Method: EM on the ``m`` unlabelled samples (stage 1), then logistic regression on the posterior vector trained
  through the engine on the ``n`` labels (stage 2); also with ``m = n`` (EM on the labelled inputs themselves).
- Baseline: ERM over the composed class (means, weights and head learned jointly end to end by Adam through the
  engine, several k-means++ restarts, lowest training loss kept). Second baseline: an MLP on raw ``x``.
- Metric: excess risk ``E_x[max_y eta_y(x) - eta_yhat(x)]`` with the true label posterior, on ``n_excess`` fresh
  inputs (same expectation as test error - Bayes error, never negative), and the test error on ``n_test``.
- The rate's slopes: least-squares slopes of log excess risk on log n (method at the largest m; ERM) and on log m
  (method at the largest n). Also: the factor-model instance (PPCA + linear regression vs least squares on x).

Rules (the card's "Expected", fixed before the first full run): at n <= 100 and the largest m the method's mean
excess risk is at most 0.05 ("near Bayes") and both baselines' are at least 0.10 above it ("far above"); with
m = n the method's excess risk at n <= 100 is at least 0.05 above its value at the largest m ("loses its
advantage"); the ERM-minus-method gap at the largest n is at least 0.05 below the gap at n <= 100 ("the gap closes
as n grows"); at the largest n the excess risk falls with m at least like m^-0.25 (card: "roughly like m^-1/2").
The n-slopes are measured and reported; the card states no expectation for them, so they are not rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from priorkit.experiments.base import Check, Experiment, SeedResult
from priorkit.models import MLP
from priorkit.theory.pretrain_advantage import (
    FactorClass,
    GMMClass,
    bound,
    complexity,
    fit_downstream,
    fit_latent,
    fit_supervised,
    loglog_slope,
    make_factor_task,
    make_gmm_task,
    supervised_bound,
    train_erm,
)


@dataclass(frozen=True)
class Config:
    """Every number of the run (the report prints it)."""

    num_components: int = 4
    dim: int = 50
    sep: float = 4.0  # square side: label-changing neighbours 4 apart, same-label diagonals 5.7
    label_map: tuple[int, ...] = (0, 1, 1, 0)
    m_values: tuple[int, ...] = (100, 1000, 20_000)
    n_values: tuple[int, ...] = (10, 20, 50, 100, 500, 2000)
    small_n: tuple[int, ...] = (10, 20, 50, 100)  # "n <= 100"
    n_test: int = 10_000
    n_excess: int = 50_000  # fresh inputs for the excess-risk expectation
    em_restarts: int = 3
    em_max_iter: int = 200
    em_tol: float = 1e-8
    head_steps: int = 300
    head_lr: float = 0.1
    head_weight_decay: float = 1e-3
    erm_restarts: int = 5
    erm_steps: int = 500
    erm_lr: float = 0.05
    mlp_hidden: tuple[int, ...] = (64,)
    mlp_steps: int = 500
    mlp_lr: float = 0.01
    mlp_weight_decay: float = 1e-4
    batch_size: int = 256
    delta: float = 0.05
    factor_rank: int = 3
    factor_noise_var: float = 1.0
    factor_label_noise: float = 0.5
    factor_m: int = 20_000
    factor_n_values: tuple[int, ...] = (10, 20, 50, 100)
    factor_steps: int = 1000
    factor_lr: float = 0.05


FULL = Config()
QUICK = Config(
    m_values=(100, 500, 2000),
    n_values=(10, 50, 200),
    small_n=(10, 50),
    n_test=2000,
    n_excess=5000,
    em_restarts=2,
    head_steps=150,
    erm_restarts=2,
    erm_steps=150,
    mlp_steps=150,
    factor_m=2000,
    factor_n_values=(10, 50),
    factor_steps=300,
)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _mlp(x: torch.Tensor, y: torch.Tensor, c: Config, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = MLP(x.shape[1], c.mlp_hidden, max(c.label_map) + 1)
    train_erm(model, x.float(), y, "ce", steps=c.mlp_steps, lr=c.mlp_lr, weight_decay=c.mlp_weight_decay,
               batch_size=c.batch_size, seed=seed)  # fmt: skip
    return model.eval()


def _factor(seed: int, c: Config) -> tuple[dict[str, float], dict[str, float]]:
    """The factor-model instance: PPCA on m unlabelled + linear regression on r dims vs least squares on x."""
    task = make_factor_task(c.dim, c.factor_rank, c.factor_noise_var, c.factor_label_noise, seed=seed)
    xu, _, _ = task.sample(c.factor_m, seed * 7 + 1)
    xl, _, yl = task.sample(max(c.factor_n_values), seed * 7 + 2)
    xe, _, _ = task.sample(c.n_excess, seed * 7 + 3)
    phi = fit_latent(FactorClass(c.factor_rank), xu)
    meth, base = {}, {}
    for n in c.factor_n_values:
        two = fit_downstream(phi, "linear", xl[:n], yl[:n], steps=c.factor_steps, lr=c.factor_lr, weight_decay=0.0,
                             batch_size=c.batch_size, seed=seed)  # fmt: skip
        sup = fit_supervised(FactorClass(c.factor_rank), xl[:n], yl[:n], steps=c.factor_steps, lr=c.factor_lr,
                             batch_size=c.batch_size, seed=seed)  # fmt: skip
        with torch.no_grad():
            meth[f"factor_excess@n{n}"] = task.excess_risk(two.predict(xe), xe)
            base[f"factor_excess@n{n}"] = task.excess_risk(sup(xe.float()).squeeze(1), xe)
    return meth, base


def run(seed: int, c: Config) -> SeedResult:
    task = make_gmm_task(c.num_components, c.dim, c.sep, c.label_map, seed=seed)
    xu, _, _ = task.sample(max(c.m_values), seed * 7 + 1)
    xl, _, yl = task.sample(max(c.n_values), seed * 7 + 2)
    xt, _, yt = task.sample(c.n_test, seed * 7 + 3)
    xe, _, _ = task.sample(c.n_excess, seed * 7 + 4)
    gmm = GMMClass(c.num_components, c.em_restarts, c.em_max_iter, c.em_tol, seed)
    cx = complexity(gmm, c.dim)
    big_m, big_n = max(c.m_values), max(c.n_values)

    def measure(predict) -> tuple[float, float]:
        with torch.no_grad():
            return task.excess_risk(predict(xe), xe), float((predict(xt) != yt).double().mean())

    def two_stage(phi, n):
        model = fit_downstream(
            phi, "logistic", xl[:n], yl[:n], num_classes=task.num_classes, steps=c.head_steps, lr=c.head_lr,
            weight_decay=c.head_weight_decay, batch_size=c.batch_size, seed=seed,
        )  # fmt: skip
        return measure(model.predict)

    meth: dict[str, float | None] = {}
    base: dict[str, float | None] = {}
    curves: dict[str, list[float]] = {}
    ex: dict[tuple[str, int], float] = {}
    for m in c.m_values:
        phi = fit_latent(gmm, xu[:m])
        for n in c.n_values:
            ex[(f"m{m}", n)], err = two_stage(phi, n)
            meth[f"excess@m{m}_n{n}"] = ex[(f"m{m}", n)]
            if m == big_m:
                meth[f"test_err@n{n}"] = err
    for n in c.n_values:
        ex[("m=n", n)], _ = two_stage(fit_latent(gmm, xl[:n]), n)
        meth[f"excess@m=n_n{n}"] = ex[("m=n", n)]
        erm = fit_supervised(gmm, xl[:n], yl[:n], num_classes=task.num_classes, restarts=c.erm_restarts,
                             steps=c.erm_steps, lr=c.erm_lr, batch_size=c.batch_size, seed=seed)  # fmt: skip
        ex[("erm", n)], base[f"test_err@n{n}"] = measure(lambda x, erm=erm: erm(x.float()).argmax(1))
        base[f"excess@n{n}"] = ex[("erm", n)]
        mlp = _mlp(xl[:n], yl[:n], c, seed)
        ex[("mlp", n)], _ = measure(lambda x, mlp=mlp: mlp(x.float()).argmax(1))
        base[f"mlp_excess@n{n}"] = ex[("mlp", n)]
    small = list(c.small_n)
    meth["excess_small_n"] = _mean([ex[(f"m{big_m}", n)] for n in small])
    base["excess_small_n"] = _mean([ex[("erm", n)] for n in small])
    base["mlp_excess_small_n"] = _mean([ex[("mlp", n)] for n in small])
    meth["mlp_gap_small_n"] = base["mlp_excess_small_n"] - meth["excess_small_n"]
    meth["m_eq_n_loss"] = _mean([ex[("m=n", n)] for n in small]) - meth["excess_small_n"]
    gap_small = base["excess_small_n"] - meth["excess_small_n"]
    meth["gap_closing"] = gap_small - (ex[("erm", big_n)] - ex[(f"m{big_m}", big_n)])
    meth["slope_n"] = loglog_slope(c.n_values, [ex[(f"m{big_m}", n)] for n in c.n_values])
    base["slope_n"] = loglog_slope(c.n_values, [ex[("erm", n)] for n in c.n_values])
    base["mlp_slope_n"] = loglog_slope(c.n_values, [ex[("mlp", n)] for n in c.n_values])
    meth["slope_m"] = loglog_slope(c.m_values, [ex[(f"m{m}", big_n)] for m in c.m_values])
    meth["bayes_err"] = base["bayes_err"] = task.bayes_error(xe)
    for n in c.n_values:
        curves[f"rate@n{n}"] = [bound(cx["C_phi"], cx["C_psi"], m, n, delta=c.delta) for m in c.m_values]
        curves[f"supervised_rate@n{n}"] = [supervised_bound(cx["C_composed"], n, delta=c.delta)]
    fm, fb = _factor(seed, c)
    meth.update(fm)
    base.update(fb)
    curves["excess"] = {f"{k[0]}|{k[1]}": v for k, v in ex.items()}  # type: ignore[assignment]
    return {"method": meth, "baseline": base, "curves": curves}


def plot(results: list[SeedResult], outdir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, list[float]]] = {}
    for r in results:
        for k, v in r["curves"]["excess"].items():
            s, n = k.split("|")
            series.setdefault(s, {}).setdefault(int(n), []).append(v)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = {"erm": "ERM over composed class", "mlp": "MLP on x", "m=n": "EM + LR, m = n"}
    for s, pts in series.items():
        ns = sorted(pts)
        ys = [max(_mean(pts[n]), 1e-5) for n in ns]
        ax.loglog(ns, ys, "o-" if s.startswith("m") else "s--", label=labels.get(s, f"EM + LR, {s}"), ms=3)
    ax.set_xlabel("labelled n")
    ax.set_ylabel("excess risk (floor 1e-5)")
    ax.set_title("GMM K=4, d=50: excess risk vs n (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = outdir / "pretrain_advantage_rates.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    id="pretrain_advantage",
    claim="with m >> n unlabelled samples, EM pretraining + logistic regression is near Bayes at n <= 100 while ERM "
    "over the composed class and an MLP are far above it; the advantage needs m (m = n loses it) and closes as n "
    "grows; at large n the excess risk falls with m (card: roughly m^-1/2)",
    setup="GMM K=4, d=50, unit covariance, means on a square (XOR labels); EM (means and weights, k-means++ "
    "restarts) on m unlabelled inputs, logistic regression on the posterior vector through the engine; baselines "
    "trained through the engine on the n labels only",
    method_name="EM pretraining + logistic regression",
    baseline_name="ERM over the composed class (end to end)",
    checks=[
        Check("excess_small_n", "lower", 0.10),
        Check("excess_small_n", "lower", 0.05, against="value"),
        Check("mlp_gap_small_n", "higher", 0.10, against="value"),
        Check("m_eq_n_loss", "higher", 0.05, against="value"),
        Check("gap_closing", "higher", 0.05, against="value"),
        Check("slope_m", "lower", -0.25, against="value"),
    ],
    run=run,
    quick=QUICK,
    full=FULL,
    seeds=5,
    quick_seeds=2,
    plot=plot,
    threads=1,
)
