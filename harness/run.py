"""What every method run shares: settings, the context the harness builds, and the driver that owns it."""

from __future__ import annotations

import logging
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pydantic import Field

from harness import environment
from harness.budget import Budget, BudgetConfig
from harness.checkpoint import CheckpointManager, Preempted, StopFlag
from harness.config import StrictModel, load_config
from harness.data import PromptSet, PromptSource, load_prompt_set
from harness.errors import OutOfMemory, UserError, is_out_of_memory
from harness.evaluation import EvalSettings, evaluate
from harness.generation import Generator
from harness.lagrangian import LambdaConfig, LambdaState, update_lambda
from harness.policy import resolve_policy
from harness.records import EvalPoint, Point, RecordWriter, RunRecord, load_record
from harness.registry import get_method
from harness.scoring import Scorer, ScorerSpec, Scores, make_scorer

log = logging.getLogger(__name__)


class RunSettings(StrictModel):
    """Settings every method must share for a fair comparison (a benchmark spec sets them for all)."""

    policy: str = "builtin"  # 'builtin' or a local HF model directory
    data: PromptSource = Field(default_factory=PromptSource)
    scorer: ScorerSpec = Field(default_factory=ScorerSpec)
    judge: ScorerSpec | None = Field(default_factory=lambda: ScorerSpec(kind="judge"))
    eval: EvalSettings = Field(default_factory=EvalSettings)  # max_new_tokens/stop_strings: training rollouts too
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    lagrangian: LambdaConfig = Field(default_factory=LambdaConfig, alias="lambda")
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(0, ge=0)  # steps between resumable checkpoints (0: only at the end)
    keep_checkpoints: int = Field(2, gt=0)
    tensorboard: bool = True
    wandb: bool = False
    # Training rollouts generate exactly eval.max_new_tokens tokens, EOS and stop strings ignored, so every
    # method generates the same token counts (throughput benchmarks). Evaluation decodes as usual.
    fixed_length: bool = False

    model_config = {"populate_by_name": True, "extra": "forbid"}

    @property
    def rollout_stops(self) -> list[str]:
        return [] if self.fixed_length else list(self.eval.stop_strings)


class MethodConfig(StrictModel):
    run: RunSettings = Field(default_factory=RunSettings)


