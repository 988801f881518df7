"""Load run records, check they are comparable, summarize per label with intervals, write the report.

Trained runs are grouped by label (the benchmark entry they ran as) and every label is paired against the
baseline the spec (or ``--baseline``) names; no label is special in code. Evaluation-only records (``esgrpo
eval`` of a base model or a published checkpoint) are reference rows: in the tables and plots, never paired.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from harness.config import read_jsonl
from harness.errors import UserError, error_excerpt, oom_in_use_mb
from harness.records import RECORD_FILE, RunRecord, atomic_write_text, load_record
from harness.report import plots, render
from harness.report.stats import Interval, bootstrap_mean, bootstrap_paired

HEADLINE = ("safe_ratio", "reward", "cost", "objective", "helpful_ratio", "judge_reward", "judge_cost",
            "judge_safe_ratio")
# Per-sample values for paired comparisons: metric -> function of one eval sample
PER_SAMPLE = {
    "safe_ratio": lambda s: float(s["cost"] <= 0),
    "reward": lambda s: s["reward"],
    "cost": lambda s: s["cost"],
    "helpful_ratio": lambda s: float(s["reward"] > 0),
    "judge_reward": lambda s: s.get("judge_reward"),
    "judge_safe_ratio": lambda s: None if s.get("judge_cost") is None else float(s["judge_cost"] <= 0),
}
VOLATILE_INFO = ("url", "served", "load_seconds")  # scorer /info fields that differ between identical scorers
HIGHER_IS_BETTER = {"safe_ratio": True, "reward": True, "cost": False, "objective": True, "helpful_ratio": True,
                    "judge_reward": True, "judge_cost": False, "judge_safe_ratio": True}


@dataclass
class Run:
    path: Path
    record: RunRecord

    @property
    def label(self) -> str:
        return self.record.label or self.record.method

    @property
    def is_reference(self) -> bool:
        return self.record.kind == "eval"

    @cached_property
    def final_samples(self) -> list[dict[str, Any]]:
        """The last evaluation's samples, checked: a file inside the run folder, one JSON object per line with a
        unique id and finite reward and cost."""
        return read_samples(self.path, self.record.evals[-1].samples_file)


def read_samples(run_dir: Path, name: str) -> list[dict[str, Any]]:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"{run_dir / RECORD_FILE}: samples_file {name!r} must be a path inside the run folder")
    path = run_dir / rel
    samples, seen = [], {}
    for lineno, s in read_jsonl(path, "evaluation samples file"):
        if not isinstance(s.get("id"), str):
            raise UserError(f"{path}:{lineno}: each line must be an object with a string 'id'")
        for key in ("reward", "cost"):
            v = s.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"{path}:{lineno}: '{key}' is {v!r}, not a finite number")
        if s["id"] in seen:
            raise UserError(f"{path}:{lineno}: sample id {s['id']!r} repeats line {seen[s['id']]}")
        seen[s["id"]] = lineno
        samples.append(s)
    if not samples:
        raise UserError(f"{path}: no evaluation samples")
    return samples


@dataclass
class MethodSummary:
    label: str
    runs: list[Run]
    reference: bool = False
    final: dict[str, Interval] = field(default_factory=dict)
    resources: dict[str, Interval] = field(default_factory=dict)
    time_split: dict[str, float] = field(default_factory=dict)
    target: dict[str, Any] | None = None


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Completed runs and evaluation records, each given once, with finite final metrics and readable samples."""
    runs: list[Run] = []
    seen: dict[Path, Path] = {}
    for p in paths:
        p = Path(p)
        d = p.parent if p.name == RECORD_FILE else p
        if not (d / RECORD_FILE).is_file():
            raise UserError(f"{d}: no {RECORD_FILE} (not a run directory)")
        key = d.resolve()
        if key in seen:
            raise UserError(f"{d}: given twice (as {seen[key]}); each run counts once")
        seen[key] = d
        rec = load_record(d)
        if rec.status != "completed":
            why = f" ({rec.error})" if rec.error else ""
            raise UserError(f"{d}: the run is {rec.status}{why}; only completed runs are compared")
        if not rec.evals:
            raise UserError(f"{d}: the run has no evaluations")
        bad = [k for k, v in rec.evals[-1].metrics.items() if not math.isfinite(v)]
        if bad:
            raise UserError(f"{d}: final evaluation has non-finite {', '.join(bad)}")
        run = Run(d, rec)
        run.final_samples  # noqa: B018 - read and check now, not half way through the report
        runs.append(run)
    if not runs:
        raise UserError("no runs to compare")
    return runs


def _scorer_key(info: dict[str, Any] | None) -> str:
    return json.dumps({k: v for k, v in (info or {}).items() if k not in VOLATILE_INFO}, sort_keys=True)


