"""Run records: one schema-versioned JSON per run, plus TensorBoard events and optional W&B (offline).

The record is rewritten atomically after every change, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal

import psutil
from pydantic import AliasChoices, BaseModel, Field

from harness.errors import UserError, is_disk_full

SCHEMA_VERSION = 2  # 2: points count `completions` (1 called them `samples`); both load
RECORD_FILE = "record.json"


class Point(BaseModel):
    """One training iteration (ES) or optimizer step (GRPO)."""

    step: int
    # completions scored so far (the budget unit); records before schema 2 called it `samples`
    completions: int = Field(validation_alias=AliasChoices("completions", "samples"))
    tokens: int  # completion tokens generated so far
    seconds: float  # training wall-clock so far (evaluation excluded)
    reward: float
    cost: float
    objective: float
    safe_ratio: float
    lam: float = Field(alias="lambda")
    j_c: float
    times: dict[str, float] = Field(default_factory=dict)  # this step's split: generation/scoring/...
    extra: dict[str, float] = Field(default_factory=dict)

    model_config = {"populate_by_name": True}


class EvalPoint(BaseModel):
    mark: int  # budget checkpoint (completions) this evaluation stands for; equal across methods
    step: int
    completions: int = Field(validation_alias=AliasChoices("completions", "samples"))
    tokens: int
    seconds: float
    lam: float = Field(alias="lambda")
    metrics: dict[str, float]
    samples_file: str
    suite_files: dict[str, str] = Field(default_factory=dict)  # suite name -> its answers and verdicts (JSONL)

    model_config = {"populate_by_name": True}


class RunRecord(BaseModel):
    # a record from a newer esgrpo (or a hand-edited number) is refused, not read as this schema
    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)
    run_id: str
    # "run": a method trained to its budget; "eval": `esgrpo eval` of a fixed policy (a reference row in reports)
    kind: Literal["run", "eval"] = "run"
    method: str
    label: str | None = None  # the benchmark entry it ran as (es-vllm, es-hf...); reports group by it
    # what the method says this run is, for launchers' cross-run figures: the variant (es: vllm/lowrank, grpo:
    # vllm...) and how it holds the weights it trains (memory comparisons)
    variant: str | None = None
    precision: str | None = None
    seed: int
    # oom: the run did not fit the device; a result (what it reached is in memory), not a crash
    status: Literal["running", "completed", "failed", "interrupted", "oom"] = "running"
    started: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    finished: str | None = None
    config: dict[str, Any]
    spec: dict[str, Any] | None = None
    environment: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    scorer: dict[str, Any] = Field(default_factory=dict)
    judge: dict[str, Any] | None = None
    evaluation: dict[str, Any] = Field(default_factory=dict)
    budget: dict[str, Any] = Field(default_factory=dict)
    series: list[Point] = Field(default_factory=list)
    evals: list[EvalPoint] = Field(default_factory=list)
    memory: dict[str, Any] = Field(default_factory=dict)
    throughput: dict[str, float] = Field(default_factory=dict)
    timing: dict[str, float] = Field(default_factory=dict)
    # ‖θ − θ₀‖ / ‖θ₀‖ of the saved policy against the one it started from: total and per kind of layer
    drift: dict[str, float] = Field(default_factory=dict)
    outages: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    error: str | None = None


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask would, for a moment, for
    every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """``path`` holds ``text`` whole, or (on any failure) what it held before; no temporary file is left. A full
    disk is one line naming the path and the bytes it needed."""
    data = text.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror})") from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # as open() would: co-authors on a shared filesystem can read it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e):
            raise UserError(f"{path}: the disk is full ({len(data):,} bytes needed; the previous version is "
                            "kept)") from None
        raise


def load_record(path: str | Path) -> RunRecord:
    """A run record, or a UserError naming the file (missing, not JSON, not a record)."""
    from pydantic import ValidationError

    from harness.config import read_text
    from harness.errors import UserError

    path = Path(path)
    if path.is_dir():
        path = path / RECORD_FILE
    text = read_text(path, "run record")
    try:
        return RunRecord.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise UserError(f"{path}: not a valid run record ({where}: {first['msg']})") from None


class MemorySampler:
    """Peak resident memory of this process and all its descendants (Ray actors, engine workers) during
    one run, sampled every ``interval`` s. Unlike ``ru_maxrss`` it starts from zero for each run, so runs
    made one after another in one process do not inherit each other's peak."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak_mb = interval, 0.0
        self.gpu_peak_mb: float | None = None  # NVML: device memory of this process tree (None: no NVML GPU)
        self._gpus = nvml_handles()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="memory-sampler")
        self._thread.start()

    def sample(self) -> float:
        if self._paused.is_set():  # measuring the run, not running it: the peaks leave that out
            return self.peak_mb
        proc = psutil.Process()
        tree = [proc, *proc.children(recursive=True)]
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a child may exit between listing and reading
                pass
        self.peak_mb = max(self.peak_mb, round(total / 2**20, 1))
        if self._gpus:
            used = nvml_used_bytes(self._gpus, {p.pid for p in tree})
            self.gpu_peak_mb = max(self.gpu_peak_mb or 0.0, round(used / 2**20, 1))
        return self.peak_mb

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> float:
        self._stop.set()
        return self.sample()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()


