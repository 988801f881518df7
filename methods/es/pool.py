"""Engines behind futures: Ray actors (one per GPU, or CPU actors), or one in-process engine.

The driver hands a pool typed calls on the ``ESEngine`` contract (``pool.submit(i, lambda e: e.checksum())``); both
pools return ``concurrent.futures.Future`` objects, so the driver schedules the same way either way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from methods.es.engine import EngineConfig, ESEngine
from methods.es.noise import NoiseSpec

T = TypeVar("T")
EngineCall = Callable[[ESEngine], T]


def make_engine(cfg: EngineConfig, scratch: str | None = None, noise: NoiseSpec | None = None,
                max_loras: int = 1) -> ESEngine:
    if cfg.kind == "vllm":
        from methods.es.vllm_engine import VLLMEngine

        return VLLMEngine(cfg, scratch, noise, max_loras)
    from methods.es.hf_engine import HFEngine

    return HFEngine(cfg, noise)


def count_elements(engine: ESEngine) -> int:
    return engine.count_elements()


PASSED_ENV_PREFIXES = ("NCCL_", "TORCH_SYMM_MEM", "NVSHMEM_", "CUDA_", "VLLM_", "PYTHONPATH")


class EngineHost:
    """What a Ray actor (or the local pool) holds: one engine, and the calls made on it."""

    def __init__(self, cfg: EngineConfig, scratch: str | None = None, noise: NoiseSpec | None = None,
                 max_loras: int = 1):
        self.engine = make_engine(cfg, scratch, noise, max_loras)

    def call(self, op: EngineCall[T]) -> T:
        return op(self.engine)

    def where(self) -> str:
        """The Ray node this engine runs on (an actor), or this host (the local pool). Never starts Ray: asking
        for a runtime context outside one would start a whole local instance."""
        import socket
        import sys

        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            return sys.modules["ray"].get_runtime_context().get_node_id()
        return socket.gethostname()


class Pool(Protocol):
    """Engines by index; ``submit`` runs a call on one of them."""

    nodes: list[str]
    scratch: str  # the engines' working folder in the run folder (removed after the run when left empty)

    def __len__(self) -> int: ...

    def submit(self, i: int, op: EngineCall[T]) -> Future[T]: ...

    def shutdown(self) -> None: ...


def call_all(pool: Pool, op: EngineCall[T]) -> list[T]:
    """``op`` on every engine of ``pool`` at once; the results in engine order."""
    return [f.result() for f in [pool.submit(i, op) for i in range(len(pool))]]


class LocalPool:
    def __init__(self, cfg: EngineConfig, n: int, scratch: str, noise: NoiseSpec | None = None, max_loras: int = 1):
        if n != 1:
            raise ValueError("pool 'local' holds exactly one engine; use pool 'ray' for more")
        self.scratch = scratch
        self.hosts = [EngineHost(cfg, scratch, noise, max_loras)]
        self.nodes = [self.hosts[0].where()]

    def __len__(self) -> int:
        return len(self.hosts)

    def submit(self, i: int, op: EngineCall[T]) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(self.hosts[i].call(op))
        except BaseException as e:  # surface engine errors where the driver waits
            fut.set_exception(e)
        return fut

    def shutdown(self) -> None:
        self.hosts.clear()


class RayPool:
    """A private Ray instance per run (own temp dir and namespace) unless ``address`` names a cluster."""

    def __init__(self, cfg: EngineConfig, n: int, scratch: str, address: str | None = None,
                 noise: NoiseSpec | None = None, max_loras: int = 1, start_timeout_s: float = 1800):
        import ray
        from ray.exceptions import GetTimeoutError

        from harness.errors import UserError

        gpu = cfg.device == "cuda"
        self._owns_ray = not ray.is_initialized()
        self.scratch, self._ray_tmp = scratch, None
        if self._owns_ray:
            if address is None:
                for k in [k for k in os.environ if k.startswith("RAY_ADDRESS")]:
                    os.environ.pop(k)
                # Unix socket paths are limited to ~107 bytes: Ray's session dir must stay short (not the run dir)
                self._ray_tmp = tempfile.mkdtemp(prefix="esgrpo-ray-")
            ray.init(address=address, num_cpus=None if address else max(n * cfg.threads, os.cpu_count() or 1),
                     include_dashboard=False, _temp_dir=self._ray_tmp, namespace=f"esgrpo-{os.getpid()}",
                     log_to_driver=False, configure_logging=False)
        # Actors start from Ray's environment, not this process's: hand them the NCCL/PyTorch settings set here
        # (e.g. NVLink multicast off: NCCL_NVLS_ENABLE=0 on hosts that require it).
        env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}
        options: dict[str, Any] = {"num_cpus": cfg.threads, "num_gpus": 1 if gpu else 0}
        if env:
            options["runtime_env"] = {"env_vars": env}
        actor: Any = ray.remote(**options)(EngineHost)
        self.actors: list[Any] = [actor.remote(cfg, os.path.join(scratch, f"engine-{i}"), noise, max_loras)
                                  for i in range(n)]
        try:  # every engine up: on a cluster, actors wait until the nodes that can hold them have joined
            self.nodes = ray.get([a.where.remote() for a in self.actors], timeout=start_timeout_s)
            ray.get([a.call.remote(count_elements) for a in self.actors], timeout=start_timeout_s)
        except GetTimeoutError:
            need = f"{n} engines × {cfg.threads} CPU{' + 1 GPU' if gpu else ''}"
            raise UserError(f"ES engines did not start within {start_timeout_s:.0f} s: the Ray cluster offers "
                            f"{ray.cluster_resources()}; {need} were asked for") from None

    def __len__(self) -> int:
        return len(self.actors)

    def submit(self, i: int, op: EngineCall[T]) -> Future[T]:
        return self.actors[i].call.remote(op).future()

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors.clear()
        if self._owns_ray:
            ray.shutdown()
        if self._ray_tmp:  # the engines' logs (not sent to the driver) go with the run; nothing stays in /tmp
            for logs in Path(self._ray_tmp).glob("session_*/logs"):
                shutil.copytree(logs, Path(self.scratch) / "ray-logs", dirs_exist_ok=True)
            shutil.rmtree(self._ray_tmp, ignore_errors=True)
            self._ray_tmp = None
