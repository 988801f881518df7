"""``esgrpo eval``: a fixed policy (a base model, a published checkpoint, a run's saved weights) under the same
evaluation contract as trained runs, into an evaluation-only record that reports show as a reference row.

Greedy decoding on the evaluation prompts, scored by the scorer and judge; samples are appended to the samples
file chunk by chunk, so a killed evaluation resumes where it stopped without generating or scoring a finished
prompt again. ``--from-spec`` takes prompts, scorer, judge, evaluation settings and λ₀ from a benchmark spec's
shared settings, so the row is comparable with that spec's runs by construction.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from harness import environment, runlog
from harness.config import StrictModel, read_jsonl_resuming, read_text
from harness.config_diff import scorer_identity
from harness.data import PromptSet, PromptSource
from harness.data.context import fit_to_context, prompt_room
from harness.data.prompts import PromptFile, load_prompt_set, load_records
from harness.errors import UserError
from harness.evaluation import (EvalSample, EvalSettings, aggregate, checked_samples, eval_progress, evaluate_chunks,
                                evaluation_record)
from harness.generation import RolloutSettings, move_rollout_keys
from harness.lagrangian import LambdaConfig
from harness.memory_plan import plan_engine, vllm_memory_kwargs
from harness.fixtures.policy import resolve_policy
from harness.records import EvalPoint, RecordWriter, RunRecord, atomic_write_text, load_record
from harness.run import make_judge, make_scorer
from harness.scoring import ScorerSpec
from harness.suites import load_suites, suite_metrics
from harness.suites.suite import PolicyRoom, run_suite

log = logging.getLogger(__name__)
SAMPLES = "evals/eval-00000000.jsonl"
FIELDS = {f.name for f in dataclasses.fields(EvalSample)}


class EvalConfig(StrictModel):
    policy: str = "builtin"  # 'builtin' or a local HF model directory (a run's model_saves/latest_hf too)
    label: str = "reference"  # the row's name in reports
    data: PromptSource = Field(default_factory=PromptSource)  # its evaluation split is evaluated ...
    prompts: PromptFile | None = None  # ... unless every prompt of this source is
    scorer: ScorerSpec = Field(default_factory=ScorerSpec)
    judge: ScorerSpec | None = Field(default_factory=lambda: ScorerSpec(kind="judge"))
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)  # decoding (greedy), as a run's
    eval: EvalSettings = Field(default_factory=EvalSettings)
    lagrangian: LambdaConfig = Field(default_factory=LambdaConfig, alias="lambda")  # λ₀ of the objective
    engine: Literal["hf", "vllm"] = "hf"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(64, gt=0)  # prompts per generate call, and per chunk written to disk
    max_model_len: int = Field(2048, gt=0)  # vLLM
    vllm_runtime_gib: float = Field(6.0, gt=0)  # vLLM on a GPU: kept beside weights and KV cache for activations
    seed: int = Field(0, ge=0)

    model_config = {"populate_by_name": True, "extra": "forbid"}

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return move_rollout_keys(data, "")

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        from harness.launch.benchmark import check_name

        return check_name(v, "label")


def prompt_set(cfg: EvalConfig) -> PromptSet:
    if cfg.prompts is None:
        return load_prompt_set(cfg.data)
    records, name = load_records(cfg.prompts)
    return PromptSet(name=name, train=(), eval=tuple(records))


def prompt_source(text: str) -> PromptFile | str:
    """``builtin``, ``hub:ID[:SPLIT]`` or a JSONL/parquet file (PKU-SafeRLHF rows are recognized)."""
    if text == "builtin":
        return "builtin"
    if text.startswith("hub:"):
        hub_id, _, split = text[4:].partition(":")
        return PromptFile(kind="hub", hub_id=hub_id, hub_split=split or "test")
    path = Path(text)
    if path.suffix == ".parquet":
        return PromptFile(kind="parquet", path=text)
    first = next((line for line in read_text(path, "prompt file").split("\n") if line.strip()), "{}")
    try:
        pku = "is_response_0_safe" in json.loads(first)
    except (ValueError, TypeError):
        pku = False  # the loader names the line that is not JSON
    return PromptFile(kind="pku" if pku else "jsonl", path=text)


def make_generator(cfg: EvalConfig, policy: Path):
    import torch

    if cfg.engine == "vllm":
        from vllm import LLM

        from harness.generation import VLLMGenerator
        from harness.vllm.process import prepare_vllm_process

        prepare_vllm_process(cpu_kv_cache_gib=1)
        memory = {}
        if torch.cuda.is_available():  # beside an embedded scorer: the KV cache is what the scorer left free
            plan = plan_engine(policy, cfg.dtype, cfg.max_model_len, cfg.batch_size, snapshot=False,
                               runtime_gib=cfg.vllm_runtime_gib)
            plan.check("the evaluated policy's vLLM engine")
            log.info("memory plan: %s", plan.describe())
            memory = vllm_memory_kwargs(plan)
        return VLLMGenerator(LLM(model=str(policy), dtype=cfg.dtype, max_model_len=cfg.max_model_len, seed=cfg.seed,
                                 enable_prefix_caching=False, **memory))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.generation import HFGenerator

    model = AutoModelForCausalLM.from_pretrained(policy, dtype=getattr(torch, cfg.dtype)).to(cfg.device).eval()
    return HFGenerator(model, AutoTokenizer.from_pretrained(policy), batch_size=cfg.batch_size)


def read_done(path: Path) -> tuple[list[dict], bool]:
    """Samples already written, checked line by line, and whether a last line cut off by a kill mid-write was
    dropped (the file is rewritten without it, and that prompt evaluated again)."""
    if not path.is_file():
        return [], False
    rows, cut = read_jsonl_resuming(path, "evaluation samples file")
    done = checked_samples(path, rows)
    for lineno, s in rows:
        s.setdefault("severity", None)  # a samples file written before samples carried it
        if set(s) != FIELDS:
            raise UserError(f"{path}:{lineno}: not a sample of this evaluation (fields "
                            f"{', '.join(sorted(set(s) ^ FIELDS))[:200]} differ); choose another --out")
    if cut:
        atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in done))
    return done, cut


def resumed_differences(old: RunRecord, new: RunRecord) -> list[str]:
    """What an unfinished evaluation's record says it evaluated that this one would not: the prompt set, the
    policy's folder, the scorer and the judge."""
    diffs = [f"the prompt set (hash {str(old.data.get(k))[:12]} then, {str(new.data.get(k))[:12]} now)"
             for k in ("hash", "eval_hash") if old.data.get(k) != new.data.get(k)][:1]
    if old.config.get("policy_path") != new.config.get("policy_path"):
        diffs.append(f"the policy ({old.config.get('policy_path')} then, {new.config.get('policy_path')} now)")
    for what, was, now in (("scorer", old.scorer, new.scorer), ("judge", old.judge, new.judge)):
        if scorer_identity(was) != scorer_identity(now):
            diffs.append(f"the {what}'s /info")
    return diffs


