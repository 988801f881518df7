"""Benchmark specs: one YAML names the shared settings, the methods with their configs, the seeds and an
optional target; every method runs at the same budget on the same prompts, scorer and evaluation."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from harness import runlog
from harness.budget import BudgetConfig
from harness.checkpoint import Preempted
from harness.config import StrictModel, apply_overrides, read_yaml, renamed, validate
from harness.config_diff import differing_keys
from harness.data import load_prompt_set
from harness.errors import OutOfMemory, UserError
from harness.fixtures.policy import BUILTIN_POLICY, builtin_policy_path
from harness.launch.console import child_settings
from harness.launch.processes import child_env
from harness.records import atomic_write_text, load_record
from harness.registry import available, get_method
from harness.launch.interpolate import evaluate_between
from harness.report import write_report
from harness.report.frontier import write_frontier
from harness.report.metrics import BY_KEY as METRICS_BY_KEY, PRIMARY
from harness.sweep import points as sweep_points
from harness.sweep import spec_points
from harness.method import RunSettings
from harness.run import run_method

log = logging.getLogger(__name__)
# Names become folder names and SLURM job names: nothing that could leave the runs folder or split a command.
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
RUN_DIR = re.compile(r"^(?P<label>[A-Za-z0-9][A-Za-z0-9._-]*)-s(?P<seed>\d+)$")


def check_name(value: str, what: str) -> str:
    if not re.match(NAME, value) or ".." in value:
        raise ValueError(f"{what} {value!r} must be letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    return value


class MethodEntry(StrictModel):
    config: str  # the method's YAML config (its `run:` section is replaced by the spec's `run:`)
    method: str | None = None  # the registered method; default: the entry's name (es-vllm: {method: es, ...})
    set: list[str] = Field(default_factory=list)  # KEY=VALUE overrides of method hyperparameters
    # This entry's own budget instead of the shared one: only for reproducing published runs whose budgets
    # differ (the report then says the budgets differ); fair comparisons leave it unset.
    budget: BudgetConfig | None = None
    # a grid {key: [values]} or a list of {key: value} points (harness/sweep.py): each point runs with the spec's
    # seeds and budget as its own entry, labelled by its values
    sweep: dict[str, list[Any]] | list[dict[str, Any]] | None = None
    # KEY=VALUE overrides of the spec's `run` settings for this entry alone: what a sweep point over a `run.` key
    # (λ₀, the cost threshold) gets; a fair comparison leaves it empty
    run_set: list[str] = Field(default_factory=list)


class EvalEntry(StrictModel):
    """A fixed policy evaluated under the spec's ``run`` settings into a reference row (``esgrpo eval``)."""

    policy: str  # a local HF model folder (a base model, a published checkpoint, a run's model_saves/latest_hf)
    engine: Literal["hf", "vllm"] = "vllm"
    set: list[str] = Field(default_factory=list)  # KEY=VALUE overrides of the evaluation (esgrpo eval --set)


class CompareSettings(StrictModel):
    baseline: str | None = None  # the label every other label is paired against
    primary: str = PRIMARY  # the metric a verdict leads with (a key of the report's metrics)
    # evaluate the straight line between each method's final policy and the baseline's (5 points, at the lowest
    # shared seed): the report step then generates and scores, and at 7B wants the GPU a run had
    interpolate: bool = False

    @field_validator("primary")
    @classmethod
    def _primary(cls, v: str) -> str:
        if v not in METRICS_BY_KEY:
            raise ValueError(f"{v!r} is not a report metric (one of {', '.join(METRICS_BY_KEY)})")
        if not METRICS_BY_KEY[v].judged:
            raise ValueError(f"{v!r} mixes prompts on which more of it is not better; a verdict cannot lead with it")
        return v


