"""Checkpoints that survive a kill at any instant: written into a temporary folder, completed by writing
``state.json`` last, then renamed into place; only the newest ``keep`` are kept.

Also the preemption flag: SIGTERM/SIGINT (what SLURM sends before it kills or requeues a job) ask the
method to stop at the end of the current step, checkpoint and exit with ``PREEMPTED_EXIT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import struct
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import runlog
from harness.errors import UserError
from harness.records import atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = "esgrpo_state.json"  # written last: its presence marks a complete checkpoint
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: the SLURM templates requeue on it


class Preempted(Exception):
    """Raised by a method after it checkpointed because a stop was requested."""


STATE_KEYS = ("step", "lambda", "completions", "tokens", "train_seconds", "evals_done")


def numbered(folder: Path, prefix: str) -> list[Path]:
    """``folder/PREFIX-N`` checkpoints holding a state file, oldest first; anything else there (``step-abc``,
    ``step--1``, a half-written temporary folder) is not a checkpoint and is passed over."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)")
    found = [(int(m[1]), p) for p in folder.glob(f"{prefix}-*")
             if (m := pattern.fullmatch(p.name)) and (p / STATE_FILE).is_file()] if folder.is_dir() else []
    return [p for _, p in sorted(found)]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _digest(state: dict[str, Any]) -> str:
    return _hash({k: v for k, v in state.items() if k != "digest"})


def sealed(state: dict[str, Any]) -> dict[str, Any]:
    """The state with a digest of itself: a state edited by hand (its λ, its budget) no longer matches it."""
    return {**state, "digest": _digest(state)}


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state, or a UserError naming the file and what is wrong with it (damaged, incomplete,
    edited since it was written)."""
    file = Path(path) / STATE_FILE
    try:
        state = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{file}: not a readable checkpoint state ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise UserError(f"{file}: a checkpoint state is a JSON object, not {type(state).__name__}")
    if missing := [k for k in STATE_KEYS if k not in state]:
        raise UserError(f"{file}: checkpoint state lacks {', '.join(missing)}")
    if "digest" in state and state["digest"] != _digest(state):
        raise UserError(f"{file}: the checkpoint state was edited after it was written (its digest does not match)")
    try:  # a state from before states were sealed is not covered by a digest: its values are checked instead
        HarnessState.model_validate(state)
    except ValidationError as e:
        where = ".".join(str(x) for x in e.errors()[0]["loc"])
        raise UserError(f"{file}: field {where!r} of the checkpoint state is not what a run writes "
                        f"({e.errors()[0]['msg'][:120]})") from None
    return state


Finite = Annotated[float, Field(allow_inf_nan=False)]


class _LambdaState(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    log_lambda: Annotated[float, Field(ge=-700, le=700)]  # exp() of it is λ
    ema: Finite = 0.0
    j_c: Finite = 0.0
    updates: Annotated[int, Field(ge=0)] = 0


class HarnessState(BaseModel):
    """The harness's part of a checkpoint state, as ``RunContext.snapshot_state`` writes it (a method keeps its
    own keys beside these)."""

    model_config = ConfigDict(extra="allow", strict=True)
    step: Annotated[int, Field(ge=0)]
    lambda_: _LambdaState = Field(alias="lambda")
    completions: Annotated[int, Field(ge=0)]
    tokens: Annotated[int, Field(ge=0)]
    train_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    evals_done: list[Annotated[int, Field(ge=0)]]


def check_owner(path: Path, state: dict[str, Any], expected: dict[str, str]) -> None:
    """A state is resumed only by the run that wrote it: the same run folder name, method and config."""
    written = state.get("run")
    if written is None:  # written before states named their run
        return
    if written != expected:
        raise UserError(f"{Path(path) / STATE_FILE}: written by run {written.get('run_id')} ({written.get('method')}, "
                        f"config {written.get('config_hash')}), not by this run {expected['run_id']} "
                        f"({expected['method']}, config {expected['config_hash']}); a checkpoint is resumed only "
                        "by its own run")


def safetensors_damage(file: Path) -> str | None:
    """Why a .safetensors file is not whole (empty, cut short, garbage), or None: its header says where every
    tensor's bytes end, so a file shorter than that was cut off mid-write."""
    try:
        with file.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return f"{file.name}: {len(raw)} bytes"
            n = struct.unpack("<Q", raw)[0]
            size = file.stat().st_size
            if n > min(size - 8, 100 << 20):
                return f"{file.name}: header length {n} past the file's {size} bytes"
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        return f"{file.name}: not a safetensors file ({type(e).__name__})"
    if 8 + n + max(ends, default=0) > size:
        return f"{file.name}: {size} bytes, its tensors end at byte {8 + n + max(ends, default=0)}"
    return None


def damage(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (its state or any weight file damaged), or None."""
    try:
        read_state(path)
    except UserError as e:
        return str(e)
    for file in sorted(Path(path).rglob("*.safetensors")):
        if why := safetensors_damage(file):
            return f"{path}: {why}"
    return None


def latest_intact(candidates: list[Path]) -> Path | None:
    """The newest of ``candidates`` (oldest first) that is whole. A damaged newer one is passed over with a
    warning (the run record notes it on resume); when every one is damaged, that is a UserError, not a silent
    start from scratch."""
    reasons = []
    for path in reversed(candidates):
        why = damage(path)
        if why is None:
            for r in reasons:
                log.warning("passing over a damaged checkpoint: %s", r)
            return path
        reasons.append(why)
    if reasons:
        raise UserError("every checkpoint of this run is damaged; remove them to start over:\n  " + "\n  ".join(reasons))
    return None


def passed_over(chosen: Path) -> list[Path]:
    """The checkpoints beside ``chosen`` with a higher number: the damaged ones ``latest_intact`` passed over."""
    prefix, _, number = chosen.name.rpartition("-")
    return [p for p in numbered(chosen.parent, prefix) if int(p.name.rpartition("-")[2]) > int(number)]


def identity(run_id: str, method: str, config: dict[str, Any]) -> dict[str, str]:
    """What a checkpoint state says about the run that wrote it: a state is resumed only by the same run."""
    return {"run_id": run_id, "method": method,
            "config_hash": _hash({k: v for k, v in config.items() if k != "policy_path"})}


def write_folder(final: Path, write: Callable[[Path], Any]) -> Path:
    """``write`` fills a temporary folder beside ``final``, which then replaces ``final`` whole. A write that fails
    (a full disk) leaves the previous ``final`` and no half-written folder: that would hold the space the run's
    record needs to say why."""
    tmp = final.parent / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".old-{final.name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():  # aside first: a kill between the two renames leaves one whole copy
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointManager:
    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = Path(root), keep

    def completed(self) -> list[Path]:
        return numbered(self.root, "step")

    def latest(self) -> Path | None:
        return latest_intact(self.completed())

    def save(self, step: int, write: Callable[[Path], Any], state: dict[str, Any]) -> Path:
        def write_with_state(tmp: Path) -> None:
            write(tmp)
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=1))

        final = write_folder(self.root / f"step-{step:08d}", write_with_state)
        for old in self.completed()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


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
