"""vLLM worker extension: the in-place ES operations on the worker's live weights, by HF parameter name.

Loaded inside every vLLM worker (``worker_extension_cls``) and called through ``collective_rpc``.
vLLM fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj`` and pads the vocabulary; the views
below cut the fused tensors back into HF-named row slices, so noise, checksums and checkpoints match
the transformers engine exactly.

The engine reaches ``WorkerES`` with ``run_on_worker`` (a callable sent through ``collective_rpc``), so every
operation is a typed method call. Importing this module on the CPU backend also keeps linear weights live, and
routes LoRA layers through the engine's LoRA ops (``methods.es.vllm_lora``) before vLLM builds the model: vLLM
loads it into every worker, which may be another process than the engine's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from harness.vllm import compat
from harness.vllm.memory import kv_cache_bytes
from methods.es import vllm_lora
from methods.es.in_place import InPlaceES
from methods.es.noise import LowRankNoise

T = TypeVar("T")

compat.keep_cpu_weights_live()  # loaded into every vLLM worker before its model: CPU linear weights stay live
vllm_lora.install(vllm_lora.ops_from_environment())  # before the model is built and compiled: its graphs hold them


def hf_views(model: torch.nn.Module, hf_config: Any) -> list[tuple[str, torch.Tensor]]:
    """(HF name, live view) for every weight of a vLLM Llama/Qwen2-style model (tensor parallel 1). With LoRA
    enabled vLLM wraps linear layers and their weights appear as ``….base_layer.weight``: the same tensors."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    kv_heads = getattr(hf_config, "num_key_value_heads", heads)
    splits = {
        "qkv_proj": (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim), ("v_proj", kv_heads * head_dim)),
        "gate_up_proj": (("gate_proj", hf_config.intermediate_size), ("up_proj", hf_config.intermediate_size)),
    }
    views: list[tuple[str, torch.Tensor]] = []
    for name, p in model.named_parameters():
        name = name.replace(".base_layer.", ".")
        if p.numel() == 0:
            raise RuntimeError(f"{name} is empty: vLLM dropped the live weight (CPU repacking not disabled)")
        packed = next((k for k in splits if f".{k}." in name), None)
        if packed is None:
            data = p.data
            if name.endswith(("embed_tokens.weight", "lm_head.weight")):
                data = data[: hf_config.vocab_size]  # vLLM pads the vocabulary
            views.append((name, data))
            continue
        start = 0
        for sub, rows in splits[packed]:
            views.append((name.replace(packed, sub), p.data[start : start + rows]))
            start += rows
        if start != p.shape[0]:
            raise RuntimeError(f"{name}: expected {start} fused rows, found {p.shape[0]}")
    return sorted(views, key=lambda nv: nv[0])


def check_published_layout(model: torch.nn.Module, hf_config: Any) -> None:
    """The shared-seed draw is computed from the HF config (so the transformers engine can reproduce it); it
    must name exactly the shapes of this vLLM model's parameters, or the draw would silently differ."""
    from methods.es.noise import published_layout

    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    for name, p in model.named_parameters():
        name = name.replace(".base_layer.", ".")
        rows = {"qkv_proj": ("q_proj", heads * head_dim), "gate_up_proj": ("gate_proj", hf_config.intermediate_size),
                "embed_tokens": ("embed_tokens", hf_config.vocab_size), "lm_head": ("lm_head", hf_config.vocab_size)}
        module = name.split(".")[-2]
        hf_module, hf_rows = rows.get(module, (module, p.shape[0]))
        hf_shape = (hf_rows, *p.shape[1:])  # the HF tensor (or its first slice) this parameter holds
        _, shape, _ = published_layout(name.replace(module, hf_module), torch.Size(hf_shape), hf_config)
        if tuple(shape) != tuple(p.shape):
            raise RuntimeError(f"{name}: vLLM holds {tuple(p.shape)}, the published layout says {shape}")


