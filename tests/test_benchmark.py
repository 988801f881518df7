"""The benchmark spec end to end: both methods, two seeds, equal budgets, one report."""

import json
import os
from pathlib import Path

import pytest
import yaml

from harness.config import load_config
from harness.errors import UserError
from harness.launch.benchmark import run_benchmark
from harness.registry import get_method
from harness.records import load_record

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_small_benchmark_runs_everything_and_compares(policy_path, tmp_path, capfd, caplog):
    import logging
    import shutil

    caplog.set_level(logging.INFO, logger="harness.launch.benchmark")
    spec = yaml.safe_load((ROOT / "benchmarks" / "cpu-default.yaml").read_text())
    spec["run"]["budget"] = {"completions": 220, "eval_every_fraction": 0.5}
    spec["run"].setdefault("eval", {})["limit"] = 12
    # es and grpo of the spec (es-lowrank's pipeline runs in test_gpu_bench.py and test_es_run.py)
    spec["methods"] = {m: {**e, "config": str(ROOT / e["config"].removeprefix("../"))} for m, e in spec["methods"].items()
                       if m != "es-lowrank"}
    spec["methods"]["es"]["set"] = ["population=4", "prompts_per_iteration=8"]
    spec["seeds"] = [0]  # one seed each (test_report.py covers 2 and 3 seeds): no interval and no verdict
    spec.pop("evaluate")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    report = run_benchmark(path, out=tmp_path / "report", runs_dir=tmp_path / "runs")
    runs = sorted((tmp_path / "runs").glob("*-s*"))
    assert [r.name for r in runs] == ["es-s0", "grpo-s0"]
    for r in runs:
        rec = load_record(r)
        assert rec.status == "completed" and rec.spec["name"] == "cpu" and rec.label == r.name.split("-s")[0]
        assert [e.mark for e in rec.evals] == [0, 110, 220]  # the same budget marks for every method
        assert rec.series[-1].completions >= 220
        # the run's resolved config is in its folder: `esgrpo run METHOD --config it` is this very run
        method = get_method(rec.method)
        again = load_config(method.config_model, r / "config.yaml").model_dump(mode="json", by_alias=True)
        assert again == {k: v for k, v in rec.config.items() if k != "policy_path"}
    text = report.read_text()
    assert "es − grpo" in text and "no verdict: es and grpo share 1 seed," in text and "Time to target" in text
    # reward hacking and drift: every method's indicators, its distance from the start, how alike the updates are
    assert "Signs of reward hacking" in text and "responses inventing dialogue turns" in text
    assert "Drift from the starting policy" in text and "| es · grpo | 0 |" in text
    # the spec's suites: over-refusal and harmful behaviours, with their judges, by category
    assert "Over-refusal (XSTest-style" in text and "Harmful behaviours (attack success" in text
    assert "The suites by category" in text and "attack success on harmful behaviours" in text
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert all(summary["methods"][m]["drift"]["total"] > 0 for m in ("es", "grpo"))
    assert all(summary["methods"][m]["drift"]["kl_per_token"] > 0 for m in ("es", "grpo"))
    assert {"over_refusal_rate", "attack_success_rate"} <= set(summary["methods"]["es"]["final"])
    # the line between es's and grpo's final policies: its ends are the two runs' own final evaluations
    line = summary["comparisons"][0]["interpolation"]
    assert [p["t"] for p in line["points"]] == [0, 0.25, 0.5, 0.75, 1] and line["seed"] == 0
    for p, run in ((line["points"][0], "es-s0"), (line["points"][-1], "grpo-s0")):
        assert p["reward"] == pytest.approx(load_record(tmp_path / "runs" / run).evals[-1].metrics["reward"])
    assert (tmp_path / "report" / "interpolation.png").is_file() and (tmp_path / "report" / "safety-curves.png").is_file()
    # drift at every mark (the spec's eval.drift_every_mark): 0 at the start, the saved policy's own at the end
    for run in ("es-s0", "grpo-s0"):
        rec = load_record(tmp_path / "runs" / run)
        assert rec.evals[0].metrics["drift_total"] == 0 and rec.evals[1].metrics["drift_total"] > 0
        for key, final in (("drift_total", rec.drift["total"]), ("kl_per_token", rec.drift["kl_per_token"])):
            assert rec.evals[-1].metrics[key] == pytest.approx(final, rel=1e-5, abs=1e-8)
        assert not (tmp_path / "runs" / run / "drift-at-mark").exists()
    assert -1 <= summary["comparisons"][0]["update_cosine"]["cosine"] <= 1
    assert set(summary["methods"]) == {"es", "grpo"} and not summary["problems"]
    assert [c["a"] + "/" + c["b"] for c in summary["comparisons"]] == ["es/grpo"]  # the spec's baseline: grpo
    child_output = capfd.readouterr()
    # one line per run (the parent's), and no "report comes with --report-only" from the children
    assert caplog.text.count("running es seed 0") == 1 and "running es seed 0" not in child_output.err
    assert "--report-only" not in child_output.out
    # the runs' evaluations go to their run.log; the console has the benchmark's one line per finished run
    assert "eval at" not in child_output.err and "es-s0 done" in caplog.text
    assert "es-s0 harness.method: eval at 240 completions (budget mark 220)" in (tmp_path / "runs" / "es-s0" / "run.log").read_text()
    # a stray copy of a run folder is not a third seed
    shutil.copytree(tmp_path / "runs" / "es-s0", tmp_path / "runs" / "es-s0.backup")
    run_benchmark(path, out=tmp_path / "report2", runs_dir=tmp_path / "runs", report_only=True)
    summary2 = json.loads((tmp_path / "report2" / "summary.json").read_text())
    assert len(summary2["runs"]) == 2 and summary2["methods"]["es"]["final"]["reward"]["n"] == 1
    # a second call keeps completed runs and only rewrites the report
    before = [load_record(r).finished for r in runs]
    run_benchmark(path, out=tmp_path / "report", runs_dir=tmp_path / "runs")
    assert [load_record(r).finished for r in runs] == before
    # the spec edited since: the runs made with the old settings are not kept as its results
    spec["methods"]["es"]["set"] = ["population=5", "prompts_per_iteration=8"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=r"(?s)--rerun-changed.*es-s0: population: 4 in the run, 5 in the spec") as e:
        run_benchmark(path, out=tmp_path / "report", runs_dir=tmp_path / "runs")
    assert "grpo-s0" not in str(e.value)
    # so is a run whose prompt set differs (its record says another hash)
    record = json.loads((runs[1] / "record.json").read_text())
    record["data"]["hash"] = "0" * 64
    (runs[1] / "record.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="grpo-s0: the prompt set: hash 000000000000 in the run"):
        run_benchmark(path, out=tmp_path / "report", runs_dir=tmp_path / "runs", only=["grpo"])
    # --rerun-changed moves the old run aside (nothing is lost) and makes it again: here with a policy that is
    # not there, so the new run stops at once
    with pytest.raises(UserError, match="every run failed"):
        run_benchmark(path, out=tmp_path / "report", runs_dir=tmp_path / "runs", only=["es"], rerun_changed=True,
                      run_overrides=["policy=" + str(tmp_path / "no-policy")])
    [aside] = (tmp_path / "runs" / "replaced").iterdir()
    assert aside.name.startswith("es-s0-") and load_record(aside).finished == before[0]


@pytest.mark.slow
def test_reference_rows_from_esgrpo_eval(policy_path, tmp_path):
    """The base policy and a trained run's checkpoint, evaluated with `esgrpo eval --from-spec`, appear beside the
    trained runs as references: in the tables and the scatter, never paired."""
    import subprocess
    import sys

    from harness.launch.benchmark import load_spec, method_config
    from harness.budget import BudgetConfig
    from harness.run import run_method

    spec = ROOT / "benchmarks" / "cpu-default.yaml"
    loaded, _ = load_spec(spec)
    runs = []
    for method in ("es", "grpo"):  # tiny runs of the spec's own settings
        cfg = method_config(loaded, spec, method, 0)
        cfg.run.budget = BudgetConfig(completions=40, eval_every_fraction=1.0)
        runs.append(run_method(method, cfg, tmp_path / f"{method}-s0", label=method))
    refs = []
    for label, policy in (("base", "builtin"), ("es-checkpoint", str(runs[0] / "model_saves" / "latest_hf"))):
        out = tmp_path / label
        r = subprocess.run([sys.executable, "-m", "harness.launch.cli", "eval", "--from-spec", str(spec), "--policy", policy,
                            "--label", label, "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        refs.append(out)
    from harness.report import write_report

    md = write_report([*runs, *refs], tmp_path / "report", baseline="grpo")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert set(summary["references"]) == {"base", "es-checkpoint"} and not summary["problems"]
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [("es", "grpo")]
    assert "base (reference)" in md.read_text() and "es-checkpoint (reference)" in md.read_text()
    # a spec's `references:` list does the same for `esgrpo benchmark`
    raw = yaml.safe_load(spec.read_text())
    raw["methods"] = {m: {**e, "config": str(ROOT / e["config"].removeprefix("../"))} for m, e in raw["methods"].items()}
    raw["references"] = [str(r) for r in refs]
    spec2 = tmp_path / "spec.yaml"
    spec2.write_text(yaml.safe_dump(raw))
    run_benchmark(spec2, out=tmp_path / "report2", runs_dir=tmp_path, report_only=True)
    assert set(json.loads((tmp_path / "report2" / "summary.json").read_text())["references"]) == {"base", "es-checkpoint"}
    # the base model's row is the trained runs' own step-0 evaluation, reproduced
    base = load_record(refs[0]).evals[0].metrics
    assert base["reward"] == pytest.approx(load_record(runs[0]).evals[0].metrics["reward"])


def test_an_evaluation_only_spec_reports_reference_rows_and_names_missing_policies(policy_path, tmp_path, caplog):
    """A spec of `evaluate:` entries alone (the published table's kind): each policy there is evaluated by
    `esgrpo eval` in its own process on the spec's prompts and scorer, a policy that is not there is named and
    left out, and the report holds the rows; run again, finished evaluations are kept."""
    spec = {"name": "table", "run": {"data": {"kind": "builtin", "eval": {
                "kind": "pku", "path": str(ROOT / "tests/fixtures/pku_small.jsonl"), "duplicates": "keep"}},
            # relative to the spec's folder, as the shipped specs name theirs
            "scorer": {"kind": "embedded", "config": os.path.relpath(ROOT / "configs/scorer/builtin.yaml", tmp_path)},
            "judge": None, "rollout": {"max_new_tokens": 8}},
            "evaluate": {"base": {"policy": "builtin", "engine": "hf"},
                         "gone": {"policy": str(tmp_path / "nope"), "engine": "hf"}}}
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(spec))
    md = run_benchmark(path, out=tmp_path / "report", runs_dir=tmp_path / "runs")
    assert "evaluate.gone.policy" in caplog.text and "is not a model folder" in caplog.text
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert list(summary["references"]) == ["base"] and summary["methods"] == {}
    rec = load_record(tmp_path / "runs" / "base")
    assert rec.kind == "eval" and rec.label == "base" and rec.evals[0].metrics["n"] == 8  # every row, repeats kept
    assert "base (reference)" in md.read_text()
    finished = rec.finished
    run_benchmark(path, out=tmp_path / "report", runs_dir=tmp_path / "runs")
    assert load_record(tmp_path / "runs" / "base").finished == finished