def run_eval(cfg: EvalConfig, out: Path) -> Path:
    """Evaluate ``cfg.policy`` into ``out`` (record.json + samples + scatter.png); resumes an unfinished one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out exists and is not a folder")
    config = cfg.model_dump(mode="json", by_alias=True)
    old = None
    if (out / "record.json").is_file():
        old = load_record(out)
        if old.status == "completed":
            raise UserError(f"{out}: this evaluation already completed; choose another --out")
        if old.kind != "eval" or {k: v for k, v in old.config.items() if k != "policy_path"} != config:
            raise UserError(f"{out} holds another run or evaluation; resume it with the same settings or choose another --out")
    runlog.set_run(cfg.label)
    runlog.attach_file(out)
    prompts = prompt_set(cfg)
    scorer, judge = make_scorer(cfg.scorer), make_scorer(cfg.judge) if cfg.judge else None
    scorer_info = scorer.wait_ready() if hasattr(scorer, "wait_ready") else scorer.info()
    policy = resolve_policy(cfg.policy)
    # only the evaluation prompts are generated from: only they must fit the context
    room = prompt_room(policy, cfg.rollout.max_new_tokens, cfg.max_model_len if cfg.engine == "vllm" else None)
    evaluated, truncated = fit_to_context(dataclasses.replace(prompts, train=()), policy, room, cfg.data.long_prompts)
    suites = load_suites(cfg.eval.suites, make_judge, PolicyRoom(policy, room, cfg.data.long_prompts))
    todo_all = evaluated.eval_prompts(cfg.eval.limit)
    record = RunRecord(run_id=out.name, kind="eval", method="eval", label=cfg.label, seed=cfg.seed, config=config,
                       environment=environment.capture(), scorer=scorer_info, judge=judge.info() if judge else None,
                       data={"name": prompts.name, "hash": prompts.content_hash, "eval_hash": prompts.eval_hash,
                             "n_train": len(prompts.train), "n_eval": len(prompts.eval), "truncated": truncated,
                             "suites": {x.spec.name: x.describe() for x in suites}},
                       evaluation=evaluation_record(cfg.eval, cfg.rollout))
    record.config["policy_path"] = str(policy)
    samples_path = out / SAMPLES
    done, cut = read_done(samples_path)
    if done and old is not None and (diffs := resumed_differences(old, record)):
        raise UserError(f"{out}: the evaluation there was started on other inputs, so its samples cannot be kept: "
                        + "; ".join(diffs) + "; choose another --out")
    done_ids = {s["id"] for s in done}
    expected = {p.id for p in todo_all}
    if stray := sorted(done_ids - expected):
        raise UserError(f"{samples_path}: holds samples of prompts this evaluation does not read "
                        f"({', '.join(stray)[:200]}); choose another --out")
    if done:
        record.notes.append(f"resumed with {len(done)} of {len(todo_all)} prompts already evaluated"
                            + (" (a last line cut off mid-write dropped)" if cut else ""))
    writer = RecordWriter(out, record, tensorboard=False)
    try:
        todo = [p for p in todo_all if p.id not in done_ids]
        generator = make_generator(cfg, policy)
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        with eval_progress() as bar, samples_path.open("a", encoding="utf-8") as f:
            task = bar.add_task("", total=len(todo_all), completed=len(done))
            for part in evaluate_chunks(generator, todo, scorer, cfg.rollout, judge, chunk=cfg.batch_size):
                f.write("".join(json.dumps(s.__dict__, ensure_ascii=False) + "\n" for s in part))
                f.flush()
                os.fsync(f.fileno())
                done += [s.__dict__ for s in part]
                bar.update(task, completed=len(done))
                if bar.disable:  # off a terminal (a job's log), a line per chunk instead of the bar
                    log.info("evaluated %d of %d prompts", len(done), len(todo_all))
        order = {p.id: i for i, p in enumerate(todo_all)}
        done.sort(key=lambda s: order[s["id"]])
        suite_samples = {}
        for suite in suites:  # after the prompts above; a resumed evaluation runs them again
            log.info("suite %s: %d prompts, judged by %s", suite.spec.name, len(suite.prompts),
                     record.data["suites"][suite.spec.name]["judge"].get("backend"))
            suite_samples[suite.spec.name] = [x for part in run_suite(generator, suite, cfg.rollout) for x in part]
        metrics = {**aggregate([EvalSample(**s) for s in done], cfg.lagrangian.lambda_init),
                   **suite_metrics(suite_samples)}
        writer.log_eval(EvalPoint(mark=0, step=0, completions=0, tokens=0, seconds=0.0, lam=cfg.lagrangian.lambda_init,
                                  metrics=metrics, samples_file=SAMPLES,
                                  suite_files={n: f"evals/{n}-00000000.jsonl" for n in suite_samples}),
                        done, suite_samples)
    except BaseException as e:
        writer.finish("interrupted" if isinstance(e, KeyboardInterrupt) else "failed", str(e)[:2000])
        raise
    writer.finish("completed")
    from harness.report.plots import scatter_panels

    scatter_panels([(cfg.label, done, "0.35")], out / "scatter.png")
    return out
