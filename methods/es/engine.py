"""The engine contract and the in-place ES operations every engine shares.

An engine holds one copy of the policy weights and does, in place:
``perturb(seed, scale)`` θ += scale·ε(seed); ``restore(seed, scale)`` back to θ exactly (snapshot) or
θ −= scale·ε(seed) (subtract: exact in fp32 up to rounding, not in bf16); ``apply_update(terms)``
θ += Σ c·ε(seed); ``generate``; ``checksum``; ``save_hf(dir)``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import Field

from harness.config import StrictModel
from harness.generation import Completion, SamplingSettings
from methods.es.noise import add_combination_, add_noise_

HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja")


class EngineConfig(StrictModel):
    kind: Literal["hf", "vllm"] = "hf"
    model_path: str = ""
    device: str = "cpu"  # 'cpu', 'cuda' (one GPU per engine; Ray assigns which)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    restore: Literal["snapshot", "subtract"] = "snapshot"
    threads: int = Field(1, gt=0)  # torch CPU threads per engine
    batch_size: int = Field(64, gt=0)  # generation batch (hf engine)
    # vLLM only
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    kv_cache_gib: float = Field(0.25, gt=0)  # CPU backend KV cache
    enforce_eager: bool = True
    max_model_len: int = Field(256, gt=0)


class InPlaceES:
    """Perturb/restore/update over ``named_views()``: (HF name, live tensor view) pairs."""

    restore_mode: str = "snapshot"
    _snapshot: list[torch.Tensor] | None = None

    def named_views(self) -> list[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def perturb(self, seed: int, scale: float) -> None:
        views = self.named_views()
        if self.restore_mode == "snapshot" and self._snapshot is None:
            self._snapshot = [v.detach().clone() for _, v in views]
        for name, v in views:
            add_noise_(v, name, seed, scale)

    def restore(self, seed: int, scale: float) -> None:
        views = self.named_views()
        if self.restore_mode == "snapshot":
            assert self._snapshot is not None, "restore() without perturb()"
            with torch.no_grad():
                for (_, v), s in zip(views, self._snapshot):
                    v.copy_(s)
        else:
            for name, v in views:
                add_noise_(v, name, seed, -scale)

    def apply_update(self, terms: Sequence[tuple[int, float]]) -> str:
        for name, v in self.named_views():
            add_combination_(v, name, terms)
        if self._snapshot is not None:
            with torch.no_grad():
                for (_, v), s in zip(self.named_views(), self._snapshot):
                    s.copy_(v)
        self._sync()
        return self.checksum()

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def checksum(self) -> str:
        """Cheap fingerprint of the weights: float64 sums, equal iff engines agree (same device type)."""
        total, sq = 0.0, 0.0
        with torch.no_grad():
            for _, v in self.named_views():
                d = v.double()
                total += float(d.sum())
                sq += float((d * d).sum())
        return f"{total:.10e}/{sq:.10e}"

    def count_elements(self) -> int:
        return sum(v.numel() for _, v in self.named_views())

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: v.detach().to("cpu", copy=True).contiguous() for name, v in self.named_views()}

    def save_hf(self, out_dir: str, source_dir: str) -> str:
        """HF-format checkpoint (safetensors + the source model's config and tokenizer), written atomically."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in HF_FILES:
            if (Path(source_dir) / f).is_file():
                shutil.copy2(Path(source_dir) / f, tmp / f)
        save_file(self.export_state_dict(), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        old = out.with_name(out.name + ".old")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return str(out)

    def evaluate_member(self, seed: int, scale: float, prompts: Sequence[str],
                        sampling: SamplingSettings) -> dict[str, Any]:
        """Perturb, generate, restore: one population member. ``scale`` 0 is the unperturbed policy."""
        t0 = time.perf_counter()
        if scale:
            self.perturb(seed, scale)
            self._sync()
        t1 = time.perf_counter()
        completions = self.generate(prompts, sampling)
        t2 = time.perf_counter()
        if scale:
            self.restore(seed, scale)
            self._sync()
        t3 = time.perf_counter()
        return {"completions": completions, "generation": t2 - t1, "perturb_restore": (t1 - t0) + (t3 - t2)}

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        raise NotImplementedError


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
