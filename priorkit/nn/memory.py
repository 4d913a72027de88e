"""Per-sample memories: one row per training sample, keyed by the dataset index (PS-KD, ELR, INS)."""

from __future__ import annotations

import math
from typing import Any

import torch

from priorkit.core.errors import PriorkitError, check_choice, check_finite, check_positive_int
from priorkit.nn import distributed as D

MEMORY_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}


class PerSampleMemory:
    """An ``[N, C]`` table with one row per training sample, keyed by the dataset index.

    ``write`` gathers ``(index, rows)`` from every rank before writing, so under DDP each rank holds the
    whole, identical table (as the official PS-KD code does) and a resumed or re-sharded run reads the
    same values.
    """

    def __init__(self, num_samples: int, num_classes: int, dtype: str = "float32", fill: float = 0.0) -> None:
        check_positive_int("num_samples", num_samples)
        check_positive_int("num_classes", num_classes)
        check_choice("memory dtype", dtype, list(MEMORY_DTYPES))
        self.dtype = dtype
        self.table = torch.full((num_samples, num_classes), fill, dtype=MEMORY_DTYPES[dtype])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.table.shape)  # type: ignore[return-value]

    def check_index(self, index: torch.Tensor) -> torch.Tensor:
        """``index`` as a CPU int64 tensor after checking it is 1-D and in ``[0, num_samples)``.

        A hook checks once per step with this and then reads and writes with ``checked=False``."""
        if not isinstance(index, torch.Tensor):
            raise PriorkitError(f"index must be a 1-D integer tensor, got {type(index).__name__}")
        if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
            raise PriorkitError(f"index must be a 1-D integer tensor, got {index.dtype} {list(index.shape)}")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.table.shape[0]):
            raise PriorkitError(
                f"index must lie in [0, {self.table.shape[0] - 1}] (num_samples), got "
                f"[{int(index.min())}, {int(index.max())}]; does the dataset return its sample index?"
            )
        return index.long().cpu()

    def read(self, index: torch.Tensor, device: torch.device | None = None, *, checked: bool = True) -> torch.Tensor:
        """Rows for ``index`` as float32 on ``device`` (``checked=False``: ``index`` was already checked)."""
        rows = self.table[self.check_index(index) if checked else index.long().cpu()].float()
        return rows.to(device) if device is not None else rows

    def write(self, index: torch.Tensor, rows: torch.Tensor, *, gather: bool = True, checked: bool = True) -> None:
        """Set the rows for ``index`` (from every rank when ``gather`` and running under DDP).

        Non-finite rows are refused before anything is written, so one bad batch cannot corrupt the table; under
        DDP the gathered rows are tested, so every rank raises together. ``checked=False`` skips the index
        range check only (the caller checked it this step with :meth:`check_index`).
        """
        if rows.shape != (len(index), self.table.shape[1]):
            raise PriorkitError(f"rows must have shape [{len(index)}, {self.table.shape[1]}], got {list(rows.shape)}")
        rows = rows.detach()
        if gather and D.is_dist():
            index = D.all_gather_cat(index.to(rows.device))
            rows = D.all_gather_cat(rows)
        if not math.isfinite(float(rows.sum())):  # one reduction; names the count only when it fails
            check_finite("rows", rows)
        self.table[self.check_index(index.cpu()) if checked else index.long().cpu()] = rows.cpu().to(self.table.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.clone(), "dtype": self.dtype}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["table"].shape) != tuple(self.table.shape):
            raise PriorkitError(
                f"memory in the checkpoint has shape {list(state['table'].shape)}, this run {list(self.table.shape)}"
            )
        self.table = state["table"].clone().to(MEMORY_DTYPES[self.dtype])
