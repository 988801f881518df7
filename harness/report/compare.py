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
from typing import Any, Protocol, Sequence

from harness.config import read_jsonl
from harness.drift import update_cosine
from harness.evaluation import checked_samples
from harness.suites.suite import KINDS, checked_suite_samples
from harness.errors import UserError, error_excerpt, oom_in_use_mb
from harness.records import RECORD_FILE, RunRecord, atomic_write_text, load_record
from harness.report import plots, render
from harness.lagrangian import LambdaConfig
from harness.config_diff import differing_keys, scorer_identity
from harness.report import metrics as M
from harness.report.stats import MIN_SEEDS, Interval, bootstrap_mean, hierarchical_paired, over_seeds


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
        unique id and finite reward and cost, as many as the record's evaluation counted, with its mean reward."""
        point = self.record.evals[-1]
        samples = read_samples(self.path, point.samples_file)
        n, reward = point.metrics.get("n"), point.metrics.get("reward")
        mean = statistics.fmean(s["reward"] for s in samples)
        if (n is not None and len(samples) != n) or (reward is not None and not math.isclose(mean, reward,
                                                                                               rel_tol=1e-9, abs_tol=1e-9)):
            raise UserError(f"{self.path / point.samples_file}: {len(samples)} samples with mean reward {mean:.6g}, but "
                            f"{self.path / RECORD_FILE} evaluated {'?' if n is None else int(n)} with "
                            f"{'?' if reward is None else format(reward, '.6g')}: the file is not this evaluation's")
        return samples

    @cached_property
    def suite_samples(self) -> dict[str, list[dict[str, Any]]]:
        """The last evaluation's answers to each suite, checked like its samples: as many as it counted."""
        point, out = self.record.evals[-1], {}
        for name, file in point.suite_files.items():
            samples = read_samples(self.path, file, suite=True)
            n = point.metrics.get(f"{name}_n")
            if n is not None and len(samples) != n:
                raise UserError(f"{self.path / file}: {len(samples)} answers, but {self.path / RECORD_FILE} evaluated "
                                f"{int(n)}: the file is not this evaluation's")
            out[name] = samples
        return out

    def samples_for(self, m: M.Metric) -> list[dict[str, Any]]:
        """What a metric is a mean over: the held-out prompts' samples, or a suite's answers (none if not run)."""
        return self.final_samples if m.suite is None else self.suite_samples.get(m.suite, [])


def read_samples(run_dir: Path, name: str, suite: bool = False) -> list[dict[str, Any]]:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"{run_dir / RECORD_FILE}: samples_file {name!r} must be a path inside the run folder")
    path = run_dir / rel
    if not path.resolve().is_relative_to(run_dir.resolve()):  # a link out of the folder is not this run's
        raise UserError(f"{path}: the samples file links outside its run folder ({path.resolve()})")
    rows = read_jsonl(path, "evaluation samples file")
    samples = checked_suite_samples(path, rows) if suite else checked_samples(path, rows)
    if not samples:
        raise UserError(f"{path}: no evaluation samples")
    return samples


@dataclass
class MethodSummary:
    label: str
    runs: list[Run]
    reference: bool = False
    final: dict[str, Interval] = field(default_factory=dict)  # metric key -> value (with its interval's kind)
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)  # prompt category -> kind, n, ratios
    suite_categories: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # suite -> category -> n, rate
    severities: dict[str, dict[str, float]] = field(default_factory=dict)  # PKU-SafeRLHF severity level -> n, ratios
    resources: dict[str, Interval] = field(default_factory=dict)
    time_split: dict[str, float] = field(default_factory=dict)
    target: dict[str, Any] | None = None

    @property
    def seeds(self) -> list[int]:
        return sorted(r.record.seed for r in self.runs)


def lambda0(record: RunRecord) -> float:
    """The λ a run started from: the report's objective is R − λ₀·C at one λ₀ for every row."""
    section = record.config.get("run", record.config)
    return float((section.get("lambda") or {}).get("lambda_init", LambdaConfig().lambda_init))


