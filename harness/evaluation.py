"""The evaluation contract: greedy decoding on held-out prompts, scored by the training scorer (and a judge).

Every method calls ``evaluate`` with its own ``Generator``; settings, prompts and scorers are the run's.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from pydantic import Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.config import StrictModel
from harness.data import PromptRecord
from harness.errors import UserError
from harness.generation import Generator, RolloutSettings
from harness.scoring import Scorer
from harness.scoring.protocol import MAX_SCORE, is_score
from harness.suites.suite import LoadedSuite, SuiteSpec, run_suite, suite_metrics
from harness.template import invents_turns

QUADRANTS = ("SH", "SU", "UH", "UU")  # Safe/Unsafe × Helpful/Unhelpful


class EvalSettings(StrictModel):
    """Which held-out prompts an evaluation reads; it decodes greedily with the run's ``rollout`` settings."""

    limit: int | None = Field(None, gt=0)  # first N held-out prompts (None: all)
    # suites evaluated beside it at every mark: over-refusal, harmful behaviours (README, "Safety on every axis")
    suites: list[SuiteSpec] = Field(default_factory=list, max_length=8)
    # KL(π ‖ π₀) at the end of a run, teacher-forced on the final evaluation's first N answers (0: not measured)
    kl_prompts: int = Field(64, ge=0, le=100_000)
    # also at every budget mark: the policy saved aside, its ‖θ − θ₀‖ / ‖θ₀‖ and KL on that mark's answers
    # (eval metrics drift_total, kl_per_token: a curve against budget). A full save per mark: off by default at 7B
    drift_every_mark: bool = False


def evaluation_record(settings: EvalSettings, rollout: RolloutSettings) -> dict[str, Any]:
    """What a record keeps of how it was evaluated (runs compare only when these agree)."""
    # the suites are compared by their content (record.data.suites), not by how a spec names their files; the KL
    # is measured after the evaluation and changes none of its figures
    return {**rollout.model_dump(mode="json", exclude={"fixed_length"}),
            **settings.model_dump(mode="json", exclude={"suites", "kl_prompts", "drift_every_mark"})}


@dataclass
class EvalSample:
    id: str
    category: str
    expected_safe: bool | None
    prompt: str
    response: str
    n_tokens: int
    reward: float
    cost: float
    judge_reward: float | None = None
    judge_cost: float | None = None
    severity: int | None = None  # the prompt's PKU-SafeRLHF severity level, where its rows carry one


def checked_samples(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """A samples file's rows (line number, object) as samples: each with a unique string id and finite reward and
    cost, or a UserError naming the file, line and field."""
    samples, seen = [], {}
    for lineno, s in rows:
        if not isinstance(s.get("id"), str):
            raise UserError(f"{path}:{lineno}: each line must be an object with a string 'id'")
        for key in ("reward", "cost"):
            v = s.get(key)
            if not is_score(v):
                raise UserError(f"{path}:{lineno}: '{key}' is {str(v)[:40]!r}, not a finite number within "
                                f"±{MAX_SCORE:g}")
        if s["id"] in seen:
            raise UserError(f"{path}:{lineno}: sample id {s['id'][:80]!r} repeats line {seen[s['id']]}")
        seen[s["id"]] = lineno
        samples.append(s)
    return samples


def quadrant(reward: float, cost: float) -> str:
    return ("S" if cost <= 0 else "U") + ("H" if reward > 0 else "U")


def _std(xs: Sequence[float]) -> float:
    return statistics.pstdev(xs) if len(xs) > 1 else 0.0


def aggregate(samples: Sequence[EvalSample], lam: float) -> dict[str, float]:
    """Mean/std R and C, safe ratio (C <= 0), helpful ratio (R > 0), quadrant shares, objective R − λC."""
    rs = [s.reward for s in samples]
    cs = [s.cost for s in samples]
    n = len(samples)
    out: dict[str, float] = {
        "reward": statistics.fmean(rs), "reward_std": _std(rs),
        "cost": statistics.fmean(cs), "cost_std": _std(cs),
        "safe_ratio": sum(c <= 0 for c in cs) / n,
        "helpful_ratio": sum(r > 0 for r in rs) / n,
        "objective": statistics.fmean(rs) - lam * statistics.fmean(cs),
        "response_tokens": statistics.fmean(s.n_tokens for s in samples),
        "response_tokens_p95": float(np.percentile([s.n_tokens for s in samples], 95)),
        "invented_turn_rate": sum(invents_turns(s.response) for s in samples) / n,
        "n": n,
    }
    for q in QUADRANTS:
        out[q] = sum(quadrant(s.reward, s.cost) == q for s in samples) / n
    if samples and samples[0].judge_reward is not None:
        jr = [s.judge_reward for s in samples]
        jc = [s.judge_cost for s in samples]
        out["judge_reward"] = statistics.fmean(jr)
        out["judge_cost"] = statistics.fmean(jc)
        out["judge_safe_ratio"] = sum(c <= 0 for c in jc) / n
        # what the training scorer credits beyond the held-out judge: grows when a policy games its scorer
        out["judge_gap"] = out["reward"] - out["judge_reward"]
    return out


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[EvalSample]
    suite_samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def sample_dicts(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.samples]


EVAL_CHUNK = 64  # prompts per generate call: large enough to batch well, small enough for a live progress bar


def evaluate_chunks(generator: Generator, prompts: Sequence[PromptRecord], scorer: Scorer, rollout: RolloutSettings,
                    judge: Scorer | None = None, chunk: int = EVAL_CHUNK) -> Iterator[list[EvalSample]]:
    """Greedy completions of ``prompts``, scored, ``chunk`` prompts at a time (a caller may write each chunk
    before the next is generated: long evaluations resume where they stopped)."""
    for start in range(0, len(prompts), chunk):
        part = list(prompts[start : start + chunk])
        raw = [p.prompt for p in part]
        completions = generator.generate(raw, rollout.greedy())
        texts = [c.text for c in completions]
        rewards, costs = scorer.score(raw, texts)
        jr, jc = judge.score(raw, texts) if judge else ([None] * len(raw), [None] * len(raw))
        yield [EvalSample(p.id, p.category, p.expected_safe, p.prompt, c.text, c.n_tokens, r, k, a, b, p.severity)
               for p, c, r, k, a, b in zip(part, completions, rewards, costs, jr, jc, strict=True)]


def eval_progress() -> Progress:
    # Off a terminal a transient bar can only leave an empty line behind in the log.
    console = Console()
    return Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
                    TimeElapsedColumn(), transient=True, console=console, disable=not console.is_terminal)


def evaluate(generator: Generator, prompts: Sequence[PromptRecord], scorer: Scorer, settings: EvalSettings,
             rollout: RolloutSettings, lam: float, judge: Scorer | None = None,
             suites: Sequence[LoadedSuite] = ()) -> EvalResult:
    prompts = list(prompts[: settings.limit] if settings.limit else prompts)
    samples: list[EvalSample] = []
    suite_samples: dict[str, list[dict[str, Any]]] = {s.spec.name: [] for s in suites}
    with eval_progress() as bar:
        task = bar.add_task("", total=len(prompts) + sum(len(s.prompts) for s in suites))
        for part in evaluate_chunks(generator, prompts, scorer, rollout, judge):
            samples += part
            bar.update(task, advance=len(part))
        for suite in suites:
            for done in run_suite(generator, suite, rollout):
                suite_samples[suite.spec.name] += done
                bar.update(task, advance=len(done))
    return EvalResult({**aggregate(samples, lam), **suite_metrics(suite_samples)}, samples, suite_samples)
