"""Sweeps and the safety–helpfulness frontier: points from a spec, the Pareto set, the area between two step
frontiers checked by hand, and a swept benchmark end to end."""

from pathlib import Path

import pytest
import yaml

from harness.errors import UserError
from harness.report.frontier import frontier_difference, pareto
from harness.sweep import points, spec_points

ROOT = Path(__file__).parents[1]


def test_a_grid_and_a_list_of_points_make_labelled_points():
    grid = points("es", {"run.lambda.lambda_init": [0.5, 2.0], "sigma": [5e-4, 1e-3]})
    assert [p.label for p in grid] == ["es.lambda_init0.5_sigma0.0005", "es.lambda_init0.5_sigma0.001",
                                       "es.lambda_init2_sigma0.0005", "es.lambda_init2_sigma0.001"]
    assert grid[0].overrides == ["run.lambda.lambda_init=0.5", "sigma=0.0005"]
    listed = points("grpo", [{"beta": 0.01}, {"beta": 0.1, "learning_rate": 1e-5}])
    assert [p.label for p in listed] == ["grpo.beta0.01", "grpo.beta0.1_learning_rate1e-05"]
    assert set(spec_points({"methods": {"es": {"sweep": {"sigma": [1, 2]}}, "grpo": {}}})) == {"es.sigma1", "es.sigma2"}
    for bad, why in (({"sigma": []}, "non-empty list"), ([{}], "non-empty mappings"),
                     ({"noise": ["a/b"]}, "not a folder name"), ([{"sigma": 1}, {"sigma": 1}], "written twice")):
        with pytest.raises(UserError, match=why):
            points("es", bad)


def test_a_spec_sweep_runs_each_point_under_its_own_label_with_run_keys_in_the_run(tmp_path):
    from harness.launch.benchmark import load_spec, method_config

    spec = {"name": "sw", "seeds": [0], "compare": {"baseline": "grpo"},
            "methods": {"es": {"config": str(ROOT / "configs/es/cpu-default.yaml"), "set": ["population=4"],
                               "sweep": {"run.lambda.lambda_init": [0.5, 2.0], "sigma": [0.002]}},
                        "grpo": {"config": str(ROOT / "configs/grpo/cpu-default.yaml")}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded, _ = load_spec(path)
    assert list(loaded.methods) == ["es.lambda_init0.5_sigma0.002", "es.lambda_init2_sigma0.002", "grpo"]
    cfg = method_config(loaded, path, "es.lambda_init2_sigma0.002", 0)
    assert cfg.run.lagrangian.lambda_init == 2.0 and cfg.sigma == 0.002 and cfg.population == 4
    assert method_config(loaded, path, "grpo", 0).run.lagrangian.lambda_init == 1.0  # the others keep the spec's


def test_pareto_and_the_area_between_step_frontiers_by_hand():
    # (safe ratio, reward): (0.5, 1.0) is beaten by (0.6, 1.2)
    assert pareto([(0.2, 2.0), (0.5, 1.0), (0.6, 1.2), (0.9, 0.1)]) == [0, 2, 3]
    a = [(0.2, 2.0), (0.8, 1.0)]  # F_a: 2.0 up to 0.2, then 1.0 up to 0.8
    b = [(0.5, 1.5), (0.6, 0.5)]  # F_b: 1.5 up to 0.5, then 0.5 up to 0.6
    d = frontier_difference(a, b)
    # shared range 0–0.6: (0.2)(2.0−1.5) + (0.3)(1.0−1.5) + (0.1)(1.0−0.5) = 0.1 − 0.15 + 0.05
    assert d["range"] == (0.0, 0.6) and d["area"] == pytest.approx(0.0)
    assert d["crossings"] == [0.2, 0.5] and d["dominates"] is None
    assert d["a_above"] == [(0.0, 0.2), (0.5, 0.6)] and d["b_above"] == [(0.2, 0.5)]
    up = frontier_difference([(r, s + 1) for r, s in a], a)  # the same frontier lifted by 1: dominates by 0.8
    assert up["dominates"] == "a" and up["area"] == pytest.approx(0.8)
    assert frontier_difference(a, [(r, s + 1) for r, s in a])["dominates"] == "b"


@pytest.mark.slow
def test_a_swept_benchmark_writes_the_frontier(policy_path, tmp_path):
    """Two ES points over λ₀ and a GRPO baseline, one seed: the plot, the table, and a statement that says one
    seed carries no interval and no verdict."""
    import json

    from harness.launch.benchmark import run_benchmark

    spec = yaml.safe_load((ROOT / "benchmarks" / "cpu-default.yaml").read_text())
    spec["run"]["budget"] = {"completions": 80, "eval_every_fraction": 1.0}
    spec["run"].setdefault("eval", {})["limit"] = 6
    spec["methods"] = {"es": {"config": str(ROOT / "configs/es/cpu-default.yaml"),
                              "set": ["population=4", "prompts_per_iteration=8", "probe_engine=false"],
                              "sweep": {"run.lambda.lambda_init": [0.5, 4.0]}},
                       "grpo": {"config": str(ROOT / "configs/grpo/cpu-default.yaml"), "set": ["num_generations=4"]}}
    spec["seeds"] = [0]
    spec.pop("evaluate", None)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    md = run_benchmark(path, out=tmp_path / "report", runs_dir=tmp_path / "runs")
    assert md.name == "frontier.md" and (tmp_path / "report" / "frontier.png").is_file()
    summary = json.loads((tmp_path / "report" / "frontier.json").read_text())
    assert [p["label"] for p in summary["points"]] == ["es.lambda_init0.5", "es.lambda_init4", "grpo"]
    assert {p["family"] for p in summary["points"]} == {"es", "grpo"}
    [c] = summary["comparisons"]
    assert c["a"] == "es" and c["b"] == "grpo" and "1 seed: no interval, no verdict" in c["statement"]
    text = md.read_text()
    assert "| es.lambda_init0.5 | es | run.lambda.lambda_init=0.5 | 1 |" in text and "## Against the baseline" in text
    # `esgrpo frontier` draws the same from the run folders (the sweep read from the spec their records keep),
    # where `esgrpo compare` refuses them: their λ₀ differ
    from typer.testing import CliRunner

    from harness.launch.cli import app

    runs = sorted(str(d) for d in (tmp_path / "runs").glob("*-s0"))
    r = CliRunner().invoke(app, ["frontier", *runs, "--out", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "again" / "frontier.json").read_text())
    assert again["points"] == summary["points"] and again["comparisons"] == summary["comparisons"]
    r = CliRunner().invoke(app, ["compare", *runs, "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 2 and "runs differ in λ₀" in r.output