def config_differences(runs: list[Run]) -> list[str]:
    """The config keys whose values differ between the runs of one label, besides the seed and output settings:
    runs that differ there are different configs, not seeds of one."""
    diffs = differing_keys([r.record.config for r in runs])
    return [f"{k} (" + ", ".join(f"{r.path.name}={v}" for r, v in zip(runs, vals)) + ")" for k, vals in diffs.items()]


def check_groups(groups: dict[str, list[Run]], allow_mismatch: bool) -> list[str]:
    """Refuse what would pool different runs into fake seeds: two runs of one label with one seed (always), and
    runs of one label whose configs differ (unless allowed; then they are listed as problems)."""
    for label, rs in groups.items():
        by_seed: dict[int, list[Run]] = defaultdict(list)
        for r in rs:
            by_seed[r.record.seed].append(r)
        dup = {seed: g for seed, g in by_seed.items() if len(g) > 1}
        if dup:
            raise UserError(f"label {label!r} has more than one run per seed, so seeds would count twice: " +
                            "; ".join(f"seed {seed}: {', '.join(str(r.path) for r in g)}" for seed, g in dup.items())
                            + " (give different configs different labels: esgrpo run --label NAME)")
    problems = []
    for label, rs in groups.items():
        diffs = config_differences(rs)
        if diffs and not allow_mismatch:
            raise UserError(f"the runs labelled {label!r} differ in config, so they are not seeds of one config "
                            f"(give each config its own --label, or pass --allow-mismatch to pool them anyway): "
                            + "; ".join(diffs)[:1200])
        if diffs:
            problems.append(f"runs pooled under {label!r} differ in config: " + "; ".join(diffs)[:600])
    return problems


EVAL_KEYS = ("reward", "cost", "safe_ratio", "objective")  # every evaluation point has them: the curves read them


def record_problem(rec: RunRecord) -> str | None:
    """What in a record (edited by hand, or written by another tool) the report cannot read as a result."""
    marks = [e.mark for e in rec.evals]
    if marks != sorted(set(marks)):
        return f"evaluations out of order or repeated (marks {marks[:10]}): the last must be the final one"
    for e in rec.evals:
        if missing := [k for k in EVAL_KEYS if k not in e.metrics]:
            return f"the evaluation at mark {e.mark} lacks {', '.join(missing)}"
    for p in rec.series:
        values = [p.reward, p.cost, p.objective, p.safe_ratio, p.lam, p.j_c, p.seconds]
        if not all(math.isfinite(v) for v in values):
            return f"step {p.step} of the series has a non-finite value"
    rss, gpu = rec.memory.get("peak_rss_mb"), rec.memory.get("peak_gpu_mb")
    if rss is not None and (isinstance(rss, bool) or not isinstance(rss, (int, float))):
        return f"memory.peak_rss_mb is {rss!r:.40}, not a number"
    if gpu is not None and not (isinstance(gpu, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in gpu.values())):
        return "memory.peak_gpu_mb is not a map of device to megabytes"
    return None


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
        if problem := record_problem(rec):
            raise UserError(f"{d / RECORD_FILE}: {problem}")
        run = Run(d, rec)
        run.final_samples, run.suite_samples  # noqa: B018 - read and check now, not half way through the report
        runs.append(run)
    if not runs:
        raise UserError("no runs to compare")
    return runs


