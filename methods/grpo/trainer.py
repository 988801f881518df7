"""GRPO on TRL: the reward is R − λ·C from the shared scorer; λ takes one step per optimizer step.

TRL's transformers generation cannot stop on strings, so completions are cut at the shared stop strings
before scoring (the same text ES is scored on); with ``use_vllm`` the stop strings go to vLLM directly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from harness import runlog
from harness.checkpoint import STATE_FILE, Preempted, latest_intact, numbered
from harness.errors import UserError
from harness.generation import HFGenerator
from harness.memory_plan import plan_record, plan_training
from harness.records import atomic_write_text
from harness.method import RunContext, RunSettings
from harness.template import cut_at_stop, format_prompt
from harness.vllm.process import prepare_vllm_process
from harness.vllm.memory import llm_kv_cache_bytes
from methods.grpo import trl_compat
from methods.grpo.config import GRPOSettings

log = logging.getLogger(__name__)


class StepStats:
    """What the reward function saw during the current optimizer step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.rewards: list[float] = []
        self.costs: list[float] = []
        self.scoring = 0.0
        self.generate_and_score = 0.0
        self.completions = 0
        self.tokens = 0
        self.started = time.perf_counter()


def make_reward_fn(ctx: RunContext, stats: StepStats, stops: list[str], lambda_per_call: bool = False,
                   strip: bool = True):
    def safe_rlhf_reward(prompts, completions, raw_prompt, completion_ids=None, **_: Any) -> list[float]:
        texts = [cut_at_stop(c, stops, strip) for c in completions]
        t = time.perf_counter()
        rewards, costs = ctx.score(raw_prompt, texts)
        stats.scoring += time.perf_counter() - t
        stats.rewards += rewards
        stats.costs += costs
        stats.completions += len(texts)  # spent once per step, summed over processes (HarnessCallback.on_log)
        stats.tokens += sum(len(ids) for ids in completion_ids) if completion_ids is not None else 0
        if lambda_per_call:  # the published script: λ steps on this call's costs, then forms its rewards
            ctx.update_lambda(statistics.fmean(costs))
        lam = ctx.lam.value
        return [r - lam * c for r, c in zip(rewards, costs)]

    return safe_rlhf_reward


