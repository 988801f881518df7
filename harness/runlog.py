"""Which run a log line belongs to, and the run's own log file.

Every line a run logs carries its label and seed (a benchmark interleaves several runs' output), and every line,
third-party ones included, goes to ``run.log`` in the run folder: the console shows only what a user reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

LOG_FILE = "run.log"
_tag = ""


def set_run(label: str, seed: int | None = None) -> None:
    """``seed`` None: an evaluation of a fixed policy, named by its label alone."""
    global _tag
    _tag = label if seed is None else f"{label}-s{seed}"


def run_tag() -> str:
    return _tag


class RunTag(logging.Filter):
    """Adds ``record.run``: the current run's ``LABEL-sSEED `` (empty outside a run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run = f"{_tag} " if _tag else ""
        return True


class RunLogHandler(logging.FileHandler):
    """The current run's ``run.log``."""


def attach_file(run_dir: Path) -> logging.Handler:
    """Every logger's INFO and above, appended to ``run_dir/run.log`` (a resumed run continues the file). One run
    at a time per process: a run started after another in the same process (a test, a one-part benchmark) stops
    the earlier run's file, which would otherwise collect the new run's lines too."""
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, RunLogHandler)]:
        if Path(h.baseFilename) == (run_dir / LOG_FILE).resolve():
            return h
        root.removeHandler(h)
        h.close()
    handler = RunLogHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.addFilter(RunTag())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(run)s%(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler
