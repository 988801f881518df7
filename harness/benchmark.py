"""Benchmark specs: one YAML names the shared settings, the methods with their configs, the seeds and an
optional target; every method runs at the same budget on the same prompts, scorer and evaluation."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.config import StrictModel, apply_overrides, read_yaml, validate
from harness.errors import UserError
from harness.records import load_record
from harness.registry import get_method
from harness.report import write_report
from harness.run import RunSettings, run_method

log = logging.getLogger(__name__)


class MethodEntry(StrictModel):
    config: str  # the method's YAML config (its `run:` section is replaced by the spec's `shared:`)
    method: str | None = None  # the registered method; default: the entry's name (es-vllm: {method: es, ...})
    set: list[str] = Field(default_factory=list)  # KEY=VALUE overrides of method hyperparameters


class BenchmarkSpec(StrictModel):
    name: str
    shared: RunSettings = Field(default_factory=RunSettings)
    methods: dict[str, MethodEntry]
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    target: dict[str, float] | None = None  # e.g. {safe_ratio: 0.9, reward: 0.0}
    runs_dir: str = "runs"
    results_dir: str = "results"


def config_path(spec_path: Path, entry: MethodEntry) -> Path:
    """A method config named in a spec: as given, or relative to the spec's folder."""
    given = Path(entry.config)
    return given if given.is_file() else Path(spec_path).parent / entry.config


def load_spec(path: Path) -> tuple[BenchmarkSpec, dict[str, Any]]:
    raw = read_yaml(path)
    spec = validate(BenchmarkSpec, raw, str(path))
    for name, entry in spec.methods.items():
        if not config_path(path, entry).is_file():
            raise UserError(f"{path}: methods.{name}.config: {entry.config} not found")
    return spec, raw


def method_config(spec: BenchmarkSpec, spec_path: Path, name: str, seed: int):
    entry = spec.methods[name]
    method = get_method(entry.method or name)
    cfg_path = config_path(spec_path, entry)
    data = apply_overrides(read_yaml(cfg_path), entry.set)
    data["run"] = spec.shared.model_copy(update={"seed": seed}).model_dump(mode="json", by_alias=True)
    return validate(method.config_model, data, f"{cfg_path} (with {spec_path} shared settings)")


def default_locations(spec: BenchmarkSpec) -> tuple[Path, Path]:
    stamp = date.today().isoformat()
    return Path(spec.runs_dir) / f"{stamp}-{spec.name}", Path(spec.results_dir) / f"{stamp}-{spec.name}"


def run_benchmark(spec_path: Path, out: Path | None = None, runs_dir: Path | None = None,
                  only: list[str] | None = None, seed_index: int | None = None, report_only: bool = False,
                  shared_overrides: list[str] | None = None) -> Path | None:
    """Run the spec's (method, seed) pairs, then the report. ``only``/``seed_index`` select a subset (one
    SLURM array task); ``report_only`` compares what is there; ``shared_overrides`` (dotted keys of
    ``shared``, e.g. the scorer a cluster job must use) apply to every run."""
    spec, raw = load_spec(Path(spec_path))
    if shared_overrides:
        shared = apply_overrides(spec.shared.model_dump(mode="json", by_alias=True), shared_overrides)
        spec = spec.model_copy(update={"shared": validate(RunSettings, shared, f"{spec_path} shared overrides")})
    default_runs, default_out = default_locations(spec)
    runs_root, out = Path(runs_dir or default_runs), Path(out or default_out)
    for m in only or []:
        if m not in spec.methods:
            raise UserError(f"{spec_path}: no method {m!r} (it names {', '.join(spec.methods)})")
    if seed_index is not None and not 0 <= seed_index < len(spec.seeds):
        raise UserError(f"{spec_path}: seed index {seed_index} outside 0..{len(spec.seeds) - 1}")
    seeds = spec.seeds if seed_index is None else [spec.seeds[seed_index]]
    selected = [(m, s) for s in seeds for m in spec.methods if not only or m in only]
    configs = {} if report_only else {(m, s): method_config(spec, Path(spec_path), m, s) for m, s in selected}
    if report_only:
        done = sorted(d for d in runs_root.glob("*-s*") if (d / "record.json").is_file()
                      and load_record(d).status == "completed")
        if not done:
            raise UserError(f"{runs_root}: no completed runs to report")
        return write_report(done, out, title=spec.name, target=spec.target, spec=raw)
    done, failed = [], []
    for (name, seed), cfg in configs.items():
        run_dir = runs_root / f"{name}-s{seed}"
        if (run_dir / "record.json").is_file() and load_record(run_dir).status == "completed":
            log.info("%s seed %d already completed in %s; keeping it", name, seed, run_dir)
            done.append(run_dir)
            continue
        log.info("running %s seed %d -> %s", name, seed, run_dir)
        if len(selected) == 1 and seed_index is not None:  # this process is the one (method, seed) part
            run_method(spec.methods[name].method or name, cfg, run_dir, spec=raw, label=name)
            done.append(run_dir)
            continue
        # Each run gets its own process: its peak memory is its own, and a crash cannot take the others down.
        cmd = [sys.executable, "-m", "harness.cli", "benchmark", "--spec", str(spec_path), "--runs-dir",
               str(runs_root), "--only", name, "--seed-index", str(spec.seeds.index(seed))]
        for o in shared_overrides or []:
            cmd += ["--set-shared", o]
        rc = subprocess.run(cmd).returncode
        if rc == 0:
            done.append(run_dir)
        else:  # keep going: the other runs are still worth their compute
            log.error("%s seed %d failed (exit %d); see %s", name, seed, rc, run_dir / "record.json")
            failed.append(f"{name} seed {seed}: exit code {rc}")
    if not done:
        raise UserError("every run failed:\n  " + "\n  ".join(failed))
    if only or seed_index is not None:  # one part of the benchmark: the report comes once all parts are done
        if failed:
            raise UserError("some runs failed:\n  " + "\n  ".join(failed))
        return None
    report = write_report(done, out, title=spec.name, target=spec.target, spec=raw)
    if failed:
        raise UserError(f"report written to {report}, but some runs failed:\n  " + "\n  ".join(failed))
    return report