class BenchmarkSpec(StrictModel):
    name: str
    run: RunSettings = Field(default_factory=RunSettings)  # every method's `run:` section (until 0.2: `shared:`)
    methods: dict[str, MethodEntry] = Field(default_factory=dict)
    # fixed policies evaluated into reference rows beside the methods (a spec may hold only these)
    evaluate: dict[str, EvalEntry] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    target: dict[str, float] | None = None  # e.g. {safe_ratio: 0.9, reward: 0.0}
    compare: CompareSettings = Field(default_factory=CompareSettings)
    references: list[str] = Field(default_factory=list)  # evaluation records (`esgrpo eval --out DIR`) to show
    # the scorer service a cluster job starts for this spec (a scorer config, relative to this file); required on a
    # cluster unless the runs score with the built-in scorer. The published and fair specs differ in how they truncate.
    scorer_service: str | None = None
    runs_dir: str = "runs"
    results_dir: str = "results"

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed(data, "shared", "run", "")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "name")

    @field_validator("methods", "evaluate")
    @classmethod
    def _entry_names(cls, v: dict[str, Any], info) -> dict[str, Any]:
        for key in v:
            check_name(key, "method entry" if info.field_name == "methods" else "evaluation entry")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError("seeds must be distinct non-negative integers")
        return v

    @model_validator(mode="after")
    def _entries(self) -> "BenchmarkSpec":
        if not self.methods and not self.evaluate:
            raise ValueError("a spec names at least one entry under methods or evaluate")
        both = sorted(set(self.methods) & set(self.evaluate))
        if both:
            raise ValueError(f"{', '.join(both)}: named under both methods and evaluate (the names label report rows)")
        return self

    @model_validator(mode="after")
    def _baseline(self) -> "BenchmarkSpec":
        if self.compare.baseline is not None and self.compare.baseline not in self.methods:
            raise ValueError(f"compare.baseline {self.compare.baseline!r} is not one of the methods "
                             f"({', '.join(self.methods)})")
        return self

    @model_validator(mode="after")
    def _sweeps(self) -> "BenchmarkSpec":
        """Each swept entry becomes one entry per point (after the baseline check: a baseline may be swept, and
        is then a frontier)."""
        if not any(e.sweep is not None for e in self.methods.values()):
            return self
        expanded: dict[str, MethodEntry] = {}
        for name, entry in self.methods.items():
            if entry.sweep is None:
                expanded[name] = entry
                continue
            try:
                found = sweep_points(name, entry.sweep)
            except UserError as e:
                raise ValueError(str(e)) from None
            for point in found:
                run_keys = [o.removeprefix("run.") for o in point.overrides if o.startswith("run.")]
                own = [o for o in point.overrides if not o.startswith("run.")]
                expanded[point.label] = entry.model_copy(update={
                    "sweep": None, "method": entry.method or name, "set": [*entry.set, *own],
                    "run_set": [*entry.run_set, *run_keys]})
        clash = sorted(set(expanded) & set(self.evaluate))
        if clash:
            raise ValueError(f"{', '.join(clash)}: a sweep point's label is also an evaluation entry")
        # set without validate_assignment, which would check the baseline again against the points' labels
        self.__dict__["methods"] = expanded
        return self


def config_path(spec_path: Path, entry: MethodEntry) -> Path:
    """A method config named in a spec: as given, or relative to the spec's folder."""
    return from_spec(spec_path, entry.config)


def from_spec(spec_path: Path, given: str) -> Path:
    """A file a spec names: as given when it is there, else relative to the spec's folder."""
    return Path(given) if Path(given).is_file() else Path(spec_path).parent / given


def load_spec(path: Path) -> tuple[BenchmarkSpec, dict[str, Any]]:
    raw = read_yaml(path)
    spec = validate(BenchmarkSpec, raw, str(path))
    for name, entry in spec.methods.items():
        method = entry.method or name
        if method not in available():
            field = f"methods.{name}.method" if entry.method else f"methods.{name}"
            raise UserError(f"{path}: {field}: unknown method {method!r}; installed: {', '.join(available())} "
                            f"(an entry named otherwise says which it runs: {name}: {{method: es, ...}})")
        if not config_path(path, entry).is_file():
            raise UserError(f"{path}: methods.{name}.config: {entry.config} not found")
    return spec, raw


def overrides_for(spec: BenchmarkSpec, name: str, overrides: list[str]) -> list[str]:
    """The ``--set`` overrides that reach entry ``name``: ``METHOD.KEY=V`` every entry of that method (es.sigma:
    es and es-lowrank), ``ENTRY.KEY=V`` that entry alone (es-lowrank.sigma), a plain ``KEY=V`` every entry."""
    method = spec.methods[name].method or name
    out = []
    for o in overrides:
        head, dot, rest = o.split("=", 1)[0].partition(".")
        if dot and head in available():
            if head == method:
                out.append(o[len(head) + 1:])
        elif dot and head in spec.methods:
            if head == name:
                out.append(o[len(head) + 1:])
        else:
            out.append(o)
    return out