class HarnessCallback(TrainerCallback):
    """Per optimizer step: λ update, record point, budget-mark evaluations, budget stop, checkpoints."""

    def __init__(self, ctx: RunContext, stats: StepStats, tokenizer, lambda_per_step: bool = True, accelerator=None):
        self.ctx, self.stats, self.tokenizer = ctx, stats, tokenizer
        self.lambda_per_step = lambda_per_step
        self.accelerator = accelerator
        self.main = accelerator is None or accelerator.is_main_process
        self.model = None
        self.bar = Progress(TextColumn(runlog.run_tag() or "GRPO"), BarColumn(), MofNCompleteColumn(), TextColumn("completions"),
                            TimeElapsedColumn(), TextColumn("{task.description}"))
        self.task = self.bar.add_task("", total=ctx.settings.budget.completions)

    def evaluate_due(self) -> None:
        """Evaluations come from the main process; the others only keep their budget marks in step."""
        if self.main:
            self.ctx.evaluate_due(HFGenerator(self.model, self.tokenizer), self.save_policy)
        else:
            self.ctx.evals_done.update(self.ctx.budget.evals_due(self.ctx.evals_done))

    def save_policy(self, out) -> None:
        """The policy as it stands (for drift at budget marks): TRL's model, as the run saves it at the end."""
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))

    def gathered(self) -> tuple[list[float], list[float], int, int]:
        """This step's rewards, costs, completions and tokens over every process (TRL scores each process's
        own completions), so λ, the budget and the stop are the same on all of them."""
        st = self.stats
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return st.rewards, st.costs, st.completions, st.tokens
        from accelerate.utils import gather_object

        rewards, costs = gather_object(list(st.rewards)), gather_object(list(st.costs))
        counts = gather_object([(st.completions, st.tokens)])
        return rewards, costs, sum(c for c, _ in counts), sum(t for _, t in counts)

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.model = model
        self.evaluate_due()
        self.bar.start()
        self.ctx.start_clock()

    def on_train_end(self, args, state, control, **kw):
        self.bar.stop()

    def on_step_begin(self, args, state, control, **kw):
        self.stats.reset()

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs or not self.stats.costs:
            return
        ctx, st = self.ctx, self.stats
        ctx.step = state.global_step
        rewards, costs, completions, tokens = self.gathered()
        ctx.budget.spend(completions, tokens)
        if self.lambda_per_step:
            ctx.update_lambda(statistics.fmean(costs))
        step_time = time.perf_counter() - st.started
        times = {"generation": max(st.generate_and_score - st.scoring, 0.0), "scoring": st.scoring,
                 "backward_optimizer": max(step_time - st.generate_and_score, 0.0), "step_wall": step_time}
        extra = {k: float(logs[k]) for k in ("loss", "kl", "grad_norm", "entropy") if k in logs
                 and isinstance(logs[k], (int, float)) and math.isfinite(logs[k])}
        point = ctx.log_point(rewards, costs, times, extra)
        self.bar.update(self.task, completed=min(ctx.budget.completions, ctx.settings.budget.completions),
                        description=f"step {ctx.step} R {point.reward:+.2f} C {point.cost:+.2f} λ {point.lam:.3f}")
        self.evaluate_due()
        if ctx.budget.exhausted:
            control.should_training_stop = True
        if ctx.stop:  # preemption: TRL saves a checkpoint right after this log, then training stops
            control.should_save = control.should_training_stop = True
        st.reset()

    def on_save(self, args, state, control, **kw):
        """TRL wrote checkpoint-N; the harness state goes in last and marks it complete."""
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.ctx.tick()
        if self.main:
            atomic_write_text(ckpt / STATE_FILE, json.dumps(self.ctx.snapshot_state(), indent=1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    return latest_intact(numbered(run_dir / "trl", "checkpoint"))


def build_trainer(cfg: GRPOSettings, ctx: RunContext, stats: StepStats):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    s = ctx.settings
    torch.set_num_threads(cfg.threads)
    if cfg.use_vllm and cfg.vllm_mode == "colocate":
        colocated_vllm_env()
        prepare_vllm_process()  # TRL syncs the trained weights into vLLM in place: CPU weights stay live
    tokenizer = AutoTokenizer.from_pretrained(ctx.policy_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(ctx.policy_path, dtype=getattr(torch, cfg.train_dtype))
    per_step = cfg.prompts_per_step * cfg.num_generations
    per_device = per_device_batch(cfg)
    max_steps = math.ceil(s.budget.completions / per_step)
    rows = [{"prompt": format_prompt(p.prompt), "raw_prompt": p.prompt} for p in ctx.prompts.train]
    dataset = Dataset.from_list(training_rows(cfg, rows, max_steps))
    args = GRPOConfig(**grpo_arguments(cfg, s, ctx.run_dir, per_device, max_steps))
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")

    def generate_and_score_took(seconds: float) -> None:
        stats.generate_and_score += seconds

    rollout_tokenizer = tokenizer if cfg.prompt_bos else without_bos(tokenizer, rows[0]["prompt"])
    trainer = trl_compat.timed_trainer(GRPOTrainer, generate_and_score_took)(model=model, args=args, train_dataset=dataset, processing_class=rollout_tokenizer,
                               reward_funcs=make_reward_fn(ctx, stats, s.rollout.training_stops,
                                                           cfg.lambda_update == "reward_call", s.rollout.strip),
                               peft_config=peft_config)
    check_prompt_bos(trainer, tokenizer, rows[0]["prompt"], cfg.prompt_bos)
    # The harness reports progress and metrics; TRL's own printers would repeat them as raw dicts.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(HarnessCallback(ctx, stats, tokenizer, lambda_per_step=cfg.lambda_update == "step",
                                         accelerator=trainer.accelerator))
    return trainer, tokenizer


def without_bos(tokenizer, example: str):
    """A copy of ``tokenizer`` that adds no BOS (``prompt_bos: false``); the original, which evaluation uses, keeps
    it. A tokenizer that adds none already is returned as it is."""
    import copy

    bos = tokenizer.bos_token_id
    if bos is None or tokenizer(example)["input_ids"][:1] != [bos]:
        return tokenizer
    quiet = copy.deepcopy(tokenizer)
    quiet.add_bos_token = False
    if quiet(example)["input_ids"][:1] == [bos]:
        raise UserError(f"prompt_bos: false: the tokenizer {type(tokenizer).__name__} still adds its BOS with "
                        "add_bos_token off; this policy's tokenizer cannot reproduce TRL <= 0.25's prompts")
    return quiet


def check_prompt_bos(trainer, tokenizer, example: str, want: bool) -> None:
    """TRL's own rollout ids for a training prompt start with the BOS exactly when ``prompt_bos`` says so (for a
    tokenizer that adds one at all): a TRL that tokenized otherwise would change the published reproduction."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer(example)["input_ids"][:1] != [bos]:
        return
    starts = trl_compat.rollout_prompt_ids(trainer, [example])[0][:1] == [bos]
    if starts != want:
        raise trl_compat.TRLIncompatible(f"prompt_bos: {str(want).lower()}, but TRL {trl_compat.check_version()} "
                                         f"tokenizes rollout prompts {'with' if starts else 'without'} the BOS")


def training_rows(cfg: GRPOSettings, rows: list[dict[str, str]], max_steps: int) -> list[dict[str, str]]:
    """The dataset TRL samples from: ``repeated``, enough copies of the rows for every step (TRL shuffles them with
    the run seed once); ``epochs``, the rows once, passed over again and reshuffled each epoch by the trainer."""
    if cfg.prompt_order == "epochs":
        return list(rows)
    return rows * math.ceil(max_steps * cfg.prompts_per_step / len(rows) + 1)


def grpo_arguments(cfg: GRPOSettings, s: RunSettings, run_dir: Path, per_device: int, max_steps: int) -> dict[str, Any]:
    """Every ``GRPOConfig`` argument the project sets. Each field whose default changed between TRL 0.24 (the
    published runs') and the pinned TRL is set here from the config, never left to the installed release
    (tests/test_grpo.py holds the list)."""
    return dict(
        output_dir=str(run_dir / "trl"), seed=s.seed, data_seed=s.seed, max_steps=max_steps,
        per_device_train_batch_size=per_device, num_generations=cfg.num_generations,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=0, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, max_completion_length=s.rollout.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, beta=cfg.beta, loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards, epsilon=cfg.epsilon, num_iterations=cfg.num_iterations,
        use_bias_correction_kl=cfg.use_bias_correction_kl,
        bf16=cfg.bf16, gradient_checkpointing=cfg.gradient_checkpointing, use_cpu=cfg.device == "cpu",
        use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode, vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_importance_sampling_mode=cfg.vllm_importance_sampling_mode,
        vllm_importance_sampling_clip_max=cfg.vllm_importance_sampling_clip_max,
        vllm_enable_sleep_mode=cfg.vllm_sleep_mode, generation_kwargs=generation_kwargs(cfg, s),
        logging_steps=1, report_to="none", deepspeed=cfg.deepspeed,
        # no periodic checkpoints unless asked: transformers' "steps" strategy also saves at the end of training,
        # optimizer included (38 GB at 7B) beside the final model; a preemption still checkpoints (on_log)
        save_strategy="steps" if s.checkpoint_every else "no", save_steps=s.checkpoint_every or 1,
        save_total_limit=s.keep_checkpoints,
        disable_tqdm=False, remove_unused_columns=False, shuffle_dataset=True,
    )


def processes() -> int:
    """Training processes of this launch (accelerate/torchrun set WORLD_SIZE; one otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_device_batch(cfg: GRPOSettings) -> int:
    """Completions each process generates per micro-step, such that one optimizer step scores
    prompts_per_step × num_generations completions however many processes share it (the published baseline:
    1 per device × 15 accumulation steps × 4 processes = 60)."""
    per_step = cfg.prompts_per_step * cfg.num_generations
    share = processes() * cfg.gradient_accumulation_steps
    if per_step % share:
        raise UserError(f"prompts_per_step × num_generations = {per_step} completions per step cannot be split over "
                        f"{processes()} process(es) × {cfg.gradient_accumulation_steps} accumulation steps")
    return per_step // share


def colocated_vllm_env() -> None:
    """TRL's colocated vLLM runs as an external launcher: it needs a torch.distributed environment even for
    one process (as `torchrun --nproc_per_node 1` would set)."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def vllm_words(cfg: GRPOSettings) -> str:
    return f"vLLM ({cfg.vllm_mode}{', asleep while training' if cfg.vllm_sleep_mode else ''})"


def generation_kwargs(cfg: GRPOSettings, s: RunSettings) -> dict | None:
    """Stops for vLLM rollouts (TRL's transformers generation cannot stop on strings: completions are cut
    before scoring instead); fixed-length rollouts ignore EOS on either path."""
    if cfg.use_vllm:
        return {"stop": s.rollout.training_stops, "ignore_eos": s.rollout.fixed_length}
    return {"min_new_tokens": s.rollout.max_new_tokens} if s.rollout.fixed_length else None


def memory_needs(cfg: GRPOSettings, total_gib: float) -> dict[str, float]:
    """Bytes per policy parameter that training holds at least (activations come on top), and the colocated
    vLLM's share of the device: TRL gives it ``vllm_gpu_memory_utilization`` of the whole GPU."""
    weights = 4.0 if cfg.train_dtype == "float32" else 2.0
    needs = {"policy weights": weights}
    if not cfg.lora:  # AdamW keeps two states per parameter, in the parameters' dtype
        needs.update({"gradients": weights, "AdamW states": 2 * weights})
    if cfg.use_vllm and cfg.vllm_mode == "colocate":
        needs["colocated vLLM GiB"] = cfg.vllm_gpu_memory_utilization * total_gib
    return needs


def plan_memory(cfg: GRPOSettings, ctx: RunContext) -> None:
    """One process on one GPU: refuse before training when the lower bound of what it holds is more than is
    free (the scorer may be beside it), and keep the plan in the record."""
    import torch

    if cfg.device != "cuda" or not torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    total_gib = torch.cuda.mem_get_info()[1] / 2**30
    plan = plan_training(ctx.policy_path, memory_needs(cfg, total_gib), torch.cuda.current_device())
    ctx.add_figures("memory", {"plan": plan_record(plan)})
    ctx.note(f"memory plan: {plan.describe()}")
    plan.check("GRPO")


def train(cfg: GRPOSettings, ctx: RunContext) -> None:
    stats = StepStats()
    ctx.describe(variant="vllm" if cfg.use_vllm else "hf", precision=cfg.precision())
    if cfg.use_vllm and (pair := trl_compat.vllm_pair_note()):
        log.warning(pair)
        ctx.note(pair)
    plan_memory(cfg, ctx)
    trainer, tokenizer = build_trainer(cfg, ctx, stats)
    ctx.budget.gpus = trainer.accelerator.num_processes if cfg.device == "cuda" else 0
    ctx.note(f"GRPO on TRL {trl_compat.check_version()}, {cfg.prompts_per_step}×{cfg.num_generations} "
             f"completions/step, generation by {vllm_words(cfg) if cfg.use_vllm else 'transformers'}")
    if cfg.use_vllm and cfg.vllm_mode == "colocate":  # its KV cache, reported apart as the ES engines' is
        kv = llm_kv_cache_bytes(trl_compat.colocated_llm(trainer))
        ctx.add_figures("memory", {"kv_cache_mb": round(kv / 2**20, 1)})
    trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    if ctx.stop:
        raise Preempted
    main = trainer.accelerator.is_main_process
    if main:  # the other processes' budget marks were kept in step by the callback
        ctx.evaluate_due(HFGenerator(trainer.model, tokenizer),
                         lambda d: (trainer.model.save_pretrained(str(d)), tokenizer.save_pretrained(str(d))))
    out = ctx.run_dir / "model_saves" / "latest_hf"
    trainer.save_model(str(out))  # collective under DeepSpeed; writes from the main process
    if main:
        tokenizer.save_pretrained(str(out))
