"""Child processes that end with the process that started them.

`esgrpo benchmark` runs each (method, seed) in a child process and `esgrpo bench gpu` its scorer in another. If
the parent dies without passing a signal on (SIGKILL, the OOM killer, `timeout -k`), Linux sends the child SIGTERM
(``PR_SET_PDEATHSIG``): a run then checkpoints and records the stop, a scorer shuts down; neither is left behind
holding a GPU. The child asks for it itself at start-up and pops the marker, so its own children (vLLM engines,
Ray workers) do not inherit it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "ESGRPO_PARENT_PID"
PR_SET_PDEATHSIG = 1


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child that must end with this process."""
    return {**os.environ, PARENT_ENV: str(os.getpid()), **extra}


def end_with_parent() -> None:
    """In a child started with ``child_env``: SIGTERM when the parent dies (Linux; elsewhere nothing)."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None or not parent.isdigit() or not sys.platform.startswith("linux"):
        return  # not started by child_env (a stray value is ignored, never a traceback)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != int(parent):  # it died before the request above
        os.kill(os.getpid(), signal.SIGTERM)