def method_config(spec: BenchmarkSpec, spec_path: Path, name: str, seed: int, overrides: list[str] | None = None):
    """The entry's config with its own ``set`` overrides, then ``overrides`` (e.g. a cluster job's ray_address),
    under the spec's ``run`` settings."""
    entry = spec.methods[name]
    method = get_method(entry.method or name)
    cfg_path = config_path(spec_path, entry)
    data = apply_overrides(read_yaml(cfg_path), [*entry.set, *overrides_for(spec, name, overrides or [])])
    run = spec.run.model_copy(update={"seed": seed, **({"budget": entry.budget} if entry.budget else {})})
    data["run"] = apply_overrides(run.model_dump(mode="json", by_alias=True), entry.run_set)
    return validate(method.config_model, data, f"{cfg_path} (with {spec_path} run settings)")


def reference_dirs(spec: BenchmarkSpec, spec_path: Path) -> list[Path]:
    """The spec's evaluation records, as given or relative to the spec's folder."""
    out = []
    for ref in spec.references:
        given = Path(ref)
        d = given if given.exists() else Path(spec_path).parent / ref
        if not (d / "record.json").is_file():
            raise UserError(f"{spec_path}: references: {ref} is not an evaluation record folder (esgrpo eval --out)")
        out.append(d)
    return out


def spec_runs(spec: BenchmarkSpec, runs_root: Path, status: str = "completed") -> list[Path]:
    """The spec's run folders with this status (LABEL-sSEED for its labels and seeds); nothing else in the folder."""
    found = []
    for d in sorted(runs_root.glob("*-s*")):
        m = RUN_DIR.match(d.name)
        if (m and m["label"] in spec.methods and int(m["seed"]) in spec.seeds and (d / "record.json").is_file()
                and load_record(d).status == status):
            found.append(d)
    return found


def changed_runs(spec: BenchmarkSpec, configs: dict[tuple[str, int], Any], runs_root: Path,
                 shown: int = 6) -> dict[Path, list[str]]:
    """The runs already in ``runs_root`` (finished or not) that this spec would not make as they are: run folder
    -> what differs (the method, config keys as dotted paths with both values, the prompt set's hash)."""
    hashes: dict[str, str] = {}
    changed = {}
    for (name, seed), cfg in configs.items():
        run_dir = runs_root / f"{name}-s{seed}"
        if not (run_dir / "record.json").is_file():
            continue
        old, method = load_record(run_dir), spec.methods[name].method or name
        diffs = [] if old.method == method else [f"method: {old.method} in the run, {method} in the spec"]
        for key, (was, now) in differing_keys([old.config, cfg.model_dump(mode="json", by_alias=True)]).items():
            diffs.append(f"{key}: {was[:60]} in the run, {now[:60]} in the spec")
        source = json.dumps(cfg.run.data.model_dump(mode="json"), sort_keys=True)
        if source not in hashes:
            hashes[source] = load_prompt_set(cfg.run.data).content_hash
        if old.data.get("hash") != hashes[source]:
            diffs.append(f"the prompt set: hash {str(old.data.get('hash'))[:12]} in the run, "
                         f"{hashes[source][:12]} from the spec's data")
        if diffs:
            changed[run_dir] = diffs[:shown] + ([f"and {len(diffs) - shown} more"] if len(diffs) > shown else [])
    return changed


def default_locations(spec: BenchmarkSpec) -> tuple[Path, Path]:
    stamp = date.today().isoformat()
    return Path(spec.runs_dir) / f"{stamp}-{spec.name}", Path(spec.results_dir) / f"{stamp}-{spec.name}"


