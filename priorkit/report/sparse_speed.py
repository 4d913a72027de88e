"""What sparsity saves on this CPU: inference time and weight memory of dense, masked, physically smaller,
factorised and sparse-kernel forms of one network, measured side by side in one run (``priorkit speed``; a
table of the bench report).

Network: an MLP ``d -> h -> h -> d`` (ReLU), batch ``batch``, float32, one thread. Rows (``time_vs_dense`` and
``bytes_vs_dense`` divide by the ``dense`` row):

- ``dense``: the plain network;
- ``masked s``: unstructured magnitude masks at sparsity ``s`` attached as the family's
  :class:`~priorkit.sparsity.masks.MaskSet` parametrization (what every masked method trains and evaluates
  with): the mask multiplies every forward, the dense matmul stays;
- ``masked s, baked``: the masks folded into the weights (dense zeros, the same dense matmul);
- ``csr s``: every linear as :class:`~priorkit.sparsity.physical.CSRLinear` (``torch.sparse.mm``) at sparsity
  ``s``; bytes count values, column indices and row pointers;
- ``channels s, removed``: hidden channels pruned at ``s`` (channel :class:`MaskSet`, magnitude) and removed
  with :func:`~priorkit.sparsity.physical.remove_pruned_channels`: a smaller dense network;
- ``low-rank r``: every linear factorised at rank ``r`` (:func:`~priorkit.sparsity.physical.factorize_linear`,
  TRP's deploy form);
- ``2:4 semi-structured``: ``torch.sparse.to_sparse_semi_structured``; the row says why when the build has no
  kernel for this device (the CPU build has none);
- ``act-sparse FFN s``: ProSparse's claim: one FFN block ``d -> h -> d`` at batch 1 (one token) whose ReLU
  activations are ``s`` sparse (a threshold shift fixes ``s``); the sparse path computes the first matmul
  densely (activity is known only after it; no predictor) and only the active rows of the second. Its
  reference is the dense FFN at batch 1 (``ffn dense``), not the MLP.

Timing: median wall time of ``reps`` calls after ``warmup`` untimed ones, under ``torch.no_grad`` with one
thread. Wall time on a shared machine: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from priorkit.core.errors import PriorkitError, check_positive_int, check_sparsity
from priorkit.sparsity.masks import MaskSet
from priorkit.sparsity.physical import CSRLinear, factorize_linear, remove_pruned_channels

__all__ = ["measure_sparse_speed", "sparse_speed_markdown", "write_sparse_speed"]

JSON_NAME, MD_NAME = "sparse_speed.json", "sparse_speed.md"


def _mlp(d: int, h: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d))


def _time(fn: Callable[[], Any], reps: int, warmup: int) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _bytes(model: nn.Module) -> int:
    """Bytes of what the forward reads: parameters and buffers (a mask parametrization's bool masks included)."""
    seen = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    total = 0
    for t in seen.values():
        if t.layout == torch.sparse_csr:
            total += sum(x.numel() * x.element_size() for x in (t.values(), t.col_indices(), t.crow_indices()))
        else:
            total += t.numel() * t.element_size()
    return total


def _masked(model: nn.Module, s: float) -> tuple[nn.Module, MaskSet]:
    m = copy.deepcopy(model)
    ms = MaskSet(m, owner="speed").attach()
    ms.update(s)
    return m, ms


def _ffn_rows(d: int, h: int, sparsities: Sequence[float], reps: int, warmup: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    w1, b1 = torch.randn(h, d) / math.sqrt(d), torch.zeros(h)
    w2t = torch.randn(h, d) / math.sqrt(h)  # W_out stored transposed: active rows are contiguous
    x = torch.randn(1, d)
    z = x @ w1.T + b1

    def dense() -> torch.Tensor:
        return torch.relu(x @ w1.T + b1) @ w2t

    base = _time(dense, reps, warmup)
    rows = [{"row": "ffn dense (batch 1)", "ms": base, "reference": "ffn dense"}]
    for s in sparsities:
        t = torch.quantile(z, s) if s > 0 else z.min() - 1  # FATReLU-style shift giving activation sparsity s

        def sparse(t: torch.Tensor = t) -> torch.Tensor:
            a = torch.relu(x @ w1.T + b1 - t)[0]
            idx = a.nonzero().flatten()
            return a[idx] @ w2t.index_select(0, idx)

        measured = float((torch.relu(z - t) == 0).float().mean())
        with torch.no_grad():
            ref = torch.relu(x @ w1.T + b1 - t) @ w2t
            if not torch.allclose(sparse(), ref[0], atol=1e-4):
                raise PriorkitError("the activation-sparse FFN disagrees with the dense one")
        ms = _time(sparse, reps, warmup)
        rows.append({"row": f"act-sparse FFN {s:g} (batch 1)", "ms": ms, "activation_sparsity": measured,
                     "time_vs_dense": ms / base, "reference": "ffn dense"})  # fmt: skip
    return rows


def measure_sparse_speed(
    *,
    d: int = 1024,
    hidden: int = 4096,
    batch: int = 64,
    sparsities: Sequence[float] = (0.5, 0.9, 0.95, 0.99),
    channel_sparsity: float = 0.5,
    ranks: Sequence[int] = (64, 256),
    ffn_sparsities: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    reps: int = 20,
    warmup: int = 3,
    threads: int = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per form of the network (module docstring), with ``ms``, ``bytes`` and their ratios to dense."""
    for name, v in (("d", d), ("hidden", hidden), ("batch", batch), ("reps", reps), ("threads", threads)):
        check_positive_int(name, v)
    check_positive_int("warmup", warmup, 0)
    for s in list(sparsities) + list(ffn_sparsities) + [channel_sparsity]:
        check_sparsity("sparsities", s)
    for r in ranks:
        check_positive_int("ranks", r)
        if r > min(d, hidden):
            raise PriorkitError(f"ranks must be <= min(d, hidden) = {min(d, hidden)}, got {r}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dense = _mlp(d, hidden, seed).eval()
        x = torch.randn(batch, d, generator=torch.Generator().manual_seed(seed + 1))
        rows: list[dict[str, Any]] = []

        def add(label: str, model: nn.Module, **extra: Any) -> None:
            nonzero = sum(int((p != 0).sum()) for p in _dense_weights(model))
            rows.append({"row": label, "ms": _time(lambda: model(x), reps, warmup), "bytes": _bytes(model),
                         "params_nonzero": nonzero, **extra})  # fmt: skip

        add("dense", dense)
        for s in sparsities:
            masked, ms = _masked(dense, s)
            add(f"masked {s:g}", masked, sparsity=ms.sparsity())
            ms.remove()
            add(f"masked {s:g}, baked", masked, sparsity=s)
            csr = nn.Sequential(*[CSRLinear(m) if isinstance(m, nn.Linear) else m for m in masked])
            add(f"csr {s:g}", csr, sparsity=s)
        small = copy.deepcopy(dense)
        last = str(len(small) - 1)
        cms = MaskSet(small, owner="speed", granularity="channel", include=lambda n, _m: n != last).attach()
        cms.update(channel_sparsity)
        remove_pruned_channels(small, cms, x[:1])
        add(f"channels {channel_sparsity:g}, removed", small, shape=[list(m.weight.shape) for m in small
                                                                     if isinstance(m, nn.Linear)])  # fmt: skip
        for r in ranks:
            lr = nn.Sequential(*[factorize_linear(m, r) if isinstance(m, nn.Linear) else m for m in dense])
            add(f"low-rank {r}", lr, rank=r)
        rows.append(_semi_structured_row(dense, x))
        base = rows[0]
        for r in rows:
            if "ms" in r and r["row"] != "dense":
                r["time_vs_dense"] = r["ms"] / base["ms"]
            if "bytes" in r and r["row"] != "dense":
                r["bytes_vs_dense"] = r["bytes"] / base["bytes"]
        rows += _ffn_rows(d, hidden, ffn_sparsities, reps, warmup, seed)
    finally:
        torch.set_num_threads(old)
    return rows


def _dense_weights(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            out.append(w.to_dense() if w.layout == torch.sparse_csr else w)
    return out


def _semi_structured_row(dense: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    label = "2:4 semi-structured"
    try:
        from torch.sparse import to_sparse_semi_structured

        w = dense[0].weight.detach()
        keep = MaskSet(nn.Sequential(copy.deepcopy(dense[0])), granularity="nm", n=2, m=4).attach().update()["0"]
        to_sparse_semi_structured(w * keep)
    except Exception as err:  # the CPU build has no kernel: say so instead of a number
        return {"row": label, "error": f"not available in this build on {x.device}: {type(err).__name__}: "
                f"{str(err).splitlines()[0][:160]}"}  # fmt: skip
    return {"row": label, "error": "available but not timed here (CUDA-only kernels)"}


# ------------------------------------------------------------------------------------------------- output
def write_sparse_speed(out_dir: str | os.PathLike, rows: list[dict[str, Any]], *, settings: dict[str, Any],
                       threads: int = 1, seconds: float = 0.0) -> dict[str, Path]:  # fmt: skip
    """Write ``sparse_speed.json`` (stamp, settings, rows) and ``sparse_speed.md`` into ``out_dir``."""
    from priorkit.experiments.base import run_stamp

    if not isinstance(rows, list) or not rows:
        raise PriorkitError("rows must be the non-empty list measure_sparse_speed returns")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"stamp": run_stamp(threads, seconds), "settings": settings, "rows": rows}
    paths = {"json": out / JSON_NAME, "md": out / MD_NAME}
    paths["json"].write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(sparse_speed_markdown(record))
    return paths


def load_sparse_speed(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def sparse_speed_markdown(record: dict[str, Any]) -> str:
    """The table as Markdown (the report's section)."""
    s = record.get("settings", {})
    lines = [
        "## What sparsity saves (`priorkit speed`)",
        "",
        f"MLP {s.get('d')} -> {s.get('hidden')} -> {s.get('hidden')} -> {s.get('d')} (ReLU), batch {s.get('batch')}, "
        f"float32, {s.get('threads')} thread(s); median of {s.get('reps')} calls. The FFN rows are one block "
        f"{s.get('d')} -> {s.get('hidden')} -> {s.get('d')} at batch 1, against the dense FFN at batch 1. "
        "Ratios below 1 save; masked weights save nothing.",
        "",
        "| form | ms | time x dense | weight bytes | bytes x dense | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | - | - | - | - | {r['error']} |")
            continue
        note = []
        if "activation_sparsity" in r:
            note.append(f"measured activation sparsity {r['activation_sparsity']:.3f}")
        if "shape" in r:
            note.append(f"layers {r['shape']}")
        b = r.get("bytes")
        lines.append(f"| {r['row']} | {r['ms']:.3f} | {_f(r.get('time_vs_dense'), '.2f')} | "
                     f"{'-' if b is None else f'{b / 2**20:.2f} MiB'} | {_f(r.get('bytes_vs_dense'), '.2f')} | "
                     f"{'; '.join(note)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def sparse_speed_html(record: dict[str, Any]) -> str:
    import html

    md = sparse_speed_markdown(record).splitlines()
    rows = [line for line in md if line.startswith("| ") and not line.startswith("|---")]
    cells = ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r.strip("|").split("|")) + "</tr>"
             for r in rows]  # fmt: skip
    return f"<h2>What sparsity saves</h2><p>{html.escape(md[2])}</p><table>{''.join(cells)}</table>"


def build_speed_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results", help="folder for sparse_speed.json/.md (default: results)")
    p.add_argument("--quick", action="store_true", help="a small network and few repetitions (a smoke run)")
    p.add_argument("--threads", type=int, default=1)


def run_speed(args: argparse.Namespace) -> int:
    settings = dict(d=1024, hidden=4096, batch=64, reps=20, warmup=3)
    if args.quick:
        settings = dict(d=64, hidden=128, batch=8, reps=3, warmup=1, ranks=(8, 16))
    start = time.time()
    rows = measure_sparse_speed(threads=args.threads, **settings)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()} | {"threads": args.threads}
    paths = write_sparse_speed(args.out, rows, settings=settings, threads=args.threads, seconds=time.time() - start)
    print(paths["md"].read_text())
    return 0
