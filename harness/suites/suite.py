"""A suite: its prompt set and judge, run at every evaluation beside the reward/cost evaluation, and its metrics.

Every metric is a mean of per-answer values (None where an answer does not count for it), so one run's value, a
seed interval and a paired difference are computed as for the reward/cost metrics. An answer the judge could not
read counts in ``*_unparsed`` and in no rate.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

from pydantic import Field

from harness.config import StrictModel
from harness.data.context import keep_last, templated_tokens
from harness.errors import UserError
from harness.generation import Generator, RolloutSettings
from harness.suites.judges import Judge, JudgeSpec
from harness.suites.sets import SetFormat, SuitePrompt, load_suite_prompts, set_hash

SuiteName = Literal["over_refusal", "harmful_behaviour"]
Sample = dict[str, Any]


class SuiteSpec(StrictModel):
    """``name``: which question the suite asks; ``prompts``: 'builtin' or a file in a published format (README,
    "Safety on every axis"); ``judge``: what labels the answers."""

    name: SuiteName
    prompts: str = "builtin"
    format: SetFormat = "auto"
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    limit: int | None = Field(None, gt=0)  # the first N prompts


@dataclass(frozen=True)
class SuiteMetric:
    key: str
    words: str
    higher_is_better: bool
    value: Callable[[Sample], float | None]
    judged: bool = True  # False: shown with its interval, never a verdict


def _rate(label: str | None, verdicts: tuple[str, ...]) -> Callable[[Sample], float | None]:
    def value(s: Sample) -> float | None:
        if (label and s["label"] != label) or s["verdict"] is None:
            return None
        return float(s["verdict"] in verdicts)
    return value


def _unparsed(s: Sample) -> float:
    return float(s["verdict"] is None)


@dataclass(frozen=True)
class SuiteKind:
    name: str
    words: str
    metrics: tuple[SuiteMetric, ...]
    headline: str  # the metric a per-category table shows

    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        out: dict[str, float] = {f"{self.name}_n": float(len(samples))}
        for m in self.metrics:
            vs = [v for s in samples if (v := m.value(s)) is not None]
            if vs:
                out[m.key] = statistics.fmean(vs)
        return out

    def categories(self, samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
        """Per category: the answers the headline metric counts, and its value over them."""
        head = next(m for m in self.metrics if m.key == self.headline)
        by: dict[str, list[float]] = {}
        for s in samples:
            if (v := head.value(s)) is not None:
                by.setdefault(s["category"], []).append(v)
        return {c: {"n": len(vs), self.headline: statistics.fmean(vs)} for c, vs in sorted(by.items())}


KINDS: dict[str, SuiteKind] = {k.name: k for k in (
    SuiteKind("over_refusal", "over-refusal (XSTest-style)", (
        SuiteMetric("over_refusal_rate", "refusals of safe prompts (full or partial)", False,
                    _rate("safe", ("full_refusal", "partial_refusal"))),
        SuiteMetric("over_refusal_full", "full refusals of safe prompts", False, _rate("safe", ("full_refusal",)),
                    judged=False),
        SuiteMetric("over_refusal_partial", "partial refusals of safe prompts", False,
                    _rate("safe", ("partial_refusal",)), judged=False),
        SuiteMetric("unsafe_compliance_rate", "full compliance with unsafe prompts", False,
                    _rate("unsafe", ("full_compliance",))),
        SuiteMetric("over_refusal_unparsed", "over-refusal judge outputs not parsed", False, _unparsed, judged=False),
    ), headline="over_refusal_rate"),
    SuiteKind("harmful_behaviour", "harmful behaviours (HarmBench-style)", (
        SuiteMetric("attack_success_rate", "attack success on harmful behaviours", False, _rate(None, ("harmful",))),
        SuiteMetric("strongreject_score", "StrongREJECT score", False, lambda s: s.get("score")),
        SuiteMetric("harmful_unparsed", "harmful-behaviour judge outputs not parsed", False, _unparsed, judged=False),
    ), headline="attack_success_rate"),
)}
SUITE_METRICS: dict[str, tuple[str, SuiteMetric]] = {m.key: (k.name, m) for k in KINDS.values() for m in k.metrics}


@dataclass
class LoadedSuite:
    spec: SuiteSpec
    kind: SuiteKind
    prompts: list[SuitePrompt]
    judge: Judge
    set_name: str
    hash: str  # of the prompts as the file has them
    truncated: int = 0  # prompts whose context (or text) was cut to fit the policy's context

    def describe(self) -> dict[str, Any]:
        """What a record keeps of it: runs compare only on the same prompts and judge."""
        return {"set": self.set_name, "hash": self.hash, "n": len(self.prompts), "truncated": self.truncated,
                "judge": self.judge.info()}


@dataclass(frozen=True)
class PolicyRoom:
    """What a suite's prompts must fit: the policy's tokenizer folder, the tokens a prompt may take in the
    template (harness.data.context.prompt_room), and what to do with a longer one (data.long_prompts)."""

    policy: Path
    room: int | None
    long_prompts: str = "error"


def fit_prompts(prompts: list[SuitePrompt], set_name: str, fit: PolicyRoom) -> tuple[list[SuitePrompt], int]:
    """Every prompt, with its context, within ``fit.room`` tokens in the template: a longer one is refused, or
    (``truncate``) keeps the end of its context (the behaviour itself stays whole), or the end of its text."""
    if fit.room is None:
        return prompts, 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fit.policy)
    room, out, cut = fit.room, [], 0
    for p in prompts:
        n = templated_tokens(tok, policy_prompt(p))
        if n <= room:
            out.append(p)
            continue
        if fit.long_prompts == "error":
            raise UserError(f"{set_name}: prompt {p.id[:80]!r} is {n} tokens in the template (its context included); the "
                            f"policy's context leaves {room} beside rollout.max_new_tokens (data.long_prompts: truncate "
                            "keeps the end of each long context)")
        field = "context" if p.context else "prompt"
        end = keep_last(tok, getattr(p, field), room,
                        lambda t: templated_tokens(tok, policy_prompt(replace(p, **{field: t}))) <= room)
        if end is None:
            raise UserError(f"{set_name}: prompt {p.id[:80]!r} cannot be cut to the {room} tokens the policy's context "
                            "leaves beside rollout.max_new_tokens")
        out.append(replace(p, **{field: end}))
        cut += 1
    return out, cut


def load_suites(specs: Sequence[SuiteSpec], make_judge: Callable[[JudgeSpec, str], Judge],
                fit: PolicyRoom | None = None) -> list[LoadedSuite]:
    """Each suite's prompts (fitted to the policy's context with ``fit``), then its judge from ``make_judge``
    (the driver's: a judge model is a service's), loaded only once every suite's prompts passed."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError(f"eval.suites names a suite twice ({', '.join(names)}): give each suite once")
    loaded = []
    for spec in specs:
        prompts, set_name = load_suite_prompts(spec.prompts, spec.format, spec.name)
        if spec.name == "harmful_behaviour" and any(p.label != "harmful" for p in prompts):
            raise UserError(f"{spec.prompts}: the harmful_behaviour suite reads harmful-behaviour sets (HarmBench, "
                            "StrongREJECT, JailbreakBench); an XSTest file is for over_refusal")
        if spec.name == "over_refusal" and any(p.label == "harmful" for p in prompts):
            raise UserError(f"{spec.prompts}: the over_refusal suite reads XSTest-format rows (prompt, type, label)")
        if spec.limit:
            if spec.limit > len(prompts):
                raise UserError(f"{set_name}: limit is {spec.limit}, but the set holds {len(prompts)} prompts")
            prompts = prompts[: spec.limit]
        fitted, cut = fit_prompts(prompts, set_name, fit) if fit else (prompts, 0)
        loaded.append((spec, fitted, set_name, set_hash(prompts), cut))
    return [LoadedSuite(spec, KINDS[spec.name], prompts, make_judge(spec.judge, spec.name), set_name, digest, cut)
            for spec, prompts, set_name, digest, cut in loaded]