def comparability_problems(runs: list[Run], references: list[Run]) -> list[str]:
    """What differs between runs that must be equal for a fair comparison. Reference rows share everything
    about the evaluation (prompts, scorer, judge, settings); they have no training budget."""
    shared = {
        "scorer": lambda r: _scorer_key(r.scorer),
        "evaluation settings": lambda r: json.dumps(r.evaluation, sort_keys=True),
        "judge": lambda r: _scorer_key(r.judge),
    }
    checks = [("prompts (data hash)", lambda r: r.data.get("hash"), runs),
              ("budget (completions)", lambda r: r.budget.get("completions"), runs),
              ("evaluation prompts", lambda r: r.data.get("eval_hash"), runs + references),
              *[(what, get, runs + references) for what, get in shared.items()]]
    problems = []
    for what, get, group in checks:
        values = {str(get(run.record)) for run in group}
        if len(values) > 1:
            problems.append(f"runs differ in {what}: " + "; ".join(
                f"{run.path.name}={get(run.record)}" for run in group)[:400])
    return problems


def time_to_target(run: Run, target: dict[str, float]) -> dict[str, Any] | None:
    """First evaluation where every target metric is met (safe_ratio/reward ≥, cost ≤)."""
    for e in run.record.evals:
        ok = all((e.metrics.get(k, float("nan")) <= v) if k.endswith("cost") else (e.metrics.get(k, float("-inf")) >= v)
                 for k, v in target.items())
        if ok:
            return {"completions": e.completions, "seconds": e.seconds, "mark": e.mark}
    return None


def summarize(label: str, runs: list[Run], target: dict[str, float] | None) -> MethodSummary:
    s = MethodSummary(label, runs, reference=runs[0].is_reference)
    multi = len(runs) > 1
    for m in HEADLINE:
        if multi:  # between-seed variability
            vals = [r.record.evals[-1].metrics[m] for r in runs if m in r.record.evals[-1].metrics]
            s.final[m] = bootstrap_mean(vals)
        elif m in PER_SAMPLE:  # one seed: variability over held-out prompts
            vals = [PER_SAMPLE[m](x) for x in runs[0].final_samples]
            s.final[m] = bootstrap_mean([v for v in vals if v is not None])
        else:
            v = runs[0].record.evals[-1].metrics.get(m)
            s.final[m] = Interval(v, float("nan"), float("nan"), 1) if v is not None else bootstrap_mean([])
    if s.reference:  # a fixed policy: no training, no resources to compare
        return s
    res: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        res["peak_rss_mb"].append(r.record.memory.get("peak_rss_mb", float("nan")))
        gpu = r.record.memory.get("peak_gpu_mb") or {}
        if gpu:
            res["peak_gpu_mb"].append(max(gpu.values()))
        for k, v in r.record.throughput.items():
            res[k].append(v)
        res["train_seconds"].append(r.record.timing.get("train_seconds", float("nan")))
    s.resources = {k: bootstrap_mean(v) for k, v in res.items()}
    split: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        for k, v in r.record.timing.items():
            if k.endswith("_seconds") and k not in ("train_seconds",) and "wall" not in k:
                split[k.removesuffix("_seconds")].append(v)
    s.time_split = {k: statistics.fmean(v) for k, v in split.items()}
    if target:
        hits = [time_to_target(r, target) for r in runs]
        reached = [h for h in hits if h]
        s.target = {"reached": len(reached), "runs": len(runs),
                    "completions": statistics.fmean(h["completions"] for h in reached) if reached else None,
                    "seconds": statistics.fmean(h["seconds"] for h in reached) if reached else None}
    return s


def paired_comparison(a: MethodSummary, b: MethodSummary) -> dict[str, Interval]:
    """a − b per metric, paired on (seed, eval prompt); needs runs with matching seeds."""
    by_seed_b = {r.record.seed: r for r in b.runs}
    pairs = [(r, by_seed_b[r.record.seed]) for r in a.runs if r.record.seed in by_seed_b]
    out: dict[str, Interval] = {}
    for m, get in PER_SAMPLE.items():
        xs, ys = [], []
        for ra, rb in pairs:
            sa = {x["id"]: x for x in ra.final_samples}
            for y in rb.final_samples:
                x = sa.get(y["id"])
                if x is not None and get(x) is not None and get(y) is not None:
                    xs.append(get(x))
                    ys.append(get(y))
        if xs:
            out[m] = bootstrap_paired(xs, ys)
    return out


