"""What every scorer implements, in-process or over HTTP."""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, Protocol, Sequence, runtime_checkable

from pydantic import Field

from harness.config import StrictModel


class Scores(NamedTuple):
    rewards: list[float]
    costs: list[float]


@runtime_checkable
class Scorer(Protocol):
    """Scores (prompt, response) pairs.

    ``prompts`` are the raw user prompts (no template) and ``responses`` the generated text after the
    template's ``ASSISTANT:``; both lists have equal length. Returns one finite reward (R, higher is more
    helpful) and one finite cost (C, <= 0 is safe) per pair, in order. Must raise rather than return a
    default score; the same pair scores the same whatever else is in the batch.
    """

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scores: ...

    def info(self) -> dict[str, Any]:
        """Identity for run records: backend, model ids/paths, file hashes, dtype, device."""
        ...


class ScorerSpec(StrictModel):
    """How a run reaches its scorer.

    ``builtin``/``judge``: the rule-based stand-ins, in-process. ``http``: a running ``esgrpo serve-scorer``
    at ``url`` or found through a ``rendezvous`` file. ``embedded``: any scorer-service config, in-process.
    """

    kind: Literal["builtin", "judge", "http", "embedded"] = "builtin"
    url: str | None = None
    rendezvous: str | None = None
    token: str | None = None
    token_file: str | None = None
    config: str | None = None  # for kind=embedded: path to a scorer service YAML
    deadline_s: float = Field(600.0, gt=0)  # how long a run waits for an unreachable scorer, then stops
    request_timeout_s: float = Field(120.0, gt=0)
    max_batch: int = Field(64, gt=0)
    concurrency: int = Field(4, gt=0)


def check_finite(scores: Scores, source: str) -> Scores:
    for name, values in (("reward", scores.rewards), ("cost", scores.costs)):
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"{source}: non-finite {name} at positions {bad[:5]}")
    return scores


MAX_SCORE = 1e12  # no reward or cost model scores beyond this; sums of a run's scores stay finite


def is_score(v: Any) -> bool:
    """A number that can be a reward or cost: not a boolean (JSON true is an int in Python), within ±MAX_SCORE
    (NaN and inf are not; an int is compared before it is converted: a 401-digit one overflows a double, and a
    double near the top of its range overflows a mean)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and abs(v) <= MAX_SCORE


def parse_scores(reply: Any, n: int) -> Scores:
    """``{"rewards": [...], "costs": [...]}`` with exactly ``n`` finite numbers each, or ValueError saying what
    is wrong. A reply is never trimmed or padded: a short list would silently drop samples downstream."""
    if not isinstance(reply, dict):
        raise ValueError(f"expected a JSON object with 'rewards' and 'costs', got {type(reply).__name__}")
    out = []
    for key in ("rewards", "costs"):
        values = reply.get(key)
        if not isinstance(values, list):
            raise ValueError(f"'{key}' is {'missing' if values is None else type(values).__name__}, expected a list")
        if len(values) != n:
            raise ValueError(f"'{key}' has {len(values)} values for {n} pairs")
        for i, v in enumerate(values):
            if not is_score(v):
                raise ValueError(f"'{key}'[{i}] is {v!r:.40}, not a finite number within ±{MAX_SCORE:g}")
        out.append([float(v) for v in values])
    return Scores(*out)
