"""report.md and a self-contained report.html (plots inlined) from the same tables."""

from __future__ import annotations

import math

import base64
import html
from pathlib import Path
from typing import Any

from harness.records import atomic_write_text
from harness.report.stats import Interval

Table = tuple[list[str], list[list[str]]]
METRIC_LABELS = {"safe_ratio": "safe ratio", "reward": "reward R", "cost": "cost C", "objective": "objective R−λ₀C",
                 "helpful_ratio": "helpful ratio", "judge_reward": "judge R", "judge_cost": "judge C",
                 "judge_safe_ratio": "judge safe ratio"}


def _fmt(iv: Interval | None, digits: int = 3) -> str:
    return "—" if iv is None else iv.fmt(digits)


def _mb(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def tables(summary: dict[str, Any], summaries, references, comparisons, runs) -> list[tuple[str, Table]]:
    out = []
    rows_of = [*summaries, *references]
    name = lambda s: f"{s.label} (reference)" if s.reference else s.label  # noqa: E731
    metrics = [m for m in METRIC_LABELS if any(m in s.final and not math.isnan(s.final[m].mean) for s in rows_of)]
    out.append(("Final evaluation (mean ± 95 % CI half-width)",
                (["method", "seeds", *[METRIC_LABELS[m] for m in metrics]],
                 [[name(s), "–" if s.reference else str(len(s.runs)), *[_fmt(s.final.get(m)) for m in metrics]]
                  for s in rows_of])))
    q_rows = []
    for s in rows_of:
        q = [sum(r.record.evals[-1].metrics.get(k, 0) for r in s.runs) / len(s.runs) for k in ("SH", "SU", "UH", "UU")]
        q_rows.append([name(s), *[f"{v:.2f}" for v in q]])
    out.append(("Quadrants of the final evaluation (share of prompts)", (["method", "SH", "SU", "UH", "UU"], q_rows)))
    res_keys = [k for k in ("peak_rss_mb", "peak_gpu_mb", "tokens_per_s", "completions_per_s", "scorer_pairs_per_s",
                            "train_seconds") if any(k in s.resources for s in summaries)]
    if summaries:  # evaluation records alone have no training resources
        out.append(("Resources", (["method", *res_keys],
                                  [[s.label, *[_fmt(s.resources.get(k), 1) for k in res_keys]] for s in summaries])))
    if summary.get("target"):
        tgt = ", ".join(f"{k} {'≤' if k.endswith('cost') else '≥'} {v}" for k, v in summary["target"].items())
        rows = [[s.label, f"{s.target['reached']}/{s.target['runs']}",
                 "not reached" if s.target["completions"] is None else f"{s.target['completions']:.0f}",
                 "not reached" if s.target["seconds"] is None else f"{s.target['seconds']:.1f}"] for s in summaries]
        out.append((f"Time to target ({tgt})", (["method", "runs reaching it", "completions", "seconds"], rows)))
    for c in comparisons:
        rows = [[METRIC_LABELS.get(m, m), f"{iv.mean:+.3f}", f"[{iv.low:+.3f}, {iv.high:+.3f}]", str(iv.n)]
                for m, iv in c["diffs"].items()]
        out.append((f"Paired difference {c['a']} − {c['b']} (same seeds and prompts)",
                    (["metric", "difference", "95 % CI", "pairs"], rows)))
    if summary.get("oom"):
        out.append(("Runs that ran out of memory (a result: what each reached before it stopped)",
                    (["method", "seed", "training precision", "in use when it failed (MB, torch's message)",
                      "peak GPU, torch (MB)", "peak GPU, NVML (MB)"],
                     [[r["method"], str(r["seed"]), r["precision"] or "–", _mb(r["in_use_mb"]), _mb(r["peak_gpu_mb"]),
                       _mb(r["peak_gpu_nvml_mb"])] for r in summary["oom"]])))
    out.append(("Runs", (["method", "kind", "seed", "status", "path", "git"],
                         [[r.label, r.record.kind, str(r.record.seed), r.record.status, str(r.path),
                           (r.record.environment.get("git_sha") or "")[:10]] for r in runs])))
    return out


def _md_table(t: Table) -> str:
    head, rows = t
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(t: Table) -> str:
    head, rows = t
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def baseline_note(summary: dict[str, Any], summaries, references) -> str:
    parts = []
    if summary.get("baseline"):
        parts.append(f"Every method is paired against the baseline **{summary['baseline']}**.")
    elif len(summaries) > 2:
        parts.append("No baseline named (spec `compare: {baseline: LABEL}` or `--baseline`): no paired differences.")
    if references:
        parts.append("Reference rows are evaluations of fixed policies (`esgrpo eval`): shown, never paired.")
    return " ".join(parts)


def write_markdown_and_html(out: Path, summary: dict[str, Any], summaries, references, comparisons,
                            figures: dict[str, str], runs) -> None:
    ts = tables(summary, summaries, references, comparisons, runs)
    title = f"esgrpo comparison: {summary['title']}"
    note = baseline_note(summary, summaries, references)
    md = [f"# {title}", "", f"Generated {summary['generated']}." + (f" {note}" if note else "")]
    for p in summary["problems"]:
        md.append(f"\n> **Warning: not a like-for-like comparison.** {p}")
    for c in comparisons:
        md.append(f"\n**Verdict:** {c['verdict']}")
    for heading, t in ts:
        md += ["", f"## {heading}", "", _md_table(t)]
    for caption, png in figures.items():
        md += ["", f"## {caption}", "", f"![{caption}]({png})"]
    md += ["", "Intervals: percentile bootstrap (10,000 resamples) over seeds when a method has ≥ 2 seeds, "
           "otherwise over the held-out prompts; paired differences resample (seed, prompt) pairs.", ""]
    atomic_write_text(out / "report.md", "\n".join(md))

    css = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;"
           "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}"
           ".warn{background:#fff3cd;padding:.6em;border-left:4px solid #e0a800}.verdict{font-size:1.1em}")
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Generated {html.escape(summary['generated'])}. {html.escape(note.replace('**', ''))}</p>"]
    body += [f"<p class='warn'><b>Warning: not a like-for-like comparison.</b> {html.escape(p)}</p>"
             for p in summary["problems"]]
    body += [f"<p class='verdict'><b>Verdict:</b> {html.escape(c['verdict'])}</p>" for c in comparisons]
    for heading, t in ts:
        body += [f"<h2>{html.escape(heading)}</h2>", _html_table(t)]
    for caption, png in figures.items():
        data = base64.b64encode((out / png).read_bytes()).decode()
        body += [f"<h2>{html.escape(caption)}</h2>", f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{css}</style></head><body>{''.join(body)}</body></html>"
    atomic_write_text(out / "report.html", page)
