"""Report figures (matplotlib, headless), each as PNG (inlined in the HTML) and SVG (for papers). Curves show
the mean over seeds, with a 95 % band from 3 seeds. A label keeps its colour from report to report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import zlib  # noqa: E402

from harness.evaluation import quadrant  # noqa: E402
from harness.report.stats import over_seeds  # noqa: E402

if TYPE_CHECKING:
    from harness.report.compare import MethodSummary

REFERENCE_COLORS = ("0.35", "0.55", "#8c564b", "#bcbd22")
EVAL_METRICS = (("reward", "eval reward R"), ("cost", "eval cost C"), ("safe_ratio", "safe ratio (C ≤ 0)"),
                ("judge_reward", "judge reward (held-out)"))


PALETTE = tuple(f"C{i}" for i in range(10))
# time-split parts are not methods: a separate palette, so that no part reads as a method's colour
PART_COLORS = tuple(matplotlib.colormaps["Set3"].colors)


def label_colors(labels: list[str]) -> dict[str, str]:
    """A colour per label from a hash of the label, so one label has one colour in every report; a collision
    within one report moves to the next free colour."""
    taken: dict[str, str] = {}
    for label in sorted(labels):
        i = zlib.crc32(label.encode()) % len(PALETTE)
        while PALETTE[i] in taken.values() and len(taken) < len(PALETTE):
            i = (i + 1) % len(PALETTE)
        taken[label] = PALETTE[i]
    return taken


def save(fig, out: Path, stem: str) -> str:
    fig.savefig(out / f"{stem}.png", dpi=110)
    fig.savefig(out / f"{stem}.svg")
    plt.close(fig)
    return f"{stem}.png"


def quadrant_of(sample: dict) -> str:
    return quadrant(sample["reward"], sample["cost"])


def _band(ax, xs_per_run, ys_per_run, color, label):
    """Align runs on the shared budget marks; mean line and bootstrap band across seeds."""
    n = min(len(y) for y in ys_per_run)
    x = np.mean([xr[:n] for xr in xs_per_run], axis=0)
    ys = np.array([yr[:n] for yr in ys_per_run])
    ax.plot(x, ys.mean(axis=0), color=color, label=label, marker="o", ms=3)
    ivs = [over_seeds(ys[:, j]) for j in range(n)]
    if ivs and ivs[0].has_interval:
        ax.fill_between(x, [i.low for i in ivs], [i.high for i in ivs], color=color, alpha=0.2, lw=0)


CURVE_X = {"completions": "completions scored (where each evaluation ran)", "tokens": "generated tokens", "seconds": "training seconds"}


# the other axes against budget: over-refusal and attack success (where suites ran), signs of reward hacking
SAFETY_CURVES = (("over_refusal_rate", "over-refusal (suite)"), ("unsafe_compliance_rate", "unsafe compliance (suite)"),
                 ("attack_success_rate", "attack success (suite)"), ("invented_turn_rate", "invented turns"),
                 ("response_tokens", "response length (tokens)"), ("judge_gap", "scorer − judge reward"),
                 ("drift_total", "‖θ − θ₀‖ / ‖θ₀‖"), ("kl_per_token", "KL(π ‖ π₀) per token"))


def curves_figure(summaries: list["MethodSummary"], references: list["MethodSummary"], xkeys: tuple[str, ...],
                  metrics: tuple[tuple[str, str], ...] = EVAL_METRICS):
    fig, axes = plt.subplots(len(xkeys), len(metrics), figsize=(4.2 * len(metrics), 3.4 * len(xkeys)),
                             squeeze=False)
    colors = label_colors([s.label for s in summaries])
    for row, xkey in enumerate(xkeys):
        for col, (m, title) in enumerate(metrics):
            ax = axes[row][col]
            for s in summaries:
                runs = [r for r in s.runs if r.record.evals and m in r.record.evals[0].metrics]
                if runs:
                    _band(ax, [[getattr(e, xkey) for e in r.record.evals] for r in runs],
                          [[e.metrics[m] for e in r.record.evals] for r in runs], colors[s.label],
                          f"{s.label} (n={len(runs)})")
            for j, ref in enumerate(references):  # a fixed policy: one level across the whole budget
                iv = ref.final.get(m)
                if iv is not None and not np.isnan(iv.mean):
                    ax.axhline(iv.mean, color=REFERENCE_COLORS[j % len(REFERENCE_COLORS)], ls="--", lw=1.2,
                               label=f"{ref.label} (reference)")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(CURVE_X[xkey])
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves(summaries: list["MethodSummary"], references: list["MethodSummary"], out: Path) -> str:
    return save(curves_figure(summaries, references, ("completions",)), out, "curves")


def safety_curves(summaries: list["MethodSummary"], references: list["MethodSummary"], out: Path) -> str | None:
    present = tuple((k, t) for k, t in SAFETY_CURVES
                    if any(r.record.evals and k in r.record.evals[0].metrics for s in summaries for r in s.runs))
    return save(curves_figure(summaries, references, ("completions",), present), out, "safety-curves") if present else None


def curves_by_cost(summaries: list["MethodSummary"], references: list["MethodSummary"], out: Path) -> str:
    return save(curves_figure(summaries, references, ("tokens", "seconds")), out, "curves-tokens-seconds")


def training(summaries: list["MethodSummary"], out: Path) -> str:
    return save(training_figure(summaries), out, "training")


def training_figure(summaries: list["MethodSummary"]):
    keys = (("reward", "train reward R"), ("cost", "train cost C"), ("lam", "λ"), ("safe_ratio", "train safe ratio"))
    # solid: the policy being trained (ES: θ itself, GRPO: its rollouts); dashed: ES's population mean
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    colors = label_colors([s.label for s in summaries])
    for ax, (k, title) in zip(axes, keys):
        for s in summaries:
            for j, r in enumerate(s.runs):
                xs = [p.completions for p in r.record.series]
                ys = [getattr(p, k) for p in r.record.series]
                ax.plot(xs, ys, color=colors[s.label], alpha=0.8, lw=1, label=s.label if j == 0 else None)
                # ES records its population's mean too (the curve the published ES logged): dashed beside θ's
                pop = [p.extra.get(f"population_{k}") for p in r.record.series]
                if pop and all(v is not None for v in pop):
                    ax.plot(xs, pop, color=colors[s.label], alpha=0.6, lw=1, ls="--",
                            label=f"{s.label} population mean" if j == 0 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("completions scored")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def scatter(summaries: list["MethodSummary"], references: list["MethodSummary"], out: Path) -> str:
    colors = label_colors([s.label for s in summaries])
    panels = [(s.label, [x for r in s.runs for x in r.final_samples], colors[s.label]) for s in summaries]
    panels += [(f"{s.label} (reference)", [x for r in s.runs for x in r.final_samples],
                REFERENCE_COLORS[j % len(REFERENCE_COLORS)]) for j, s in enumerate(references)]
    return save(scatter_figure(panels), out, "scatter")


def scatter_panels(panels: list[tuple[str, list[dict], str]], path: Path) -> None:
    save(scatter_figure(panels), path.parent, path.stem)


def _around_zero(lo: float, hi: float) -> tuple[float, float]:
    """Limits that hold the data and both sides of 0, so that the corner labels sit in their quadrants."""
    pad = 0.08 * max(hi - lo, abs(lo), abs(hi), 1e-3)
    return min(lo, 0.0) - pad, max(hi, 0.0) + pad


def scatter_figure(panels: list[tuple[str, list[dict], str]]):
    """Reward–cost scatter per (title, samples, color), quadrants marked and their shares in the title."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (title, samples, color) in zip(axes[0], panels):
        rs, cs = [x["reward"] for x in samples], [x["cost"] for x in samples]
        ax.scatter(rs, cs, s=14, alpha=0.6, color=color)
        if samples:
            ax.set_xlim(*_around_zero(min(rs), max(rs)))
            ax.set_ylim(*_around_zero(min(cs), max(cs)))
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(0, color="k", lw=0.8)
        for (tx, ty, label) in ((0.98, 0.02, "SH"), (0.02, 0.02, "SU"), (0.98, 0.97, "UH"), (0.02, 0.97, "UU")):
            ax.text(tx, ty, label, transform=ax.transAxes, ha="right" if tx > 0.5 else "left",
                    va="bottom" if ty < 0.5 else "top", fontsize=11, color="0.35", weight="bold")
        shares = "  ".join(f"{q} {sum(quadrant_of(x) == q for x in samples) / max(len(samples), 1):.2f}"
                           for q in ("SH", "SU", "UH", "UU"))
        ax.set_title(f"{title}: final evaluation\n{shares}", fontsize=10)
        ax.set_xlabel("reward R (helpful > 0)")
        ax.set_ylabel("cost C (safe ≤ 0)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def resources(summaries: list["MethodSummary"], out: Path) -> str:
    panels = [("peak_rss_mb", "peak host memory (MB)"), ("peak_gpu_mb", "peak GPU memory (MB)"),
              ("tokens_per_s", "generated tokens / s"), ("completions_per_s", "completions scored / s")]
    panels = [p for p in panels if any(p[0] in s.resources for s in summaries)]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.6 * (len(panels) + 1), 3.6))
    names = [s.label for s in summaries]
    colors = label_colors(names)
    for ax, (k, title) in zip(axes, panels):
        ivs = [s.resources.get(k) for s in summaries]
        means = [iv.mean if iv else 0 for iv in ivs]
        errs = [((iv.high - iv.low) / 2 if iv and iv.has_interval else 0) for iv in ivs]
        ax.bar(names, means, yerr=errs, color=[colors[n] for n in names], capsize=4)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3, axis="y")
    ax = axes[-1]
    parts = sorted({k for s in summaries for k in s.time_split})
    bottom = np.zeros(len(summaries))
    for j, part in enumerate(parts):
        vals = np.array([s.time_split.get(part, 0.0) for s in summaries])
        ax.bar(names, vals, bottom=bottom, label=part, color=PART_COLORS[j % len(PART_COLORS)], edgecolor="0.3", lw=0.5)
        bottom += vals
    ax.set_title("time split (s, summed per step)", fontsize=10)
    ax.set_ylabel("seconds")
    if parts:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, out, "resources")


