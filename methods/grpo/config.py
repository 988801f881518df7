"""GRPO hyperparameters. Defaults mirror the published alignment baseline; every TRL default that
changed across releases (loss_type, beta, bf16, gradient checkpointing, lr) is set explicitly."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.config import StrictModel
from harness.run import MethodConfig


class LoraSettings(StrictModel):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class GRPOSettings(MethodConfig):
    num_generations: int = Field(30, gt=1)
    prompts_per_step: int = Field(2, gt=0)  # completions per step = prompts_per_step × num_generations
    learning_rate: float = Field(5e-6, gt=0)
    lr_scheduler_type: str = "constant"
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.0, ge=0)  # KL coefficient (0: no reference model)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    epsilon: float = Field(0.2, gt=0)
    num_iterations: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    bf16: bool = False
    gradient_checkpointing: bool = False
    device: Literal["cpu", "cuda"] = "cpu"
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    lora: LoraSettings | None = None
    deepspeed: str | None = None  # path to a DeepSpeed JSON (ZeRO-2 for multi-GPU), launched by accelerate
    threads: int = Field(2, gt=0)
