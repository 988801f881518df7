"""The ES engine contract: what the trainer asks of an engine (``ESEngine``), the jobs it hands out (``Member``) and
what comes back (``MemberOutput``).

An engine holds one copy of the policy weights and changes them in place, keyed by integer seeds, so engines agree
without sending weights. Two engines meet the contract: ``HFEngine`` (transformers, in this process) and
``VLLMEngine`` (an ``LLM`` whose worker holds the weights; it reaches them through a typed worker proxy). Both share
the weight operations of ``methods.es.in_place.InPlaceES`` and the member loop below (``evaluate_in_place``).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

import torch
from pydantic import Field, model_validator

from harness.config import StrictModel
from harness.generation import Completion, SamplingSettings
from methods.es.noise import UpdateTerms
from methods.es.optimizer import AdamStep


class EngineConfig(StrictModel):
    kind: Literal["hf", "vllm"] = "hf"
    model_path: str = ""
    device: str = "cpu"  # 'cpu', 'cuda' (one GPU per engine; Ray assigns which)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    restore: Literal["snapshot", "subtract"] = "snapshot"
    threads: int = Field(1, gt=0)  # torch CPU threads per engine
    batch_size: int = Field(64, gt=0)  # generation batch (hf engine)
    # vLLM only
    # None: the KV cache is what the GPU has free when the engine starts, less the weights, ES's snapshot and
    # runtime_gib (harness/memory_plan.py); a fraction: vLLM's own budget of the whole device, checked the same way
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    runtime_gib: float = Field(6.0, ge=0)  # vLLM's activations, CUDA graphs, LoRA buffers and CUDA context, in the plan
    kv_cache_gib: float = Field(0.25, gt=0)  # CPU backend KV cache
    # None: CUDA graphs on a GPU (in-place weight changes keep the captured pointers: see vllm_engine.py),
    # eager on the CPU backend
    enforce_eager: bool | None = None
    max_model_len: int = Field(256, gt=0)
    max_num_seqs: int | None = Field(None, gt=0)  # vLLM's concurrent sequences (None: vLLM's default)
    # low-rank members on vLLM: how their products are computed (methods/es/vllm_lora.py). concat: the fused
    # q/k/v and gate/up layers inside their base GEMM, the others by the dense op; dense: the dense op everywhere;
    # punica: vLLM's own kernels (to compare)
    lora_ops: Literal["concat", "dense", "punica"] = "concat"

    def eager(self) -> bool:
        return self.device == "cpu" if self.enforce_eager is None else self.enforce_eager

    @model_validator(mode="before")
    @classmethod
    def _deprecated_lora_env(cls, data: Any) -> Any:
        """``ESGRPO_LORA_KERNELS`` picked the LoRA ops before ``lora_ops`` existed: it still does, for one release,
        where the config leaves the key unset (and the record keeps what it picked)."""
        old = os.environ.get("ESGRPO_LORA_KERNELS")
        if old and isinstance(data, dict) and "lora_ops" not in data:
            warnings.warn("ESGRPO_LORA_KERNELS is deprecated and goes in the next release: set the ES config key "
                          f"engine.lora_ops: {old} instead", FutureWarning, stacklevel=2)
            data = {**data, "lora_ops": old}
        return data


@dataclass(frozen=True)
class Member:
    """One job of a population: the policy θ + scale·ε(seed). ``UNPERTURBED`` (scale 0) is θ itself."""

    seed: int
    scale: float

    @property
    def perturbed(self) -> bool:
        return self.scale != 0.0


UNPERTURBED = Member(seed=0, scale=0.0)


@dataclass
class MemberOutput:
    """A member's completions and the seconds spent on it: generating, and making it (perturbing and restoring in
    place, or writing its adapter)."""

    completions: list[Completion]
    generation_s: float
    prepare_s: float

    @property
    def tokens(self) -> int:
        return sum(c.n_tokens for c in self.completions)


class ESEngine(Protocol):
    """Every operation the ES trainer, its speed probe and the weight sync call. Weight changes are in place and
    finished on the device when a call returns; every call may come from another process (Ray)."""

    def perturb(self, seed: int, scale: float) -> None:
        """θ += scale·ε(seed)."""

    def restore(self, seed: int, scale: float) -> None:
        """Back to θ from before ``perturb(seed, scale)``."""

    def apply_update(self, terms: UpdateTerms, adam: AdamStep | None = None) -> str:
        """θ += Σ c·ε(seed) over (seed, c) terms, or with ``adam`` Adam's step along that direction; returns the
        weights' checksum (engines must agree)."""

    def save_optimizer(self, path: str) -> None:
        """Adam's moments, to a safetensors file (a checkpoint's)."""

    def load_optimizer(self, path: str) -> None:
        """Adam's moments from ``save_optimizer``'s file (a resume)."""

    def evaluate_members(self, members: Sequence[Member], prompts: Sequence[str],
                         sampling: SamplingSettings) -> list[MemberOutput]:
        """Each member's completions on ``prompts``, in order; θ is unchanged afterwards."""

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        """One completion per prompt with the current weights."""

    def checksum(self) -> str:
        """Fingerprint of the weights (float64 sum and sum of squares): equal iff engines agree."""

    def count_elements(self) -> int:
        """How many weight elements ES perturbs."""

    def save_hf(self, out_dir: str, source_dir: str) -> str:
        """An HF checkpoint of the current weights (config and tokenizer from ``source_dir``)."""

    def probe(self, repeat: int = 5) -> dict[str, float]:
        """One perturbation pass over all weights timed against its memory-bandwidth bound."""

    def kv_cache_bytes(self) -> int:
        """The KV cache the engine preallocated (0 for engines that allocate as they go)."""

    def sequences_at_once(self, prompts: Sequence[str], max_new_tokens: int) -> tuple[int, int]:
        """How many sequences of the longest prompt plus ``max_new_tokens`` the engine runs at once, and its KV
        cache in tokens (0: not preallocated)."""

    def sync_address(self) -> str:
        """Where engine 0 hosts the rendezvous of the engines' weight-sync group."""

    def sync_init(self, address: str, rank: int, world: int) -> None:
        """Join the weight-sync group."""

    def broadcast_weights(self, src: int = 0) -> str:
        """Every weight from engine ``src`` to this one, in place; returns the checksum."""

    def info(self) -> dict[str, Any]:
        """What the engine is (kind, device, dtype, parameters), for the record."""


class InPlaceMembers(Protocol):
    """What the member loop needs of an engine whose members are made in place."""

    def perturb(self, seed: int, scale: float) -> None: ...

    def restore(self, seed: int, scale: float) -> None: ...

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]: ...

    def sync(self) -> None:
        """Wait until the device has finished the weight change (the clock stops only then)."""


def evaluate_in_place(engine: InPlaceMembers, members: Sequence[Member], prompts: Sequence[str],
                      sampling: SamplingSettings) -> list[MemberOutput]:
    """Perturb, generate, restore, member by member: the one member loop of engines that change weights in place."""
    outputs = []
    for m in members:
        t0 = time.perf_counter()
        if m.perturbed:
            engine.perturb(m.seed, m.scale)
            engine.sync()
        t1 = time.perf_counter()
        completions = engine.generate(prompts, sampling)
        t2 = time.perf_counter()
        if m.perturbed:
            engine.restore(m.seed, m.scale)
            engine.sync()
        t3 = time.perf_counter()
        outputs.append(MemberOutput(completions, generation_s=t2 - t1, prepare_s=(t1 - t0) + (t3 - t2)))
    return outputs


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