class WorkerES(InPlaceES):
    """The shared in-place ES on a vLLM worker's live weights, plus what only a worker can do."""

    def __init__(self, views: list[tuple[str, torch.Tensor]], restore_mode: str, noise, model_runner):
        self._views, self.restore_mode, self.noise = views, restore_mode, noise
        self._runner = model_runner
        self._slot_writer = None  # writes members' factors where vLLM holds each covered weight's adapter slots

    def named_views(self) -> list[tuple[str, torch.Tensor]]:
        return self._views

    def kv_cache_bytes(self) -> int:
        return kv_cache_bytes(self._runner)

    def write_adapter(self, seed: int, scale: float, out_dir: str) -> str:
        """The member θ + scale·A·Bᵀ/√r as a PEFT LoRA adapter (lora_A = Bᵀ, lora_B = scale·A/√r, scaling 1),
        drawn here from the seed, so no weights cross the network."""
        import json

        from safetensors.torch import save_file

        noise = self.noise
        assert isinstance(noise, LowRankNoise), "adapters are low-rank members"
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors, modules = {}, set()
        for name, v in self._views:
            if not noise.covers(name, v):
                continue
            lora_a, lora_b = noise.lora_pair(seed, name, v.shape, v.device, scale)
            base = "base_model.model." + name.removesuffix(".weight")
            tensors[f"{base}.lora_A.weight"] = lora_a.contiguous().cpu()
            tensors[f"{base}.lora_B.weight"] = lora_b.contiguous().cpu()
            modules.add(name.split(".")[-2])
        save_file(tensors, str(out / "adapter_model.safetensors"))
        (out / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": noise.rank, "lora_alpha": noise.rank, "target_modules": sorted(modules),
             "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}))
        return str(out)

    def fill_adapter_slots(self, members: list[tuple[int, int, float]]) -> None:
        """Each (adapter id, seed, scale): that member's factors written into the device slot where vLLM holds
        the adapter — the pair ``write_adapter`` would put in the file, rounded once to vLLM's LoRA dtype, without
        the file, the CPU copy or the reload. Slices the noise does not cover stay as activation left them: zero."""
        manager = self._lora_manager()
        writer = self.slot_writer()
        slotted = []
        for lora_id, seed, scale in members:
            if lora_id not in manager.lora_index_to_id:
                raise RuntimeError(f"adapter {lora_id} is not in a LoRA slot: vLLM evicted it")
            slotted.append((manager.lora_index_to_id.index(lora_id), seed, scale))
        writer.write(slotted)

    def _lora_manager(self):
        return compat.lora_adapter_manager(self._runner)

    def slot_writer(self):
        """The slot writer over (HF name, lora_A stack, lora_B stack) of every covered slice of vLLM's LoRA layers
        (a fused qkv/gate_up layer holds one stack per HF projection, in ``packed_modules_mapping`` order). Made
        once, when the engine starts: at 7B, with its kernel's compilation, ~0.6 s."""
        if self._slot_writer is not None:
            return self._slot_writer
        manager = self._lora_manager()
        noise = self.noise
        assert isinstance(noise, LowRankNoise), "LoRA slots hold low-rank members"
        views, plan = dict(self._views), []
        for module_name, module in manager.modules.items():
            prefix, _, last = module_name.rpartition(".")
            for i, sub in enumerate(manager.packed_modules_mapping.get(last, [last])):
                name = f"{prefix}.{sub}.weight".lstrip(".")
                v = views.get(name)
                if v is None or not noise.covers(name, v):
                    continue
                a_stack, b_stack = module.lora_a_stacked[i], module.lora_b_stacked[i]
                if a_stack.shape[-1] != v.shape[1] or b_stack.shape[-2] != v.shape[0]:
                    raise RuntimeError(f"{module_name}: LoRA stacks {tuple(a_stack.shape)}/{tuple(b_stack.shape)} "
                                       f"do not fit {name} {tuple(v.shape)} (tensor-parallel or another layout)")
                plan.append((name, a_stack, b_stack))
        if not plan:
            raise RuntimeError("no LoRA layer of this vLLM model matches a weight the low-rank noise covers")
        self._slot_writer = noise.slot_writer(plan)
        return self._slot_writer


class ESWorkerExtension:
    """Mixed into vLLM's worker; the engine calls ``es_setup`` once, then reaches ``WorkerES`` with
    ``run_on_worker``."""

    _es: WorkerES

    def es_setup(self, restore_mode: str, noise: dict) -> int:
        from methods.es.noise import NoiseSpec, make_noise

        model = self.model_runner.model  # type: ignore[attr-defined]
        hf_config = self.model_runner.model_config.hf_config  # type: ignore[attr-defined]
        spec = NoiseSpec.model_validate(noise)
        views = hf_views(model, hf_config)
        if spec.kind == "shared_seed":
            check_published_layout(model, hf_config)
        self._es = WorkerES(views, restore_mode, make_noise(spec, hf_config), self.model_runner)  # type: ignore[attr-defined]
        if spec.kind == "lowrank" and getattr(self.model_runner, "lora_manager", None) is not None:  # type: ignore[attr-defined]
            self._es.slot_writer()
        return self._es.count_elements()


def run_on_worker(worker: Any, op: Callable[[WorkerES], T]) -> T:
    """``op`` on the worker's ``WorkerES`` (sent by ``collective_rpc``); weight changes are finished on the device
    when it returns."""
    es: WorkerES = worker._es
    out = op(es)
    es.sync()
    return out
