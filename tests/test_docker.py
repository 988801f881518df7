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
            "prompts_per_iteration": 6, "run.rollout.max_new_tokens": 16, "run.data.eval_fraction": 0.1}
    r = esgrpo("run", "es", "--config", str(CPU_DEFAULT), "--runtime", "docker", "--run-dir", str(run_dir),
               *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = load_record(run_dir)
    assert rec.status == "completed" and rec.series[-1].completions >= 54
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


def _tiny_image(base: str, tag: str, label: str | None, content: str, where: Path) -> str:
    where.mkdir(parents=True, exist_ok=True)
    (where / "Dockerfile").write_text(f"FROM {base}\n" + (f"LABEL {label}\n" if label else "")
                                      + f"RUN echo {content} > /marker\n")
    r = subprocess.run(["docker", "build", "-q", "-t", tag, str(where)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_rebuilds_leave_no_dangling_project_images(docker_daemon, tmp_path):
    """Every test run rebuilds the images; the tag moves and the old 2-3 GB image stayed behind until the
    machine's disk filled. `make containers` prunes this project's untagged images, and only those."""
    base = os.environ.get("ESGRPO_DOCKER_BASE", "localbase:bookworm")
    label = "org.esgrpo.project=esgrpo"
    assert label in (ROOT / "containers" / "Dockerfile").read_text()  # the images carry what the prune selects
    ours = _tiny_image(base, "esgrpo-prune-test:latest", label, "one", tmp_path / "a")
    _tiny_image(base, "esgrpo-prune-test:latest", label, "two", tmp_path / "b")  # leaves `ours` dangling
    theirs = _tiny_image(base, "not-esgrpo-prune-test:latest", None, "one", tmp_path / "c")
    _tiny_image(base, "not-esgrpo-prune-test:latest", None, "two", tmp_path / "d")
    try:
        r = subprocess.run(["make", "-s", "containers", "IMAGES="], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

        def exists(image: str) -> bool:
            return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0

        assert not exists(ours) and exists(theirs) and exists("esgrpo-prune-test:latest")
    finally:
        subprocess.run(["docker", "rmi", "-f", "esgrpo-prune-test:latest", "not-esgrpo-prune-test:latest", theirs],
                       capture_output=True)
