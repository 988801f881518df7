"""The run driver: builds a method run's context (prompts, scorer, policy, record) and runs the method to its
budget, writing the record whatever happens."""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Any

from harness import environment, runlog
from harness.budget import Budget
from harness.checkpoint import Preempted, check_owner, damage, identity, passed_over, read_state
from harness.config import load_config
from harness.data import load_prompt_set
from harness.data.context import fit_to_context, prompt_room
from harness.errors import OutOfMemory, UserError, is_disk_full, is_out_of_memory
from harness.evaluation import evaluation_record
from harness.fixtures.policy import resolve_policy
from harness.lagrangian import LambdaState
from harness.method import MethodConfig, RunContext
from harness.records import RecordWriter, RunRecord, load_record
from harness.registry import get_method
from harness.scoring import Scorer, ScorerSpec
from harness.scoring.builtin import BuiltinScorer, JudgeScorer
from harness.suites import Judge, JudgeSpec, load_suites, rule_judge
from harness.suites.judges import check_template
from harness.suites.suite import PolicyRoom

log = logging.getLogger(__name__)


def process_rank() -> int:
    """This process's rank in a multi-process launch (0 when there is none)."""
    return int(os.environ.get("RANK", "0"))


def make_scorer(spec: ScorerSpec | None = None) -> Scorer:
    """The scorer a run's settings name: built-in, the held-out judge, an HTTP service, or the service's own
    backends embedded in this process (no HTTP hop)."""
    spec = spec or ScorerSpec()
    if spec.kind == "builtin":
        return BuiltinScorer()
    if spec.kind == "judge":
        return JudgeScorer()
    if spec.kind == "http":
        from harness.scoring.client import HttpScorer

        return HttpScorer(spec)
    from scorer.backends import build_scorer
    from scorer.service_config import load_service_config

    return build_scorer(load_service_config(spec.config))


def make_judge(spec: JudgeSpec, suite: str) -> Judge:
    """A suite's judge: a rule written here, a judge model run by the scorer's judge runner in this process, or one
    a running scorer service serves."""
    if spec.kind == "http":
        from harness.suites.http_judge import HttpJudge

        return HttpJudge(spec, suite)
    if spec.kind != "generative":
        return rule_judge(spec, suite)
    check_template(spec, suite)
    from scorer.judge_model import GenerativeJudge

    return GenerativeJudge(spec, suite)


class UnloadedJudge:
    """A suite's judge on a rank that never evaluates: nothing loaded, and it says so if asked to judge."""

    @classmethod
    def make(cls, spec: JudgeSpec, suite: str) -> "UnloadedJudge":
        return cls()

    def judge(self, prompts, responses):
        raise RuntimeError("suites are evaluated on rank 0 only; this rank loaded no judge")

    def info(self) -> dict[str, Any]:
        return {"backend": "not loaded on this rank"}


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
    runlog.set_run(label or method, s.seed)
    runlog.attach_file(run_dir)
    prompts = load_prompt_set(s.data)
    scorer = make_scorer(s.scorer)
    judge = make_scorer(s.judge) if s.judge else None
    scorer_info = scorer.wait_ready() if hasattr(scorer, "wait_ready") else scorer.info()
    policy_path = resolve_policy(s.policy, progress=progress)
    room = prompt_room(policy_path, s.rollout.max_new_tokens, config.engine_context())
    loaded = prompts
    prompts.eval_prompts(s.eval.limit)  # a limit past the evaluation set is refused before any work
    prompts, truncated = fit_to_context(prompts, policy_path, room, s.data.long_prompts)
    # only rank 0 evaluates: the other ranks of a multi-process launch load no judge model
    suites = load_suites(s.eval.suites, make_judge if process_rank() == 0 else UnloadedJudge.make,
                         PolicyRoom(policy_path, room, s.data.long_prompts))
    record = RunRecord(
        run_id=run_dir.name, method=method, label=label or method, seed=s.seed, config=config.model_dump(mode="json", by_alias=True),
        spec=spec, environment=environment.capture(),
        data={"name": prompts.name, "hash": loaded.content_hash, "eval_hash": loaded.eval_hash,
              "n_train": len(prompts.train), "n_eval": len(prompts.eval), "truncated": truncated,
              "source": s.data.model_dump(mode="json"), "suites": {x.spec.name: x.describe() for x in suites}},
        scorer=scorer_info, judge=judge.info() if judge else None,
        evaluation=evaluation_record(s.eval, s.rollout),
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
                     lam=LambdaState.initial(s.lagrangian), resume_from=resume_from, suites=suites)
    if resume_from is not None:
        state = read_state(resume_from)
        check_owner(resume_from, state, identity(record.run_id, record.method, record.config))
        for newer in passed_over(resume_from):
            record.notes.append(f"checkpoint {newer.name} was damaged ({damage(newer)}); resumed from {resume_from.name}")
        ctx.restore_state(state)
        log.info("resuming from %s: step %d, %d of %d completions scored", resume_from.name, ctx.step,
                 ctx.budget.completions, s.budget.completions)
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
        if is_disk_full(e):  # the record still fits once the half-written checkpoint is gone
            ctx.writer.finish("failed", f"the disk is full: {message[-1000:]}")
            raise UserError(f"{method_name}: the disk under {run_dir} is full ({message.splitlines()[-1][:300]}); "
                            f"the record says so ({run_dir / 'record.json'})") from None
        ctx.writer.finish("failed", message)
        raise
    finally:
        ctx.stop.uninstall()
    ctx.record_totals()
    ctx.writer.finish("completed")
    return run_dir
