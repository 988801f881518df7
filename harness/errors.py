"""User-facing errors: the CLI prints these as one clear line and exits non-zero, without a traceback."""

import errno
import re


class UserError(Exception):
    """Bad input from the user (file, config, argument, request). The message names what and where."""


class ScorerError(RuntimeError):
    """The scorer failed the run: never replaced by default scores. The message names the scorer and the request."""


class ScorerUnavailable(ScorerError):
    """The scorer could not be reached before the deadline."""


class ScorerOutOfMemory(ScorerError):
    """One pair alone does not fit in the scorer's memory: the run stops at once with the scorer's numbers."""


class BadScorerReply(ScorerError):
    """The scorer answered, but not with one finite reward and one finite cost per pair sent."""


class OutOfMemory(RuntimeError):
    """A run did not fit its device. Its record says ``oom`` with the memory it reached: a result to report."""

    EXIT_CODE = 3


class PlannedOutOfMemory(RuntimeError):
    """The memory plan says the run's parts cannot fit its device: refused before training, recorded as ``oom``."""


# torch's CUDA out-of-memory message says what the process held when the allocation failed (a memory sampler,
# every fraction of a second, misses that last moment)
OOM_IN_USE = re.compile(r"this process has ([0-9.]+) GiB memory in use")


def error_excerpt(message: str | None, limit: int = 300) -> str:
    """The head of a run's error: what happened (torch's OOM message ends in allocator advice)."""
    return (message or "")[:limit]


def oom_in_use_mb(message: str) -> float | None:
    m = OOM_IN_USE.search(message)
    return float(m.group(1)) * 1024 if m else None


def is_disk_full(exc: BaseException) -> bool:
    """No space left (or over quota), raised by Python or by a library that says it in words (safetensors)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "no space left on device" in str(exc).lower() or "disk quota exceeded" in str(exc).lower()


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or one passed through Ray or vLLM (which wrap it, or say it in words)."""
    if isinstance(exc, PlannedOutOfMemory):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(k in text for k in ("outofmemoryerror", "out of memory", "no available memory for the cache",
                                   "can't allocate memory"))