def nvml_handles() -> list:
    """NVML device handles (nvidia-ml-py, which vLLM brings), or [] where there is no NVIDIA GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no library, no driver, no GPU: GPU memory is then simply not reported
        return []


def nvml_used_bytes(handles: list, pids: set[int]) -> int:
    """Device memory the driver charges to ``pids`` on all GPUs: what the allocator peak misses (CUDA
    context, NCCL buffers, memory outside torch's allocator)."""
    import pynvml

    total = 0
    for h in handles:
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        except pynvml.NVMLError:
            continue
        total += sum(p.usedGpuMemory or 0 for p in procs if p.pid in pids)
    return total


def peak_gpu_mb() -> dict[str, float]:
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        return {f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / 2**20, 1)
                for i in range(torch.cuda.device_count())}
    except Exception:
        return {}


def reset_gpu_peaks() -> None:
    """Each run reports its own peak, not the process's (benchmarks run methods one after another)."""
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)
    except Exception:
        pass


class RecordWriter:
    """Owns a run directory: ``record.json``, ``evals/*.jsonl``, ``tb/`` events, optional W&B."""

    def __init__(self, run_dir: Path, record: RunRecord, tensorboard: bool = True, wandb: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.record = record
        self.memory = MemorySampler()
        reset_gpu_peaks()
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        if wandb:
            import wandb as wb

            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wb.init(project="esgrpo", name=record.run_id, dir=str(self.run_dir),
                                  config=record.config, reinit="finish_previous")
        self.flush()

    def flush(self) -> None:
        self.record.memory["peak_rss_mb"] = max(self.record.memory.get("peak_rss_mb", 0.0), self.memory.sample())
        gpu = peak_gpu_mb()
        if gpu:  # the most of each device (its counter is reset after measurements aside)
            old = self.record.memory.get("peak_gpu_mb") or {}
            self.record.memory["peak_gpu_mb"] = {d: max(v, old.get(d, 0.0)) for d, v in gpu.items()}
        if self.memory.gpu_peak_mb is not None:
            self.record.memory["peak_gpu_nvml_mb"] = max(self.record.memory.get("peak_gpu_nvml_mb", 0.0),
                                                         self.memory.gpu_peak_mb)
        atomic_write_text(self.run_dir / RECORD_FILE, self.record.model_dump_json(indent=1, by_alias=True))

    def _scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self._tb:
            for k, v in values.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        if self._wandb:
            self._wandb.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

    def log_point(self, point: Point) -> None:
        self.record.series.append(point)
        scalars = {"reward": point.reward, "cost": point.cost, "objective": point.objective,
                   "safe_ratio": point.safe_ratio, "lambda": point.lam, "j_c": point.j_c,
                   **{f"time_{k}": v for k, v in point.times.items()}, **point.extra}
        self._scalars("train", scalars, point.completions)
        self.flush()

    def log_eval(self, point: EvalPoint, samples: list[dict[str, Any]],
                 suite_samples: dict[str, list[dict[str, Any]]] | None = None) -> None:
        for name, file in [(None, point.samples_file), *point.suite_files.items()]:
            rows = samples if name is None else (suite_samples or {})[name]
            atomic_write_text(self.run_dir / file, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in rows))
        self.record.evals.append(point)
        self._scalars("eval", point.metrics, point.completions)
        self.flush()

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Work of the harness, not of the method (drift and KL from the starting policy): the record's memory
        peaks are taken before it and leave it out, host and GPU."""
        self.flush()
        self.memory.pause()
        try:
            yield
        finally:
            gc.collect()
            reset_gpu_peaks()
            self.memory.resume()

    def finish(self, status: Literal["completed", "failed", "interrupted", "oom"], error: str | None = None) -> None:
        self.record.status = status
        self.record.error = error
        self.record.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.memory.stop()
        self.flush()
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.finish()

