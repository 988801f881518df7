"""Load run records, check they are comparable, summarize per method with intervals, write the report."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from harness.errors import UserError
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

    def final_samples(self) -> list[dict[str, Any]]:
        if not self.record.evals:
            return []
        f = self.path / self.record.evals[-1].samples_file
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


@dataclass
class MethodSummary:
    method: str
    runs: list[Run]
    final: dict[str, Interval] = field(default_factory=dict)
    resources: dict[str, Interval] = field(default_factory=dict)
    time_split: dict[str, float] = field(default_factory=dict)
    target: dict[str, Any] | None = None


def load_runs(paths: Sequence[Path]) -> list[Run]:
    runs = []
    for p in paths:
        p = Path(p)
        d = p.parent if p.name == RECORD_FILE else p
        if not (d / RECORD_FILE).is_file():
            raise UserError(f"{d}: no {RECORD_FILE} (not a run directory)")
        runs.append(Run(d, load_record(d)))
    if not runs:
        raise UserError("no runs to compare")
    return runs


def comparability_problems(runs: list[Run]) -> list[str]:
    """What differs between runs that must be equal for a fair comparison."""
    keys = {
        "prompts (data hash)": lambda r: r.data.get("hash"),
        "scorer": lambda r: json.dumps({k: v for k, v in r.scorer.items() if k not in VOLATILE_INFO}, sort_keys=True),
        "evaluation settings": lambda r: json.dumps(r.evaluation, sort_keys=True),
        "budget (completions)": lambda r: r.budget.get("completions"),
        "judge": lambda r: json.dumps(r.judge, sort_keys=True),
    }
    problems = []
    for what, get in keys.items():
        values = {str(get(run.record)) for run in runs}
        if len(values) > 1:
            problems.append(f"runs differ in {what}: " + "; ".join(
                f"{run.path.name}={get(run.record)}" for run in runs)[:400])
    return problems


def time_to_target(run: Run, target: dict[str, float]) -> dict[str, Any] | None:
    """First evaluation where every target metric is met (safe_ratio/reward ≥, cost ≤)."""
    for e in run.record.evals:
        ok = all((e.metrics.get(k, float("nan")) <= v) if k.endswith("cost") else (e.metrics.get(k, float("-inf")) >= v)
                 for k, v in target.items())
        if ok:
            return {"samples": e.samples, "seconds": e.seconds, "mark": e.mark}
    return None


def summarize(method: str, runs: list[Run], target: dict[str, float] | None) -> MethodSummary:
    s = MethodSummary(method, runs)
    multi = len(runs) > 1
    for m in HEADLINE:
        if multi:  # between-seed variability
            vals = [r.record.evals[-1].metrics[m] for r in runs if r.record.evals and m in r.record.evals[-1].metrics]
            s.final[m] = bootstrap_mean(vals)
        elif m in PER_SAMPLE:  # one seed: variability over held-out prompts
            vals = [PER_SAMPLE[m](x) for x in runs[0].final_samples()]
            s.final[m] = bootstrap_mean([v for v in vals if v is not None])
        elif runs[0].record.evals:
            v = runs[0].record.evals[-1].metrics.get(m)
            s.final[m] = Interval(v, float("nan"), float("nan"), 1) if v is not None else bootstrap_mean([])
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
                    "samples": statistics.fmean(h["samples"] for h in reached) if reached else None,
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
            sa = {x["id"]: x for x in ra.final_samples()}
            for y in rb.final_samples():
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
    return "; ".join(parts) + "."


def write_report(paths: Sequence[Path], out: Path, allow_mismatch: bool = False, title: str | None = None,
                 target: dict[str, float] | None = None, spec: dict[str, Any] | None = None) -> Path:
    runs = load_runs(paths)
    problems = comparability_problems(runs)
    if problems and not allow_mismatch:
        raise UserError("runs are not comparable (pass --allow-mismatch to report anyway):\n  " + "\n  ".join(problems))
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.label].append(r)
    target = target or (spec or {}).get("target") or (runs[0].record.spec or {}).get("target")
    summaries = [summarize(m, rs, target) for m, rs in groups.items()]
    comparisons = []
    names = [s.method for s in summaries]
    if "es" in names and "grpo" in names:
        a, b = summaries[names.index("es")], summaries[names.index("grpo")]
        diffs = paired_comparison(a, b)
        comparisons.append({"a": "es", "b": "grpo", "diffs": diffs, "verdict": verdict("ES", "GRPO", diffs)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = plots.make_all(summaries, out)
    summary = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "title": title or out.name, "problems": problems, "target": target,
        "runs": [{"method": r.label, "seed": r.record.seed, "path": str(r.path), "status": r.record.status,
                  "git_sha": r.record.environment.get("git_sha")} for r in runs],
        "methods": {s.method: {"final": {k: v.as_dict() for k, v in s.final.items()},
                               "resources": {k: v.as_dict() for k, v in s.resources.items()},
                               "time_split_seconds": s.time_split, "time_to_target": s.target} for s in summaries},
        "comparisons": [{"a": c["a"], "b": c["b"], "verdict": c["verdict"],
                         "diffs": {k: v.as_dict() for k, v in c["diffs"].items()}} for c in comparisons],
        "spec": spec,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    render.write_markdown_and_html(out, summary, summaries, comparisons, figures, runs)
    return out / "report.md"