# every axis of the final evaluation, each drawn so that up is better (cost, over-refusal, invented turns flipped)
ALL_AXES = (("safe_ratio", "safe ratio", 1), ("harmful_safe_ratio", "safe, harmful", 1), ("reward", "reward", 1),
            ("benign_helpful_ratio", "helpful, benign", 1), ("cost", "cost (−)", -1),
            ("benign_refusal_ratio", "over-refusal (−)", -1), ("judge_safe_ratio", "judge safe", 1),
            ("judge_reward", "judge reward", 1), ("invented_turn_rate", "invented turns (−)", -1),
            ("over_refusal_rate", "over-refusal, suite (−)", -1), ("unsafe_compliance_rate", "unsafe compliance (−)", -1),
            ("attack_success_rate", "attack success (−)", -1))


def axes_values(summaries: list["MethodSummary"]) -> tuple[list[str], dict[str, list[float]]]:
    """Per method, each axis its methods share, scaled from the worst method's mean (0) to the best's (1); an
    axis on which all methods agree sits at 0.5."""
    axes = [(k, words, sign) for k, words, sign in ALL_AXES if all(k in s.final for s in summaries)]
    out: dict[str, list[float]] = {s.label: [] for s in summaries}
    for k, _, sign in axes:
        means = [sign * s.final[k].mean for s in summaries]
        lo, hi = min(means), max(means)
        for s, m in zip(summaries, means):
            out[s.label].append(0.5 if hi == lo else (m - lo) / (hi - lo))
    return [words for _, words, _ in axes], out