@dataclass
class RunContext:
    """Built by the harness for one method run; methods read from it and report through it."""

    settings: RunSettings
    run_dir: Path
    prompts: PromptSet
    scorer: Scorer
    judge: Scorer | None
    policy_path: Path
    writer: RecordWriter
    budget: Budget
    lam: LambdaState
    step: int = 0
    evals_done: set[int] = field(default_factory=set)
    train_seconds: float = 0.0  # wall-clock of training only; evaluation time is excluded
    resume_from: Path | None = None  # the checkpoint this run continues from
    stop: StopFlag = field(default_factory=StopFlag)
    _t_mark: float | None = None  # None until start_clock: nothing before training counts as training time

    # -- checkpoint state ----------------------------------------------------
    def snapshot_state(self) -> dict[str, Any]:
        """What the harness needs to continue exactly: step, λ, budget, evaluations, time."""
        return {"step": self.step, "lambda": vars(self.lam), "completions": self.budget.completions,
                "tokens": self.budget.tokens, "train_seconds": self.train_seconds,
                "evals_done": sorted(self.evals_done)}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.lam = LambdaState(**state["lambda"])
        self.budget.completions, self.budget.tokens = state["completions"], state["tokens"]
        self.train_seconds = self.budget.seconds = state["train_seconds"]
        self.evals_done = set(state["evals_done"])
        rec = self.writer.record
        rec.series = [p for p in rec.series if p.step <= self.step]  # drop steps lost with the kill
        rec.evals = [e for e in rec.evals if e.mark in self.evals_done]
        self.writer.flush()

    # -- scoring -------------------------------------------------------------
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scores:
        return self.scorer.score(prompts, responses)

    def update_lambda(self, mean_cost: float) -> LambdaState:
        self.lam = update_lambda(self.lam, mean_cost, self.settings.lagrangian)
        return self.lam

    # -- time accounting -----------------------------------------------------
    def start_clock(self) -> None:
        """Training time runs from here: model loading, engine start-up and the step-0 evaluation are excluded."""
        self._t_mark = time.monotonic()

    def tick(self) -> float:
        """Training seconds so far (call once per step; time inside evaluate_due is not counted)."""
        now = time.monotonic()
        if self._t_mark is not None:
            self.train_seconds += now - self._t_mark
            self._t_mark = now
        self.budget.seconds = self.train_seconds
        return self.train_seconds

    # -- logging -------------------------------------------------------------
    def log_point(self, rewards: Sequence[float], costs: Sequence[float], times: dict[str, float],
                  extra: dict[str, float] | None = None) -> Point:
        lam = self.lam.value
        r, c = statistics.fmean(rewards), statistics.fmean(costs)
        point = Point(step=self.step, samples=self.budget.completions, tokens=self.budget.tokens,
                      seconds=round(self.tick(), 4), reward=r, cost=c, objective=r - lam * c,
                      safe_ratio=sum(x <= 0 for x in costs) / len(costs), lam=lam, j_c=self.lam.j_c,
                      times={k: round(v, 5) for k, v in times.items()}, extra=extra or {})
        self.writer.log_point(point)
        return point

    def evaluate_due(self, generator: Generator) -> None:
        """Evaluate at every budget mark passed since the last call (all methods share the marks)."""
        self.tick()
        marks = self.budget.evals_due(self.evals_done)
        if not marks:
            return
        # The objective is taken at the reference λ₀ so that it compares across methods and steps; each
        # method's own λ at the time is recorded beside it.
        res = evaluate(generator, self.prompts.eval_prompts(), self.scorer, self.settings.eval,
                       self.settings.lagrangian.lambda_init, self.judge)
        for mark in marks:  # one evaluation stands for every mark passed in a single step
            self.evals_done.add(mark)
            self.writer.log_eval(EvalPoint(mark=mark, step=self.step, samples=self.budget.completions,
                                           tokens=self.budget.tokens, seconds=round(self.train_seconds, 4),
                                           lam=self.lam.value, metrics=res.metrics,
                                           samples_file=f"evals/eval-{mark:08d}.jsonl"), res.sample_dicts())
        log.info("eval @%d: R %.3f C %.3f safe %.2f", marks[-1], res.metrics["reward"], res.metrics["cost"],
                 res.metrics["safe_ratio"])
        if self._t_mark is not None:
            self._t_mark = time.monotonic()  # evaluation time is not training time


    def record_totals(self) -> None:
        """Throughput and the time split over the whole run, from the logged steps."""
        rec = self.writer.record
        split: dict[str, float] = {}
        for p in rec.series:
            for k, v in p.times.items():
                split[k] = split.get(k, 0.0) + v
        secs = max(self.train_seconds, 1e-9)
        rec.timing = {"train_seconds": round(secs, 3), **{f"{k}_seconds": round(v, 3) for k, v in split.items()}}
        rec.throughput.update(tokens_per_s=self.budget.tokens / secs, completions_per_s=self.budget.completions / secs)
        if split.get("scoring"):
            rec.throughput["scorer_pairs_per_s"] = self.budget.completions / split["scoring"]
        rec.outages = [vars(o) for o in getattr(self.scorer, "outages", [])]


def process_rank() -> int:
    """This process's rank in a multi-process launch (0 when there is none)."""
    return int(os.environ.get("RANK", "0"))


def existing_record(run_dir: Path, config: MethodConfig, method: str) -> RunRecord | None:
    """The record of an unfinished run of the same method and config in ``run_dir``, if any."""
    path = run_dir / "record.json"
    if not path.is_file():
        return None
    old = load_record(run_dir)
    if old.status == "completed":
        raise UserError(f"{run_dir}: this run already completed; choose another --run-dir")
    new_cfg = config.model_dump(mode="json", by_alias=True)
    old_cfg = {k: v for k, v in old.config.items() if k != "policy_path"}
    if old.method != method or old_cfg != new_cfg:
        raise UserError(f"{run_dir} holds a {old.method} run with a different config; "
                        "resume it with the same config or choose another --run-dir")
    return old


