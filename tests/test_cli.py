"""The CLI's user errors: one clear message naming the file and field, exit code 2, no traceback."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app

ROOT = Path(__file__).parents[1]
runner = CliRunner()


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.mark.parametrize("yaml_text, message", [
    ("population: 8\nsigma2: 0.1\n", "sigma2: Extra inputs are not permitted"),
    ("population: many\n", "population: Input should be a valid integer"),
    ("sigma: -1\n", "sigma: Input should be greater than 0"),
    ("run:\n  budget: {completions: 0}\n", "run.budget.completions: Input should be greater than 0"),
    ("run:\n  data: {kind: csv}\n", "run.data.kind: Input should be"),
    ("engine: {kind: tpu}\n", "engine.kind: Input should be"),
    ("population: [1\n", "bad.yaml:2: not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
])
def test_bad_config_names_the_field(tmp_path, yaml_text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    code, out = run_cli("run", "es", "--config", cfg, "--run-dir", tmp_path / "r")
    assert code == 2, out
    assert message in out and str(cfg) in out.replace("\n", "")
    assert "Traceback" not in out
    assert not (tmp_path / "r").exists()  # nothing written half-way


@pytest.mark.parametrize("args, message", [
    (["run", "nosuch"], "unknown method 'nosuch'"),
    (["run", "es", "--config", "/nonexistent.yaml"], "config file not found"),
    (["run", "es", "--set", "sigma"], "expected KEY=VALUE"),
    (["run", "es", "--set", "run.data={kind: jsonl}"], "needs a 'path'"),
    (["run", "es", "--set", "run.data={kind: jsonl, path: /no/file.jsonl}"], "/no/file.jsonl: prompt file not found"),
    (["run", "es", "--set", "run.policy=/no/model"], "/no/model: not a model directory"),
    (["compare", "/no/run"], "/no/run: no record.json"),
    (["benchmark", "--spec", "/no/spec.yaml"], "config file not found"),
])
def test_bad_arguments(tmp_path, args, message):
    code, out = run_cli(*args, *(["--run-dir", tmp_path / "r"] if args[0] == "run" else []))
    assert code == 2 and message in out.replace("\n", ""), out
    assert "Traceback" not in out


def test_spec_pointing_at_a_missing_method_config(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nmethods:\n  es: {config: nowhere.yaml}\n")
    code, out = run_cli("benchmark", "--spec", spec)
    assert code == 2 and "methods.es.config: nowhere.yaml not found" in out


def test_methods_are_found_by_registry():
    code, out = run_cli("methods")
    assert code == 0 and out.split() == ["es", "grpo"]