def run_benchmark(spec_path: Path, out: Path | None = None, runs_dir: Path | None = None,
                  only: list[str] | None = None, seed_index: int | None = None, report_only: bool = False,
                  run_overrides: list[str] | None = None, method_overrides: list[str] | None = None,
                  services: set[int] | None = None, rerun_changed: bool = False) -> Path | None:
    """Run the spec's (method, seed) pairs, then the report. ``only``/``seed_index`` select a subset (one
    SLURM array task); ``report_only`` compares what is there; ``run_overrides`` (dotted keys of
    ``run``, e.g. the scorer a cluster job must use) apply to every run, ``method_overrides`` to the
    selected methods' own configs. ``services``: pids of the processes beside the runs on their GPUs (the
    scorer), which may hold device memory when an entry starts. A run already in ``runs_dir`` whose method,
    config or prompt set differs from what the spec makes now is refused, naming what differs, or with
    ``rerun_changed`` moved aside under ``runs_dir/replaced/`` and made again."""
    spec, raw = load_spec(Path(spec_path))
    if run_overrides:
        run = apply_overrides(spec.run.model_dump(mode="json", by_alias=True), run_overrides)
        spec = spec.model_copy(update={"run": validate(RunSettings, run, f"{spec_path} run overrides")})
    default_runs, default_out = default_locations(spec)
    runs_root, out = Path(runs_dir or default_runs), Path(out or default_out)
    for m in only or []:
        if m not in spec.methods and m not in spec.evaluate:
            raise UserError(f"{spec_path}: no entry {m!r} (it names {', '.join([*spec.methods, *spec.evaluate])})")
    if seed_index is not None and not 0 <= seed_index < len(spec.seeds):
        raise UserError(f"{spec_path}: seed index {seed_index} outside 0..{len(spec.seeds) - 1}")
    seeds = spec.seeds if seed_index is None else [spec.seeds[seed_index]]
    selected = [(m, s) for s in seeds for m in spec.methods if not only or m in only]
    configs = {} if report_only else {(m, s): method_config(spec, Path(spec_path), m, s, method_overrides)
                                      for m, s in selected}
    references = reference_dirs(spec, Path(spec_path))
    evaluations = [e for e in spec.evaluate if not only or e in only] if seed_index in (None, 0) else []

    def report(dirs: list[Path]) -> Path:
        if spec_points(raw):  # a sweep: its points differ in their knobs, so their report is the frontier
            have = {d.name for d in dirs}
            missing = [f"{m} seed {s}" for s in spec.seeds for m in spec.methods if f"{m}-s{s}" not in have]
            return write_frontier(dirs, out, raw, missing)
        # a `references:` folder may be the one an `evaluate:` entry wrote: one record, counted once
        unique = list({d.resolve(): d for d in [*dirs, *references, *spec_evaluations(spec, runs_root)]}.values())
        return write_report(unique, out, title=spec.name,
                            target=spec.target, spec=raw, allow_mismatch=bool(budgets_differ(spec)),
                            oom=spec_runs(spec, runs_root, "oom"),
                            between=evaluate_between if spec.compare.interpolate else None)

    if report_only:
        done = spec_runs(spec, runs_root)
        if not done and not spec_evaluations(spec, runs_root):
            raise UserError(f"{runs_root}: no completed runs or evaluations of {spec_path} to report")
        return report(done)
    done, failed = [], []
    if any(c.run.policy == BUILTIN_POLICY for c in configs.values()) or any(
            spec.evaluate[e].policy == BUILTIN_POLICY for e in evaluations):
        builtin_policy_path()  # built here, where its console line shows, not silently inside the first run
    changed = changed_runs(spec, configs, runs_root)
    if changed and not rerun_changed:
        raise UserError(f"{spec_path}: {len(changed)} run(s) in {runs_root} were made with other settings than the "
                        "spec gives now; run with --rerun-changed to replace them, or choose another --runs-dir:\n  "
                        + "\n  ".join(f"{d.name}: {'; '.join(diffs)}" for d, diffs in changed.items()))
    for run_dir in changed:
        aside = runs_root / "replaced" / f"{run_dir.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        aside.parent.mkdir(exist_ok=True)
        run_dir.rename(aside)
        log.warning("%s was made with other settings; moved to %s and made again", run_dir.name, aside)
    evaluated, skipped = run_evaluations(spec, Path(spec_path), runs_root, evaluations, run_overrides, failed)
    for (name, seed), cfg in configs.items():
        run_dir = runs_root / f"{name}-s{seed}"
        if (run_dir / "record.json").is_file() and load_record(run_dir).status == "completed":
            log.info("%s seed %d already completed in %s; keeping it", name, seed, run_dir)
            done.append(run_dir)
            continue
        method = spec.methods[name].method or name
        config_file = write_resolved_config(run_dir, cfg)
        if len(selected) == 1 and seed_index is not None:  # this process is the one (method, seed) part
            run_method(method, cfg, run_dir, spec=raw, label=name)
            done.append(run_dir)
            continue
        check_device_free(services or set())
        log.info("running %s seed %d -> %s", name, seed, run_dir)
        # Each run gets its own process (its peak memory is its own, and a crash cannot take the others down): the
        # command anyone can run again from the folder, on the resolved config written there.
        cmd = [sys.executable, "-m", "harness.launch.cli", "run", method, "--config", str(config_file),
               "--run-dir", str(run_dir), "--label", name, "--spec-file", str(spec_path)]
        rc, stopped = run_forwarding_stops(cmd)
        if stopped:  # the run checkpointed and said so in its record; the rest waits for the same command again
            log.warning("%s during %s seed %d: it stopped and checkpointed; run the same command again to resume",
                        stopped, name, seed)
            raise Preempted
        if rc == 0:
            done.append(run_dir)
            log.info("%s", finished_line(run_dir))
        elif rc == OutOfMemory.EXIT_CODE:  # a result: the report lists it with the memory it reached
            log.warning("%s seed %d ran out of memory; see %s", name, seed, look_here(run_dir))
        else:  # keep going: the other runs are still worth their compute
            log.error("%s seed %d failed (exit %d); see %s", name, seed, rc, look_here(run_dir))
            failed.append(f"{name} seed {seed}: exit code {rc}")
    if not done and not evaluated:
        raise UserError("every run failed:\n  " + "\n  ".join(failed or list(skipped.values())))
    if only or seed_index is not None:  # one part of the benchmark: the report comes once all parts are done
        if failed:
            raise UserError("some runs failed:\n  " + "\n  ".join(failed))
        return None
    path = report(done)
    if failed:
        raise UserError(f"report written to {path}, but some runs failed:\n  " + "\n  ".join(failed))
    return path