def create_context(method: str, config: MethodConfig, run_dir: Path, spec: dict[str, Any] | None = None,
                   progress: bool = True, resume_from: Path | None = None, label: str | None = None) -> RunContext:
    s = config.run
    prompts = load_prompt_set(s.data)
    scorer = make_scorer(s.scorer)
    judge = make_scorer(s.judge) if s.judge else None
    scorer_info = scorer.wait_ready() if hasattr(scorer, "wait_ready") else scorer.info()
    policy_path = resolve_policy(s.policy, progress=progress)
    record = RunRecord(
        run_id=run_dir.name, method=method, label=label or method, seed=s.seed, config=config.model_dump(mode="json", by_alias=True),
        spec=spec, environment=environment.capture(),
        data={"name": prompts.name, "hash": prompts.content_hash, "eval_hash": prompts.eval_hash,
              "n_train": len(prompts.train),
              "n_eval": len(prompts.eval), "source": s.data.model_dump(mode="json")},
        scorer=scorer_info, judge=judge.info() if judge else None,
        evaluation=s.eval.model_dump(mode="json"),
        budget={"unit": "completions", **s.budget.model_dump(mode="json")},
    )
    record.config["policy_path"] = str(policy_path)
    old = existing_record(run_dir, config, method)
    if old is not None and resume_from is not None:
        if old.data.get("hash") != record.data["hash"]:
            raise UserError(f"{run_dir}: the prompt set changed since this run started; cannot resume")
        old.status, old.error, old.finished = "running", None, None
        old.notes.append(f"resumed from {resume_from.name} at {record.started}")
        old.environment.setdefault("resumes", []).append(record.environment)
        record = old
    elif old is not None and process_rank() == 0:  # an unfinished run with nothing to resume from: start over
        (run_dir / "record.json").rename(run_dir / f"record.abandoned-{old.started.replace(':', '')}.json")
    # in a multi-process launch (accelerate, torchrun) only rank 0 writes the run's record; the others keep their
    # own beside it, for diagnosis
    rank = process_rank()
    writer = RecordWriter(run_dir if rank == 0 else run_dir / f"rank-{rank}", record,
                          tensorboard=s.tensorboard and rank == 0, wandb=s.wandb and rank == 0)
    ctx = RunContext(settings=s, run_dir=run_dir, prompts=prompts, scorer=scorer, judge=judge,
                     policy_path=policy_path, writer=writer, budget=Budget(s.budget),
                     lam=LambdaState.initial(s.lagrangian), resume_from=resume_from)
    if resume_from is not None:
        ctx.restore_state(CheckpointManager.load_state(resume_from))
    return ctx


def run_method(method_name: str, config: MethodConfig | str | Path | None, run_dir: Path,
               overrides: list[str] | None = None, spec: dict[str, Any] | None = None,
               label: str | None = None) -> Path:
    """Run one method to its budget; the record is written whatever happens. Returns the run directory."""
    method = get_method(method_name)
    if not isinstance(config, MethodConfig):
        config = load_config(method.config_model, config, overrides)
    run_dir = Path(run_dir)
    resume_from = method.latest_checkpoint(run_dir) if (run_dir / "record.json").is_file() else None
    ctx = create_context(method_name, config, run_dir, spec, resume_from=resume_from, label=label)
    ctx.stop.install()
    try:
        method.run(config, ctx)
    except Preempted:
        ctx.writer.finish("interrupted", f"stopped by {ctx.stop.signal} after step {ctx.step} and checkpointed; "
                                        "run the same command again to resume")
        raise
    except KeyboardInterrupt:
        ctx.writer.finish("interrupted", "interrupted by the user")
        raise
    except UserError as e:
        ctx.writer.finish("failed", str(e))
        raise
    except Exception as e:
        message = "".join(traceback.format_exception_only(e)).strip()
        if is_out_of_memory(e):  # a result: the record keeps the peaks it reached
            ctx.writer.finish("oom", message[-2000:])
            raise OutOfMemory(f"{method_name} ran out of memory (record: {run_dir / 'record.json'}): "
                              f"{message.splitlines()[-1][:300]}") from None
        ctx.writer.finish("failed", message)
        raise
    finally:
        ctx.stop.uninstall()
    ctx.record_totals()
    ctx.writer.finish("completed")
    return run_dir
