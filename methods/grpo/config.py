"""GRPO hyperparameters. Defaults mirror the published alignment baseline; every TRL default that
changed across releases (loss_type, beta, bf16, gradient checkpointing, lr) is set explicitly."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from harness.config import StrictModel
from harness.method import MethodConfig


class LoraSettings(StrictModel):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class GRPOSettings(MethodConfig):
    num_generations: int = Field(30, gt=1, le=100_000)  # as ES's population: bounded by what a step can score
    prompts_per_step: int = Field(2, gt=0, le=100_000)  # completions per step = prompts_per_step × num_generations
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
    bf16: bool = False  # bf16 autocast for forward and backward
    # the dtype the trained weights (and so gradients and AdamW states) are kept in. None: bfloat16 with bf16,
    # else float32 (TRL's own default loads bf16 and trains pure bf16). float32 with bf16: fp32 master weights
    # and Adam states under bf16 compute, as DeepSpeed ZeRO ran the published baseline (≈16 bytes/parameter)
    weights_dtype: Literal["bfloat16", "float32"] | None = None
    gradient_checkpointing: bool = False
    device: Literal["cpu", "cuda"] = "cpu"
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    # colocated vLLM hands its weights and KV cache back while the policy trains (TRL's sleep mode, level 2): the
    # full-parameter 7B step needs that memory (weights + grads + AdamW ≈ 54 GB in bf16); CUDA only
    vllm_sleep_mode: bool = False
    # TRL's bias-corrected KL gradient (added in TRL 0.26, the pinned TRL's default); the published runs, on TRL
    # 0.24, used the uncorrected one
    use_bias_correction_kl: bool = True
    # vLLM generation only: how TRL corrects for vLLM's sampling logprobs. TRL 0.24: token_truncate at 2.0 (its
    # truncated importance sampling); the pinned TRL's default: sequence_mask at 3.0
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate",
                                           "sequence_mask"] = "sequence_mask"
    vllm_importance_sampling_clip_max: float = Field(3.0, gt=0)
    # repeated: the training rows repeated to cover every step and shuffled once by TRL's sampler; epochs: each
    # row once, the trainer making as many shuffled passes as the steps need (the published run: 4 passes of 250)
    prompt_order: Literal["repeated", "epochs"] = "repeated"
    # true: TRL tokenizes rollout prompts with the tokenizer's BOS (TRL >= 0.26, the pinned one); false: without it,
    # as TRL <= 0.25 did (the published runs). Evaluation prompts keep the BOS either way, as every method's do.
    prompt_bos: bool = True
    lora: LoraSettings | None = None
    deepspeed: str | None = None  # path to a DeepSpeed JSON (ZeRO-2 for multi-GPU), launched by accelerate
    threads: int = Field(2, gt=0)
    # step: λ takes one step per optimizer step from that step's mean cost (like ES, once per update);
    # reward_call: inside every reward call, before the call's rewards are formed (the published GRPO script)
    lambda_update: Literal["step", "reward_call"] = "step"

    @model_validator(mode="after")
    def _sleep_needs_colocated_cuda(self) -> "GRPOSettings":
        if self.vllm_sleep_mode and not (self.use_vllm and self.vllm_mode == "colocate" and self.device == "cuda"):
            raise ValueError("vllm_sleep_mode needs use_vllm with vllm_mode colocate on device cuda "
                             "(vLLM's sleep mode has no CPU backend)")
        return self

    @property
    def train_dtype(self) -> str:
        return self.weights_dtype or ("bfloat16" if self.bf16 else "float32")

    def precision(self) -> str:
        """What the run trains in, in words, for the record and the report."""
        lora = f"LoRA r {self.lora.r} on {'/'.join(self.lora.target_modules)}; " if self.lora else ""
        if self.train_dtype == "float32":
            return lora + ("fp32 master weights, grads and AdamW; bf16 autocast" if self.bf16 else "fp32 throughout")
        return lora + "bf16 weights, grads and AdamW states (pure bf16)"
