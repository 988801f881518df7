"""A plan of one GPU's memory before a policy engine starts on it: what is already held (the scorer beside it,
other processes), what the engine needs (weights in their serving dtype, ES's snapshot of them, vLLM's
activations and CUDA graphs), and the KV cache sized from the memory that is actually free. Parts that cannot
fit are refused before training, with the numbers; the run record keeps the plan beside the measured peaks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel

from harness.errors import PlannedOutOfMemory, UserError

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class Part(BaseModel):
    name: str
    gib: float
    measured: bool  # read from the device or a process, not estimated from shapes


class MemoryPlan(BaseModel):
    device: str
    total_gib: float
    free_gib: float  # measured when the plan was made: what the other parts left
    held: list[Part]  # by other processes when the plan was made (the scorer, anything else)
    needs: list[Part]  # what this run adds (beside its KV cache, for a policy engine)
    kv_cache_gib: float | None = None  # what is left for the KV cache
    kv_cache_min_gib: float | None = None  # one sequence of max_model_len tokens
    kv_cache_wanted_gib: float | None = None  # every sequence of one generate call at once

    @property
    def fits(self) -> bool:
        if self.kv_cache_gib is not None and self.kv_cache_min_gib is not None:
            return self.kv_cache_gib >= self.kv_cache_min_gib
        return sum(p.gib for p in self.needs) <= self.free_gib

    def describe(self) -> str:
        def parts(ps: list[Part]) -> str:
            return ", ".join(f"{p.name} {p.gib:.1f}" for p in ps) or "nothing"

        text = (f"{self.device}: {self.total_gib:.1f} GiB, {self.free_gib:.1f} free (held: {parts(self.held)}); "
                f"the run needs {parts(self.needs)} (GiB)")
        if self.kv_cache_gib is not None:
            text += (f" and leaves {self.kv_cache_gib:.1f} GiB of KV cache (at least {self.kv_cache_min_gib:.2f} "
                     f"for one sequence, {self.kv_cache_wanted_gib:.1f} for a whole generate call at once)")
        return text

    def check(self, what: str) -> None:
        if not self.fits:
            raise PlannedOutOfMemory(f"{what} does not fit (memory plan): {self.describe()}. Free the device, "
                                     "put the scorer on another GPU, or make the run smaller")


def checkpoint_parameters(model_dir: str | Path) -> int:
    """Parameters of a checkpoint's model, from its config alone (built on the meta device: no weights read, any
    weight format; tied weights once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: cannot read the model's config to plan its memory ({e})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def kv_bytes_per_token(model_dir: str | Path, dtype: str) -> int:
    """Keys and values of every layer for one token, from config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * DTYPE_BYTES[dtype]


def lora_slot_bytes(model_dir: str | Path, modules: Sequence[str], slots: int, rank: int, dtype: str) -> int:
    """The LoRA buffers vLLM preallocates for ``slots`` adapters of ``rank`` on the decoder's linear ``modules``
    (A: rank × in, B: out × rank, per module and layer), from config.json: what a low-rank ES population of that
    many members per call holds beside the weights."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    kv = cfg.get("num_key_value_heads", heads) * head_dim
    inter = cfg.get("intermediate_size", 4 * hidden)
    widths = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
              "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
              "down_proj": (inter, hidden)}
    per_layer = sum(sum(widths[m]) for m in modules if m in widths)
    return per_layer * cfg["num_hidden_layers"] * rank * slots * DTYPE_BYTES[dtype]


def device_holders(index: int | None, exclude: set[int]) -> list[Part]:
    """The other processes the driver charges memory to (NVML), named by pid and command: on torch's device
    ``index`` (among the visible devices), or on every visible GPU (None)."""
    from harness.records import nvml_handles

    handles = nvml_handles()
    # NVML counts every GPU of the host; torch and this job see CUDA_VISIBLE_DEVICES (a SLURM node shares its other
    # GPUs with other jobs, whose processes are none of this one's business)
    visible = [int(v) for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip().isdigit()]
    indices = visible or list(range(len(handles)))
    if index is not None:
        indices = indices[index : index + 1]
    handles = [handles[i] for i in indices if i < len(handles)]
    if not handles:
        return []
    import pynvml

    held = []
    for h in handles:
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        except pynvml.NVMLError:
            continue
        held += [Part(name=f"pid {p.pid} ({process_name(p.pid)})", gib=round((p.usedGpuMemory or 0) / GIB, 2),
                      measured=True) for p in procs if p.pid not in exclude and p.usedGpuMemory]
    return held


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


def plan_engine(model_dir: str | Path, dtype: str, max_model_len: int, sequences: int, snapshot: bool,
                runtime_gib: float, device: int = 0, extra: Sequence[Part] = ()) -> MemoryPlan:
    """The KV cache a vLLM engine on GPU ``device`` can have beside what is already there: free memory minus its
    weights, ES's snapshot of them (restore: snapshot), ``extra`` parts (a low-rank population's LoRA slots) and
    ``runtime_gib`` for vLLM's activations, CUDA graphs and the CUDA context."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    weights = checkpoint_parameters(model_dir) * DTYPE_BYTES[dtype] / GIB
    needs = [Part(name="policy weights", gib=round(weights, 2), measured=False)]
    if snapshot:
        needs.append(Part(name="ES snapshot of the weights", gib=round(weights, 2), measured=False))
    needs += list(extra)
    needs.append(Part(name="vLLM activations, graphs and context", gib=runtime_gib, measured=False))
    per_token = kv_bytes_per_token(model_dir, dtype) / GIB
    return MemoryPlan(device=torch.cuda.get_device_name(device), total_gib=round(total / GIB, 2),
                      free_gib=round(free / GIB, 2), held=device_holders(device, {os.getpid()}), needs=needs,
                      kv_cache_gib=round(max(0.0, free / GIB - sum(p.gib for p in needs)), 2),
                      kv_cache_min_gib=round(per_token * max_model_len, 3),
                      kv_cache_wanted_gib=round(per_token * max_model_len * sequences, 2))


def plan_training(model_dir: str | Path, needs_per_parameter: dict[str, float], device: int = 0) -> MemoryPlan:
    """A training run's lower bound: each part as bytes per policy parameter (weights, gradients, optimizer
    states, a colocated engine given in GiB under a name ending in ``GiB``); activations come on top."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    params = checkpoint_parameters(model_dir)
    needs = [Part(name=name.removesuffix(" GiB"), gib=round(v if name.endswith(" GiB") else v * params / GIB, 2),
                  measured=False) for name, v in needs_per_parameter.items()]
    return MemoryPlan(device=torch.cuda.get_device_name(device), total_gib=round(total / GIB, 2),
                      free_gib=round(free / GIB, 2), held=device_holders(device, {os.getpid()}), needs=needs)


def vllm_memory_kwargs(plan: MemoryPlan) -> dict[str, Any]:
    """vLLM ``LLM`` arguments that give an engine the KV cache the plan left it: the cache in bytes, and a
    utilization just under what is free (vLLM checks at start that this share of the device is free)."""
    return {"kv_cache_memory_bytes": int((plan.kv_cache_gib or 0.0) * GIB),
            "gpu_memory_utilization": max(0.01, (plan.free_gib - 0.5) / plan.total_gib)}


def plan_record(plan: MemoryPlan) -> dict[str, Any]:
    return {**plan.model_dump(), "fits": plan.fits, "summary": plan.describe()}