# the keys a benchmark spec's `run` shares with `esgrpo eval`'s settings
EVAL_KEYS = ("data", "scorer", "judge", "rollout", "eval", "lambda", "seed")


def missing_policies(spec: BenchmarkSpec, spec_path: Path, names: list[str] | None = None) -> dict[str, str]:
    """Evaluation entries whose policy is not a model folder here: entry name -> the line naming its field."""
    return {name: f"{spec_path}: evaluate.{name}.policy: {e.policy} is not a model folder (no config.json)"
            for name, e in spec.evaluate.items() if (names is None or name in names)
            and e.policy != "builtin" and not (Path(e.policy) / "config.json").is_file()}


def run_evaluations(spec: BenchmarkSpec, spec_path: Path, runs_root: Path, names: list[str],
                    run_overrides: list[str] | None, failed: list[str]) -> tuple[list[Path], dict[str, str]]:
    """``esgrpo eval`` for each named entry, each in its own process, into ``runs_root/NAME`` (a finished one is
    kept, an unfinished one resumed). A policy that is not there is skipped and named: the spec lists the
    checkpoints a user may have."""
    skipped = missing_policies(spec, spec_path, names)
    for line in skipped.values():
        log.warning("%s: skipped", line)
    done = []
    overrides = [o for o in run_overrides or [] if o.split("=", 1)[0].split(".", 1)[0] in EVAL_KEYS]
    for name in names:
        entry, out = spec.evaluate[name], runs_root / name
        if name in skipped:
            continue
        if (out / "record.json").is_file() and load_record(out).status == "completed":
            log.info("evaluation %s already completed in %s; keeping it", name, out)
            done.append(out)
            continue
        log.info("evaluating %s (%s) -> %s", name, entry.policy, out)
        cmd = [sys.executable, "-m", "harness.launch.cli", "eval", "--from-spec", str(spec_path), "--policy",
               entry.policy, "--engine", entry.engine, "--label", name, "--out", str(out),
               *[x for o in [*overrides, *entry.set] for x in ("--set", o)]]
        rc, stopped = run_forwarding_stops(cmd)
        if stopped:
            raise Preempted
        if rc == 0:
            done.append(out)
            log.info("%s", finished_line(out))
        else:
            log.error("evaluation %s failed (exit %d); see %s", name, rc, look_here(out))
            failed.append(f"evaluation {name}: exit code {rc}")
    return done, skipped


