"""report.md and a self-contained report.html (plots inlined) from the same tables; the console's headline."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from harness.records import atomic_write_text
from harness.refusal import OPENING_CHARS
from harness.report.metrics import BY_KEY, DRIFT_PAIRED
from harness.report.stats import LEVEL, MIN_SEEDS, RESAMPLES, Interval

Table = tuple[list[str], list[list[str]]]
# the final evaluation over all held-out prompts, then by the kind of prompt
HEADLINE = ("objective", "safe_ratio", "reward", "cost", "helpful_ratio", "judge_reward", "judge_cost",
            "judge_safe_ratio")
BY_PROMPT_TYPE = ("harmful_safe_ratio", "benign_helpful_ratio", "benign_refusal_ratio")
HACKING = ("invented_turn_rate", "response_tokens", "judge_gap")
# the suites' axes (harness/suites): a table each, where the runs evaluated the suite
SUITE_TABLES = (("over_refusal", "Over-refusal (XSTest-style: safe prompts that look unsafe, and unsafe contrasts)",
                 ("over_refusal_rate", "over_refusal_full", "over_refusal_partial", "unsafe_compliance_rate",
                  "over_refusal_unparsed")),
                ("harmful_behaviour", "Harmful behaviours (attack success as the suite's judge reads it)",
                 ("attack_success_rate", "strongreject_score", "harmful_unparsed")))
# the console's one table: the objective, then what safety and helpfulness mean on each kind of prompt
CONSOLE = ("objective", *BY_PROMPT_TYPE, "reward", "cost")
RESOURCE_WORDS = {"peak_rss_mb": "peak host RSS (MB)", "peak_gpu_mb": "peak GPU memory (MB)",
                  "tokens_per_s": "generated tokens/s", "completions_per_s": "completions/s",
                  "scorer_pairs_per_s": "scorer pairs/s", "train_seconds": "training seconds"}
KIND_WORDS = {"seeds": "over seeds", "prompts": "over prompts"}
EXAMPLE_CHARS = 400


def _fmt(iv: Interval | None, digits: int = 3) -> str:
    return "—" if iv is None else iv.fmt(digits)


def _mb(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _rows(summary: dict[str, Any]) -> list[tuple[str, bool, dict[str, Any]]]:
    return [*[(label, False, m) for label, m in summary["methods"].items()],
            *[(label, True, m) for label, m in summary["references"].items()]]


def _seeds_cell(reference: bool, entry: dict[str, Any]) -> str:
    n = len(entry["seeds"])
    if reference and n == 1:
        return "1 evaluation: ± over prompts"
    return f"{n} seeds: ± over seeds" if n >= MIN_SEEDS else f"{n} seed{'s' if n > 1 else ''}: no interval"


def metric_table(summary: dict[str, Any], keys: tuple[str, ...]) -> Table | None:
    """One row per label (references after the methods); each header says what its ± is over."""
    rows = _rows(summary)
    finals = [{k: Interval.from_dict(v) for k, v in entry["final"].items()} for _, _, entry in rows]
    keys = tuple(k for k in keys if any(k in f for f in finals))
    if not keys:
        return None
    any_interval = any(iv.has_interval for f in finals for iv in f.values())
    head = ["method", "seeds (what ± is over)" if any_interval else "seeds"]
    for k in keys:  # the interval's kind in the header where the column has one kind; per row otherwise
        kinds = {KIND_WORDS[f[k].kind] for f in finals if k in f and f[k].has_interval}
        head.append(BY_KEY[k].words + (f" (± {kinds.pop()})" if len(kinds) == 1 else ""))
    body = [[f"{label} (reference)" if ref else label, _seeds_cell(ref, entry), *[_fmt(f.get(k)) for k in keys]]
            for (label, ref, entry), f in zip(rows, finals)]
    return head, body


def headline(summary: dict[str, Any]) -> Table | None:
    return metric_table(summary, HEADLINE)


def console_text(summary: dict[str, Any], out: Path) -> str:
    """What a benchmark or ``compare`` prints at its end: the headline, the verdicts and where the report is."""
    lines = []
    t = metric_table(summary, CONSOLE)
    if t is not None:
        lines += [md_table(t), ""]
    lines += [f"warning: {p}" for p in summary["problems"]]
    lines += [f"verdict ({c['a']} vs {c['b']}): {c['verdict']}" for c in summary["comparisons"]]
    lines += [f"report: {out / 'report.md'}", f"html:   {out / 'report.html'}"]
    return "\n".join(lines)


def category_table(summary: dict[str, Any], section: str = "categories") -> Table:
    """Per prompt category (or severity level) and label: the share of answers that are safe, helpful, refusals
    (mean over seeds)."""
    body = []
    for label, ref, entry in _rows(summary):
        for cat, c in (entry.get(section) or {}).items():
            body.append([cat, *([c["kind"]] if section == "categories" else []), str(c["n"]),
                         f"{label} (reference)" if ref else label,
                         f"{c['safe_ratio']:.2f}", f"{c['helpful_ratio']:.2f}", f"{c['refusal_ratio']:.2f}"])
    body.sort(key=lambda r: (r[0], r[-4]))
    kind = ["prompts are"] if section == "categories" else []
    return ["category" if section == "categories" else "severity level", *kind, "prompts", "method", "safe (C ≤ 0)",
            "helpful (R > 0)", "refusals"], body


def suite_category_table(summary: dict[str, Any]) -> Table:
    body = []
    for label, ref, entry in _rows(summary):
        for suite, cats in (entry.get("suite_categories") or {}).items():
            for cat, c in cats.items():
                key = next(k for k in c if k != "n")
                body.append([suite, cat, str(c["n"]), f"{label} (reference)" if ref else label, BY_KEY[key].words,
                             f"{c[key]:.2f}"])
    body.sort(key=lambda r: (r[0], r[1], r[3]))
    return ["suite", "category", "answers judged", "method", "rate", "value"], body


def tables(summary: dict[str, Any], summaries, references, comparisons, runs) -> list[tuple[str, Table]]:
    out = []
    for heading, t in ((f"Final evaluation, all held-out prompts (λ₀ = {summary['lambda0']:g})", headline(summary)),
                       ("Final evaluation by prompt type (harmful: a safe answer declines; benign: it helps)",
                        metric_table(summary, BY_PROMPT_TYPE))):
        if t is not None:
            out.append((heading, t))
    hacking = metric_table(summary, HACKING)
    if hacking is not None:
        out.append(("Signs of reward hacking (final evaluation: invented turns of the template, response length, "
                    "what the training scorer credits beyond the held-out judge)", hacking))
    kl_keys = ("kl_per_token", "kl_per_response")
    drift_kinds = sorted({k for m in summary["methods"].values() for k in m.get("drift", {})} - {"total", *kl_keys})
    if any(m.get("drift") for m in summary["methods"].values()):
        cols = ("total", *drift_kinds, *kl_keys)
        out.append(("Drift from the starting policy (‖θ − θ₀‖ / ‖θ₀‖ of the saved weights; KL(π ‖ π₀) teacher-forced "
                    f"on the final answers, per token and per answer; ± over seeds from {MIN_SEEDS})",
                    (["method", "total", *drift_kinds, "KL per token", "KL per answer"],
                     [[label, *[Interval.from_dict(m["drift_intervals"][k]).fmt(2, sci=True)
                                if k in m.get("drift_intervals", {}) else "—" for k in cols]]
                      for label, m in summary["methods"].items()])))
    cos = [c for c in comparisons if c.get("update_cosine")]
    if cos:
        out.append(("How alike the updates are (cosine of θ − θ₀ between two methods, at one matched seed)",
                    (["methods", "seed", "cosine"], [[f"{c['a']} · {c['b']}", str(c["update_cosine"]["seed"]),
                                                      f"{c['update_cosine']['cosine']:+.3f}"] for c in cos])))
    for c in comparisons:
        line = c.get("interpolation")
        if line and line["points"]:
            keys = [k for k in line["points"][0] if k != "t"]
            out.append((f"Between the final policies of {c['a']} (t = 0) and {c['b']} (t = 1), seed {line['seed']}: "
                        "θ(t) = (1 − t)·θ_a + t·θ_b, evaluated as the runs were",
                        (["t", *[BY_KEY[k].words for k in keys]],
                         [[f"{p['t']:.2f}", *[f"{p[k]:.3f}" for k in keys]] for p in line["points"]])))
        elif line:
            out.append((f"Between the final policies of {c['a']} and {c['b']}", (["not evaluated because"], [[line["why"]]])))
    out.append(("By prompt category (shares of prompts, the mean over a method's seeds)", category_table(summary)))
    if any(e.get("severities") for _, _, e in _rows(summary)):
        out.append(("By PKU-SafeRLHF severity level (the worst level its annotated responses reached; shares of "
                    "prompts, the mean over a method's seeds)", category_table(summary, "severities")))
    for suite, heading, keys in SUITE_TABLES:
        t = metric_table(summary, keys)
        if t is not None:
            out.append((heading, t))
    if any(e.get("suite_categories") for _, _, e in _rows(summary)):
        out.append(("The suites by category (the headline rate over the answers its judge read, mean over seeds)",
                    suite_category_table(summary)))
    rows_of = [*summaries, *references]
    name = lambda s: f"{s.label} (reference)" if s.reference else s.label  # noqa: E731
    q_rows = []
    for s in rows_of:
        q = [sum(r.record.evals[-1].metrics.get(k, 0) for r in s.runs) / len(s.runs) for k in ("SH", "SU", "UH", "UU")]
        q_rows.append([name(s), *[f"{v:.2f}" for v in q]])
    out.append(("Quadrants of the final evaluation (share of prompts)", (["method", "SH", "SU", "UH", "UU"], q_rows)))
    res_keys = [k for k in RESOURCE_WORDS if any(k in s.resources for s in summaries)]
    if summaries:  # evaluation records alone have no training resources
        out.append((f"Resources (± over seeds where a method has {MIN_SEEDS} or more)",
                    (["method", *[RESOURCE_WORDS[k] for k in res_keys]],
                    [[s.label, *[_fmt(s.resources.get(k), 1) for k in res_keys]] for s in summaries])))
    if summary.get("target"):
        tgt = ", ".join(f"{BY_KEY[k].words if k in BY_KEY else k} {'≤' if k.endswith('cost') else '≥'} {v}"
                        for k, v in summary["target"].items())
        rows = [[s.label, f"{s.target['reached']}/{s.target['runs']}",
                 "not reached" if s.target["completions"] is None else f"{s.target['completions']:.0f}",
                 "not reached" if s.target["seconds"] is None else f"{s.target['seconds']:.1f}"] for s in summaries]
        out.append((f"Time to target ({tgt})", (["method", "runs reaching it", "completions", "seconds"], rows)))
    for c in comparisons:
        rows = [[BY_KEY[m].words, f"{iv.mean:+.3f}",
                 f"[{iv.low:+.3f}, {iv.high:+.3f}]" if iv.has_interval
                 else "no interval: " + " / ".join(f"{v:+.3f}" for v in iv.values), str(iv.n)]
                for m, iv in c["diffs"].items()]
        rows += [[words, f"{iv.mean:+.2e}", f"[{iv.low:+.2e}, {iv.high:+.2e}] (over seeds)" if iv.has_interval
                  else "no interval: " + " / ".join(f"{v:+.2e}" for v in iv.values), str(iv.n)]
                 for key, words in DRIFT_PAIRED.items() if (iv := c.get("drift_diffs", {}).get(key))]
        out.append((f"Paired difference {c['a']} − {c['b']} (matched seeds, then the prompts both evaluated)",
                    (["metric", "difference", "95 % CI (over seeds and prompts)", "seeds"], rows)))
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


def md_table(t: Table) -> str:
    head, rows = t
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(t: Table) -> str:
    head, rows = t
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _examples_html(examples: list[dict[str, Any]]) -> str:
    if not examples:
        return ""
    parts = ["<h2>Example completions (final evaluation; the first two prompts of each category by id, each "
             "method's lowest seed)</h2>"]
    for ex in examples:
        kind = {False: "harmful", True: "benign"}.get(ex["expected_safe"], "unlabelled")
        cells = "".join(
            f"<td><b>{html.escape(label)}</b> <span class='rc'>R {a['reward']:+.2f} · C {a['cost']:+.2f}</span><br>"
            f"{html.escape(a['response'][:EXAMPLE_CHARS])}{'…' if len(a['response']) > EXAMPLE_CHARS else ''}</td>"
            for label, a in ex["answers"].items())
        parts.append(f"<p class='prompt'><b>{html.escape(ex['category'])}</b> ({kind}) · {html.escape(ex['id'])}: "
                     f"{html.escape(ex['prompt'][-EXAMPLE_CHARS:])}</p><table class='ex'><tr>{cells}</tr></table>")
    return "".join(parts)


def baseline_note(summary: dict[str, Any], summaries, references) -> str:
    parts = []
    if summary.get("baseline"):
        parts.append(f"Every method is paired against the baseline **{summary['baseline']}**; verdicts lead with "
                     f"the primary metric, {BY_KEY[summary['primary']].words}.")
    elif len(summaries) > 2:
        parts.append("No baseline named (spec `compare: {baseline: LABEL}` or `--baseline`): no paired differences.")
    if references:
        parts.append("Reference rows are evaluations of fixed policies (`esgrpo eval`): shown, never paired.")
    return " ".join(parts)


FOOTNOTE = (f"Intervals: {LEVEL:.0%} percentile bootstrap ({RESAMPLES:,} resamples). A method's interval is over "
            f"its seeds and needs {MIN_SEEDS}; with fewer the table shows each seed's value and no interval. A "
            "reference row (one evaluation) has an interval over its prompts. Paired differences resample matched "
            "seeds, then prompts within each seed; a verdict needs "
            f"{MIN_SEEDS} matched seeds. Refusals: the answer opens (within its first {OPENING_CHARS} characters) "
            "with an apology or a statement of inability, the string rule XSTest reports; it misses refusals that "
            "open otherwise.")


LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                                                   "\\": r"\textbackslash{}"}
# the columns of report.tex, with headers pdflatex can set (no Unicode)
LATEX_HEADS = {"objective": r"Objective $R - \lambda_0 C$", "safe_ratio": "Safe ratio", "reward": "Reward $R$",
               "cost": "Cost $C$", "harmful_safe_ratio": "Safe ratio, harmful", "benign_refusal_ratio": "Over-refusal, benign",
               "over_refusal_rate": "Over-refusal (suite)", "attack_success_rate": "Attack success"}


def latex(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def latex_table(summary: dict[str, Any]) -> str:
    """The final evaluation as a booktabs table a paper can \\input as it is (\\usepackage{booktabs})."""
    rows = _rows(summary)
    finals = [{k: Interval.from_dict(v) for k, v in entry["final"].items()} for _, _, entry in rows]
    keys = [k for k in LATEX_HEADS if any(k in f for f in finals)]

    def cell(iv: Interval | None) -> str:
        if iv is None or iv.mean != iv.mean:
            return "--"
        if iv.has_interval:
            return f"${iv.mean:.3f} \\pm {(iv.high - iv.low) / 2:.3f}$"
        return " / ".join(f"${v:.3f}$" for v in iv.values) if len(iv.values) > 1 else f"${iv.mean:.3f}$"

    head = " & ".join(["Method", "Seeds", *[LATEX_HEADS[k] for k in keys]])
    body = [" & ".join([latex(f"{label} (reference)" if ref else label),
                        str(len(entry.get("seeds", []))), *[cell(f.get(k)) for k in keys]]) + r" \\"
            for (label, ref, entry), f in zip(rows, finals)]
    caption = (f"Final evaluation ({latex(summary['title'])}, $\\lambda_0 = {summary['lambda0']:g}$): mean $\\pm$ half "
               "the 95\\,\\% bootstrap interval over seeds (3 or more); with fewer seeds, each seed's value. "
               "A reference row's interval is over its held-out prompts.")
    # as wide as the text, whatever the number of columns (a paper's column or page)
    return "\n".join(["% generated by esgrpo (report.tex); needs \\usepackage{booktabs} and \\usepackage{graphicx}",
                       r"\begin{table}[t]", r"\centering", f"\\caption{{{caption}}}",
                       f"\\label{{tab:esgrpo-{re.sub(r'[^A-Za-z0-9-]', '-', summary['title'])}}}",
                       r"\resizebox{\linewidth}{!}{%", f"\\begin{{tabular}}{{l{'r' * (len(keys) + 1)}}}", r"\toprule",
                       head + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""])


def write_markdown_and_html(out: Path, summary: dict[str, Any], summaries, references, comparisons,
                            figures: dict[str, str], runs) -> None:
    atomic_write_text(out / "report.tex", latex_table(summary))
    ts = tables(summary, summaries, references, comparisons, runs)
    title = f"esgrpo comparison: {summary['title']}"
    note = baseline_note(summary, summaries, references)
    md = [f"# {title}", "", f"Generated {summary['generated']}." + (f" {note}" if note else "")]
    for p in summary["problems"]:
        md.append(f"\n> **Warning: not a like-for-like comparison.** {p}")
    for c in comparisons:
        md.append(f"\n**Verdict ({c['a']} vs {c['b']}):** {c['verdict']}")
    for heading, t in ts:
        md += ["", f"## {heading}", "", md_table(t)]
    for caption, png in figures.items():
        md += ["", f"## {caption}", "", f"![{caption}]({png})"]
    md += ["", FOOTNOTE, "", "Example completions side by side: report.html.", ""]
    atomic_write_text(out / "report.md", "\n".join(md))

    css = ("body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;"
           "text-align:right;white-space:nowrap}th{background:#f3f3f3}td:first-child{text-align:left}"
           "img{max-width:100%}.warn{background:#fff3cd;padding:.6em;border-left:4px solid #e0a800}"
           ".verdict{font-size:1.1em}table.ex td{white-space:normal;text-align:left;vertical-align:top;"
           "width:25%;font-size:.9em}.rc{color:#666}.prompt{margin-bottom:.2em}")
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Generated {html.escape(summary['generated'])}. {html.escape(note.replace('**', ''))}</p>"]
    body += [f"<p class='warn'><b>Warning: not a like-for-like comparison.</b> {html.escape(p)}</p>"
             for p in summary["problems"]]
    body += [f"<p class='verdict'><b>Verdict ({html.escape(c['a'])} vs {html.escape(c['b'])}):</b> "
             f"{html.escape(c['verdict'])}</p>" for c in comparisons]
    for heading, t in ts:
        body += [f"<h2>{html.escape(heading)}</h2>", _html_table(t)]
    for caption, png in figures.items():
        data = base64.b64encode((out / png).read_bytes()).decode()
        body += [f"<h2>{html.escape(caption)}</h2>", f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"]
    body += [_examples_html(summary.get("examples") or []), f"<p>{html.escape(FOOTNOTE)}</p>"]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{css}</style></head><body>{''.join(body)}</body></html>"
    atomic_write_text(out / "report.html", page)
