"""The CLI's user errors: one clear message naming the file and field, exit code 2, no traceback."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.launch.cli import app

ROOT = Path(__file__).parents[1]
runner = CliRunner()


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.mark.parametrize("yaml_text, message", [
    ("population: 8\nsigma2: 0.1\n", "sigma2: Extra inputs are not permitted"),
    ("population: many\n", "population: Input should be a valid integer"),
    ("run:\n  seed: true\n", "seed: true is a boolean, not a number"),
    ("run:\n  tensorboard: 1\n", "tensorboard: '1' is not a boolean"),
    ("sigma: -1\n", "sigma: Input should be greater than 0"),
    ("run:\n  budget: {completions: 0}\n", "run.budget.completions: Input should be greater than 0"),
    ("run:\n  data: {kind: csv}\n", "run.data.kind: Input should be"),
    ("engine: {kind: tpu}\n", "engine.kind: Input should be"),
    ("population: [1\n", "bad.yaml:2: not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("sigma: .inf\n", "sigma: Input should be a finite number"),
    ("alpha: .nan\n", "alpha: Input should be a finite number"),
    ("run:\n  lambda: {lambda_min: 2.0, lambda_max: 1.0}\n", "lambda_min 2.0 is above lambda_max 1.0"),
    ("run:\n  seed: -3\n", "run.seed: Input should be greater than or equal to 0"),
    ("population: 7\nantithetic: true\n", "population 7 must be even"),
    ("perturbation: lowrank\nrank: 600\nengine: {kind: vllm}\n", "rank 600: vLLM serves LoRA adapters up to rank 512"),
    ("members_per_call: 4\n", "members_per_call: only low-rank ES on vLLM evaluates several members in one call"),
    ("perturbation: lowrank\nengine: {kind: vllm}\nmembers_per_call: 0\n",
     "members_per_call: Value error, 0: a positive number of members, or 'auto'"),
    ("run:\n  eval: {stop_strings: ['']}\n", "empty stop string"),
    ("run:\n  scorer: {kind: http, url: 'http://x', deadline_s: .inf}\n", "deadline_s: Input should be a finite"),
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
    (["run", "es", "--set", "population=[1"], "override 'population=[1': not valid YAML"),
    (["run", "es", "--config", ROOT / "configs/es/cpu-lowrank.yaml", "--set", "lowrank_modules=[q_proj, qproj]"],
     "lowrank_modules: qproj names no 2-D weight of"),
    (["run", "es", "--set", "run.data={kind: builtin, eval_fraction: 0.999}"], "leaves none to train on"),
    (["serve-scorer", "--port", "70000"], "port: Input should be less than or equal to 65535"),
    (["serve-scorer", "--config", ROOT / "README.md"], "not valid YAML"),
    (["slurm", "status", "--dir", "/no/slurm"], "/no/slurm/jobs.json: jobs file"),
    (["compare", ROOT / "tests", "-o", "/tmp"], "no record.json"),
])
def test_bad_arguments(tmp_path, args, message):
    code, out = run_cli(*args, *(["--run-dir", tmp_path / "r"] if args[0] == "run" else []))
    assert code == 2 and message in out.replace("\n", ""), out
    assert "Traceback" not in out


def test_unknown_lora_ops_are_named(tmp_path, monkeypatch):
    code, out = run_cli("run", "es", "--config", ROOT / "configs/es/cpu-lowrank.yaml", "--run-dir", tmp_path / "r",
                        "--set", "engine.lora_ops=triton")
    assert code == 2 and "engine.lora_ops: Input should be 'concat', 'dense' or 'punica'" in out.replace("\n", ""), out
    # the environment variable it replaces still works for one release, with a warning naming the key
    monkeypatch.setenv("ESGRPO_LORA_KERNELS", "triton")
    code, out = run_cli("run", "es", "--config", ROOT / "configs/es/cpu-lowrank.yaml", "--run-dir", tmp_path / "q")
    assert code == 2 and "engine.lora_ops: Input should be" in out.replace("\n", ""), out
    assert "Traceback" not in out


def test_the_deprecated_lora_environment_variable_becomes_the_config_key(monkeypatch):
    from methods.es.config import ESConfig

    monkeypatch.setenv("ESGRPO_LORA_KERNELS", "dense")
    with pytest.warns(FutureWarning, match="engine.lora_ops: dense"):
        cfg = ESConfig.model_validate({"engine": {"kind": "vllm"}})
    assert cfg.engine.lora_ops == "dense"
    assert ESConfig.model_validate({"engine": {"lora_ops": "punica"}}).engine.lora_ops == "punica"  # the key wins


def test_spec_pointing_at_a_missing_method_config(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nmethods:\n  es: {config: nowhere.yaml}\n")
    code, out = run_cli("benchmark", "--spec", spec)
    assert code == 2 and "methods.es.config: nowhere.yaml not found" in out


def test_methods_are_found_by_registry():
    code, out = run_cli("methods")
    assert code == 0 and out.split() == ["es", "grpo"]


def test_binary_files_and_odd_places_are_named(tmp_path):
    cfg = tmp_path / "bin.yaml"
    cfg.write_bytes(b"\xff\xfe\x00population: 8")
    code, out = run_cli("run", "es", "--config", cfg, "--run-dir", tmp_path / "r")
    assert code == 2 and "not UTF-8 text" in out and "Traceback" not in out
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes('{"prompt": "café"}\n'.encode("latin-1"))
    code, out = run_cli("run", "es", "--set", f"run.data={{kind: jsonl, path: {prompts}}}", "--run-dir", tmp_path / "r")
    assert code == 2 and f"{prompts}:1: not UTF-8 (byte 0xe9 at column 16)" in out
    a_file = tmp_path / "file"
    a_file.write_text("")
    code, out = run_cli("run", "es", "--run-dir", a_file)
    assert code == 2 and "--run-dir exists and is not a folder" in out


@pytest.mark.parametrize("text, message", [
    ("name: ../../etc\nmethods:\n  es: {config: x.yaml}\n", "name '../../etc' must be letters"),
    ("name: ok\nmethods:\n  es/../x: {config: x.yaml}\n", "method entry 'es/../x' must be letters"),
    ("name: ok\nmethods:\n  ppo: {config: x.yaml}\n", "methods.ppo: unknown method 'ppo'"),
    ("name: ok\nmethods:\n  es-x: {method: nope, config: x.yaml}\n", "methods.es-x.method: unknown method 'nope'"),
    ("name: ok\nseeds: [0, 0]\nmethods:\n  es: {config: x.yaml}\n", "seeds must be distinct"),
    ("name: ok\ncompare: {baseline: grpo}\nmethods:\n  es: {config: x.yaml}\n", "compare.baseline 'grpo'"),
    ("name: ok\nmethods:\n  es: {config: x.yaml}\nrun:\n  eval: {limit: -1}\n", "run.eval.limit"),
])
def test_bad_specs_name_the_spec_and_field(tmp_path, text, message):
    (tmp_path / "x.yaml").write_text("population: 4\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    code, out = run_cli("benchmark", "--spec", spec)
    assert code == 2 and message in out.replace("\n", "") and str(spec) in out.replace("\n", ""), out


def test_serve_scorer_help_describes_every_option():
    code, out = run_cli("serve-scorer", "--help")
    assert code == 0
    for opt in ("--config", "--host", "--port", "--rendezvous"):
        line = next(line for line in out.splitlines() if opt in line)
        assert len(line.split(opt, 1)[1].strip()) > 20, line  # a description, not just the flag


def test_a_stray_parent_marker_in_the_environment_is_ignored(monkeypatch):
    """ESGRPO_PARENT_PID is set by `child_env` for runs a benchmark starts; any other value changes nothing."""
    import os

    monkeypatch.setenv("ESGRPO_PARENT_PID", "not-a-pid")
    code, out = run_cli("compare", ROOT / "tests", "-o", "/tmp")
    assert code == 2 and "no record.json" in out and "Traceback" not in out
    assert "ESGRPO_PARENT_PID" not in os.environ  # taken out, so nothing this process starts inherits it


def test_the_default_run_folder_is_named_by_time_method_and_seed():
    """`esgrpo run` without --run-dir (the README's own command) names its folder runs/<stamp>-<method>[-s<seed>]."""
    from harness.launch.cli import default_run_dir

    assert re.fullmatch(r"runs/\d{8}-\d{6}-es", str(default_run_dir("es")))
    assert re.fullmatch(r"runs/\d{8}-\d{6}-grpo-s3", str(default_run_dir("grpo", 3)))


def test_a_label_that_could_leave_the_runs_folder_is_refused(tmp_path):
    code, out = run_cli("run", "es", "--label", "../x", "--run-dir", tmp_path / "r")
    assert code == 2 and "--label '../x' must be letters" in out and "Traceback" not in out


def test_configs_nested_too_deeply_are_one_short_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("population: " + "[" * 3000 + "]" * 3000 + "\n")
    code, out = run_cli("run", "es", "--config", deep, "--run-dir", tmp_path / "r")
    assert code == 2 and f"{deep}: nested too deeply" in out and "Traceback" not in out
    code, out = run_cli("run", "es", "--set", "population=" + "[" * 3000 + "]" * 3000, "--run-dir", tmp_path / "r")
    assert code == 2 and "nested too deeply" in out and len(out) < 400
