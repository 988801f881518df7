"""The import layers of pyproject.toml's import-linter contracts hold, and each contract would catch the import it
forbids: the suite adds one such import to a copy of the tree and sees lint-imports name the broken contract."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    # the copy's packages come first on the path (the editable install's finder only answers after the path)
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, capture_output=True, text=True)


def test_the_tree_keeps_its_layers():
    r = lint(ROOT)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    for pkg in ("harness", "methods", "scorer"):
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    return copy


@pytest.mark.parametrize("module,line,broken", [
    ("harness/budget.py", "import harness.launch.cli", "harness core"),
    ("harness/scoring/protocol.py", "import scorer.backends", "harness core"),
    ("harness/records.py", "from harness.method import RunContext", "harness core"),
    ("harness/method.py", "import harness.run", "harness: launchers above"),
    ("harness/fixtures/policy.py", "import harness.method", "harness: launchers above"),
    ("harness/run.py", "import harness.launch.benchmark", "harness: launchers above"),
    ("harness/launch/cli.py", "import methods.es.trainer", "harness never imports a method"),
    ("methods/es/trainer.py", "import methods.grpo.trainer", "methods never import each other"),
    ("methods/grpo/trainer.py", "from harness.run import run_method", "methods depend on harness's contracts"),
    ("methods/es/pool.py", "import harness.launch.slurm", "methods depend on harness's contracts"),
])
def test_each_contract_catches_what_it_forbids(tree, module, line, broken):
    path = tree / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # added by the test\n")
    try:
        r = lint(tree)
    finally:
        path.write_text(original)
    assert r.returncode != 0, r.stdout[-2000:]
    text = " ".join(r.stdout.split())  # the report wraps long contract names
    names = [c["name"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]]
    (name,) = [n for n in names if n.startswith(broken)]
    assert f"{name} BROKEN" in text, text[-3000:]


@pytest.mark.slow
def test_the_es_engine_contract_type_checks():
    """mypy over methods/es: both engines meet the whole ESEngine Protocol (make_engine returns one), and every
    call the trainer hands a pool is checked against it."""
    from conftest import BackgroundTypeCheck

    code, out = BackgroundTypeCheck.result()  # started with the session (conftest.py)
    assert code == 0 and "Success" in out, out[-4000:]