def all_axes(summaries: list["MethodSummary"], out: Path) -> str:
    words, values = axes_values(summaries)
    colors = label_colors(list(values))
    fig, ax = plt.subplots(figsize=(1.2 * len(words) + 2, 3.8))
    for label, ys in values.items():
        ax.plot(range(len(words)), ys, marker="o", color=colors[label], label=label)
    ax.set_xticks(range(len(words)), words, rotation=20, ha="right")
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([0, 1], ["worst method", "best method"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("every axis at once (final evaluation, mean over seeds, scaled between the methods; up is better)")
    fig.tight_layout()
    return save(fig, out, "axes")


def interpolation(comparisons: list[dict], out: Path) -> str | None:
    lines = [c for c in comparisons if (c.get("interpolation") or {}).get("points")]
    if not lines:
        return None
    keys = [k for k in ("objective", "reward", "cost", "safe_ratio") if k in lines[0]["interpolation"]["points"][0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    colors = label_colors([c["a"] for c in lines])
    for ax, k in zip(axes[0], keys):
        for c in lines:
            pts = c["interpolation"]["points"]
            ax.plot([p["t"] for p in pts], [p[k] for p in pts], marker="o", color=colors[c["a"]],
                    label=f"{c['a']} → {c['b']} (seed {c['interpolation']['seed']})")
        ax.set_xlabel("t")
        ax.set_title(k.replace("_", " "), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out, "interpolation")


def make_all(summaries: list["MethodSummary"], references: list["MethodSummary"], out: Path) -> dict[str, str]:
    if not summaries:  # evaluation records alone: no curves, training or resources to draw
        return {"Reward–cost scatter with quadrant shares": scatter(summaries, references, out)}
    figures = {"Evaluation curves (mean over seeds, 95 % band from 3 seeds; references dashed)":
            curves(summaries, references, out),
            "The same curves against generated tokens and training seconds": curves_by_cost(summaries, references, out),
            "Training curves (every run)": training(summaries, out),
            "Final reward–cost scatter with quadrant shares": scatter(summaries, references, out),
            "Every axis at once (scaled between the methods)": all_axes(summaries, out),
            "Memory, throughput and time split": resources(summaries, out),
            "Over-refusal, attack success and signs of reward hacking against budget":
                safety_curves(summaries, references, out)}
    return {caption: png for caption, png in figures.items() if png}