def policy_prompt(p: SuitePrompt) -> str:
    """What the policy reads: a contextual behaviour's context first (HarmBench's test cases put it so)."""
    return f"{p.context}\n\n{p.prompt}" if p.context else p.prompt


def run_suite(generator: Generator, suite: LoadedSuite, rollout: RolloutSettings, chunk: int = 64) -> Iterator[list[Sample]]:
    for start in range(0, len(suite.prompts), chunk):
        part = suite.prompts[start : start + chunk]
        completions = generator.generate([policy_prompt(p) for p in part], rollout.greedy())
        texts = [c.text for c in completions]
        verdicts = suite.judge.judge(part, texts)
        if len(verdicts) != len(part):
            raise RuntimeError(f"the {suite.spec.name} judge returned {len(verdicts)} verdicts for {len(part)} answers")
        yield [{**asdict(p), "response": c.text, "n_tokens": c.n_tokens, "verdict": v.label, "score": v.score,
                "judge_output": v.output} for p, c, v in zip(part, completions, verdicts, strict=True)]


def run_suites(generator: Generator, suites: Sequence[LoadedSuite], rollout: RolloutSettings) -> dict[str, list[Sample]]:
    return {s.spec.name: [x for part in run_suite(generator, s, rollout) for x in part] for s in suites}


def suite_metrics(samples: dict[str, list[Sample]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, ss in samples.items():
        out.update(KINDS[name].aggregate(ss))
    return out


SAMPLE_FIELDS = frozenset({"id", "prompt", "category", "label", "context", "response", "n_tokens", "verdict", "score",
                           "judge_output"})


def checked_suite_samples(path, rows: list[tuple[int, Sample]]) -> list[Sample]:
    """A suite samples file's rows as samples, or a UserError naming file, line and field."""
    out, seen = [], {}
    for line, s in rows:
        if set(s) != SAMPLE_FIELDS:
            raise UserError(f"{path}:{line}: not a suite sample (fields {', '.join(sorted(set(s) ^ SAMPLE_FIELDS))[:200]} differ)")
        if not isinstance(s["id"], str) or s["id"] in seen:
            raise UserError(f"{path}:{line}: 'id' must be a string that no other line has")
        if s["verdict"] is not None and not isinstance(s["verdict"], str):
            raise UserError(f"{path}:{line}: 'verdict' must be a string or null")
        sc = s["score"]
        if sc is not None and (isinstance(sc, bool) or not isinstance(sc, (int, float)) or not 0 <= sc <= 1):
            raise UserError(f"{path}:{line}: 'score' must be null or a number in [0, 1]")
        seen[s["id"]] = line
        out.append(s)
    return out
