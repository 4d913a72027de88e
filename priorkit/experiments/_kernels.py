"""The prototype-distance kernel benchmark: :func:`distance_kernel_gflops` times ProtoPNet's L2 distance kernel
(:func:`priorkit.prototypes.protopnet_base.l2_distance_maps`) against a plain matmul of the same size. Experiments
report it beside their accuracy numbers; it is a measurement, not part of any method."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from priorkit.core.errors import check_positive_int
from priorkit.prototypes.protopnet_base import l2_distance_maps

__all__ = ["distance_kernel_gflops"]


def _median_seconds(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int, sync: bool) -> list[float]:
    """Median time of each function; the functions are interleaved so load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if sync:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            times[i].append(time.perf_counter() - t0)
    return [sorted(t)[len(t) // 2] for t in times]


@torch.no_grad()
def distance_kernel_gflops(
    batch: int = 32,
    dim: int = 128,
    height: int = 7,
    width: int = 7,
    num_prototypes: int = 2000,
    *,
    repeats: int = 5,
    warmup: int = 2,
    method: str = "expansion",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Time :func:`l2_distance_maps` (1x1 prototypes) against a plain ``torch.matmul`` with the same
    M = batch*height*width, N = num_prototypes, K = dim; both are credited 2*M*N*K flops.

    Returns ``kernel_gflops``, ``matmul_gflops``, ``kernel_ratio`` (kernel / matmul; near 1 means the distance
    kernel runs at matmul speed), ``kernel_ms`` and ``matmul_ms`` (medians of ``repeats`` interleaved runs).
    ``threads`` sets torch's CPU thread count for the measurement (1 gives stable numbers on a shared, loaded
    machine) and restores it afterwards.
    """
    for name, v in (("batch", batch), ("dim", dim), ("height", height), ("width", width)):
        check_positive_int(name, v)
    check_positive_int("num_prototypes", num_prototypes)
    check_positive_int("repeats", repeats)
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(batch, dim, height, width, generator=g).to(device)
    p = torch.rand(num_prototypes, dim, 1, 1, generator=g).to(device)
    a = torch.rand(batch * height * width, dim, generator=g).to(device)
    b = torch.rand(dim, num_prototypes, generator=g).to(device)
    sync = torch.device(device).type == "cuda"
    old = torch.get_num_threads()
    if threads is not None:
        check_positive_int("threads", threads)
        torch.set_num_threads(threads)
    try:
        t_kernel, t_mm = _median_seconds(
            [lambda: l2_distance_maps(z, p, method), lambda: torch.matmul(a, b)], repeats, warmup, sync
        )
    finally:
        torch.set_num_threads(old)
    flops = 2.0 * batch * height * width * num_prototypes * dim
    kg, mg = flops / t_kernel / 1e9, flops / t_mm / 1e9
    return {
        "kernel_gflops": kg,
        "matmul_gflops": mg,
        "kernel_ratio": kg / mg if mg > 0 and math.isfinite(mg) else float("nan"),
        "kernel_ms": 1e3 * t_kernel,
        "matmul_ms": 1e3 * t_mm,
    }
