"""Comparison reports from run records: report.md, a self-contained report.html, PNG plots, summary.json."""

from harness.report.compare import write_report

__all__ = ["write_report"]
