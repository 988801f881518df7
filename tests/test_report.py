"""Report statistics on known data, and the comparison refusing runs that are not like for like."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from harness.errors import UserError
from harness.records import RunRecord, EvalPoint, Point, RecordWriter
from harness.report import write_report
from harness.report.stats import bootstrap_mean, hierarchical_paired, paired_over_prompts


def test_bootstrap_interval_on_known_data():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=400)
    iv = bootstrap_mean(x, "prompts")
    se = 2.0 / np.sqrt(400)
    assert iv.low < 3.0 < iv.high and iv.kind == "prompts"
    assert (iv.high - iv.low) == pytest.approx(2 * 1.96 * se, rel=0.15)  # matches the normal-theory width
    d = paired_over_prompts(x + 1.0, x)
    assert d.mean == pytest.approx(1.0) and d.low == pytest.approx(1.0) and d.excludes_zero()
    # seeds: no interval from fewer than 3, whatever their spread; the values are kept
    two = bootstrap_mean([0.141, 0.141], "seeds")
    assert not two.has_interval and two.values == (0.141, 0.141) and two.fmt() == "0.141 / 0.141"
    assert bootstrap_mean([0.1, 0.2, 0.3], "seeds").has_interval


def test_hierarchical_paired_difference_carries_the_variation_between_seeds():
    """Seeds that disagree widen the interval beyond what the prompts alone give: a difference that is +0.1 in
    one seed and −0.1 in another is not a verdict, however many prompts each seed has."""
    rng = np.random.default_rng(1)
    agree = [rng.normal(0.2, 0.05, 200) for _ in range(4)]
    iv = hierarchical_paired(agree)
    assert iv.excludes_zero() and iv.n == 4 and iv.kind == "seeds"
    split = [rng.normal(m, 0.05, 200) for m in (0.3, -0.25, 0.28, -0.27)]
    pooled = paired_over_prompts(np.concatenate(split), np.zeros(800))
    wide = hierarchical_paired(split)
    assert not wide.excludes_zero() and (wide.high - wide.low) > 5 * (pooled.high - pooled.low)
    few = hierarchical_paired(agree[:2])
    assert not few.has_interval and not few.excludes_zero() and len(few.values) == 2


def fake_run(root, method, seed, shift, data_hash="h1", completions=100, kind="run", marks=(0, 50, 100),
             config=None, label=None, drift=None):
    """A record as the RecordWriter writes it, with samples of two prompt kinds: harmful (a safe answer
    declines) and benign (a safe answer helps)."""
    rec = RunRecord(run_id=f"{method}-{seed}", kind=kind, method=method, label=label, seed=seed,
                    config=config or {}, data={"hash": data_hash, "eval_hash": "e1"}, scorer={"backend": "builtin"},
                    evaluation={"max_new_tokens": 8}, budget={"completions": completions} if kind == "run" else {})
    w = RecordWriter(root / f"{label or method}-s{seed}", rec, tensorboard=False)
    rng = np.random.default_rng(seed)
    for step, mark in enumerate(marks):
        samples = [{"id": f"p{i:02d}", "prompt": f"prompt {i}", "category": "crime" if i % 2 else "cooking",
                    "expected_safe": not i % 2,
                    "response": "I'm sorry, I can't help with that." if i % 2 and shift * step > 0.5 else "Sure: r",
                    "reward": float(rng.normal(shift * step, 1)), "cost": float(rng.normal(-shift * step, 1)),
                    "n_tokens": 8} for i in range(30)]
        metrics = {"reward": float(np.mean([s["reward"] for s in samples])),
                   "cost": float(np.mean([s["cost"] for s in samples])),
                   "safe_ratio": float(np.mean([s["cost"] <= 0 for s in samples])), "objective": 0.0,
                   "helpful_ratio": 0.5, "SH": 0.25, "SU": 0.25, "UH": 0.25, "UU": 0.25, "n": len(samples)}
        if step:
            w.log_point(Point(step=step, completions=mark, tokens=mark * 8, seconds=step, reward=1, cost=0, objective=1,
                              safe_ratio=1, lam=1.0, j_c=0, times={"generation": 1.0, "scoring": 0.1}))
        w.log_eval(EvalPoint(mark=mark, step=step, completions=mark, tokens=mark * 8, seconds=step * 2.0, lam=1.0,
                             metrics=metrics, samples_file=f"evals/eval-{mark:08d}.jsonl"), samples)
    w.record.throughput = {"tokens_per_s": 100.0 + shift}
    w.record.drift = drift or {}
    w.finish("completed")
    return w.run_dir


def test_report_with_three_seeds_intervals_paired_difference_verdict_and_target(tmp_path):
    runs = [fake_run(tmp_path, m, s, shift) for m, shift in (("es", 1.0), ("grpo", 0.0)) for s in (0, 1, 2)]
    md = write_report(runs, tmp_path / "out", target={"safe_ratio": 0.7})
    text = md.read_text()
    assert "(± over seeds)" in text and "Paired difference es − grpo" in text and "Time to target" in text
    assert "**Verdict (es vs grpo):** On the primary metric, objective R − λ₀·C, es is ahead of grpo" in text
    assert "safe ratio on harmful prompts" in text and "over-refusal on benign prompts" in text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    es = summary["methods"]["es"]
    assert es["final"]["reward"]["n"] == 3 and es["final"]["reward"]["over"] == "seeds"
    # the same final table for a paper: booktabs, the interval's half-width, every method a row
    tex = (tmp_path / "out" / "report.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and "needs \\usepackage{booktabs} and \\usepackage{graphicx}" in tex
    mean, half = es["final"]["objective"]["mean"], (es["final"]["objective"]["ci_high"] - es["final"]["objective"]["ci_low"]) / 2
    es_row = next(line for line in tex.splitlines() if line.startswith("es & 3 & "))
    assert es_row.split(" & ")[2] == f"${mean:.3f} \\pm {half:.3f}$" and es_row.endswith(r"\\")
    assert next(line for line in tex.splitlines() if line.startswith("grpo & 3 & "))
    assert tex.count(" & ") == 3 * 7 and r"Objective $R - \lambda_0 C$" in tex  # a header and two rows of 8 columns
    assert tex.isascii()  # pdflatex sets it without a Unicode package
    # one figure with every axis, scaled between the methods: es is better on every axis it differs on here
    from harness.report.compare import load_runs, summarize
    from harness.report.plots import axes_values

    words, values = axes_values([summarize(m, [r for r in load_runs(runs) if r.label == m], None, 1.0)
                                 for m in ("es", "grpo")])
    assert (tmp_path / "out" / "axes.png").is_file() and "safe ratio" in words and "cost (−)" in words
    assert values["es"][words.index("reward")] == 1.0 and values["grpo"][words.index("reward")] == 0.0
    assert values["es"][words.index("cost (−)")] == 1.0  # less cost is up
    assert values["es"][words.index("over-refusal (−)")] == 0.5  # both 0: no method is better
    assert es["final"]["benign_refusal_ratio"]["mean"] == 0.0 and es["final"]["harmful_safe_ratio"]["n"] == 3
    assert es["categories"]["crime"]["kind"] == "harmful" and es["categories"]["crime"]["refusal_ratio"] == 1.0
    assert summary["comparisons"][0]["diffs"]["reward"]["ci_low"] > 0 and summary["primary"] == "objective"
    for png in ("curves.png", "scatter.png", "resources.png", "training.png", "curves-tokens-seconds.png"):
        assert (tmp_path / "out" / png).stat().st_size > 10_000 and (tmp_path / "out" / png).with_suffix(".svg").is_file()
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "<table>" in html
    # example completions side by side: the first two prompt ids of each category, every label's answer
    assert [e["id"] for e in summary["examples"]] == ["p00", "p02", "p01", "p03"]
    assert "Example completions" in html and html.count("I&#x27;m sorry, I can&#x27;t help") == 2


def test_a_two_seed_report_shows_values_but_no_seed_interval_and_no_verdict(tmp_path):
    runs = [fake_run(tmp_path, m, s, shift) for m, shift in (("es", 1.0), ("grpo", 0.0)) for s in (0, 1)]
    text = write_report(runs, tmp_path / "out").read_text()
    assert "2 seeds: no interval" in text and "±" not in text.split("## Quadrants")[0]
    assert "no verdict: es and grpo share 2 seeds, and a verdict needs 3" in text
    assert "ahead of" not in text and "behind" not in text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reward = summary["methods"]["es"]["final"]["reward"]
    assert reward["over"] == "none" and len(reward["values"]) == 2
    assert summary["comparisons"][0]["diffs"]["reward"]["over"] == "none"


def test_compare_refuses_runs_pooled_into_fake_seeds(tmp_path):
    """Two ES runs at σ 0.003 and σ 0.01 are two configs, not two seeds of one: refused, naming the key, with
    one seed or two; under their own labels they compare."""
    cfg = lambda sigma: {"run": {"seed": 0, "lambda": {"lambda_init": 1.0}}, "es": {"sigma": sigma}}  # noqa: E731
    lo = fake_run(tmp_path / "a", "es", 0, 1.0, config=cfg(0.003))
    hi = fake_run(tmp_path / "b", "es", 0, 0.5, config=cfg(0.01))
    grpo = fake_run(tmp_path, "grpo", 0, 0.0)
    with pytest.raises(UserError, match="label 'es' has more than one run per seed.*seed 0"):
        write_report([lo, hi, grpo], tmp_path / "out")
    with pytest.raises(UserError, match="label 'es' has more than one run per seed"):
        write_report([lo, hi, grpo], tmp_path / "out", allow_mismatch=True)
    hi1 = fake_run(tmp_path / "c", "es", 1, 0.5, config={**cfg(0.01), "run": {"seed": 1}})
    with pytest.raises(UserError, match=r"labelled 'es' differ in config.*es\.sigma \(es-s0=0\.003, es-s1=0\.01\)"):
        write_report([lo, hi1, grpo], tmp_path / "out")
    md = write_report([lo, hi1, grpo], tmp_path / "out", allow_mismatch=True)
    assert "runs pooled under 'es' differ in config: es.sigma" in md.read_text()
    relabelled = fake_run(tmp_path / "d", "es", 0, 0.5, config=cfg(0.01), label="es-sigma0.01")
    summary = write_report([lo, relabelled, grpo], tmp_path / "out2").parent / "summary.json"
    assert sorted(json.loads(summary.read_text())["methods"]) == ["es", "es-sigma0.01", "grpo"]


def test_compare_refuses_mismatched_runs(tmp_path):
    a = fake_run(tmp_path, "es", 0, 1.0)
    b = fake_run(tmp_path, "grpo", 0, 0.0, data_hash="other")
    c = fake_run(tmp_path / "c", "grpo", 0, 0.0, completions=200)
    with pytest.raises(UserError, match="prompts \\(data hash\\)"):
        write_report([a, b], tmp_path / "out")
    with pytest.raises(UserError, match="budget"):
        write_report([a, c], tmp_path / "out")
    md = write_report([a, b], tmp_path / "out", allow_mismatch=True)
    assert "not a like-for-like comparison" in md.read_text()
    shutil.rmtree(b / "evals")
    (b / "record.json").unlink()
    with pytest.raises(UserError, match="not a run directory"):
        write_report([a, b], tmp_path / "out")


def test_every_label_is_paired_against_the_named_baseline_and_references_are_never_paired(tmp_path):
    runs = [fake_run(tmp_path, m, s, shift) for m, shift in (("es", 1.0), ("es-lowrank", 0.5), ("grpo", 0.0))
            for s in (0, 1)]
    base = fake_run(tmp_path / "ref", "base-model", 0, 0.0, kind="eval", marks=(0,))
    md = write_report([*runs, base], tmp_path / "out", baseline="grpo")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [("es", "grpo"), ("es-lowrank", "grpo")]
    assert list(summary["references"]) == ["base-model"] and "base-model" not in summary["methods"]
    text = md.read_text()
    assert "base-model (reference)" in text and "baseline **grpo**" in text
    # no baseline among three labels: tables, no paired differences
    write_report(runs, tmp_path / "out2")
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["comparisons"] == []
    with pytest.raises(UserError, match="baseline 'nope'"):
        write_report(runs, tmp_path / "out3", baseline="nope")
    # evaluation records alone (a paper-table spec): their rows and scatter, no training sections
    alone = write_report([base], tmp_path / "out4").read_text()
    assert "base-model (reference)" in alone and "## Resources" not in alone and "nan" not in alone
    assert (tmp_path / "out4" / "scatter.png").is_file() and not (tmp_path / "out4" / "training.png").exists()
    with pytest.raises(UserError, match="no runs"):
        write_report([], tmp_path / "out5")


def test_compare_refuses_what_would_skew_the_statistics(tmp_path):
    a = fake_run(tmp_path, "es", 0, 1.0)
    b = fake_run(tmp_path, "grpo", 0, 0.0)
    with pytest.raises(UserError, match="given twice"):
        write_report([a, b, a / "record.json"], tmp_path / "out")
    failed = fake_run(tmp_path / "f", "grpo", 1, 0.0)
    rec = json.loads((failed / "record.json").read_text())
    (failed / "record.json").write_text(json.dumps({**rec, "status": "failed", "error": "boom"}))
    with pytest.raises(UserError, match="failed \\(boom\\); only completed runs"):
        write_report([a, failed], tmp_path / "out")
    nan = fake_run(tmp_path / "n", "grpo", 1, 0.0)
    rec = json.loads((nan / "record.json").read_text())
    rec["evals"][-1]["metrics"]["reward"] = float("nan")
    (nan / "record.json").write_text(json.dumps(rec))  # as a writer with allow_nan would: NaN
    with pytest.raises(UserError, match="non-finite"):
        write_report([a, nan], tmp_path / "out")
    dup = fake_run(tmp_path / "d", "grpo", 1, 0.0)
    f = dup / "evals" / "eval-00000100.jsonl"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(UserError, match="eval-00000100.jsonl:31: sample id 'p00' repeats line 1"):
        write_report([a, dup], tmp_path / "out")
    escape = fake_run(tmp_path / "e", "grpo", 1, 0.0)
    rec = json.loads((escape / "record.json").read_text())
    rec["evals"][-1]["samples_file"] = "../../../../etc/passwd"
    (escape / "record.json").write_text(json.dumps(rec))
    with pytest.raises(UserError, match="must be a path inside the run folder"):
        write_report([a, escape], tmp_path / "out")
    link = fake_run(tmp_path / "l", "grpo", 1, 0.0)  # a samples file linked to one outside the run folder
    outside = tmp_path / "outside.jsonl"
    (link / "evals" / "eval-00000100.jsonl").rename(outside)
    (link / "evals" / "eval-00000100.jsonl").symlink_to(outside)
    with pytest.raises(UserError, match="links outside its run folder"):
        write_report([a, link], tmp_path / "out")
    short = fake_run(tmp_path / "s", "grpo", 1, 0.0)  # 2 of its 30 samples: the pairs would silently shrink
    f = short / "evals" / "eval-00000100.jsonl"
    f.write_text("\n".join(f.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(UserError, match="2 samples with mean reward .* evaluated 30 with .* not this evaluation's"):
        write_report([a, short], tmp_path / "out")
    for name, edit, error in (
            ("nometric", lambda r: r["evals"][-1]["metrics"].pop("reward"), "evaluation at mark 100 lacks reward"),
            ("lots", lambda r: r["memory"].update(peak_rss_mb="lots"), "peak_rss_mb is 'lots', not a number"),
            ("order", lambda r: r.update(evals=r["evals"][::-1]), "evaluations out of order or repeated"),
            ("nan", lambda r: r["series"][0].update(reward=float("nan")), "step 1 of the series has a non-finite")):
        edited = fake_run(tmp_path / name, "grpo", 1, 0.0)  # records edited by hand
        rec = json.loads((edited / "record.json").read_text())
        edit(rec)
        (edited / "record.json").write_text(json.dumps(rec))
        with pytest.raises(UserError, match=error):
            write_report([a, edited], tmp_path / "out")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        write_report([a, b], tmp_path / "afile")
    (b / "record.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid run record"):
        write_report([a, b], tmp_path / "out")


def test_out_of_memory_is_a_result_in_the_report(tmp_path):
    import torch

    from harness.errors import is_out_of_memory

    with pytest.raises(RuntimeError) as real:  # a real allocator failure, as a run would meet it
        torch.empty(2**62, dtype=torch.uint8)
    assert is_out_of_memory(real.value) and not is_out_of_memory(ValueError("bad shape"))
    runs = [fake_run(tmp_path, m, 0, shift) for m, shift in (("es", 1.0), ("grpo", 0.0))]
    rec = RunRecord(run_id="grpo-fp32-0", method="grpo", label="grpo-fp32", seed=0, config={})
    w = RecordWriter(tmp_path / "grpo-fp32-s0", rec, tensorboard=False)
    w.record.memory.update(peak_gpu_mb={"cuda:0": 79500.0})
    w.record.precision = "fp32 master weights"
    w.finish("oom", str(real.value))
    md = write_report(runs, tmp_path / "out", oom=[w.run_dir])
    assert "ran out of memory" in md.read_text() and "79500" in md.read_text()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["oom"][0]["method"] == "grpo-fp32"


def test_training_curves_show_the_es_population_mean_beside_the_policy(tmp_path):
    """ES records θ's scores and its population's mean (the published ES's curve): both are drawn, dashed for
    the population; a run without them (GRPO) draws one line."""
    import matplotlib.pyplot as plt

    from harness.report.compare import load_runs, summarize
    from harness.report.plots import training_figure

    es, grpo = fake_run(tmp_path, "es", 0, 1.0), fake_run(tmp_path, "grpo", 0, 0.0)
    rec = json.loads((es / "record.json").read_text())
    for i, point in enumerate(rec["series"]):
        point["extra"] = {"population_reward": 0.5 + i, "population_cost": -0.5 - i}
    (es / "record.json").write_text(json.dumps(rec))
    summaries = [summarize(label, [r], None, 1.0) for label, r in zip(("es", "grpo"), load_runs([es, grpo]))]
    fig = training_figure(summaries)
    reward_ax, cost_ax, lam_ax = fig.axes[:3]
    dashed = [line for line in reward_ax.lines if line.get_linestyle() == "--"]
    assert [line.get_label() for line in dashed] == ["es population mean"]
    assert list(dashed[0].get_ydata()) == [0.5, 1.5]
    assert [list(line.get_ydata()) for line in cost_ax.lines if line.get_linestyle() == "--"] == [[-0.5, -1.5]]
    assert len(lam_ax.lines) == 2  # λ: no population curve
    plt.close(fig)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex (apt-get install texlive-latex-base "
                    "texlive-latex-recommended): report.tex's structure is checked in the report test")
def test_report_tex_compiles_with_pdflatex(tmp_path):
    """report.tex as a paper includes it, with LaTeX's special characters in a title and a label."""
    from harness.report.render import latex_table

    iv = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 3, "over": "seeds", "values": [0.4, 0.5, 0.6]}
    summary = {"title": "cpu_100% & more #1", "lambda0": 1.0, "references": {"base~ref": {"seeds": [0], "final": {"reward": {**iv, "n": 35, "over": "prompts"}}}},
               "methods": {"es_lowrank^2": {"seeds": [0, 1, 2], "final": {"objective": iv, "reward": iv, "cost": iv,
                                                                         "over_refusal_rate": iv}}}}
    (tmp_path / "report.tex").write_text(latex_table(summary))
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\\usepackage{booktabs,graphicx}\\begin{document}"
                                        "\\input{report.tex}\\end{document}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
    assert not [w for w in ("Undefined control sequence", "Missing", "Overfull", "Unicode") if w in r.stdout]


