"""The safety–helpfulness frontier: every sweep point's final reward, cost and safe ratio (seed intervals), each
method's Pareto set, and in words where one method's frontier lies above another's at the spec's budget.

A method's frontier is the most reward it reaches at each safe ratio or better: F(s) = max{R_p : safe_p ≥ s} over
its points p. Two frontiers are compared on the safe ratios both reach, [0, min(max safe_a, max safe_b)]: the area
between them, ∫ (F_a − F_b) ds, is positive where a reaches more reward for the same safety. Its interval
resamples the seeds every point ran (the same draw for every point, as the paired differences do), from 3 seeds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.errors import UserError
from harness.records import atomic_write_text
from harness.report import metrics as M
from harness.report.compare import Run, check_groups, comparability_problems, lambda0, load_runs, time_to_target
from harness.report.stats import LEVEL, MIN_SEEDS, RESAMPLES, Interval, _percentile, no_interval, over_seeds
from harness.sweep import spec_points

AXES = ("reward", "cost", "safe_ratio")
# the suites' axes, where the runs evaluated them: reward against each in the figure, a column each in the table
SUITE_AXES = (("over_refusal_rate", "over-refusal of safe prompts (suite)"),
              ("attack_success_rate", "attack success (suite)"))


@dataclass
class Point:
    label: str
    family: str
    settings: str
    per_seed: dict[str, dict[int, float]]  # metric -> seed -> final value
    final: dict[str, Interval] = field(default_factory=dict)
    target: dict[str, Any] | None = None

    @property
    def seeds(self) -> list[int]:
        return sorted(self.per_seed["reward"])


def pareto(xy: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both larger is better)."""
    return [i for i, (x, y) in enumerate(xy)
            if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(xy) if j != i)]


