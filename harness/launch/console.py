"""What the console shows: this project's lines, each naming its run, and third-party errors. Everything else
(vLLM's and TRL's INFO lines, Python warnings, weight-loading bars) goes only to the run's ``run.log``, unless
``--verbose``."""

from __future__ import annotations

import logging
import os
import sys

OURS = ("harness", "methods", "scorer", "__main__")
VERBOSE_ENV = "ESGRPO_VERBOSE"  # children of a verbose command are verbose too
# A benchmark's runs print only warnings, errors and their bar: the benchmark prints one line per run, and each
# run's evaluations stay in its run.log
BRIEF_ENV = "ESGRPO_BRIEF"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def is_brief() -> bool:
    return os.environ.get(BRIEF_ENV) == "1" and not is_verbose()


def child_settings() -> dict[str, str]:
    """The environment a benchmark gives the runs it starts."""
    return {} if is_verbose() else {BRIEF_ENV: "1"}


class ConsoleFilter(logging.Filter):
    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.name.split(".")[0] in OURS or record.levelno >= logging.ERROR


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname} "
        return f"{self.formatTime(record, '%H:%M:%S')} {getattr(record, 'run', '')}{level}{record.getMessage()}" + (
            f"\n{self.formatException(record.exc_info)}" if record.exc_info else "")


class CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it per command; a handler holding the
    first one would write to a closed stream)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbose: bool | None = None) -> None:
    """Once per process, before vLLM, TRL or transformers are imported."""
    from harness.runlog import RunTag

    verbose = is_verbose() if verbose is None else verbose
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        # vLLM's loggers then propagate to ours (and so to run.log) instead of printing on their own handler;
        # tqdm bars (weights loading, shards written) are off: the run's own progress bar is the one to read
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # torch's C++ warnings (vLLM-CPU's NUMA binding)
    root = logging.getLogger()
    if any(isinstance(f, ConsoleFilter) for h in root.handlers for f in h.filters):
        return
    handler = CurrentStderr()
    handler.addFilter(RunTag())
    handler.addFilter(ConsoleFilter(verbose))
    if is_brief():
        handler.setLevel(logging.WARNING)
    handler.setFormatter(ConsoleFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # py.warnings: third-party, so run.log only
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scorer request otherwise
