"""The transformers engine: a plain ``AutoModelForCausalLM`` on the CPU or one GPU."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from harness.generation import Completion, HFGenerator, SamplingSettings
from methods.es.engine import EngineConfig, Member, MemberOutput, evaluate_in_place, torch_dtype
from methods.es.in_place import InPlaceES
from methods.es.noise import NoiseSpec, make_noise


class HFEngine(InPlaceES):
    def __init__(self, cfg: EngineConfig, noise: NoiseSpec | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg.device == "cpu":
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.restore_mode = cfg.restore
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model_path, dtype=torch_dtype(cfg.dtype))
        self.model.to(cfg.device).eval().requires_grad_(False)  # type: ignore[arg-type]  # (transformers' .to stub)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
        self._gen = HFGenerator(self.model, self.tokenizer, batch_size=cfg.batch_size)
        self.noise = make_noise(noise or NoiseSpec(), self.model.config)
        # Tied tensors appear once (named_parameters dedupes); that is the set ES perturbs.
        self._views: list[tuple[str, torch.Tensor]] = [(n, p) for n, p in self.model.named_parameters()]

    def named_views(self) -> list[tuple[str, torch.Tensor]]:
        return self._views

    def generate(self, prompts: Sequence[str], sampling: SamplingSettings) -> list[Completion]:
        return self._gen.generate(prompts, sampling)

    def evaluate_members(self, members: Sequence[Member], prompts: Sequence[str],
                         sampling: SamplingSettings) -> list[MemberOutput]:
        return evaluate_in_place(self, members, prompts, sampling)

    def sequences_at_once(self, prompts: Sequence[str], max_new_tokens: int) -> tuple[int, int]:
        return self.cfg.batch_size, 0  # generates in batches of this size; no preallocated KV cache

    def info(self) -> dict[str, Any]:
        return {"engine": "hf", "device": self.cfg.device, "dtype": self.cfg.dtype,
                "parameters": self.count_elements()}