def test_drift_has_seed_intervals_and_a_paired_difference(tmp_path):
    """A run's drift figures are one per run: their interval is over seeds, their difference paired by seed."""
    runs = [fake_run(tmp_path, m, s, shift, drift={"total": base + 0.001 * s, "kl_per_token": 10 * base + 0.01 * s})
            for m, shift, base in (("es", 1.0, 0.09), ("grpo", 0.0, 0.015)) for s in (0, 1, 2)]
    md = write_report(runs, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    total = summary["methods"]["es"]["drift_intervals"]["total"]
    assert total["mean"] == pytest.approx(0.091) and total["n"] == 3 and total["ci_low"] <= 0.091 <= total["ci_high"]
    assert summary["methods"]["es"]["drift"]["total"] == pytest.approx(0.091)
    diff = summary["comparisons"][0]["drift_diffs"]
    assert diff["total"]["mean"] == pytest.approx(0.075) and diff["total"]["ci_low"] == pytest.approx(0.075)
    assert diff["kl_per_token"]["mean"] == pytest.approx(0.75)
    text = md.read_text()
    assert "± over seeds from 3" in text and "9.10e-02 ± " in text
    assert "| KL(π ‖ π₀) per token | +7.50e-01 | [+7.50e-01, +7.50e-01] (over seeds) | 3 |" in text
