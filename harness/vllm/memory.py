"""What a vLLM engine holds on its device, read from its workers: the KV cache it preallocated. Memory figures
report it apart, so that engines (ES's, TRL's colocated one) compare with training processes that have none."""

from __future__ import annotations

from typing import Any

from harness.vllm.compat import kv_caches


def kv_cache_bytes(model_runner: Any) -> int:
    """The KV cache a worker's model runner preallocated (layers may share storage: each storage counts once)."""
    caches = kv_caches(model_runner)
    tensors = [t for c in caches for t in (c if isinstance(c, (list, tuple)) else [c]) if t is not None]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return int(sum(storages.values()))


def _worker_kv_cache_bytes(worker: Any) -> int:
    return kv_cache_bytes(worker.model_runner)


def llm_kv_cache_bytes(llm: Any) -> int:
    """Summed over an ``LLM``'s workers (one per tensor-parallel rank)."""
    return int(sum(llm.collective_rpc(_worker_kv_cache_bytes)))
