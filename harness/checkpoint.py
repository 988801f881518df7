"""Checkpoints that survive a kill at any instant: written into a temporary folder, completed by writing
``state.json`` last, then renamed into place; only the newest ``keep`` are kept.

Also the preemption flag: SIGTERM/SIGINT (what SLURM sends before it kills or requeues a job) ask the
method to stop at the end of the current step, checkpoint and exit with ``PREEMPTED_EXIT``.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from harness import runlog
from harness.records import atomic_write_text

STATE_FILE = "esgrpo_state.json"  # written last: its presence marks a complete checkpoint
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: the SLURM templates requeue on it


class Preempted(Exception):
    """Raised by a method after it checkpointed because a stop was requested."""


class CheckpointManager:
    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = Path(root), keep

    def completed(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        done = [p for p in self.root.glob("step-*") if (p / STATE_FILE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def latest(self) -> Path | None:
        done = self.completed()
        return done[-1] if done else None

    def save(self, step: int, write: Callable[[Path], Any], state: dict[str, Any]) -> Path:
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in self.completed()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load_state(path: Path) -> dict[str, Any]:
        return json.loads((Path(path) / STATE_FILE).read_text())


class StopFlag:
    """Set by SIGTERM/SIGINT while a run is in progress; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.event.is_set()

    def _handle(self, signum, frame) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        self.event.set()
        # at once, before the step ends: a user who sees nothing presses Ctrl-C again and loses the step
        tag = runlog.run_tag()
        sys.stderr.write(f"\n{self.signal}{' ' + tag if tag else ''}: finishing this step, then checkpointing; "
                         "Ctrl-C again aborts without a checkpoint\n")
        sys.stderr.flush()

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
