"""``esgrpo run ... --runtime docker``: the scorer and the method, each in its own image, on one machine.

Through the Docker SDK: a scorer container serving the run's scorer config announces its URL in a rendezvous
file inside the run directory; the method container finds it there (the same discovery the SLURM jobs use).
Both run with the host network, as the calling user, with the working directory, the run directory and the
esgrpo cache mounted at their own paths, so every path in a config means the same inside and out. GPUs are
passed through when the host has them. SIGTERM/SIGINT stop the method container gracefully: it checkpoints
and exits 75, and the same command resumes it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness.config import load_config
from harness.errors import UserError
from harness.paths import esgrpo_home
from harness.records import atomic_write_text
from harness.scoring.client import http_scorer_overrides
from harness.registry import get_method

DEFAULT_SCORER_CONFIG = "configs/scorer/builtin.yaml"
STOP_TIMEOUT_S = 300  # how long a stopped method container may take to write its checkpoint


def default_image(role: str) -> str:
    return f"esgrpo-{role}:latest"  # what `make containers` tags


def host_has_gpu() -> bool:
    return bool(shutil.which("nvidia-smi")) and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure here means "no usable daemon"
        raise UserError(f"cannot reach the Docker daemon ({e}); start it (containers/local-docker.sh does, "
                        "on a machine without one) or choose --runtime native") from None
    return client


def require_image(client, name: str) -> None:
    import docker

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        raise UserError(f"image {name} not found: build it with `make containers` (see README, Containers)") from None


def scorer_config_for(method: str, config: Path | None, overrides: list[str]) -> str | None:
    """The scorer config the scorer container serves; None when the run already points at a running scorer."""
    spec = load_config(get_method(method).config_model, config, overrides).run.scorer
    if spec.kind == "http":
        return None
    if spec.kind == "judge":
        raise UserError("run.scorer kind 'judge' is the evaluation judge's stand-in; it has no scorer service")
    return spec.config if spec.kind == "embedded" else DEFAULT_SCORER_CONFIG


class ContainerRun:
    """The containers of one run: started, watched, streamed, and removed whatever happens."""

    def __init__(self, client, workdir: Path, mounts: list[Path], gpus: bool):
        self.client, self.workdir, self.gpus = client, workdir, gpus
        self.volumes = {str(p): {"bind": str(p), "mode": "rw"} for p in dict.fromkeys(mounts)}
        self.containers: list[Any] = []

    def start(self, image: str, command: list[str], name: str, env: dict[str, str]):
        import docker

        requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if self.gpus else None
        c = self.client.containers.run(
            image, command, detach=True, name=name, network_mode="host", volumes=self.volumes,
            working_dir=str(self.workdir), user=f"{os.getuid()}:{os.getgid()}", device_requests=requests,
            environment={"HOME": "/tmp", "ESGRPO_HOME": str(esgrpo_home()), "PYTHONUNBUFFERED": "1",
                         "ESGRPO_IMAGE": image, "ESGRPO_IMAGE_DIGEST": self.client.images.get(image).id, **env})
        self.containers.append(c)
        return c

    def remove_all(self) -> None:
        for c in self.containers:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def stream(container, sink) -> threading.Thread:
    """Copy the container's output to ``sink`` as it comes, in a thread."""
    def pump():
        for chunk in container.logs(stream=True, follow=True):
            sink.write(chunk.decode(errors="replace"))
            sink.flush()
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def run_in_docker(method: str, config: Path | None, run_dir: Path, overrides: list[str],
                  image: str | None = None, scorer_image: str | None = None, gpus: bool | None = None) -> int:
    """Run ``esgrpo run METHOD`` in ``image`` with its scorer in ``scorer_image``; returns the method's exit code."""
    workdir = Path.cwd().resolve()
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    image, scorer_image = image or default_image(method), scorer_image or default_image("scorer")
    scorer_config = scorer_config_for(method, config, overrides)
    client = docker_client()
    for name in (image, *([scorer_image] if scorer_config else [])):
        require_image(client, name)
    gpus = host_has_gpu() if gpus is None else gpus
    tag = f"esgrpo-{run_dir.name}-{secrets.token_hex(3)}"
    extra = [Path(config).resolve().parent] if config else []
    run = ContainerRun(client, workdir, [workdir, run_dir, esgrpo_home().resolve(), *extra], gpus)
    overrides = list(overrides)
    with ExitStack() as cleanup:
        cleanup.callback(run.remove_all)
        if scorer_config:
            rendezvous, token_file = run_dir / "scorer.json", run_dir / "scorer.token"
            rendezvous.unlink(missing_ok=True)
            if not token_file.is_file():
                atomic_write_text(token_file, secrets.token_urlsafe(32))
                token_file.chmod(0o600)
            scorer = run.start(scorer_image, ["serve-scorer", "--config", str(Path(scorer_config).resolve()),
                                              "--host", "127.0.0.1", "--port", "0", "--rendezvous", str(rendezvous)],
                               f"{tag}-scorer", {"ESGRPO_SCORER_TOKEN": token_file.read_text().strip()})
            log = cleanup.enter_context(open(run_dir / "scorer.log", "a"))
            stream(scorer, log)
            overrides += http_scorer_overrides("run.", rendezvous=rendezvous, token_file=token_file)
        cmd = ["run", method, "--run-dir", str(run_dir), *(["--config", str(Path(config).resolve())] if config else [])]
        cmd += [x for o in overrides for x in ("--set", o)]
        trainer = run.start(image, cmd, f"{tag}-{method}", {})
        printer = stream(trainer, sys.stdout)
        stop = threading.Event()

        def on_signal(signum, _frame):  # the method checkpoints on SIGTERM and exits 75
            stop.set()
            threading.Thread(target=trainer.stop, kwargs={"timeout": STOP_TIMEOUT_S}, daemon=True).start()
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        cleanup.callback(lambda: [signal.signal(s, h) for s, h in previous.items()])
        while True:
            trainer.reload()
            if trainer.status in ("exited", "dead"):
                break
            if scorer_config and not stop.is_set():
                scorer.reload()
                if scorer.status in ("exited", "dead"):
                    tail = scorer.logs(tail=20).decode(errors="replace")
                    raise UserError(f"the scorer container stopped before the run finished "
                                    f"(see {run_dir / 'scorer.log'}):\n{tail}")
            time.sleep(1)
        code = trainer.wait()["StatusCode"]
        printer.join(timeout=10)
        return code