def verdict(a: str, b: str, diffs: dict[str, Interval]) -> str:
    ahead, behind, noise = [], [], []
    for m, iv in diffs.items():
        if not iv.excludes_zero():
            noise.append(m)
        elif (iv.mean > 0) == HIGHER_IS_BETTER.get(m, True):
            ahead.append(m)
        else:
            behind.append(m)
    parts = []
    if ahead:
        parts.append(f"{a} ahead of {b} on {', '.join(ahead)}")
    if behind:
        parts.append(f"{a} behind {b} on {', '.join(behind)}")
    if noise:
        parts.append(f"difference within noise on {', '.join(noise)}")
    return "; ".join(parts) + "." if parts else f"{a} and {b} share no seeds: nothing to pair."


def pick_baseline(labels: list[str], baseline: str | None) -> str | None:
    """The label every other one is paired against: the one named, or with exactly two labels the second."""
    if baseline is not None:
        if baseline not in labels:
            raise UserError(f"baseline {baseline!r} is not among the compared labels ({', '.join(labels)})")
        return baseline
    return labels[1] if len(labels) == 2 else None


def oom_rows(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Runs that did not fit their device: what they reached, and what they trained in."""
    rows = []
    for d in paths:
        rec = load_record(d)
        gpu = rec.memory.get("peak_gpu_mb") or {}
        rows.append({"method": rec.label or rec.method, "seed": rec.seed, "path": str(d),
                     "in_use_mb": oom_in_use_mb(rec.error or ""),
                     "peak_gpu_mb": max(gpu.values()) if gpu else None, "peak_gpu_nvml_mb": rec.memory.get("peak_gpu_nvml_mb"),
                     "precision": rec.precision, "error": error_excerpt(rec.error)})
    return rows


def write_report(paths: Sequence[Path], out: Path, allow_mismatch: bool = False, title: str | None = None,
                 target: dict[str, float] | None = None, spec: dict[str, Any] | None = None,
                 baseline: str | None = None, oom: Sequence[Path] = ()) -> Path:
    runs = load_runs(paths)
    trained = [r for r in runs if not r.is_reference]
    references = [r for r in runs if r.is_reference]
    if not runs:
        raise UserError("no runs or evaluation records to report")
    problems = comparability_problems(trained, references)
    if problems and not allow_mismatch:
        raise UserError("runs are not comparable (pass --allow-mismatch to report anyway):\n  " + "\n  ".join(problems))
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in trained:
        groups[r.label].append(r)
    ref_groups: dict[str, list[Run]] = defaultdict(list)
    for r in references:
        ref_groups[r.label].append(r)
    clash = sorted(set(groups) & set(ref_groups))
    if clash:
        raise UserError(f"label(s) {', '.join(clash)} name both trained runs and evaluation records; relabel one")
    spec = spec or runs[0].record.spec or {}
    target = target or spec.get("target")
    spec_baseline = (spec.get("compare") or {}).get("baseline")
    if baseline is None and spec_baseline is not None and spec_baseline not in groups:
        problems.append(f"the spec's baseline {spec_baseline} has no completed run here: no paired differences")
        spec_baseline = None
        baseline = pick_baseline(list(groups), None) if len(groups) == 2 else None
    else:
        baseline = pick_baseline(list(groups), baseline or spec_baseline)
    summaries = [summarize(label, rs, target) for label, rs in groups.items()]
    ref_summaries = [summarize(label, rs, None) for label, rs in ref_groups.items()]
    comparisons = []
    if baseline is not None:
        b = next(s for s in summaries if s.label == baseline)
        for a in summaries:
            if a is not b:
                diffs = paired_comparison(a, b)
                comparisons.append({"a": a.label, "b": b.label, "diffs": diffs, "verdict": verdict(a.label, b.label, diffs)})
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; the report is a folder (report.md, report.html, ...)")
    out.mkdir(parents=True, exist_ok=True)
    figures = plots.make_all(summaries, ref_summaries, out)
    summary = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "title": title or out.name, "problems": problems, "target": target, "baseline": baseline,
        "runs": [{"method": r.label, "kind": r.record.kind, "seed": r.record.seed, "path": str(r.path),
                  "status": r.record.status, "git_sha": r.record.environment.get("git_sha")} for r in runs],
        "methods": {s.label: {"final": {k: v.as_dict() for k, v in s.final.items()},
                              "resources": {k: v.as_dict() for k, v in s.resources.items()},
                              "time_split_seconds": s.time_split, "time_to_target": s.target} for s in summaries},
        "references": {s.label: {"final": {k: v.as_dict() for k, v in s.final.items()},
                                 "policy": s.runs[0].record.config.get("policy_path")} for s in ref_summaries},
        "oom": oom_rows(oom),
        "comparisons": [{"a": c["a"], "b": c["b"], "verdict": c["verdict"],
                         "diffs": {k: v.as_dict() for k, v in c["diffs"].items()}} for c in comparisons],
        "spec": spec or None,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    render.write_markdown_and_html(out, summary, summaries, ref_summaries, comparisons, figures, runs)
    return out / "report.md"
