"""The method contract: the settings every method shares, the context the harness builds for a run, and the
``Method`` Protocol a registered method meets (docs/adding-a-method.md)."""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Mapping, Protocol, Sequence

from pydantic import Field, model_validator

from harness.budget import Budget, BudgetConfig
from harness.checkpoint import StopFlag, identity, sealed
from harness.config import StrictModel
from harness.data import PromptSet, PromptSource
from harness.drift import drift, policy_kl
from harness.errors import UserError, is_out_of_memory
from harness.evaluation import EvalSettings, evaluate
from harness.generation import Generator, RolloutSettings, move_rollout_keys
from harness.lagrangian import LambdaConfig, LambdaState, update_lambda
from harness.records import EvalPoint, Point, RecordWriter
from harness.scoring import Scorer, ScorerSpec, Scores
from harness.suites import LoadedSuite

log = logging.getLogger(__name__)


class RunSettings(StrictModel):
    """Settings every method must share for a fair comparison (a benchmark spec sets them for all)."""

    policy: str = "builtin"  # 'builtin' or a local HF model directory
    data: PromptSource = Field(default_factory=PromptSource)
    scorer: ScorerSpec = Field(default_factory=ScorerSpec)
    judge: ScorerSpec | None = Field(default_factory=lambda: ScorerSpec(kind="judge"))
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)  # training rollouts and evaluations
    eval: EvalSettings = Field(default_factory=EvalSettings)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    lagrangian: LambdaConfig = Field(default_factory=LambdaConfig, alias="lambda")
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(0, ge=0)  # steps between resumable checkpoints (0: only at the end)
    keep_checkpoints: int = Field(2, gt=0)
    tensorboard: bool = True
    wandb: bool = False

    model_config = {"populate_by_name": True, "extra": "forbid"}

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return move_rollout_keys(data, "run.")