def look_here(folder: Path) -> str:
    """Where a failed run or evaluation says why: its record, else its log, else the console (a run stopped by its
    settings before it wrote either)."""
    for name in ("record.json", runlog.LOG_FILE):
        if (folder / name).is_file():
            return str(folder / name)
    return "the lines above (it stopped before writing a record or a log)"


def finished_line(run_dir: Path) -> str:
    """One console line for a finished run or evaluation: its last evaluation and where its log is."""
    record = load_record(run_dir)
    name = record.label or record.method
    if not record.evals:
        return f"{name}: no evaluation recorded (log: {run_dir / 'run.log'})"
    last = record.evals[-1]
    scores = f"R {last.metrics['reward']:.3f} C {last.metrics['cost']:.3f} safe {last.metrics['safe_ratio']:.2f}"
    if record.kind == "eval":
        return f"{name} evaluated: {scores} (log: {run_dir / 'run.log'})"
    return (f"{name}-s{record.seed} done, {last.seconds:.0f} s of training; eval at {last.completions} completions: "
            f"{scores} (log: {run_dir / 'run.log'})")


def spec_evaluations(spec: BenchmarkSpec, runs_root: Path) -> list[Path]:
    """The spec's completed evaluation folders (runs_root/NAME)."""
    return [runs_root / n for n in spec.evaluate if (runs_root / n / "record.json").is_file()
            and load_record(runs_root / n).status == "completed"]


RESOLVED_CONFIG = "config.yaml"


def write_resolved_config(run_dir: Path, cfg) -> Path:
    """The run's whole config (the method's keys, the spec's shared settings, every override) as one YAML in its
    folder: ``esgrpo run METHOD --config RUN_DIR/config.yaml --run-dir RUN_DIR`` runs or resumes it by hand."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESOLVED_CONFIG
    atomic_write_text(path, "# resolved by esgrpo benchmark; run it again with:\n#   esgrpo run METHOD --config "
                      f"{path} --run-dir {run_dir}\n" + yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True),
                                                                     sort_keys=False))
    return path


def check_device_free(keep: set[int], wait_s: float = 30.0, holders=None) -> None:
    """Before a benchmark entry starts: no process but this one and ``keep`` (the scorer beside the runs) holds
    GPU memory. A process of an earlier entry that outlived it (a vLLM engine core, a Ray worker) would shrink
    what the next entry finds free; the driver releases memory a moment after a process ends, so this waits up
    to ``wait_s`` before refusing with the pids."""
    from harness.memory_plan import device_holders

    holders = holders or (lambda: device_holders(None, keep | {os.getpid()}))
    deadline = time.monotonic() + wait_s
    while held := holders():
        if time.monotonic() > deadline:
            raise UserError("the GPU is still held by: " + "; ".join(f"{p.name} {p.gib:.1f} GiB" for p in held)
                            + ". End it (kill -- -PGID of an earlier run) before the next benchmark entry")
        time.sleep(1.0)


def run_forwarding_stops(cmd: list[str]) -> tuple[int, str | None]:
    """Run one benchmark part as a child process. A SIGTERM or SIGINT sent to this process alone (``timeout``,
    ``kill``, a job script's trap) is passed on to the child as SIGTERM, so it checkpoints and records the stop,
    and this process waits for it: otherwise the child ran on as an orphan, holding its GPU. Returns the child's
    exit code and the name of the signal that stopped it, if any."""
    # its own process group: what it leaves behind (a vLLM engine core, Ray's workers) is ended with it below
    proc = subprocess.Popen(cmd, env=child_env(**child_settings()), start_new_session=True)  # killed outright: see processes.py
    stopped: list[str] = []

    def forward(signum, frame) -> None:
        again = bool(stopped) and signum == signal.SIGINT  # a second Ctrl-C: the child aborts without a checkpoint
        stopped.append(signal.Signals(signum).name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT if again else signal.SIGTERM)

    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # nothing of it is left
            pass
    return rc, stopped[0] if stopped else None


def budgets_differ(spec: BenchmarkSpec) -> list[str]:
    """Entries whose budget the spec sets apart from the shared one (published reproductions)."""
    return [name for name, e in spec.methods.items() if e.budget is not None and e.budget != spec.run.budget]
