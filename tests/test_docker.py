"""The container path on a real Docker daemon: dockerd started by containers/local-docker.sh, a base image
from a debootstrap rootfs (no registry here), the project's CPU images built on it with offline pip, and
`esgrpo run --runtime docker` running the scorer and a tiny ES run in their own containers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BackgroundImageBuild
from harness.records import load_record

ROOT = Path(__file__).parents[1]
ESGRPO = str(Path(sys.executable).parent / "esgrpo")
CPU_DEFAULT = ROOT / "configs" / "es" / "cpu-default.yaml"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting dockerd needs root")


@pytest.fixture(scope="module")
def docker_daemon():
    r = subprocess.run(["bash", str(ROOT / "containers" / "local-docker.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def cpu_images(docker_daemon):
    BackgroundImageBuild.wait()  # `make containers-local`, started when the session began
    return {"scorer": "esgrpo-scorer:latest", "es": "esgrpo-es:latest"}


def esgrpo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ESGRPO, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def test_missing_image_is_a_clear_error(docker_daemon, tmp_path):
    r = esgrpo("run", "es", "--config", str(CPU_DEFAULT), "--runtime", "docker", "--image", "esgrpo-nope:0",
               "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "image esgrpo-nope:0 not found: build it with `make containers`" in r.stderr


@pytest.mark.slow
def test_scorer_and_es_run_in_their_containers(cpu_images, policy_path, tmp_path):
    run_dir = tmp_path / "es-docker"
    sets = {"run.budget.completions": 54, "run.budget.eval_every_fraction": 1.0, "population": 2,
            "prompts_per_iteration": 6, "run.eval.max_new_tokens": 16, "run.data.eval_fraction": 0.1}
    r = esgrpo("run", "es", "--config", str(CPU_DEFAULT), "--runtime", "docker", "--run-dir", str(run_dir),
               *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = load_record(run_dir)
    assert rec.status == "completed" and rec.series[-1].samples >= 54
    # the method ran in its image, against the scorer container it found through the rendezvous file
    assert rec.environment["container_image"] == cpu_images["es"]
    assert rec.environment["container_digest"].startswith("sha256:")
    assert rec.config["run"]["scorer"]["kind"] == "http" and rec.scorer["url"].startswith("http://127.0.0.1:")
    assert rec.scorer["reward"]["backend"] == "builtin"
    assert "esgrpo scorer listening" in (run_dir / "scorer.log").read_text()
    # files written in the containers belong to the caller; no container is left behind
    assert (run_dir / "record.json").stat().st_uid == os.getuid()
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"name=esgrpo-{run_dir.name}-"],
                          capture_output=True, text=True).stdout.split()
    assert left == []