class MethodConfig(StrictModel):
    run: RunSettings = Field(default_factory=RunSettings)

    def engine_context(self) -> int | None:
        """The longest sequence the method's generation engine is set to hold, where it sets one (the policy's own
        context bounds it either way)."""
        return None


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
    suites: list[LoadedSuite] = field(default_factory=list)  # evaluated beside the held-out prompts at every mark
    stop: StopFlag = field(default_factory=StopFlag)
    _t_mark: float | None = None  # None until start_clock: nothing before training counts as training time

    # -- checkpoint state ----------------------------------------------------
    def snapshot_state(self) -> dict[str, Any]:
        """What the harness needs to continue exactly: step, λ, budget, evaluations, time."""
        rec = self.writer.record
        return sealed({"step": self.step, "lambda": vars(self.lam), "completions": self.budget.completions,
                       "tokens": self.budget.tokens, "train_seconds": self.train_seconds,
                       "evals_done": sorted(self.evals_done), "run": identity(rec.run_id, rec.method, rec.config)})

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

    # -- what a method reports beyond its steps -----------------------------
    def note(self, text: str, warn: bool = False) -> None:
        """A line in the record's notes (and the log's warnings, with ``warn``)."""
        self.writer.record.notes.append(text)
        if warn:
            log.warning(text)

    def describe(self, variant: str, precision: str) -> None:
        """What this run is, in the method's words: its variant (``vllm/lowrank``) and the precision of the weights it
        trains with their gradients and optimizer state (or none); launchers compare runs by these."""
        self.writer.record.variant, self.writer.record.precision = variant, precision

    def add_figures(self, section: Literal["throughput", "memory", "environment"], figures: Mapping[str, Any]) -> None:
        """Figures of the run in one of the record's sections (probe speeds, KV cache size, engine nodes...)."""
        getattr(self.writer.record, section).update(figures)

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
        point = Point(step=self.step, completions=self.budget.completions, tokens=self.budget.tokens,
                      seconds=round(self.tick(), 4), reward=r, cost=c, objective=r - lam * c,
                      safe_ratio=sum(x <= 0 for x in costs) / len(costs), lam=lam, j_c=self.lam.j_c,
                      times={k: round(v, 5) for k, v in times.items()}, extra=extra or {})
        self.writer.log_point(point)
        return point

    def evaluate_due(self, generator: Generator, save_policy: Callable[[Path], None] | None = None) -> None:
        """Evaluate at every budget mark passed since the last call (all methods share the marks). ``save_policy``
        writes the current policy as an HF folder: with ``eval.drift_every_mark`` the evaluation then measures
        its drift and KL from the start too."""
        self.tick()
        marks = self.budget.evals_due(self.evals_done)
        if not marks:
            return
        # The objective is taken at the reference λ₀ so that it compares across methods and steps; each
        # method's own λ at the time is recorded beside it.
        res = evaluate(generator, self.prompts.eval_prompts(), self.scorer, self.settings.eval, self.settings.rollout,
                       self.settings.lagrangian.lambda_init, self.judge, self.suites)
        if self.settings.eval.drift_every_mark and save_policy is not None:
            res.metrics.update(self.drift_now(save_policy, res.sample_dicts()))
        for mark in marks:  # one evaluation stands for every mark passed in a single step
            self.evals_done.add(mark)
            self.writer.log_eval(EvalPoint(mark=mark, step=self.step, completions=self.budget.completions,
                                           tokens=self.budget.tokens, seconds=round(self.train_seconds, 4),
                                           lam=self.lam.value, metrics=res.metrics,
                                           samples_file=f"evals/eval-{mark:08d}.jsonl",
                                           suite_files={n: f"evals/{n}-{mark:08d}.jsonl" for n in res.suite_samples}),
                                 res.sample_dicts(), res.suite_samples)
        at = "" if marks[-1] == self.budget.completions else f" (budget mark {marks[-1]})"
        extra = "".join(f" {k} {res.metrics[k]:.2f}" for k in ("over_refusal_rate", "attack_success_rate")
                        if k in res.metrics)
        log.info("eval at %d completions%s: R %.3f C %.3f safe %.2f%s", self.budget.completions, at,
                 res.metrics["reward"], res.metrics["cost"], res.metrics["safe_ratio"], extra)
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
        saved = self.run_dir / "model_saves" / "latest_hf"
        if rec.kind == "run" and saved.is_dir() and os.environ.get("RANK", "0") == "0":
            try:  # how far training moved the policy (an adapter-only save has no full weights to compare)
                with self.writer.aside():
                    rec.drift = {k: round(v, 8) for k, v in drift(self.policy_path, saved).items()}
            except UserError as e:
                self.note(f"no drift figure: {e}")
            if self.settings.eval.kl_prompts and rec.drift and rec.evals:
                self.measure_kl(saved)

    def drift_now(self, save_policy: Callable[[Path], None], samples: list[dict[str, Any]]) -> dict[str, float]:
        """The current policy's ‖θ − θ₀‖ / ‖θ₀‖ and KL(π ‖ π₀) on this evaluation's answers (0 before any step);
        a failure is noted once and leaves the mark without them."""
        import shutil

        if self.step == 0:
            return {"drift_total": 0.0, "kl_per_token": 0.0}
        tmp = self.run_dir / "drift-at-mark"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_policy(tmp)
            with self.writer.aside():
                out = {"drift_total": drift(self.policy_path, tmp)["total"]}
            if self.settings.eval.kl_prompts:
                out["kl_per_token"] = self.kl_from_start(tmp, samples)["kl_per_token"]
            return out
        except Exception as e:  # noqa: BLE001 - an extra figure: the run goes on without it
            if not any(n.startswith("no drift at budget marks") for n in self.writer.record.notes):
                self.note(f"no drift at budget marks: {failure_words(e)}", warn=True)
            return {}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def kl_from_start(self, tuned: Path, samples: list[dict[str, Any]]) -> dict[str, float]:
        """KL(π ‖ π₀) on the first ``eval.kl_prompts`` answers, on the GPU where there is one, measured aside."""
        import torch

        cuda = torch.cuda.is_available()
        with self.writer.aside():
            return policy_kl(self.policy_path, tuned, samples[: self.settings.eval.kl_prompts],
                             device="cuda" if cuda else "cpu", dtype=torch.bfloat16 if cuda else torch.float32)

    def measure_kl(self, saved: Path) -> None:
        """KL(π ‖ π₀) on the final evaluation's answers, into the record's drift; a failure (out of memory beside a
        method's engines, an unreadable save) is a note, never a failed run."""
        from harness.config import read_jsonl

        rec = self.writer.record
        samples = [s for _, s in read_jsonl(self.run_dir / rec.evals[-1].samples_file, "evaluation samples file")]
        try:
            kl = self.kl_from_start(saved, samples)
        except Exception as e:  # noqa: BLE001 - the run is done; the figure is extra
            self.note(f"no KL figure: {failure_words(e)}", warn=True)
            return
        rec.drift.update({k: round(v, 8) for k, v in kl.items()})


def failure_words(e: BaseException) -> str:
    """One line for a note: out of memory named as such, then the error's first line."""
    first = (str(e).splitlines() or [type(e).__name__])[0][:300]
    return f"out of memory: {first}" if is_out_of_memory(e) else first


class Method(Protocol):
    """A training method. ``run`` trains from ``ctx`` (policy, prompts, scorer, budget, λ, record writer)
    until the budget is spent, evaluating through ``ctx.evaluate_due`` and logging through ``ctx.log_point``.
    ``launcher`` says how a job spanning several nodes starts it: ``ray`` (one driver, workers as Ray actors on
    every node) or ``accelerate`` (one process per node, ranks from SLURM). docs/adding-a-method.md says more."""

    name: ClassVar[str]
    config_model: ClassVar[type[MethodConfig]]
    launcher: ClassVar[str]

    def run(self, config: MethodConfig, ctx: RunContext) -> None: ...

    def latest_checkpoint(self, run_dir: Path) -> Path | None:
        """The newest complete checkpoint in ``run_dir`` (it holds ``esgrpo_state.json``), or None."""
        ...

    def cluster_overrides(self, ray_address: str, workers: int) -> list[str]:
        """Config overrides (KEY=VALUE) that put a run on a job's own Ray cluster at ``ray_address`` with ``workers``
        GPUs or CPU workers in all; a SLURM job of several nodes renders them (``ray`` launchers only: an
        ``accelerate`` method returns [])."""
        ...