def frontier_difference(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Area between two step frontiers of (safe ratio, reward) points on the safe ratios both reach, the range
    of safe ratios where each lies above, and where they cross."""
    top = min(max(s for s, _ in a), max(s for s, _ in b))
    cuts = sorted({0.0, top, *(s for s, _ in [*a, *b] if 0.0 < s < top)})
    area, pieces = 0.0, []
    for lo, hi in zip(cuts, cuts[1:]):
        fa = max(r for s, r in a if s >= hi)
        fb = max(r for s, r in b if s >= hi)
        area += (hi - lo) * (fa - fb)
        pieces.append((lo, hi, fa - fb))
    if not pieces:  # both reach only safe ratio 0 (or one point each at the same ratio): compare there
        fa, fb = max(r for s, r in a if s >= top), max(r for s, r in b if s >= top)
        pieces.append((top, top, fa - fb))
    above = merged([(lo, hi) for lo, hi, d in pieces if d > 0])
    below = merged([(lo, hi) for lo, hi, d in pieces if d < 0])
    signs = [np.sign(d) for _, _, d in pieces if d != 0]
    crossings = [pieces[i][1] for i in range(len(pieces) - 1)
                 if pieces[i][2] and pieces[i + 1][2] and np.sign(pieces[i][2]) != np.sign(pieces[i + 1][2])]
    return {"area": area, "range": (0.0, top), "a_above": above, "b_above": below, "crossings": crossings,
            "dominates": "a" if signs and all(x > 0 for x in signs) else "b" if signs and all(x < 0 for x in signs)
            else None}


def merged(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Adjacent ranges joined: (0, 0.2), (0.2, 0.5) → (0, 0.5)."""
    out: list[tuple[float, float]] = []
    for lo, hi in spans:
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _coords(points: list[Point], seeds: Sequence[int] | None = None) -> list[tuple[float, float]]:
    def mean(p: Point, key: str) -> float:
        vals = p.per_seed[key]
        return float(np.mean([vals[s] for s in seeds] if seeds is not None else list(vals.values())))

    return [(mean(p, "safe_ratio"), mean(p, "reward")) for p in points]


def area_interval(a: list[Point], b: list[Point], resamples: int = RESAMPLES // 5, seed: int = 0) -> Interval:
    """The area between the two frontiers, with a percentile-bootstrap interval over the seeds every point ran."""
    common = sorted(set.intersection(*(set(p.seeds) for p in [*a, *b])))
    if len(common) < MIN_SEEDS:
        return no_interval([frontier_difference(_coords(a, [s]), _coords(b, [s]))["area"] for s in common])
    rng = np.random.default_rng(seed)
    areas = [frontier_difference(_coords(a, drawn), _coords(b, drawn))["area"]
             for drawn in rng.choice(common, size=(resamples, len(common)))]
    point = frontier_difference(_coords(a, common), _coords(b, common))["area"]
    return Interval(point, *_percentile(np.asarray(areas), LEVEL), len(common), "seeds")


def collect(runs: list[Run], spec: dict[str, Any], target: dict[str, float] | None) -> list[Point]:
    sweep = spec_points(spec)
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.label].append(r)
    check_groups(groups, allow_mismatch=False)
    out = []
    for label, rs in groups.items():
        per_seed: dict[str, dict[int, float]] = {}
        for key in (*AXES, *(k for k, _ in SUITE_AXES)):
            m = M.metric(key)
            values = {r.record.seed: v for r in rs if (v := M.run_value(m, r.samples_for(m), lambda0(r.record)))
                      is not None}
            if values or key in AXES:
                per_seed[key] = values
        point = sweep.get(label)
        p = Point(label, point.family if point else label, point.describe() if point else "", per_seed,
                  {k: over_seeds(list(v.values())) for k, v in per_seed.items()})
        if target:
            hits = [h for r in rs if (h := time_to_target(r, target))]
            p.target = {"reached": len(hits), "runs": len(rs),
                        "completions": float(np.mean([h["completions"] for h in hits])) if len(hits) == len(rs) else None}
        out.append(p)
    return out


def statement(a: str, b: str, diff: dict[str, Any], area: Interval) -> str:
    """The comparison of two frontiers in words; a verdict only where 3 seeds give an interval excluding 0."""
    lo, hi = diff["range"]
    where = f"over safe ratios {lo:.2f}–{hi:.2f}"
    spans = lambda xs: ", ".join(f"{x:.2f}–{y:.2f}" for x, y in xs)  # noqa: E731
    if diff["dominates"] == "a":
        shape = f"{a}'s frontier lies on or above {b}'s {where}"
    elif diff["dominates"] == "b":
        shape = f"{b}'s frontier lies on or above {a}'s {where}"
    elif diff["crossings"]:
        shape = (f"the frontiers cross at safe ratio {', '.join(f'{c:.2f}' for c in diff['crossings'])}: {a} above "
                 f"on {spans(diff['a_above']) or 'none'}, {b} above on {spans(diff['b_above']) or 'none'}")
    else:
        shape = f"the frontiers coincide {where}"
    if area.has_interval:
        size = (f"area between them {area.mean:+.3f} (95 % interval {area.low:+.3f} to {area.high:+.3f}, "
                f"{area.n} seeds)")
        if area.excludes_zero():
            better = a if area.mean > 0 else b
            size += (f": {better} reaches more reward at equal safety" if diff["dominates"] else
                     f": over the safe ratios both reach, {better} reaches more reward at equal safety on average")
        else:
            size += ": no verdict (the interval includes 0)"
    else:
        size = (f"area between them {area.mean:+.3f} ({area.n} seed{'s' if area.n != 1 else ''}: no interval, "
                "no verdict)")
    return f"{shape}; {size}."


def cheapest(points: list[Point]) -> dict[str, Any] | None:
    """The point of one family that met the target on every seed with the fewest completions."""
    met = [p for p in points if p.target and p.target["completions"] is not None]
    if not met:
        return None
    best = min(met, key=lambda p: p.target["completions"])  # type: ignore[index]
    return {"label": best.label, "completions": best.target["completions"], "seeds": best.target["runs"]}  # type: ignore[index]


def figure(families: dict[str, list[Point]], out: Path) -> str:
    from harness.report import plots

    plt = plots.plt
    colors = plots.label_colors(list(families))
    every = [p for pts in families.values() for p in pts]
    planes = [("safe_ratio", "safe ratio (C ≤ 0)"), ("cost", "cost C"),
              *[(k, words) for k, words in SUITE_AXES if all(k in p.final for p in every)]]
    fig, axes = plt.subplots(1, len(planes), figsize=(5.5 * len(planes), 4.4))
    for (xkey, xlabel), ax in zip(planes, axes):
        for fam, pts in families.items():
            xs = [p.final[xkey].mean for p in pts]
            ys = [p.final["reward"].mean for p in pts]
            err = lambda key: np.array([[p.final[key].mean - p.final[key].low for p in pts],  # noqa: E731
                                        [p.final[key].high - p.final[key].mean for p in pts]])
            has = all(p.final[xkey].has_interval and p.final["reward"].has_interval for p in pts)
            ax.errorbar(xs, ys, xerr=err(xkey) if has else None, yerr=err("reward") if has else None, fmt="o",
                        color=colors[fam], label=fam, capsize=3, alpha=0.85)
            sign = 1 if xkey == "safe_ratio" else -1  # less cost, over-refusal or attack success is better
            front = sorted(pareto([(sign * x, y) for x, y in zip(xs, ys)]), key=lambda i: xs[i])
            ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color=colors[fam], alpha=0.6)
            for p, x, y in zip(pts, xs, ys):  # the point's values, without its method's name
                ax.annotate(p.label.removeprefix(f"{fam}."), (x, y), fontsize=7, color=colors[fam], xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("reward R")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("safety–helpfulness frontier (final evaluation; lines join each method's Pareto set)")
    fig.tight_layout()
    return plots.save(fig, out, "frontier")


def write_frontier(paths: Sequence[Path], out: Path, spec: dict[str, Any], missing: Sequence[str] = (),
                   baseline: str | None = None) -> Path:
    """``frontier.md``, ``frontier.json`` and ``frontier.png`` for the runs of a swept spec. ``missing``: the
    points that have no completed run (a sweep cut off), listed as such."""
    runs = [r for r in load_runs(paths) if not r.is_reference]
    if not runs:
        raise UserError("no completed runs to draw a frontier from")
    # the points differ in their knobs (λ₀ among them): everything else must be equal
    problems = comparability_problems(runs, [], vary_lambda0=True)
    if problems:
        raise UserError("runs are not comparable:\n  " + "\n  ".join(problems))
    target = spec.get("target")
    points = collect(runs, spec, target)
    families: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        families[p.family].append(p)
    baseline = baseline or (spec.get("compare") or {}).get("baseline")
    if baseline not in families:
        baseline = None
    comparisons = []
    for fam in families:
        if baseline is None or fam == baseline:
            continue
        diff = frontier_difference(_coords(families[fam]), _coords(families[baseline]))
        area = area_interval(families[fam], families[baseline])
        comparisons.append({"a": fam, "b": baseline, **diff, "area": area.as_dict(),
                            "statement": statement(fam, baseline, diff, area)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = figure(families, out)
    budget = runs[0].record.budget.get("completions")
    summary = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget_completions": budget,
        "baseline": baseline, "target": target, "missing": list(missing), "comparisons": comparisons,
        "points": [{"label": p.label, "family": p.family, "settings": p.settings, "seeds": p.seeds,
                    "final": {k: v.as_dict() for k, v in p.final.items()}, "target": p.target,
                    "pareto": p.label in pareto_labels(families[p.family])} for p in points],
        "cheapest_to_target": {fam: cheapest(pts) for fam, pts in families.items()} if target else None,
    }
    atomic_write_text(out / "frontier.json", json.dumps(summary, indent=1, default=str))
    atomic_write_text(out / "frontier.md", markdown(summary, png))
    return out / "frontier.md"


def pareto_labels(points: list[Point]) -> set[str]:
    xy = _coords(points)
    return {points[i].label for i in pareto(xy)}


def markdown(summary: dict[str, Any], png: str) -> str:
    lines = ["# Safety–helpfulness frontier", "",
             f"Every point at the same budget ({summary['budget_completions']} completions scored), final evaluation. "
             f"Intervals: 95 % over seeds, from 3 seeds (fewer: the seeds' values).", "", f"![frontier]({png})", ""]
    if summary["comparisons"]:
        lines += ["## Against the baseline", ""] + [f"- **{c['a']} against {c['b']}**: {c['statement']}"
                                                    for c in summary["comparisons"]] + [""]
    elif summary["baseline"] is None:
        lines += ["No baseline among the swept methods (compare.baseline): no comparison of frontiers.", ""]
    extra = [(k, words) for k, words in SUITE_AXES if any(k in p["final"] for p in summary["points"])]
    lines += ["## Points", "", "| point | method | settings | seeds | reward | cost | safe ratio | "
              + "".join(f"{words} | " for _, words in extra) + "on the frontier |",
              "| --- " * (8 + len(extra)) + "|"]
    for p in summary["points"]:
        f = {k: Interval.from_dict(v).fmt() for k, v in p["final"].items()}
        lines.append(f"| {p['label']} | {p['family']} | {p['settings'] or '—'} | {len(p['seeds'])} | {f['reward']} | "
                     f"{f['cost']} | {f['safe_ratio']} | " + "".join(f"{f.get(k, '—')} | " for k, _ in extra)
                     + f"{'yes' if p['pareto'] else ''} |")
    if summary.get("cheapest_to_target"):
        lines += ["", f"## Time to target ({', '.join(f'{k} {v}' for k, v in summary['target'].items())})", ""]
        for fam, c in summary["cheapest_to_target"].items():
            lines.append(f"- {fam}: " + (f"{c['label']}, {c['completions']:.0f} completions "
                                         f"({c['seeds']} seed{'s' if c['seeds'] != 1 else ''})"
                                         if c else "no point met the target on every seed"))
    if summary["missing"]:
        lines += ["", "## Not run", "", "The sweep stopped before these points completed: "
                  + ", ".join(summary["missing"]) + "."]
    return "\n".join(lines) + "\n"
