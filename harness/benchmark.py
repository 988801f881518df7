"""Benchmark specs: one YAML names the shared settings, the methods with their configs, the seeds and an
optional target; every method runs at the same budget on the same prompts, scorer and evaluation."""

from __future__ import annotations

import logging
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
    set: list[str] = Field(default_factory=list)  # KEY=VALUE overrides of method hyperparameters


class BenchmarkSpec(StrictModel):
    name: str
    shared: RunSettings = Field(default_factory=RunSettings)
    methods: dict[str, MethodEntry]
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    target: dict[str, float] | None = None  # e.g. {safe_ratio: 0.9, reward: 0.0}
    runs_dir: str = "runs"
    results_dir: str = "results"


def load_spec(path: Path) -> tuple[BenchmarkSpec, dict[str, Any]]:
    raw = read_yaml(path)
    spec = validate(BenchmarkSpec, raw, str(path))
    for name, entry in spec.methods.items():
        if not (path.parent / entry.config).is_file() and not Path(entry.config).is_file():
            raise UserError(f"{path}: methods.{name}.config: {entry.config} not found")
    return spec, raw


def method_config(spec: BenchmarkSpec, spec_path: Path, name: str, seed: int):
    entry = spec.methods[name]
    method = get_method(name)
    cfg_path = Path(entry.config) if Path(entry.config).is_file() else spec_path.parent / entry.config
    data = apply_overrides(read_yaml(cfg_path), entry.set)
    data["run"] = spec.shared.model_copy(update={"seed": seed}).model_dump(mode="json", by_alias=True)
    return validate(method.config_model, data, f"{cfg_path} (with {spec_path} shared settings)")


def run_benchmark(spec_path: Path, out: Path | None = None, runs_dir: Path | None = None) -> Path:
    spec, raw = load_spec(Path(spec_path))
    stamp = date.today().isoformat()
    runs_root = Path(runs_dir or spec.runs_dir) / f"{stamp}-{spec.name}"
    out = Path(out or Path(spec.results_dir) / f"{stamp}-{spec.name}")
    configs = {(m, s): method_config(spec, Path(spec_path), m, s) for s in spec.seeds for m in spec.methods}
    done, failed = [], []
    for (name, seed), cfg in configs.items():
        run_dir = runs_root / f"{name}-s{seed}"
        if (run_dir / "record.json").is_file() and load_record(run_dir).status == "completed":
            log.info("%s seed %d already completed in %s; keeping it", name, seed, run_dir)
            done.append(run_dir)
            continue
        log.info("running %s seed %d -> %s", name, seed, run_dir)
        try:
            run_method(name, cfg, run_dir, spec=raw)
            done.append(run_dir)
        except Exception as e:  # keep going: the other runs are still worth their compute
            log.error("%s seed %d failed: %s", name, seed, e)
            failed.append(f"{name} seed {seed}: {e}")
    if not done:
        raise UserError("every run failed:\n  " + "\n  ".join(failed))
    report = write_report(done, out, title=spec.name, target=spec.target, spec=raw)
    if failed:
        raise UserError(f"report written to {report}, but some runs failed:\n  " + "\n  ".join(failed))
    return report
