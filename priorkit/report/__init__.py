"""Bench runner and report rendering."""

from priorkit.report.bench import run_bench
from priorkit.report.render import write_report

__all__ = ["run_bench", "write_report"]