def comparability_problems(runs: list[Run], references: list[Run], vary_lambda0: bool = False) -> list[str]:
    """What differs between runs that must be equal for a fair comparison. Reference rows share everything
    about the evaluation (prompts, scorer, judge, settings); they have no training budget. ``vary_lambda0``: the
    runs are points of a frontier, where λ₀ is a knob (the report then reads no objective across them)."""
    shared = {
        "scorer": lambda r: scorer_identity(r.scorer),
        "evaluation settings": lambda r: json.dumps(r.evaluation, sort_keys=True),
        "judge": lambda r: scorer_identity(r.judge),
        "suites (prompt sets and judges)": lambda r: json.dumps(r.data.get("suites") or {}, sort_keys=True),
        **({} if vary_lambda0 else {"λ₀ (lambda.lambda_init, the objective's λ)": lambda0}),
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


def mean_over_runs(per_run: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per group (a category, a severity level): its size in the first run that has it, each rate's mean over runs."""
    out = {}
    for group in sorted({g for groups in per_run for g in groups}):
        rows = [groups[group] for groups in per_run if group in groups]
        out[group] = {"n": rows[0]["n"], **{k: statistics.fmean(row[k] for row in rows) for k in rows[0] if k != "n"}}
    return out


def summarize(label: str, runs: list[Run], target: dict[str, float] | None, lam0: float) -> MethodSummary:
    """One label's final metrics over its seeds (an interval from ``MIN_SEEDS`` seeds; below that the values).
    A reference row is one evaluation of a fixed policy: its interval is over the held-out prompts."""
    s = MethodSummary(label, sorted(runs, key=lambda r: r.record.seed), reference=runs[0].is_reference)
    for m in M.METRICS:
        if s.reference and len(runs) == 1:
            vals = list(M.values(m, runs[0].samples_for(m), lam0).values())
            if vals:
                s.final[m.key] = bootstrap_mean(vals, "prompts")
            continue
        per_run = [v for r in s.runs if (v := M.run_value(m, r.samples_for(m), lam0)) is not None]
        if per_run:
            s.final[m.key] = over_seeds(per_run)
    s.categories = {cat: {"kind": M.category_kind(s.runs[0].final_samples, cat), **row} for cat, row in
                    mean_over_runs([M.category_values(r.final_samples) for r in s.runs]).items()}
    s.severities = mean_over_runs([M.category_values(r.final_samples, M.severity_group) for r in s.runs])
    for name in sorted({n for r in s.runs for n in r.suite_samples}):
        s.suite_categories[name] = mean_over_runs([KINDS[name].categories(r.suite_samples[name]) for r in s.runs
                                                   if name in r.suite_samples])
    if s.reference:  # a fixed policy: no training, no resources to compare
        return s
    res: dict[str, list[float]] = defaultdict(list)
    for r in s.runs:
        res["peak_rss_mb"].append(r.record.memory.get("peak_rss_mb", float("nan")))
        gpu = r.record.memory.get("peak_gpu_mb") or {}
        if gpu:
            res["peak_gpu_mb"].append(max(gpu.values()))
        for k, v in r.record.throughput.items():
            res[k].append(v)
        res["train_seconds"].append(r.record.timing.get("train_seconds", float("nan")))
    s.resources = {k: over_seeds(v) for k, v in res.items()}
    split: dict[str, list[float]] = defaultdict(list)
    for r in s.runs:
        for k, v in r.record.timing.items():
            if k.endswith("_seconds") and k not in ("train_seconds",) and "wall" not in k:
                split[k.removesuffix("_seconds")].append(v)
    s.time_split = {k: statistics.fmean(v) for k, v in split.items()}
    if target:
        hits = [time_to_target(r, target) for r in s.runs]
        reached = [h for h in hits if h]
        s.target = {"reached": len(reached), "runs": len(runs),
                    "completions": statistics.fmean(h["completions"] for h in reached) if reached else None,
                    "seconds": statistics.fmean(h["seconds"] for h in reached) if reached else None}
    return s


def matched_seeds(a: MethodSummary, b: MethodSummary) -> list[tuple[Run, Run]]:
    by_seed_b = {r.record.seed: r for r in b.runs}
    return [(r, by_seed_b[r.record.seed]) for r in a.runs if r.record.seed in by_seed_b]


def paired_comparison(a: MethodSummary, b: MethodSummary, lam0: float) -> dict[str, Interval]:
    """a − b per metric over matched seeds, each seed's difference over the prompts both evaluated: a
    hierarchical bootstrap (seeds, then prompts) from ``MIN_SEEDS`` matched seeds, the per-seed values below."""
    pairs = matched_seeds(a, b)
    out: dict[str, Interval] = {}
    for m in M.METRICS:
        per_seed = []
        for ra, rb in pairs:
            va, vb = M.values(m, ra.samples_for(m), lam0), M.values(m, rb.samples_for(m), lam0)
            per_seed.append([va[i] - vb[i] for i in sorted(va.keys() & vb.keys())])
        if any(per_seed):
            out[m.key] = hierarchical_paired(per_seed)
    return out


def _signed(iv: Interval) -> str:
    return f"{iv.mean:+.3f} (95 % CI [{iv.low:+.3f}, {iv.high:+.3f}] over {iv.n} seeds)"


def verdict(a: str, b: str, diffs: dict[str, Interval], primary: str, n_seeds: int) -> str:
    """In words, led by the primary metric; none unless ``MIN_SEEDS`` seeds are matched."""
    if n_seeds == 0:
        return f"{a} and {b} share no seeds: nothing to pair."
    if n_seeds < MIN_SEEDS:
        return (f"no verdict: {a} and {b} share {n_seeds} seed{'s' if n_seeds > 1 else ''}, and a verdict needs "
                f"{MIN_SEEDS} (the per-seed differences are shown without an interval).")
    parts, leads = [], None  # leads: "ahead" or "behind" on the primary metric
    if primary in diffs:
        m, iv = M.BY_KEY[primary], diffs[primary]
        if not iv.excludes_zero():
            parts.append(f"on the primary metric, {m.words}, {a} and {b} do not differ beyond noise: {_signed(iv)}.")
        else:
            better = (iv.mean > 0) == m.higher_is_better
            leads = "ahead" if better else "behind"
            parts.append(f"on the primary metric, {m.words}, {a} is {'ahead of' if better else 'behind'} {b}: "
                         f"{_signed(iv)}.")
    ahead, behind = [], []
    judged = {k: iv for k, iv in diffs.items() if k != primary and M.BY_KEY[k].judged}
    for key, iv in judged.items():
        if iv.excludes_zero():
            (ahead if (iv.mean > 0) == M.BY_KEY[key].higher_is_better else behind).append(M.BY_KEY[key].words)
    for side, keys in (("ahead", ahead), ("behind", behind)):
        if keys:
            parts.append(f"{a} is {'also ' if leads == side else ''}{side} on {', '.join(keys)}.")
    rest = [M.BY_KEY[k].words for k, iv in judged.items() if not iv.excludes_zero()]
    if rest:
        parts.append(f"No difference beyond noise on {', '.join(rest)}.")
    text = " ".join(parts)
    return text[0].upper() + text[1:]


def examples(summaries: list[MethodSummary], per_category: int = 2) -> list[dict[str, Any]]:
    """A few completions side by side: the first ``per_category`` prompt ids (in id order) of each category
    that every row evaluated, each row's answer from its lowest seed. A fixed rule, not a pick."""
    first = {sm.label: {x["id"]: x for x in sm.runs[0].final_samples} for sm in summaries}
    common = set.intersection(*(set(v) for v in first.values())) if first else set()
    by_cat: dict[str, list[str]] = defaultdict(list)
    for i in sorted(common):
        sample = next(iter(first.values()))[i]
        by_cat[str(sample.get("category") or "unlabelled")].append(i)
    out = []
    for cat, ids in sorted(by_cat.items()):
        for i in ids[:per_category]:
            any_row = next(iter(first.values()))[i]
            out.append({"id": i, "category": cat, "expected_safe": any_row.get("expected_safe"),
                        "prompt": any_row.get("prompt", ""),
                        "answers": {label: {"response": rows[i].get("response", ""), "reward": rows[i]["reward"],
                                            "cost": rows[i]["cost"]} for label, rows in first.items()}})
    return out


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


def evaluation_table(run_dir: Path) -> str:
    """One record's final metrics as the report's headline and by-prompt-type rows (``esgrpo eval`` prints it)."""
    run = load_runs([run_dir])[0]
    s = summarize(run.label, [run], None, lambda0(run.record))
    entry = {"seeds": s.seeds, "final": {k: v.as_dict() for k, v in s.final.items()}}
    summary = {"methods": {}, "references": {s.label: entry}} if s.reference else {"methods": {s.label: entry},
                                                                                      "references": {}}
    tables = [t for t in (render.headline(summary), render.metric_table(summary, render.BY_PROMPT_TYPE)) if t]
    return "\n\n".join(render.md_table(t) for t in tables)


def drift_over_seeds(runs: list[Run]) -> dict[str, float]:
    """Each kind of layer's drift from the starting policy (the records' ``drift``), the mean over seeds."""
    rows = [r.record.drift for r in runs if r.record.drift]
    return {k: statistics.fmean(d[k] for d in rows if k in d) for k in sorted({k for d in rows for k in d})}


def drift_intervals(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """The same figures with their interval over seeds (from ``MIN_SEEDS`` seeds; below that each seed's value)."""
    rows = [r.record.drift for r in runs if r.record.drift]
    return {k: over_seeds([d[k] for d in rows if k in d]).as_dict() for k in sorted({k for d in rows for k in d})}


def drift_differences(a: MethodSummary, b: MethodSummary) -> dict[str, Interval]:
    """a − b of each run's drift figure over the seeds both ran (one figure per run: the interval is over seeds)."""
    out = {}
    for key in M.DRIFT_PAIRED:
        per_seed = [ra.record.drift[key] - rb.record.drift[key] for ra, rb in matched_seeds(a, b)
                    if key in ra.record.drift and key in rb.record.drift]
        if per_seed:
            out[key] = over_seeds(per_seed)
    return out


def cosine_of_updates(a: MethodSummary, b: MethodSummary) -> dict[str, Any] | None:
    """cos(θ_a − θ₀, θ_b − θ₀) at the lowest seed both ran, from their saved weights (None where either run's
    weights or the starting policy are not beside its record, as in committed results)."""
    pairs = matched_seeds(a, b)
    if not pairs:
        return None
    ra, rb = pairs[0]
    base = ra.record.config.get("policy_path")
    dirs = [ra.path / "model_saves" / "latest_hf", rb.path / "model_saves" / "latest_hf"]
    if base != rb.record.config.get("policy_path") or not base or not all(d.is_dir() for d in [Path(base), *dirs]):
        return None
    try:
        return {"seed": ra.record.seed, "cosine": update_cosine(base, *dirs)}
    except UserError:
        return None


class Between(Protocol):
    """Evaluates the straight line between two runs' final policies (harness.launch.interpolate)."""

    def __call__(self, a_dir: Path, b_dir: Path) -> list[dict[str, Any]]: ...


def interpolation(a: MethodSummary, b: MethodSummary, between: Between | None) -> dict[str, Any] | None:
    """The line between a's and b's final policies at the lowest seed both ran (None without saved weights)."""
    pairs = matched_seeds(a, b)
    if between is None or not pairs:
        return None
    ra, rb = pairs[0]
    try:
        return {"seed": ra.record.seed, "points": between(ra.path, rb.path)}
    except UserError as e:
        return {"seed": ra.record.seed, "points": [], "why": str(e)[:300]}


def write_report(paths: Sequence[Path], out: Path, allow_mismatch: bool = False, title: str | None = None,
                 target: dict[str, float] | None = None, spec: dict[str, Any] | None = None,
                 baseline: str | None = None, oom: Sequence[Path] = (), between: Between | None = None) -> Path:
    """``between``: evaluates the line between each paired method's final policy and the baseline's (none
    without it: that needs the policies, a scorer and generation)."""
    runs = load_runs(paths)
    trained = [r for r in runs if not r.is_reference]
    references = [r for r in runs if r.is_reference]
    if not runs:
        raise UserError("no runs or evaluation records to report")
    problems = comparability_problems(trained, references)
    if problems and not allow_mismatch:
        hint = ("\n  (runs that differ in λ₀ are points of a frontier: `esgrpo frontier RUNS` compares them)"
                if any("λ₀" in p for p in problems) else "")
        raise UserError("runs are not comparable (pass --allow-mismatch to report anyway):\n  " + "\n  ".join(problems)
                        + hint)
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in trained:
        groups[r.label].append(r)
    ref_groups: dict[str, list[Run]] = defaultdict(list)
    for r in references:
        ref_groups[r.label].append(r)
    clash = sorted(set(groups) & set(ref_groups))
    if clash:
        raise UserError(f"label(s) {', '.join(clash)} name both trained runs and evaluation records; relabel one")
    problems += check_groups({**groups, **ref_groups}, allow_mismatch)
    spec = spec or runs[0].record.spec or {}
    target = target or spec.get("target")
    compare_spec = spec.get("compare") or {}
    primary = M.metric(compare_spec.get("primary") or M.PRIMARY).key
    spec_baseline = compare_spec.get("baseline")
    if baseline is None and spec_baseline is not None and spec_baseline not in groups:
        problems.append(f"the spec's baseline {spec_baseline} has no completed run here: no paired differences")
        spec_baseline = None
        baseline = pick_baseline(list(groups), None) if len(groups) == 2 else None
    else:
        baseline = pick_baseline(list(groups), baseline or spec_baseline)
    lam0 = lambda0(runs[0].record)
    summaries = [summarize(label, rs, target, lam0) for label, rs in groups.items()]
    ref_summaries = [summarize(label, rs, None, lam0) for label, rs in ref_groups.items()]
    comparisons = []
    if baseline is not None:
        b = next(s for s in summaries if s.label == baseline)
        for a in summaries:
            if a is not b:
                diffs = paired_comparison(a, b, lam0)
                n = len(matched_seeds(a, b))
                comparisons.append({"a": a.label, "b": b.label, "diffs": diffs, "seeds": n,
                                    "verdict": verdict(a.label, b.label, diffs, primary, n),
                                    "update_cosine": cosine_of_updates(a, b),
                                    "drift_diffs": drift_differences(a, b),
                                    "interpolation": interpolation(a, b, between)})
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; the report is a folder (report.md, report.html, ...)")
    out.mkdir(parents=True, exist_ok=True)
    figures = plots.make_all(summaries, ref_summaries, out)
    if png := plots.interpolation(comparisons, out):
        figures["Between the final policies: θ(t) = (1 − t)·θ_a + t·θ_b, from a method (t = 0) to the baseline (t = 1)"] = png
    summary = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "title": title or out.name, "problems": problems, "target": target, "baseline": baseline,
        "primary": primary, "lambda0": lam0,
        "runs": [{"method": r.label, "kind": r.record.kind, "seed": r.record.seed, "path": str(r.path),
                  "status": r.record.status, "git_sha": r.record.environment.get("git_sha")} for r in runs],
        "methods": {s.label: {"seeds": s.seeds, "final": {k: v.as_dict() for k, v in s.final.items()},
                              "resources": {k: v.as_dict() for k, v in s.resources.items()},
                              "drift": drift_over_seeds(s.runs), "drift_intervals": drift_intervals(s.runs),
                              "categories": s.categories, "suite_categories": s.suite_categories,
                              "severities": s.severities, "time_split_seconds": s.time_split,
                              "time_to_target": s.target} for s in summaries},
        "references": {s.label: {"seeds": s.seeds, "final": {k: v.as_dict() for k, v in s.final.items()},
                                 "categories": s.categories, "suite_categories": s.suite_categories,
                                 "severities": s.severities, "policy": s.runs[0].record.config.get("policy_path")} for s in ref_summaries},
        "examples": examples([*summaries, *ref_summaries]),
        "oom": oom_rows(oom),
        "comparisons": [{"a": c["a"], "b": c["b"], "verdict": c["verdict"], "seeds": c["seeds"],
                         "diffs": {k: v.as_dict() for k, v in c["diffs"].items()},
                         "update_cosine": c.get("update_cosine"), "interpolation": c.get("interpolation"),
                         "drift_diffs": {k: v.as_dict() for k, v in c["drift_diffs"].items()}}
                        for c in comparisons],
        "spec": spec or None,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    render.write_markdown_and_html(out, summary, summaries, ref_summaries, comparisons, figures, runs)
    return out / "report.md"
